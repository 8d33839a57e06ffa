"""``featcheck.capture`` and ``featcheck.watch``: hook a model, run it, hand it back as found.

The pieces: :mod:`._recorder` holds the hooks and the naming rules, :mod:`._records` the data
model (:class:`Capture`, :class:`LayerCapture`), :mod:`._state` what "left as found" covers. This
module checks the arguments, selects the layers, and makes attaching and restoring safe:

* Arguments are validated before anything is hooked (a typo in ``layers=``, ``bounds=`` or
  ``channel_dim=`` raises :class:`LayerNotFoundError` naming the closest layers).
* One model is inspected by one capture or watch at a time: a second, overlapping one (another
  thread, or nested in the same thread) is refused with a clear error, since both would see each
  other's forwards. Different models may be captured from different threads at once.
* Attaching and restoring are atomic with respect to Ctrl-C: in the main thread a SIGINT that
  arrives while hooks are being added or the model is being restored is held back and raised
  once the model is consistent again (hooks all on, or all off and the state put back).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import gc
import re
import signal
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from . import _grads, _ops, _selection, _walk
from ._records import Capture, LayerCapture
from ._recorder import Recorder, _quiet
from ._state import ModelState, preserved_rng

__all__ = ["Capture", "LayerCapture", "capture", "select_modules", "unwrap", "watch"]


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


def select_modules(
    model: nn.Module, layers: Any, unmatched: list[str] | None = None, walk: _walk.Modules | None = None
) -> dict[str, nn.Module]:
    """Selected ``{name: module}`` of ``model``; raises LayerNotFoundError before any forward for
    a name that matches no module, or appends it to ``unmatched`` (it may name an operation).
    ``walk``: the model's modules, when the caller has walked them already."""
    if walk is None:
        walk = _walk.Modules(model)
    modules = dict(zip(walk.names, walk.modules))
    if layers is None:
        names = _walk.default_layers(walk)
    else:
        items = [(n, m) for n, m in modules.items() if n or len(modules) == 1]
        names = _selection.select(items, layers, f"{type(model).__name__}.named_modules()", unmatched=unmatched)
    return {n: modules[n] for n in names}


_RECORD_SUFFIX = re.compile(r"(:\d+)?(\[[^\]]*\])*$")


def _key_matches(key: str, names: list[str]) -> bool:
    """Does a ``bounds``/``channel_dim`` key name a module or a record of one (``relu:2``,
    ``backbone[out]``)?"""
    stems = {key, _RECORD_SUFFIX.sub("", key)}
    for stem in stems:
        if _selection.is_pattern(stem):
            if any(fnmatch.fnmatchcase(n, stem) for n in names):
                return True
        elif stem in names:
            return True
    return False


def _could_name_op(key: str, modules: Mapping[str, Any]) -> bool:
    return any(_ops.could_name_op(stem, modules) for stem in {key, _RECORD_SUFFIX.sub("", key)})


def _check_keys(
    keys: Any, what: str, model: nn.Module, deferred: list[tuple[str, str]] | None, walk: _walk.Modules
) -> None:
    """Keys must name modules; with ops on, a key that names none but could name an operation
    is checked again after the forward against the records (``deferred``)."""
    if not keys:
        return
    modules = dict(zip(walk.names, walk.modules))
    names = list(modules)
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"{what} keys must be layer names or patterns (str), got {type(key).__name__}: {key!r}")
        if not _key_matches(key, names):
            if deferred is not None and _could_name_op(key, modules):
                deferred.append((what, key))
                continue
            err = _selection.not_found(key, names, f"{type(model).__name__}.named_modules()")
            raise type(err)(f"{what}: {err}") from None


def _check_deferred(recorder: Recorder, deferred: list[tuple[str, str]], model_name: str) -> None:
    """Names that matched no module before the forward must match a record now (an operation's
    name exists only once the model ran); otherwise LayerNotFoundError, as before a forward."""
    if not deferred or not recorder.forwards:
        return
    names = list(recorder.records)
    names += sorted({rec.module_name for rec in recorder.records.values()} - set(names))
    for what, key in deferred:
        if not _key_matches(key, names):
            hints = [*names, *recorder.unselected_ops, *recorder.module_names]
            err = _selection.not_found(key, list(dict.fromkeys(hints)), f"the modules and operations of {model_name}")
            raise type(err)(f"{what}: {err}" if what != "layers" else str(err))


