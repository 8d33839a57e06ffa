"""The capture engine: hooks that reduce every selected layer's output as it is produced.

Naming (stable, a contract for baselines and reports):

* A record is named after the module's qualified name from ``named_modules()``.
* A module called more than once per forward pass gets one record per call: the first call
  keeps the plain name, later calls append ``:2``, ``:3``, ... (``layer1.0.relu``,
  ``layer1.0.relu:2``, ``layer1.0.relu:3``). Counters restart with every forward pass of the
  model.
* An output that is not one tensor is flattened to one record per tensor, with a key path
  appended: ``[key]`` for mapping keys (dicts, HF-style model outputs), ``[i]`` for list and
  tuple positions, ``[field]`` for namedtuple and dataclass fields; nesting concatenates
  (``backbone[out]``, ``rpn[0][1]``). ``None`` and other non-tensor leaves are skipped.

What is not captured: functional calls (``F.relu(x)``, ``x + y``) and modules whose
``forward`` is called directly (``module.forward(x)``) fire no module hook; put the operation in
a module if you need to see it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from . import _config, _layout, _selection, _stats, _verdicts

__all__ = ["Capture", "LayerCapture", "capture", "watch"]

# The rendering sample is subsampled with a regular step (LayerCapture.sample_step says by how
# much) to at most SAMPLE_MAX_POSITIONS positions per channel (32 x 32 for images) and about
# SAMPLE_MAX_VALUES values per layer, but never below 8 x 8: copying it is part of every hook's
# cost, measured at 21 ms per resnet50 capture before the per-layer budget. 1-D maps (signals,
# token sequences, which must keep their square grid) keep up to 4096 positions.
SAMPLE_MAX_POSITIONS = 1024
SAMPLE_MAX_VALUES = 1 << 16
_SAMPLE_MIN_POSITIONS = 64
_SAMPLE_MAX_1D = 4096
_MAX_KEY_DEPTH = 8


class LayerCapture:
    """What featcheck recorded of one layer (one call of one module, one output tensor).

    Attributes:
        name: the record's unique name (see the module docstring for the rules).
        module_name: qualified name of the module in ``named_modules()``.
        module_type: the module's class name.
        call: which call of the module in a forward pass this is (1 for the first).
        key: the key path inside the module's output ('' when it returned one tensor).
        channel_dim: the axis holding channels in the output, ``None`` for rank < 2.
        shape: output shape of the last call.
        dtype: dtype of the output, as a string (``"torch.float16"``).
        stride: measured reduction per spatial dimension relative to the model input
            (input size / output size), ``None`` when the output has no spatial dimensions
            matching the input's.
        input_size: spatial size of the model input of the last forward (``None`` if unknown).
        samples: how many samples (batch entries) the statistics cover.
        forwards: how many calls the statistics cover.
        bounds: output bounds used for saturation counts, or ``None``.
        sample: first sample of the first call, on the CPU, float32, channels first
            (``[C, *spatial]``); ``None`` if capture was asked not to keep samples.
        sample_step: subsampling step per spatial dimension of ``sample`` (all 1: full size).
    """

    def __init__(
        self,
        name: str,
        module: nn.Module,
        module_name: str,
        call: int,
        key: str,
        channel_dim: int | None,
        channels: int,
        bounds: tuple[float, float] | None,
    ) -> None:
        self.name = name
        self.module_name = module_name
        self.module_type = type(module).__name__
        self.module_class: type = type(module)
        self._module = weakref.ref(module)
        self.call = call
        self.key = key
        self.channel_dim = channel_dim
        self.channels = channels
        self._params: int | None = None
        self.bounds = bounds
        self.shape: tuple[int, ...] = ()
        self.dtype = ""
        self.stride: tuple[float, ...] | None = None
        self.input_size: tuple[int, ...] | None = None
        self.samples = 0
        self.forwards = 0
        self.sample: torch.Tensor | None = None
        self.sample_step: tuple[int, ...] = ()
        self._acc = _stats.Accumulator(channels)
        self._stats: dict[str, np.ndarray] | None = None

    @property
    def params(self) -> int | None:
        """Number of parameters of the module (``None`` once the model is gone)."""
        if self._params is None:
            module = self._module()
            if module is not None:
                self._params = sum(p.numel() for p in module.parameters())
        return self._params

    @property
    def module(self) -> nn.Module | None:
        """The module, while the model is alive."""
        return self._module()

    @property
    def spatial(self) -> tuple[int, ...]:
        """Output sizes of the dimensions other than batch and channels."""
        if len(self.shape) < 2:
            return ()
        return tuple(s for i, s in enumerate(self.shape) if i not in (0, self.channel_dim))

    @property
    def stats(self) -> dict[str, np.ndarray]:
        """Per-channel statistics over every sample and position seen (read-only arrays).

        ``min``, ``max``, ``mean``, ``std`` (population, correction 0) over the finite values;
        ``zero_fraction`` over all values, and for layers with saturation ``bounds`` the
        ``lower_fraction`` / ``upper_fraction`` of values at each bound; ``nonfinite`` and
        ``count`` (values per channel) as integer counts.
        A channel with no finite value has NaN for min, max, mean and std.
        """
        if self._stats is None:
            stats = self._acc.stats()
            if self.bounds is None:
                del stats["lower_fraction"], stats["upper_fraction"]
            self._stats = stats
        return self._stats

    def dead_channels(self, tolerance: float | None = None) -> list[int]:
        """Indices of channels that never varied; see :func:`featcheck.assert_no_dead_channels`."""
        return _verdicts.dead_channels(self, tolerance)

    def saturated_channels(self, fraction: float | None = None) -> list[int]:
        """Indices of channels with ``fraction`` of values at a bound; see
        :func:`featcheck.assert_not_saturated`."""
        return _verdicts.saturated_channels(self, fraction)

    def _add(self, block: np.ndarray) -> None:
        self._acc.add(block)
        self._stats = None

    def __repr__(self) -> str:
        stride = "-" if self.stride is None else "x".join(f"{s:g}" for s in self.stride)
        return (
            f"LayerCapture({self.name!r}, {self.module_type}, shape={tuple(self.shape)}, "
            f"channels={self.channels}, stride={stride}, samples={self.samples})"
        )


def _flatten(obj: Any, path: str = "", depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif obj is None or depth >= _MAX_KEY_DEPTH:
        return
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _flatten(v, f"{path}[{k}]", depth + 1)
    elif isinstance(obj, tuple) and hasattr(obj, "_fields"):
        for k in obj._fields:
            yield from _flatten(getattr(obj, k), f"{path}[{k}]", depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _flatten(v, f"{path}[{i}]", depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _flatten(getattr(obj, f.name), f"{path}[{f.name}]", depth + 1)


def _sample(t: torch.Tensor, cdim: int | None) -> tuple[torch.Tensor, tuple[int, ...]]:
    if t.ndim == 0:
        return t.detach().reshape(1).to("cpu", torch.float32, copy=True), ()
    s = t[0]
    if cdim is None:
        return s.detach().reshape(1).to("cpu", torch.float32, copy=True), ()
    if cdim != 1:
        s = s.movedim(cdim - 1, 0)
    spatial = s.shape[1:]
    steps = [1] * len(spatial)
    if len(spatial) == 1:
        cap = _SAMPLE_MAX_1D
    else:
        cap = max(_SAMPLE_MIN_POSITIONS, min(SAMPLE_MAX_POSITIONS, SAMPLE_MAX_VALUES // max(1, s.shape[0])))
    if spatial and math.prod(spatial) > cap:
        side = max(1, int(cap ** (1 / len(spatial))))
        steps = [max(1, math.ceil(n / side)) for n in spatial]
        s = s[(slice(None), *(slice(None, None, st) for st in steps))]
    if s.device.type == "cpu" and s.dtype == torch.float32:
        return s.clone(), tuple(steps)
    return s.to("cpu", torch.float32, copy=True), tuple(steps)


def _spatial_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, ...] | None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor) and a.ndim >= 3:
            return tuple(a.shape[2:])
    return None


# Modules whose output range is known: saturation is counted against these bounds.
def _module_bounds(module: nn.Module) -> tuple[float, float] | None:
    if isinstance(module, (nn.Sigmoid, nn.Hardsigmoid)):
        return (0.0, 1.0)
    if isinstance(module, nn.Tanh):
        return (-1.0, 1.0)
    if isinstance(module, nn.ReLU6):
        return (0.0, 6.0)
    if isinstance(module, nn.Hardtanh):
        return (float(module.min_val), float(module.max_val))
    return None


def default_batchnorm(model: nn.Module) -> list[str]:
    """BatchNorm layers in eval mode that still hold their initial running statistics."""
    out = []
    for name, m in model.named_modules():
        if (
            isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not m.training
            and m.running_mean is not None
            and m.running_var is not None
            and (m.num_batches_tracked is None or int(m.num_batches_tracked) == 0)
            and not bool(m.running_mean.any())
            and bool((m.running_var == 1).all())
        ):
            out.append(name)
    return out


def unwrap(model: Any) -> tuple[nn.Module, str]:
    """The eager module to hook, and a note saying what was unwrapped ('' if nothing)."""
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            "featcheck cannot hook a TorchScript module: scripted and traced modules refuse "
            "forward hooks. Inspect the eager nn.Module you scripted it from instead."
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    notes = []
    while True:
        orig = getattr(model, "_orig_mod", None)
        if isinstance(orig, nn.Module) and type(model).__name__ == "OptimizedModule":
            notes.append("torch.compile wrapper: inspected model._orig_mod eagerly")
            model = orig
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            notes.append(f"{type(model).__name__} wrapper: inspected model.module")
            model = model.module
        else:
            break
        if isinstance(model, torch.jit.ScriptModule):
            return unwrap(model)
    return model, "; ".join(notes)


def _default_layers(model: nn.Module) -> list[str]:
    out = []
    for name, m in model.named_modules():
        children = next(m.children(), None) is not None
        own_params = any(p is not None for p in m._parameters.values())
        if not name and children:
            continue
        if not children or own_params:
            out.append(name)
    return out


def select_modules(model: nn.Module, layers: Any) -> dict[str, nn.Module]:
    """Selected ``{name: module}`` of ``model``; raises LayerNotFoundError before any forward."""
    modules = dict(model.named_modules())
    if layers is None:
        names = _default_layers(model)
    else:
        items = [(n, m) for n, m in modules.items() if n or len(modules) == 1]
        names = _selection.select(items, layers, f"{type(model).__name__}.named_modules()")
    return {n: modules[n] for n in names}


def _channel_dim_override(channel_dim: Any) -> Callable[[str, str], int | None]:
    if channel_dim is None:
        return lambda record, module: None
    if isinstance(channel_dim, int):
        return lambda record, module: channel_dim
    if isinstance(channel_dim, Mapping):
        def lookup(record: str, module: str) -> int | None:
            for pat, dim in channel_dim.items():
                if any(fnmatch.fnmatchcase(n, pat) for n in (record, module)):
                    return int(dim)
            return None

        return lookup
    raise TypeError(
        "channel_dim must be an int, a mapping of layer name or pattern to int, or None; "
        f"got {type(channel_dim).__name__}"
    )


class _Recorder:
    def __init__(
        self,
        root: nn.Module,
        selected: dict[str, nn.Module],
        *,
        channel_dim: Any = None,
        bounds: Mapping[str, tuple[float, float]] | None = None,
        saturation_tol: float | None = None,
        keep_samples: bool = True,
    ) -> None:
        self.root = root
        self.selected = selected
        self.records: dict[str, LayerCapture] = {}
        self.output: Any = None
        self.forwards = 0
        self.default_batchnorm: list[str] = []
        self._override = _channel_dim_override(channel_dim)
        self._bounds = dict(bounds or {})
        self._tol = _config.get("saturation_tolerance", saturation_tol)
        self._keep_samples = keep_samples
        self._calls: dict[str, int] = {}
        self._pending: list[tuple[LayerCapture, np.ndarray | torch.Tensor]] = []
        self._tags = _layout.Tags()
        self._scratch = _stats.Scratch()
        self._input_size: tuple[int, ...] | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for pat, b in self._bounds.items():
            if not (isinstance(b, (tuple, list)) and len(b) == 2 and float(b[0]) < float(b[1])):
                raise ValueError(
                    f"bounds[{pat!r}] must be a (low, high) pair with low < high, got {b!r}"
                )

    # hooks ---------------------------------------------------------------------------
    def attach(self) -> None:
        try:
            self._handles.append(
                self.root.register_forward_pre_hook(self._start, with_kwargs=True, prepend=True)
            )
            for name, module in self.root.named_modules():
                if name in self.selected or (
                    next(module.children(), None) is None and module is not self.root
                ):
                    hook = self._make_hook(name, record=name in self.selected)
                    self._handles.append(module.register_forward_hook(hook, with_kwargs=True))
            self._handles.append(
                self.root.register_forward_hook(self._finish, always_call=True)
            )
        except BaseException:
            self.detach()
            raise

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._tags.clear()

    def _start(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.forwards == 0:
            self.default_batchnorm = default_batchnorm(self.root)
        self._calls.clear()
        self._tags.clear()
        self._input_size = _spatial_size(args, kwargs)

    def _finish(self, module: nn.Module, args: Any, output: Any) -> None:
        self.flush()
        self.output = output
        self.forwards += 1
        self._calls.clear()
        self._tags.clear()

    def _make_hook(self, name: str, record: bool) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            with torch.no_grad():
                if not record:
                    if isinstance(out, torch.Tensor):
                        self._tags.set(out, _layout.channel_dim(module, args, out, self._tags))
                    return
                k = self._calls.get(name, 0) + 1
                self._calls[name] = k
                base = name if k == 1 else f"{name}:{k}"
                for key, t in (("", out),) if isinstance(out, torch.Tensor) else _flatten(out):
                    rname = base + key
                    cdim = self._override(rname, name)
                    if cdim is None:
                        cdim = _layout.channel_dim(module, args, t, self._tags)
                    else:
                        cdim = _layout._normalise(cdim, t.ndim)
                    self._tags.set(t, cdim)
                    self._record(rname, module, name, k, key, t, cdim)

        return hook

    def _bounds_for(self, rname: str, mname: str, module: nn.Module) -> tuple[float, float] | None:
        for pat, b in self._bounds.items():
            if any(fnmatch.fnmatchcase(n, pat) for n in (rname, mname)):
                return (float(b[0]), float(b[1]))
        return _module_bounds(module)

    def _record(
        self,
        rname: str,
        module: nn.Module,
        mname: str,
        call: int,
        key: str,
        t: torch.Tensor,
        cdim: int | None,
    ) -> None:
        channels = 1 if cdim is None else t.shape[cdim]
        rec = self.records.get(rname)
        if rec is None:
            rec = LayerCapture(
                rname, module, mname, call, key, cdim, channels,
                self._bounds_for(rname, mname, module),
            )
            self.records[rname] = rec
        elif rec.channels != channels or rec.channel_dim != cdim:
            raise ValueError(
                f"layer {rname!r} produced {channels} channels on dim {cdim} in this forward "
                f"but {rec.channels} on dim {rec.channel_dim} before; statistics cannot be "
                "accumulated across different layouts. Use separate captures for them."
            )
        if not (t.is_floating_point() or t.is_complex()):
            t = t.float()
        self._pending.append((rec, _stats.reduce(t.detach(), cdim, rec.bounds, self._tol, self._scratch)))
        rec.shape = tuple(t.shape)
        rec.dtype = str(t.dtype)
        rec.samples += t.shape[0] if t.ndim >= 1 and cdim != 0 else 1
        rec.forwards += 1
        rec.input_size = self._input_size
        spatial = rec.spatial
        if self._input_size is not None and spatial and len(spatial) == len(self._input_size):
            rec.stride = tuple(
                (i / o) if o else math.inf for i, o in zip(self._input_size, spatial)
            )
        else:
            rec.stride = None
        if rec.sample is None and self._keep_samples:
            rec.sample, rec.sample_step = _sample(t, cdim)

    def flush(self) -> None:
        """Move the per-call blocks to the host: one transfer per device and forward pass."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        by_device: dict[torch.device, list[int]] = {}
        for i, (rec, block) in enumerate(pending):
            if isinstance(block, np.ndarray):
                rec._add(block)
            elif block.device.type == "cpu":
                rec._add(block.numpy())
            else:
                by_device.setdefault(block.device, []).append(i)
        for idx in by_device.values():
            blocks = [torch.as_tensor(pending[i][1]) for i in idx]  # device tensors here
            flat = torch.cat([b.reshape(-1) for b in blocks]).cpu().numpy()
            pos = 0
            for i, b in zip(idx, blocks):
                pending[i][0]._add(flat[pos : pos + b.numel()].reshape(b.shape))
                pos += b.numel()


