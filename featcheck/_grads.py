"""The backward pass: per-record gradient statistics and per-parameter gradient summaries.

Gradient statistics are forward statistics of another tensor. When a record's output is produced
(a module's output, an operation's result) the recorder calls :meth:`Gradients.hook`, which
registers a tensor hook on that very tensor. The hook receives d(loss)/d(output) and reduces it
with :func:`featcheck._stats.reduce`, on its device, into a block that is committed into the
record's gradient record (``LayerCapture.grad``, a :class:`LayerCapture` named ``"<name> (grad)"``)
when the backward pass ends, one host transfer per device. A backward that raises leaves no trace.

Why tensor hooks on the outputs, and not ``register_full_backward_hook`` or ``retain_grad``: a hook
registered on a tensor before an in-place op rewrites it (``out += identity`` followed by
``ReLU(inplace=True)``) receives the gradient with respect to the value before the rewrite, the
value the forward record describes; ``retain_grad`` would follow the ReLU, and module backward
hooks break on outputs modified in place.

Parameters: :func:`featcheck.capture` with ``backward=`` differentiates the loss with
``torch.autograd.grad`` (never ``.backward()``), so no ``.grad`` is touched, and summarises each
parameter's gradient (:data:`PARAM_KEYS`). Inside :func:`featcheck.watch` the user's backward fills
``.grad``; it is read, never written, in a global optimizer step pre-hook (the gradient the step
uses), and the weights are copied there and compared in the step post-hook: the update-to-weight
ratio ``|w_after - w_before| / |w_before|`` (L2 norms) of every step.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from . import _stats
from ._records import LayerCapture

__all__ = ["Gradients", "PARAM_KEYS", "StepHooks", "check_backward_args", "detached", "rms"]

# What ``param_grads`` holds for every parameter; ``watch`` adds ``steps``, ``update_ratio`` and
# ``update_ratios``.
PARAM_KEYS = (
    "norm", "max_abs", "mean_abs", "zero_fraction", "nonfinite", "numel", "weight_norm",
    "requires_grad", "received",
)

_quiet = torch._C.DisableTorchFunction
_NO_TASK = -1

NO_PATH = (
    "no gradient path: this output did not require grad, so no gradient can reach it (it is "
    "computed from inputs and parameters that need none, e.g. upstream of every trainable "
    "parameter); capture with input_grad=True to follow the gradient back to the input"
)
NOT_REACHED = (
    "no gradient reached it: the loss does not depend on this output (an unused branch, or "
    "detached on the way to the loss)"
)
NO_BACKWARD = "no backward pass ran over this output inside the watch block"
NO_GRAD_MODE = (
    "no gradient path: this output did not require grad (the forward ran under torch.no_grad() "
    "or inference_mode, or nothing upstream requires grad)"
)


def rms(stats: Mapping[str, np.ndarray]) -> float:
    """The root mean square over every finite value of a record, from its per-channel
    statistics (``mean`` and ``std`` weighted by the finite count of each channel)."""
    n = stats["count"] - stats["nonfinite"]
    seen = n > 0
    if not seen.any():
        return math.nan
    mean, std, n = stats["mean"][seen], stats["std"][seen], n[seen]
    # in units of the largest magnitude, so that no square overflows (gradients of 1e200)
    scale = float(max(np.abs(mean).max(), std.max()))
    if scale == 0 or not math.isfinite(scale):
        return scale
    ms = float(np.sum(n * ((mean / scale) ** 2 + (std / scale) ** 2)) / n.sum())
    return math.sqrt(ms) * scale


def max_abs(stats: Mapping[str, np.ndarray]) -> float:
    """The largest finite |value| of a record (NaN when it has none)."""
    with np.errstate(invalid="ignore"):
        values = np.abs(np.concatenate([stats["min"], stats["max"]]))
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else math.nan


def detached(obj: Any) -> Any:
    """``obj`` with every tensor in it detached (the output a capture keeps: no graph, no hook)."""
    from torch.utils import _pytree

    with _quiet():
        return _pytree.tree_map_only(torch.Tensor, lambda t: t.detach(), obj)


def check_backward_args(backward: Any, input_grad: Any) -> None:
    """``capture``'s ``backward`` and ``input_grad`` arguments, checked before anything runs."""
    if backward is not None and not callable(backward):
        raise TypeError(
            "backward must be a function of the model's output returning a scalar loss, e.g. "
            f"backward=lambda out: out.logsumexp(-1).mean(); got {type(backward).__name__}: {backward!r}"
        )
    if not isinstance(input_grad, bool):
        raise TypeError(f"input_grad must be True or False, got {type(input_grad).__name__}: {input_grad!r}")
    if input_grad and backward is None:
        raise ValueError(
            "input_grad=True makes the inputs require grad for the backward pass, but no "
            "backward= was given; pass backward=lambda out: <scalar loss> as well"
        )
    if backward is not None and torch.is_inference_mode_enabled():
        raise RuntimeError(
            "backward= needs autograd, but capture was called inside torch.inference_mode(), "
            "where no graph is recorded and no gradient can be computed; call capture outside "
            "the inference_mode block (featcheck leaves grad mode as it found it)"
        )