def _channel_dim_override(channel_dim: Any) -> Callable[[str, str], int | None] | None:
    """The user's ``channel_dim`` as a lookup by record and module name (``None``: none given)."""
    if channel_dim is None:
        return None
    if isinstance(channel_dim, int) and not isinstance(channel_dim, bool):
        return lambda record, module: channel_dim
    if isinstance(channel_dim, Mapping):
        for k, v in channel_dim.items():
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"channel_dim[{k!r}] must be an int (a dim of the output), got {type(v).__name__}: {v!r}")
        dims = dict(channel_dim)

        def lookup(record: str, module: str) -> int | None:
            for pat, dim in dims.items():
                if any(fnmatch.fnmatchcase(n, pat) for n in (record, module)):
                    return dim
            return None

        return lookup
    raise TypeError(
        "channel_dim must be an int, a mapping of layer name or pattern to int, or None; "
        f"got {type(channel_dim).__name__}: {channel_dim!r}"
    )


def _check_bounds(bounds: Any) -> dict[str, tuple[float, float]]:
    if bounds is None:
        return {}
    if not isinstance(bounds, Mapping):
        raise TypeError(
            "bounds must be a mapping of layer name or pattern to (low, high), e.g. "
            f"bounds={{'gate': (0, 1)}}; got {type(bounds).__name__}: {bounds!r}"
        )
    out = {}
    for pat, b in bounds.items():
        ok = isinstance(b, (tuple, list)) and len(b) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in b
        )
        if not ok or not float(b[0]) < float(b[1]):
            raise ValueError(f"bounds[{pat!r}] must be a (low, high) pair of numbers with low < high, got {b!r}")
        out[pat] = (float(b[0]), float(b[1]))
    return out


def _check_args(
    model: nn.Module,
    layers: Any,
    saturation_tol: Any,
    bounds: Any,
    channel_dim: Any,
    keep_samples: Any,
    deferred: list[tuple[str, str]] | None,
    walk: _walk.Modules | None = None,
    **flags: Any,
) -> tuple[dict[str, tuple[float, float]], Callable[[str, str], int | None] | None]:
    if layers is not None:
        _selection._flatten_selectors(layers)
    if saturation_tol is not None:
        if isinstance(saturation_tol, bool) or not isinstance(saturation_tol, (int, float)):
            raise TypeError(f"saturation_tol must be a number in [0, 0.5), got {type(saturation_tol).__name__}: {saturation_tol!r}")
        if not 0 <= saturation_tol < 0.5:
            raise ValueError(f"saturation_tol must be in [0, 0.5), got {saturation_tol!r}")
    for name, value in {"keep_samples": keep_samples, **flags}.items():  # ops, train, grad
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {type(value).__name__}: {value!r}")
    checked = _check_bounds(bounds)
    override = _channel_dim_override(channel_dim)
    walk = walk or _walk.Modules(model)
    if walk.scripted:
        raise TypeError(
            f"featcheck cannot inspect a model holding TorchScript modules ({', '.join(map(repr, walk.scripted[:3]))}"
            f"{', ...' if len(walk.scripted) > 3 else ''}): scripted and traced modules run their "
            "layers inside TorchScript, where no hook or op is seen, and keep their parameters and "
            "buffers in registries featcheck cannot snapshot and put back. Put the eager "
            "nn.Module you scripted or traced it from in the model instead."
        )
    _check_keys(checked, "bounds", model, deferred, walk)
    if isinstance(channel_dim, Mapping):
        _check_keys(channel_dim, "channel_dim", model, deferred, walk)
    lazy = _walk.lazy_parameters(walk)
    if lazy:
        raise ValueError(
            f"the model has uninitialised lazy parameters ({', '.join(lazy[:3])}): featcheck hands "
            "the model back as it found it, so capturing would undo their initialisation. Run one "
            "forward pass first (model(x)), then capture."
        )
    return checked, override


# -- one inspection per model at a time ---------------------------------------------------------

_lock = threading.Lock()
# id(root) -> (root, what holds it, the root's modules): the inspections running now
_active: dict[int, tuple[weakref.ref[nn.Module], str, list[nn.Module]]] = {}