class Capture(Mapping[str, LayerCapture]):
    """Read-only mapping from record name to :class:`LayerCapture`, ordered by first call."""

    def __init__(self, recorder: _Recorder, model_name: str, note: str = "") -> None:
        self._rec = recorder
        self.model_name = model_name
        self.note = note

    def _records(self) -> dict[str, LayerCapture]:
        self._rec.flush()
        return self._rec.records

    def __getitem__(self, name: str) -> LayerCapture:
        records = self._records()
        try:
            return records[name]
        except KeyError:
            raise _selection.not_found(name, list(records), "this capture") from None

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._records()))

    def __len__(self) -> int:
        return len(self._records())

    @property
    def names(self) -> list[str]:
        """Record names in order of first call."""
        return list(self._records())

    @property
    def output(self) -> Any:
        """What the last forward pass returned."""
        return self._rec.output

    @property
    def forwards(self) -> int:
        """How many forward passes of the model the capture has seen."""
        return self._rec.forwards

    @property
    def default_batchnorm(self) -> list[str]:
        """BatchNorm layers that ran in eval mode with their initial running statistics (mean 0,
        var 1) during the first forward: dead and saturation verdicts on them are suspect."""
        return list(self._rec.default_batchnorm)

    def select(self, layers: Any = None) -> list[LayerCapture]:
        """The records chosen by ``layers`` (same selectors as capture; a module name selects
        every call and output key of that module)."""
        records = self._records()
        if layers is None:
            return list(records.values())
        names = _selection.select(
            list(records.items()),
            layers,
            "this capture",
            aliases=lambda n: (records[n].module_name,),
            instance_of=lambda rec, cls: issubclass(rec.module_class, cls),
            call=lambda pred, n, rec: bool(pred(n, rec.module)),
        )
        return [records[n] for n in names]

    def __repr__(self) -> str:
        return f"<Capture of {self.model_name}: {len(self)} layers, {self.forwards} forward(s)>"