def grad_inputs(args: tuple[Any, ...]) -> tuple[tuple[Any, ...], list[torch.Tensor]]:
    """``args`` with every floating-point tensor replaced by a copy of a leaf that requires grad,
    and those leaves (d(loss)/d(leaf) is the input's gradient). The model gets the copy, not the
    leaf: a forward that writes its input in place (``x.sub_(mean)``) would fail on a leaf that
    requires grad (torch refuses in-place writes to one, or to a view of one), and it leaves the
    user's tensor as it was."""
    out, leaves = [], []
    with _quiet():
        for a in args:
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                leaf = a.detach().requires_grad_(True)
                leaves.append(leaf)
                a = leaf.clone()
            out.append(a)
    if not leaves:
        raise ValueError(
            "input_grad=True needs a floating-point tensor among the positional inputs, found "
            f"{', '.join(type(a).__name__ if not isinstance(a, torch.Tensor) else str(a.dtype) for a in args) or 'none'}"
        )
    return tuple(out), leaves


# -- per-parameter summaries -----------------------------------------------------------------


class _ParamAcc:
    """One parameter's gradient summaries over the steps (or the one backward) seen."""

    __slots__ = ("numel", "requires_grad", "steps", "received", "sum_norm2", "max_abs", "sum_abs",
                 "zeros", "nonfinite", "values", "finite", "weight_norm", "ratios")

    def __init__(self, numel: int, requires_grad: bool) -> None:
        self.numel = numel
        self.requires_grad = requires_grad
        self.steps = 0
        self.received = 0
        self.sum_norm2 = 0.0
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.zeros = 0
        self.nonfinite = 0
        self.values = 0
        self.finite = 0
        self.weight_norm = math.nan
        self.ratios: list[float] = []

    def add(self, row: np.ndarray | None, weight_norm: float) -> None:
        """One step: ``row`` is (norm, max_abs, sum_abs, zeros, nonfinite, finite count) of its
        gradient, or ``None`` when the parameter had none."""
        self.steps += 1
        self.weight_norm = weight_norm
        if row is None:
            return
        norm, mx, sabs, zeros, nonfinite, finite = (float(v) for v in row)
        self.received += 1
        self.sum_norm2 += norm * norm
        self.max_abs = max(self.max_abs, mx)
        self.sum_abs += sabs
        self.zeros += int(zeros)
        self.nonfinite += int(nonfinite)
        self.values += self.numel
        self.finite += int(finite)

    def summary(self, watch: bool) -> dict[str, Any]:
        got = self.received > 0
        out: dict[str, Any] = {
            "norm": math.sqrt(self.sum_norm2 / self.received) if got else None,
            "max_abs": self.max_abs if got else None,
            "mean_abs": self.sum_abs / self.finite if got and self.finite else None,
            "zero_fraction": self.zeros / self.values if got and self.values else None,
            "nonfinite": self.nonfinite if got else None,
            "numel": self.numel,
            "weight_norm": self.weight_norm,
            "requires_grad": self.requires_grad,
            "received": got,
        }
        if watch:
            out["steps"] = self.steps
            out["update_ratios"] = tuple(self.ratios)
            out["update_ratio"] = float(np.mean(self.ratios)) if self.ratios else None
        return out