@contextmanager
def _exclusive(model: nn.Module, what: str, modules: list[nn.Module]) -> Iterator[None]:
    """One inspection per module at a time: refused while another inspection, in any thread, holds
    ``model`` or any of its ``modules`` (``model.modules()``), such as a ``watch`` of a model and a
    ``capture`` of one of its blocks. Each inspection's hooks see every call of its modules, so the
    outer one would count the inner one's forwards (and the forward the inner one runs in eval
    mode) as its own."""
    key = id(model)
    with _lock:
        held = _active.get(key)
        if held is not None and held[0]() is model:
            raise RuntimeError(
                f"featcheck.{what}: this {type(model).__name__} is already being inspected by "
                f"{held[1]}; two inspections of one model would see each other's forward passes. "
                "Run them one after the other, or inspect a copy (copy.deepcopy(model))."
            )
        mine: set[int] | None = None
        for ref, holder, theirs in _active.values():  # usually none: no set is built
            other = ref()
            if other is None:
                continue
            if mine is None:
                mine = set(map(id, modules))
            if not mine.isdisjoint(map(id, theirs)):
                raise RuntimeError(
                    f"featcheck.{what}: this {type(model).__name__} shares modules with a "
                    f"{type(other).__name__} already being inspected by {holder} (one holds the "
                    "other, or both hold the same submodule); two inspections would see each "
                    "other's forward passes, and the outer one would count the inner one's as its "
                    "own. Run them one after the other, or inspect a copy (copy.deepcopy(model))."
                )
        _active[key] = (weakref.ref(model), f"a featcheck.{what} in thread {threading.current_thread().name!r}", modules)
    try:
        yield
    finally:
        with _lock:
            _active.pop(key, None)