def _check_args(layers: Any, saturation_tol: float | None) -> None:
    if layers is not None:
        _selection._flatten_selectors(layers)
    if saturation_tol is not None and not 0 <= saturation_tol < 0.5:
        raise ValueError(f"saturation_tol must be in [0, 0.5), got {saturation_tol!r}")


def capture(
    model: nn.Module,
    *args: Any,
    layers: Any = None,
    train: bool = False,
    grad: bool = False,
    channel_dim: int | Mapping[str, int] | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    saturation_tol: float | None = None,
    keep_samples: bool = True,
    **kwargs: Any,
) -> Capture:
    """Run ``model(*args, **kwargs)`` once with hooks on the selected layers.

    The model is left as it was found: hooks are removed (also when forward raises), every
    module's ``training`` flag is restored, and buffers (BatchNorm running statistics) are put
    back, so an inspection in train mode moves nothing.

    Args:
        model: an ``nn.Module``; ``torch.compile``, ``DataParallel`` and
            ``DistributedDataParallel`` wrappers are unwrapped and the eager module is run
            (``Capture.note`` says so). TorchScript modules are refused.
        *args, **kwargs: passed to the model.
        layers: names, glob patterns, module classes, predicates ``(name, module) -> bool``, or
            a list of them; default every leaf module (and modules holding parameters of their
            own, such as ``nn.MultiheadAttention``).
        train: run the forward in train mode (default eval).
        grad: keep autograd on (default: the forward runs under ``torch.no_grad()``).
        channel_dim: the channel axis for every layer, or ``{name or pattern: dim}``; by default
            it is decided per layer (see ``featcheck._layout``).
        bounds: ``{name or pattern: (low, high)}`` output bounds for saturation counts, on top
            of the bounds of Sigmoid, Tanh, Hardtanh, ReLU6 and Hardsigmoid.
        saturation_tol: a value counts as at a bound within ``saturation_tol * (high - low)``
            (ini ``featcheck_saturation_tolerance``, default 1e-3).
        keep_samples: keep the first sample of each layer for rendering.

    Returns:
        A :class:`Capture`.

    Example:
        >>> cap = featcheck.capture(model, x, layers=["layer1", "layer*.conv2", torch.nn.ReLU])
        >>> cap["layer1"].stats["mean"]
    """
    _check_args(layers, saturation_tol)
    eager, note = unwrap(model)
    selected = select_modules(eager, layers)
    if note and isinstance(model, nn.DataParallel):
        device = next((p.device for p in eager.parameters()), None)
        if device is not None:
            args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
    recorder = _Recorder(
        eager, selected, channel_dim=channel_dim, bounds=bounds,
        saturation_tol=saturation_tol, keep_samples=keep_samples,
    )
    modes = [(m, m.training) for m in eager.modules()]
    saved = [(b, b.detach().clone()) for b in eager.buffers()]
    try:
        eager.train(train)
        recorder.attach()
        with torch.set_grad_enabled(grad):
            eager(*args, **kwargs)
    finally:
        recorder.detach()
        for m, mode in modes:
            m.training = mode
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)
    return Capture(recorder, type(eager).__name__, note)