def _norm_block(t: torch.Tensor) -> torch.Tensor | np.ndarray:
    """The statistics block of a whole tensor as one channel (one pass of featcheck's kernel)."""
    return _stats.reduce(t.detach().reshape(1, -1), 0)


def _to_host(items: list[torch.Tensor | np.ndarray]) -> list[np.ndarray]:
    """Per-parameter results on the host: one transfer per device."""
    out: list[np.ndarray | None] = [None] * len(items)
    by_device: dict[torch.device, list[int]] = {}
    for i, v in enumerate(items):
        if isinstance(v, np.ndarray):
            out[i] = v
        else:
            by_device.setdefault(v.device, []).append(i)
    for idx in by_device.values():
        flat = torch.cat([torch.as_tensor(items[i], dtype=torch.float64).reshape(-1) for i in idx]).cpu().numpy()
        pos = 0
        for i in idx:
            n = items[i].numel()  # type: ignore[union-attr]
            out[i] = flat[pos : pos + n].reshape(items[i].shape)
            pos += n
    return [np.asarray(v) for v in out]


def _summaries(pairs: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> list[tuple[np.ndarray | None, float]]:
    """For each ``(parameter, gradient or None)``: the gradient's (norm, max_abs, sum_abs, zeros,
    nonfinite, finite count), norms and sums over its finite values, and the parameter's norm."""
    S = _stats
    items: list[torch.Tensor | np.ndarray] = []
    with _quiet(), torch.no_grad():
        for p, g in pairs:
            items.append(_norm_block(p))
            if g is not None:
                items.append(_norm_block(g))
                # sum of |g| (torch's cascaded sum: vector_norm(g, 1) loses digits on large
                # tensors); over the finite values only where there are others, below
                items.append(g.detach().abs().sum(dtype=torch.float64 if not g.is_floating_point() else None).reshape(1))
    host = iter(_to_host(items))
    out: list[tuple[np.ndarray | None, float]] = []
    for _, g in pairs:
        w = next(host)
        weight_norm = math.sqrt(float(w[S._N, 0]) * (float(w[S._MEAN, 0]) ** 2 + float(w[S._SD, 0]) ** 2))
        if g is None:
            out.append((None, weight_norm))
            continue
        b, sabs = next(host), float(next(host)[0])
        if b[S._NONFINITE, 0]:
            with _quiet(), torch.no_grad():
                sabs = float(torch.nan_to_num(g.detach().abs().double(), nan=0.0, posinf=0.0).sum())
        n = float(b[S._N, 0])
        norm = math.sqrt(n * (float(b[S._MEAN, 0]) ** 2 + float(b[S._SD, 0]) ** 2)) if n else math.nan
        mx = max(abs(float(b[S._MIN, 0])), abs(float(b[S._MAX, 0]))) if n else math.nan
        out.append((np.array([norm, mx, sabs, b[S._ZEROS, 0], b[S._NONFINITE, 0], n]), weight_norm))
    return out


# -- the gradient hooks ----------------------------------------------------------------------------


class Gradients:
    """The gradient side of one inspection: tensor hooks on recorded outputs, and parameter
    summaries. ``recorder.grads`` of a capture with ``backward=`` and of every watch."""

    def __init__(self, keep_samples: bool, watching: bool) -> None:
        self.keep_samples = keep_samples
        self.watching = watching
        self.active = True
        self.backwards = 0
        self.order: dict[str, None] = {}  # records in the order their first gradient arrived
        self.hooked: set[str] = set()
        self.inputs: list[torch.Tensor | None] = []  # d(loss)/d(input) with input_grad=True
        self._params: dict[str, _ParamAcc] = {}
        self._pending: list[tuple[LayerCapture, Any, tuple[int, ...], str, int, Any]] = []
        self._task: int | None = None
        with _quiet():  # featcheck's own torch calls are seen by no torch function mode
            self._scratch = _stats.Scratch()

    # forward: one call per recorded output ----------------------------------------------------
    def hook(self, rec: LayerCapture, t: torch.Tensor, cdim: int | None) -> None:
        """Register the gradient hook on a recorded output as it is produced."""
        if not t.requires_grad:
            return
        self.hooked.add(rec.name)
        shape, dtype = tuple(t.shape), str(t.dtype)
        me = weakref.ref(self)  # a tensor the user keeps must not keep the inspection alive

        def on_grad(g: torch.Tensor) -> None:
            grads = me()
            if grads is not None and grads.active:
                grads._on_grad(rec, cdim, shape, dtype, g)

        t.register_hook(on_grad)

    def _on_grad(self, rec: LayerCapture, cdim: int | None, shape: tuple[int, ...], dtype: str, g: torch.Tensor) -> None:
        from . import _recorder

        try:
            with _quiet(), torch.no_grad():
                task = torch._C._current_graph_task_id()
                if task != self._task or task == _NO_TASK:
                    self._pending.clear()  # what a backward that raised left behind
                    self._task = task
                    if task != _NO_TASK:
                        torch.autograd.Variable._execution_engine.queue_callback(self._commit)
                want = self.keep_samples and (rec.grad is None or rec.grad.sample is None)
                block, sample = _recorder._reduce(g, cdim, None, 0.0, self._scratch, want)
                samples = shape[0] if len(shape) >= 1 and cdim != 0 else 1
                self._pending.append((rec, block, shape, dtype, samples, sample))
                if task == _NO_TASK:
                    self._commit()
        except Exception as e:  # never break the user's backward for a statistic
            _recorder._note(rec, f"a gradient was not recorded: {type(e).__name__}: {e}")

    def _commit(self) -> None:
        """The backward pass ended: apply what its hooks reduced, one host transfer per device."""
        from . import _recorder

        pending, self._pending, self._task = self._pending, [], None
        if not pending:
            return
        try:
            with _quiet():
                blocks = _to_host([p[1] for p in pending])
                for (rec, _, shape, dtype, samples, sample), block in zip(pending, blocks):
                    grec = rec.grad
                    if grec is None:
                        grec = rec.grad = _grad_record(rec)
                        rec.grad_note = ""
                    grec._add(block)
                    grec.shape, grec.dtype = shape, dtype
                    grec.samples += samples
                    grec.forwards += 1
                    grec.stride, grec.input_size = rec.stride, rec.input_size
                    if grec.sample is None and sample is not None:
                        grec.sample, grec.sample_step = sample
                    self.order.setdefault(rec.name, None)
                self.backwards += 1
        except Exception as e:  # the engine's callback must not raise into the user's backward
            _recorder._warn(f"featcheck: gradients of a backward pass were not recorded: {type(e).__name__}: {e}")

    # capture(backward=...) -----------------------------------------------------------------
    def run(self, model: nn.Module, output: Any, backward: Callable[[Any], Any], inputs: list[torch.Tensor]) -> None:
        """Differentiate ``backward(output)`` with respect to the parameters that require grad
        (and ``inputs``) with ``torch.autograd.grad``: no ``.grad`` is touched."""
        loss = backward(output)
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"backward must return a scalar tensor (the loss), got {type(loss).__name__}: {loss!r}")
        if loss.numel() != 1 or not (loss.is_floating_point() or loss.is_complex()):
            raise ValueError(
                f"backward must return a scalar floating-point loss, got a {loss.dtype} tensor of shape "
                f"{tuple(loss.shape)}; reduce it, e.g. out.logsumexp(-1).mean()"
            )
        named = list(model.named_parameters())
        trainable = [p for _, p in named if p.requires_grad]
        if not loss.requires_grad:
            raise ValueError(
                "the loss returned by backward does not require grad: it depends on no parameter "
                "that requires grad (all frozen, detached, or computed under torch.no_grad()); "
                "unfreeze what you mean to check, or pass input_grad=True to differentiate with "
                "respect to the inputs"
            )
        got = torch.autograd.grad(loss.reshape(()), [*trainable, *inputs], allow_unused=True)
        self._commit()
        by_param = dict(zip(map(id, trainable), got[: len(trainable)]))
        self.inputs = list(got[len(trainable) :])
        self.add_step(named, lambda p: by_param.get(id(p)))

    def add_step(self, named: Sequence[tuple[str, nn.Parameter]], grad_of: Callable[[torch.Tensor], torch.Tensor | None]) -> None:
        """Summarise one step's gradient of every parameter in ``named``."""
        rows = _summaries([(p, grad_of(p)) for _, p in named])
        for (name, p), (row, weight_norm) in zip(named, rows):
            acc = self._params.get(name)
            if acc is None:
                acc = self._params[name] = _ParamAcc(p.numel(), p.requires_grad)
            acc.requires_grad = p.requires_grad
            acc.add(row, weight_norm)

    def add_ratios(self, ratios: Mapping[str, float]) -> None:
        for name, ratio in ratios.items():
            self._params[name].ratios.append(ratio)

    @property
    def param_grads(self) -> Mapping[str, Mapping[str, Any]]:
        return {name: acc.summary(self.watching) for name, acc in self._params.items()}

    # the end of the inspection -----------------------------------------------------------
    def close(self) -> None:
        """No hook records anything from now on (tensors kept by the user may still hold them)."""
        self.active = False
        self._pending.clear()

    def explain(self, records: Mapping[str, LayerCapture]) -> None:
        """Say, for every record without a gradient, why it has none."""
        for name, rec in records.items():
            if rec.grad is not None:
                continue
            if name not in self.hooked:
                rec.grad_note = NO_GRAD_MODE if self.watching else NO_PATH
            else:
                rec.grad_note = NO_BACKWARD if self.watching and not self.backwards else NOT_REACHED