class _Interrupts:
    """Holds back SIGINT while ``critical`` is set (main thread only; elsewhere a no-op)."""

    def __init__(self) -> None:
        self.critical = False
        self.pending = False
        self._old: Any = None
        self._installed = False
        if threading.current_thread() is threading.main_thread():
            try:
                self._old = signal.signal(signal.SIGINT, self._handler)
                self._installed = True
            except (ValueError, OSError):  # no signals here (embedded interpreters)
                pass

    def _handler(self, signum: int, frame: Any) -> None:
        if self.critical:
            self.pending = True
        elif callable(self._old):
            self._old(signum, frame)
        elif self._old != signal.SIG_IGN:
            raise KeyboardInterrupt

    def cleanup(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` (idempotent) to completion despite Ctrl-C, then re-raise a held interrupt."""
        interrupted = False
        try:
            while True:
                try:
                    self.critical = True
                    fn()
                    break
                except KeyboardInterrupt:
                    interrupted = True
        finally:  # also when fn raised something else: Ctrl-C is the user's again
            self.critical = False
            if self._installed and signal.getsignal(signal.SIGINT) == self._handler:
                signal.signal(signal.SIGINT, self._old)
            self._installed = False
        if interrupted or self.pending:
            raise KeyboardInterrupt

    def release(self) -> None:
        """End a critical section; an interrupt held during it is raised now."""
        self.critical = False
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt


def _collector_paused(fn: Callable[..., Capture]) -> Callable[..., Capture]:
    """Python's cyclic garbage collector is off while ``fn`` runs (when it was on), and back on
    after, also when ``fn`` raises.

    A capture makes a few thousand short-lived containers (the model-state snapshot, the walk, the
    table of modules, a record per output): on mobilenet_v3_small at 64 x 64 they started about
    one collection of the youngest generation per capture, 0.2-0.45 ms each, since a collection
    walks every reference those containers hold (every module's attributes), and about every
    hundred captures a full collection, 180-230 ms in a process that imported torch: 2 ms per
    capture on average. Paused, the containers are freed by reference counting when the capture
    ends, no collection is started by a capture (none in 100 captures), and the next collection
    sees only the records handed back. The forward pass runs with it paused too: cyclic garbage it
    makes (rare in a forward) is collected afterwards.

    The collector's switch is the process's: a thread that switches it off while a capture runs
    finds it on again when the capture ends."""

    @functools.wraps(fn)
    def paused(*args: Any, **kwargs: Any) -> Capture:
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()

    return paused


@_collector_paused
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
    ops: bool = True,
    forward_kwargs: Mapping[str, Any] | None = None,
    backward: Callable[[Any], torch.Tensor] | None = None,
    input_grad: bool = False,
    _on_output: Callable[[LayerCapture, torch.Tensor, tuple[Any, ...]], None] | None = None,
    **kwargs: Any,
) -> Capture:
    """Run ``model(*args, **kwargs)`` once with hooks on the selected layers.

    The model is left as it was found (see ``featcheck._state`` for what that covers): hooks are
    removed, also when forward raises or Ctrl-C arrives; training flags, registrations, buffers,
    parameters, ``requires_grad`` and the global random generators are put back, touching only
    what changed, so an autograd graph the user holds stays valid.

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
        ops: record, besides modules, the operations that module code calls (``F.relu``,
            ``out += identity``, ``torch.cat``; see ``featcheck._ops``); ``False`` records modules
            only. A name in ``layers``, ``bounds`` or ``channel_dim`` that matches no module is
            looked up among the operations after the forward.
        forward_kwargs: keyword arguments for the model whose names collide with capture's own
            (``layers``, ``train``, ``grad``, ...): ``forward_kwargs={"layers": 4}``.
        backward: a function of the model's output returning a scalar loss. The forward then
            runs with autograd on, the loss is differentiated with ``torch.autograd.grad`` (no
            ``.grad`` is touched), and every record gets ``grad_stats`` (the statistics of
            d(loss)/d(output)) and the capture ``param_grads`` (see ``featcheck._grads``);
            ``cap.output`` is kept detached, so no graph or hook outlives the capture.
        input_grad: with ``backward``, make the floating-point positional inputs require grad
            (on copies sharing their storage), so that records upstream of every trainable
            parameter have a gradient path too.

    Returns:
        A :class:`Capture`.

    Example:
        >>> cap = featcheck.capture(model, x, layers=["layer1", "layer*.conv2", torch.nn.ReLU])
        >>> cap["layer1"].stats["mean"]
    """
    eager, note = unwrap(model)
    walk = _walk.Modules(eager)
    deferred: list[tuple[str, str]] | None = [] if ops is True else None
    bounds_, override = _check_args(
        eager, layers, saturation_tol, bounds, channel_dim, keep_samples, deferred, walk, ops=ops, train=train, grad=grad
    )
    _grads.check_backward_args(backward, input_grad)
    kwargs = _merge_kwargs(kwargs, forward_kwargs)
    recorder, selected = _recorder(eager, layers, override, bounds_, saturation_tol, keep_samples, ops, deferred, _on_output, walk)
    # featcheck.compare (``_on_output``) runs a torch.compile wrapper itself: the compiled code is
    # what it compares, and the records it shows are those the compiled graph lets run
    run = model if _on_output is not None and type(model).__name__ == "OptimizedModule" else eager
    inputs: list[torch.Tensor] = []
    if backward is not None:
        grad = True
        recorder.grads = _grads.Gradients(keep_samples, watching=False)
        if input_grad:
            args, inputs = _grads.grad_inputs(args)
    if note and isinstance(model, nn.DataParallel):
        device = next((p.device for p in eager.parameters()), None)
        if device is not None:
            args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
    with _exclusive(eager, "capture", walk.modules):
        state: ModelState | None = None
        guard = _Interrupts()
        try:
            guard.critical = True
            with _quiet():  # featcheck's own torch calls are seen by no torch function mode of the user's
                state = ModelState(eager, walk.modules)
                recorder.attach(eager, selected, walk)
            guard.release()
            modes = contextlib.ExitStack()  # entered and left with no torch function mode seeing it
            try:
                with _quiet():
                    modes.enter_context(preserved_rng(list(state.tensors())))
                    modes.enter_context(torch.set_grad_enabled(grad))
                    _walk.set_mode(eager, walk, train, state.training, state.classes)  # as the snapshot read them
                with _quiet_compile_warning(run is not eager):
                    out = run(*args, **kwargs)
                if recorder.grads is not None and backward is not None:
                    recorder.grads.run(eager, out, backward, inputs)
                    recorder.output = _grads.detached(recorder.output)
                    del out
            finally:
                with _quiet():
                    modes.close()
        finally:
            def undo() -> None:
                with _quiet():
                    recorder.detach()
                    if recorder.grads is not None:
                        recorder.grads.close()
                    if state is not None:
                        state.restore()

            guard.cleanup(undo)
        recorder.finalize()
        if recorder.grads is not None:
            recorder.grads.explain(recorder.records)
        if recorder.errors:
            raise recorder.errors[0]
        _check_deferred(recorder, deferred or [], type(eager).__name__)
        if state is not None and state.unrestorable:
            note = "; ".join(filter(None, [note, "not restored (written in place by the forward): " + ", ".join(state.unrestorable)]))
    return Capture(recorder, type(eager).__name__, note)


@contextmanager
def _quiet_compile_warning(compiled: bool) -> Iterator[None]:
    """torch warns that hooks common to all modules (featcheck's) also fire for a compiled
    wrapper: they look that module up, find it is not the model's, and skip it."""
    if not compiled:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Using `torch.compile.module.` when there are global hooks")
        yield


def _recorder(
    eager: nn.Module,
    layers: Any,
    override: Callable[[str, str], int | None] | None,
    bounds: dict[str, tuple[float, float]],
    saturation_tol: float | None,
    keep_samples: bool,
    ops: bool,
    deferred: list[tuple[str, str]] | None,
    on_output: Callable[[LayerCapture, torch.Tensor, tuple[Any, ...]], None] | None = None,
    walk: _walk.Modules | None = None,
) -> tuple[Recorder, dict[str, nn.Module]]:
    """The recorder for one inspection, and its selected modules. A name in ``layers`` that
    matches no module but could name an operation is checked after the forward (``deferred``)."""
    unmatched: list[str] | None = [] if ops else None
    walk = walk or _walk.Modules(eager)
    selected = select_modules(eager, layers, unmatched, walk)
    if deferred is not None and unmatched:
        modules = dict(zip(walk.names, walk.modules))
        for name in unmatched:
            if not _could_name_op(name, modules):  # the error select_modules raises without ops
                names = [n for n in modules if n or len(modules) == 1]
                raise _selection.not_found(name, names, f"{type(eager).__name__}.named_modules()")
        deferred[:0] = [("layers", name) for name in unmatched]
    recorder = Recorder(
        channel_dim=override, bounds=bounds, saturation_tol=saturation_tol, keep_samples=keep_samples,
        ops=ops, want_op=_selection.op_filter(layers), on_output=on_output,
    )
    return recorder, selected


def _merge_kwargs(kwargs: dict[str, Any], forward_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    if forward_kwargs is None:
        return kwargs
    if not isinstance(forward_kwargs, Mapping):
        raise TypeError(f"forward_kwargs must be a mapping of keyword arguments for the model, got {type(forward_kwargs).__name__}")
    both = sorted(set(kwargs) & set(forward_kwargs))
    if both:
        raise TypeError(f"model keyword argument(s) {', '.join(map(repr, both))} given both directly and in forward_kwargs")
    return {**kwargs, **forward_kwargs}


@contextmanager
def watch(
    model: nn.Module,
    layers: Any = None,
    *,
    channel_dim: int | Mapping[str, int] | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    saturation_tol: float | None = None,
    keep_samples: bool = True,
    ops: bool = True,
) -> Iterator[Capture]:
    """Hook the selected layers for any number of forward passes; statistics accumulate.

    Nothing about the model is changed besides the hooks, which are removed on exit (also on an
    exception or Ctrl-C): the forward passes are yours (train or eval mode, with or without
    grad). A forward pass that raises inside the block is not counted and leaves no trace in the
    statistics, so every record covers the same forward passes.

    For a ``torch.compile``d, ``DataParallel`` or ``DistributedDataParallel`` model the eager
    module inside is hooked, and the forward passes must go through it
    (``model._orig_mod(x)``, ``model.module(x)``): compiled graphs may skip hooks added after
    compilation and DataParallel replicas run hooks from worker threads. A warning says so.

    ``ops`` as for :func:`capture`; names that match no module are looked up among the recorded
    operations at the end of the block (when the model ran in it).

    Backward passes the user runs inside the block are recorded too (``grad_stats`` of every
    record whose output required grad, accumulated over them), and every ``optimizer.step()``
    that updates the model's parameters adds to ``param_grads``: the gradient the step used, read
    from ``.grad`` and never written, and the update-to-weight ratio of the step (see
    ``featcheck._grads``).

    Example:
        >>> with featcheck.watch(model, layers=torch.nn.Conv2d) as cap:
        ...     for xb in batches:
        ...         model(xb)
    """
    eager, note = unwrap(model)
    walk = _walk.Modules(eager)
    deferred: list[tuple[str, str]] | None = [] if ops is True else None
    bounds_, override = _check_args(eager, layers, saturation_tol, bounds, channel_dim, keep_samples, deferred, walk, ops=ops)
    recorder, selected = _recorder(eager, layers, override, bounds_, saturation_tol, keep_samples, ops, deferred, walk=walk)
    if note:
        warnings.warn(
            f"featcheck.watch: {note}; call that eager module inside the with-block, "
            "forwards through the wrapper may not fire hooks.",
            stacklevel=3,
        )
    recorder.grads = grads = _grads.Gradients(keep_samples, watching=True)
    with _exclusive(eager, "watch", walk.modules):
        guard = _Interrupts()
        steps: _grads.StepHooks | None = None
        try:
            guard.critical = True
            recorder.attach(eager, selected, walk)
            steps = _grads.StepHooks(grads, eager)
            guard.release()
            yield Capture(recorder, type(eager).__name__, note)
        finally:
            def undo() -> None:
                recorder.detach()
                grads.close()
                if steps is not None:
                    steps.remove()

            guard.cleanup(undo)
        recorder.finalize()
        grads.explain(recorder.records)
        if recorder.errors:
            raise recorder.errors[0]
        _check_deferred(recorder, deferred or [], type(eager).__name__)