@contextmanager
def watch(
    model: nn.Module,
    layers: Any = None,
    *,
    channel_dim: int | Mapping[str, int] | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    saturation_tol: float | None = None,
    keep_samples: bool = True,
) -> Iterator[Capture]:
    """Hook the selected layers for any number of forward passes; statistics accumulate.

    Nothing about the model is changed besides the hooks, which are removed on exit: the
    forward passes are yours (train or eval mode, with or without grad).

    For a ``torch.compile``d, ``DataParallel`` or ``DistributedDataParallel`` model the eager
    module inside is hooked, and the forward passes must go through it
    (``model._orig_mod(x)``, ``model.module(x)``): compiled graphs may skip hooks added after
    compilation and DataParallel replicas run hooks from worker threads. A warning says so.

    Example:
        >>> with featcheck.watch(model, layers=torch.nn.Conv2d) as cap:
        ...     for xb in batches:
        ...         model(xb)
    """
    _check_args(layers, saturation_tol)
    eager, note = unwrap(model)
    if note:
        warnings.warn(
            f"featcheck.watch: {note}; call that eager module inside the with-block, "
            "forwards through the wrapper may not fire hooks.",
            stacklevel=3,
        )
    recorder = _Recorder(
        eager, select_modules(eager, layers), channel_dim=channel_dim, bounds=bounds,
        saturation_tol=saturation_tol, keep_samples=keep_samples,
    )
    recorder.attach()
    try:
        yield Capture(recorder, type(eager).__name__, note)
    finally:
        recorder.detach()
        recorder.flush()