def _grad_record(rec: LayerCapture) -> LayerCapture:
    """The record of the gradient with respect to ``rec``'s output: a LayerCapture like any
    other, so that checks, pictures, reports and baselines take it as they take ``rec``."""
    module: nn.Module | str | None = rec.op if rec.op is not None else rec.module
    grec = LayerCapture(
        f"{rec.name} (grad)", module if module is not None else rec.module_type, rec.module_name,
        rec.call, rec.key, rec.channel_dim, rec.channels, None,
    )
    grec._params = rec.params
    return grec


# -- watch: optimizer steps ------------------------------------------------------------------------


class StepHooks:
    """Global optimizer step hooks for one watch: before each ``optimizer.step()`` that updates
    parameters of the watched model, summarise their ``.grad`` (read only) and copy their values;
    after it, the update-to-weight ratio of each."""

    def __init__(self, grads: Gradients, model: nn.Module) -> None:
        self._grads = grads
        self._model = weakref.ref(model)
        self._before: dict[int, list[tuple[str, torch.Tensor, torch.Tensor]]] = {}
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self._handles = [register_optimizer_step_pre_hook(self._pre)]
        try:
            self._handles.append(register_optimizer_step_post_hook(self._post))
        except BaseException:
            self.remove()
            raise

    def _params(self, optimizer: torch.optim.Optimizer) -> list[tuple[str, nn.Parameter]]:
        model = self._model()
        if model is None:
            return []
        names = {id(p): n for n, p in model.named_parameters()}
        seen: set[int] = set()
        out = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) in names and id(p) not in seen:
                    seen.add(id(p))
                    out.append((names[id(p)], p))
        return out

    def _pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self._grads.active:
            return
        params = self._params(optimizer)
        if not params:
            return
        with _quiet(), torch.no_grad():
            self._grads.add_step(params, lambda p: p.grad)
            self._before[id(optimizer)] = [(n, p, p.detach().clone()) for n, p in params]

    def _post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        before = self._before.pop(id(optimizer), None)
        if before is None or not self._grads.active:
            return
        with _quiet(), torch.no_grad():
            pairs = [(torch.linalg.vector_norm(p.detach() - w), torch.linalg.vector_norm(w)) for _, p, w in before]
            values = torch.stack([torch.stack(pair) for pair in pairs]).double().cpu().numpy() if pairs else np.zeros((0, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios = {name: float(d / w) for (name, _, _), (d, w) in zip(before, values)}
        self._grads.add_ratios(ratios)

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        self._before.clear()

