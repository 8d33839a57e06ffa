"""The hooks: they reduce every selected layer's output as it is produced.

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

* Operations (``ops=True``, see :mod:`._ops`) are named after the innermost module whose
  ``forward`` called them and the operation: ``layer1.0.add`` for a Bottleneck's
  ``out += identity``, ``relu`` for an ``F.relu`` in the root model's forward. In-place,
  out-of-place and reversed forms share one name (``add_``, ``+=``, ``+`` and ``torch.add`` are
  ``add``; ``1 - x`` is ``sub``; ``/`` is ``div``). Repeats within one forward of the model get
  ``:2``, ``:3`` like a reused module, from the same counters. Where that name is also the name
  of a module of the model, the op's name ends in ``()`` (``relu()`` next to a child ``relu``).

What is not captured: modules whose ``forward`` is called directly (``module.forward(x)``) fire
no module hook, and without ``ops`` functional calls (``F.relu(x)``, ``x + y``) are not seen.

A forward pass is one transaction: what the hooks reduce is kept aside and committed when the
model's forward returns. A forward that raises leaves no trace (no counts, no new records), so
every record covers the same forwards. A hook never raises into the user's forward: what cannot
be reduced (complex or sparse tensors, a layout that changed between forwards, an unexpected
error) is skipped and said in the record's ``note``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import sys
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules import module as _module_hooks

from . import _config, _grads, _layout, _ops, _samples, _stats, _walk
from ._records import LayerCapture

__all__ = ["Recorder"]

_MAX_KEY_DEPTH = 8


def _flatten(obj: Any, path: str = "", depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif obj is None or depth >= _MAX_KEY_DEPTH:
        return
    elif isinstance(obj, Mapping):
        seen: set[str] = set()
        for k, v in obj.items():
            text = str(k)
            if text in seen:  # keys that print alike ({1: a, "1": b}): the later one says its type
                text = f"{text}~{type(k).__name__}"
            seen.add(text)
            yield from _flatten(v, f"{path}[{text}]", depth + 1)
    elif isinstance(obj, tuple) and hasattr(obj, "_fields"):
        for k in obj._fields:
            yield from _flatten(getattr(obj, k), f"{path}[{k}]", depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _flatten(v, f"{path}[{i}]", depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _flatten(getattr(obj, f.name), f"{path}[{f.name}]", depth + 1)


def _reduce(
    t: torch.Tensor, cdim: int | None, bounds: tuple[float, float] | None, tol: float, scratch: _stats.Scratch, want_sample: bool
) -> tuple[Any, Any]:
    """An output's statistics block, and its rendering sample when ``want_sample`` (else None):
    where the statistics kernel makes a pass over the data, it copies the sample in the same pass
    (see featcheck._samples). Gradients' records take the same path."""
    if (  # the usual large map: straight to chanfast (after a pass over megabytes, every Python
        # call and attribute read runs with cold caches: the general path below cost 1-30 ms more
        # per resnet50 capture, batch 8, 224 x 224, in three A/B runs). The condition is
        # _samples.rows' own, spelled out here: called as a function, it cost 3-4 ms more per
        # capture in two A/B runs, one cold call per record
        cdim == 1 and bounds is None and _stats._fast is not None and t.dtype is torch.float32 and t.is_cpu
        and t.layout is torch.strided and t.ndim >= 3 and t.is_contiguous() and not t.is_nested
    ):
        shape = t.shape
        numel = t.numel()
        a, c = shape[0], shape[1]
        if a and c and numel // (a * c) >= _stats._KERNEL_MIN_ROW and not _stats.exact_first(numel, shape, 1, False):
            data = t.detach().numpy()
            if not want_sample:
                return _stats.fast_block(data, a, c, numel // (a * c)), None
            offsets, sample_shape, steps = _samples.plan(shape)
            buffer = np.empty(c * len(offsets), dtype=np.float32)
            return _stats.fast_block(data, a, c, numel // (a * c), (buffer, offsets)), ((buffer, sample_shape), steps)
    x = t.detach()
    if not want_sample or not x.numel():
        return _stats.reduce(x, cdim, bounds, tol, scratch), None
    rows = _samples.rows(x, cdim)
    block = _stats.reduce(x, cdim, bounds, tol, scratch, rows)
    return block, rows.take() if rows is not None else _samples.cut(x, cdim)


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


_UNSET = object()
_DTYPE_NAMES = {d: str(d) for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}

# The exact C kernel for small float32 maps (featcheck/_fast.c), when it was built.
_KERNEL = _stats._fast.chanexact_ptr if _stats._fast is not None else None

# This thread's torch function mode stack, which the hooks take the op mode off and put it back
# on around every leaf module (see featcheck._ops.push and remove).
_stack_len = torch._C._len_torch_function_stack
_stack_at = torch._C._get_function_stack_at
_stack_pop = torch._C._pop_torch_function_stack
_stack_push = torch._C._push_on_torch_function_stack

# featcheck's own torch calls are seen by no torch function mode, the user's or its own.
_quiet = torch._C.DisableTorchFunction
_compiling = torch.compiler.is_compiling
# The backward pass (graph task) running in this thread, or _NO_TASK.
_graph_task = torch._C._current_graph_task_id
_NO_TASK = _grads._NO_TASK

# torch's fused modules: an active mode switches off their fast paths and changes their output.
_FUSED = _layout.FUSED
# A frame marking that a leaf or fused module took the op mode off the stack.
_PAUSED = ("(mode paused)", False)


def _views_an_input(out: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> bool:
    """Is the view ``out`` a view of one of the op's tensor arguments (their storage), rather
    than of a tensor the op computed?"""
    base = out._base
    for a in _layout._tensors((*args, *(kwargs or {}).values())):
        if a is base or a._base is base:
            return True
    return False


def _unsupported(t: torch.Tensor) -> str:
    """Why ``t`` cannot be reduced to statistics ('' if it can)."""
    if t.layout != torch.strided:
        return f"{t.layout} tensors are not reduced"
    if t.is_complex():
        return "complex tensors have no order (min, max, dead, saturated): not reduced"
    if t.is_quantized:
        return "quantized tensors are not reduced"
    if t.device.type == "meta":
        return "meta tensors hold no values"
    return ""


class _Entry:
    """One module of the inspected model: what the common hooks do when it runs."""

    __slots__ = ("module", "name", "frame", "pauses", "record", "hooked", "rule", "root")

    def __init__(self, name: str, module: nn.Module, leaf: bool, record: bool, hooked: bool, ops: bool, root: bool, kind: tuple[bool, Any]) -> None:
        """``kind``: :func:`_kind` of the module's class."""
        fused, self.rule = kind  # the rule: how its channel axis is decided
        self.module = module  # held while the hooks are attached: its id is the table's key
        self.name = name
        # the frame operations called by its forward are attributed to: (name prefix, recorded?)
        self.frame = (f"{name}.", False) if leaf or fused else (f"{name}." if name else "", True)
        self.pauses = ops and (leaf or fused)  # the op mode is off while it runs
        self.record = record  # its outputs are recorded
        self.hooked = hooked  # recorded, or a leaf whose output's channel axis is remembered
        self.root = root  # its calls start and end the model's forward passes


def _kind(cls: type) -> tuple[bool, Any]:
    """What the hooks need of a module's class: whether it is one of torch's fused modules, and
    :func:`featcheck._layout.module_rule`'s answer."""
    return issubclass(cls, _FUSED), _layout.class_rule(cls)


class Recorder:
    """Hooks on one model, and the records they fill."""

    def __init__(
        self,
        *,
        channel_dim: Callable[[str, str], int | None] | None,
        bounds: Mapping[str, tuple[float, float]],
        saturation_tol: float | None = None,
        keep_samples: bool = True,
        ops: bool = False,
        want_op: Callable[[str, str, str], bool] | None = None,
        on_output: Callable[[LayerCapture, torch.Tensor, tuple[Any, ...]], None] | None = None,
    ) -> None:
        self.records: dict[str, LayerCapture] = {}
        self.output: Any = None
        self.forwards = 0
        self.default_batchnorm: list[str] = []
        self.model_name = ""
        self.errors: list[Exception] = []
        self._root: weakref.ref[nn.Module] | None = None
        self._override = channel_dim
        self._bounds = dict(bounds)
        self._tol = _config.get("saturation_tolerance", saturation_tol)
        self._keep_samples = keep_samples
        self._calls: dict[str, int] = {}
        self._overrides: dict[str, Any] = {}  # channel_dim= per record name
        self._thr: dict[str, tuple[float, float, bool]] = {}  # the exact kernel's bound arguments
        # what this forward's calls contributed, committed when it returns: (record, block,
        # shape, dtype, samples, rendering sample)
        self._pending: list[tuple[LayerCapture, Any, torch.Size, torch.dtype, int, Any]] = []
        self._entries: dict[int, _Entry] = {}  # by id(module): lookups never call a module class's __eq__ or __hash__
        self._walk: _walk.Modules | None = None
        self._new: list[str] = []
        self._tags = _layout.Tags()
        with _quiet():
            self._scratch = _stats.Scratch()
        self._input_size: tuple[int, ...] | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._depth = 0
        self._alone = 0  # module calls running outside a forward of the model (see _alone_done)
        self._exc_at_start: BaseException | None = None
        # operations: the module frames of the forward in progress and the mode that sees calls
        self.ops = ops
        self._want_op = want_op
        self._frames: list[tuple[str, bool]] = []
        # made by attach and dropped by detach: it holds this recorder (its handler), which
        # holding it for good would make a reference cycle, every record freed only by the
        # garbage collector (and a full collection every few captures)
        self._mode: _ops.OpMode | None = None
        self._mode_on = False
        self.module_names: dict[str, None] = {}  # every module of the model (ops on)
        self.unselected_ops: dict[str, None] = {}  # operations seen but not selected (for hints)
        self.grads: _grads.Gradients | None = None  # gradient hooks on the outputs (featcheck._grads)
        # featcheck.compare: each output goes to this callback as it is produced, unreduced, with
        # the module's or operation's arguments, instead of to the statistics (the tensor object
        # itself: compare tells a tensor seen before by its identity and version)
        self._on_output = on_output

    # hooks ---------------------------------------------------------------------------
    def attach(self, root: nn.Module, selected: Mapping[str, nn.Module], walk: _walk.Modules | None = None) -> None:
        """Hook ``root`` and its modules; all or nothing (a failure removes what was added).

        Two hooks common to all modules (``torch.nn.modules.module.register_module_forward_*``)
        see every module call and look the module up in a table of this model's modules (by
        ``id``), built here in one walk: registering and removing three hooks per module cost
        more than the forward pass of a small model (mobilenet_v3_small at 64 x 64: 560 hooks,
        3 ms). Modules of other models miss the table and return at once; a submodule run on its
        own between forwards of the model (an encoder run by a generation loop) is seen. The
        root's calls start and end the forward pass's transaction (:meth:`_start`,
        :meth:`_finish`). Nothing is set on the modules themselves, not even on the root, so a
        deep copy or a pickle of the model made inside the forward or a ``watch`` block carries
        none of it. (Wrappers set as each module's ``forward`` would spare torch's slow call
        path, 0.7-0.8 ms per forward of mobilenet_v3_small, but a ``copy.deepcopy`` made inside
        the forward copied them and ran the original model.)"""
        self._root = weakref.ref(root)
        self.model_name = type(root).__name__
        try:
            entries: dict[int, _Entry] = {}
            self._walk = walk = walk if walk is not None else _walk.Modules(root)
            if self.ops:
                self.module_names = dict.fromkeys(walk.names)
                # module names that look like a repeated call (a child registered as "relu:2"):
                # operations of that name take the marker, as for "relu" itself
                for n in walk.names:
                    if ":" in n:
                        self.module_names.setdefault(n.rpartition(":")[0], None)
            kinds: dict[type, tuple[bool, Any]] = {}  # per class, asked once per capture
            for name, module, leaf in zip(walk.names, walk.modules, walk.leaves):
                record = name in selected
                hooked = record or (leaf and module is not root)
                # every module, hooked or not: a submodule run on its own is one call from its
                # pre-hook to its post-hook, children included (see _alone_done)
                cls = type(module)
                kind = kinds.get(cls)
                if kind is None:
                    kind = kinds[cls] = _kind(cls)
                entries[id(module)] = _Entry(name, module, leaf, record, hooked, self.ops, module is root, kind)
            self._entries = entries
            if self.ops:
                self._mode = _ops.OpMode(self._on_op)
            self._handles.append(_module_hooks.register_module_forward_pre_hook(self._make_pre()))
            self._handles.append(
                _module_hooks.register_module_forward_hook(self._make_post(), with_kwargs=True, always_call=True)
            )
        except BaseException:
            self.detach()
            raise

    def _make_pre(self) -> Callable[[nn.Module, Any], None]:
        """The common pre-hook: starts a forward pass of the model at its root's call, and (ops
        on) keeps the stack of running modules, to which operations are attributed.

        Operations inside leaf modules (the ``conv2d`` of ``nn.Conv2d``) are not recorded, and
        inside torch's fused attention and transformer modules none are: there the mode is
        switched off altogether. In fused modules because an active mode disables their fast
        paths, which would change their output; in leaves because every call the mode sees costs
        a Python round trip (about 3 us: mobilenet_v3_small makes 176 of its 191 torch calls per
        forward inside leaves), and taking the mode off and putting it back costs less."""
        entries = self._entries
        frames = self._frames
        ops = self.ops
        passes = self._on_output is None  # see _make_post

        def pre(module: nn.Module, args: Any) -> None:
            e = entries.get(id(module))
            if e is None or e.module is not module or (_compiling() and passes):
                return  # another model's module, or compiled code
            if e.root and self._start(module):
                return  # a forward pass of the model begins (the root calling itself is one call within it)
            if not self._depth:  # a submodule run on its own (an encoder in a generation loop)
                if _graph_task() == _NO_TASK:  # (not recomputed by a backward pass: see _start)
                    self._alone += 1
                return  # no stack of modules outside a forward of the model
            if not ops:
                return  # no stack of modules without ops
            frames.append(e.frame)
            mode = self._mode
            if e.pauses and self._mode_on and mode is not None:
                n = _stack_len()
                if n and _stack_at(n - 1) is mode:  # on top: the usual case
                    _stack_pop()
                    self._mode_on = False
                    frames.append(_PAUSED)
                # Otherwise a mode the forward entered itself lies above featcheck's (``with
                # torch.device(...)`` around a layer): it stays where it is. Taken from under that
                # mode and put back on top after the leaf, it would be what that mode's __exit__
                # pops (it pops the top), leaving the user's mode on the stack after the capture.
                # The leaf's own calls are not recorded (its frame says so), and a fused module's
                # fast path is off under the user's mode anyway.

        return pre

    def _make_post(self) -> Callable[[nn.Module, Any, Any], None]:
        """The common forward hook: records a selected module's output, remembers a leaf's
        channel axis, and (ops on) takes the module off the stack of running modules, putting
        the mode back after a leaf."""
        entries = self._entries
        # While dynamo traces a compiled region (a submodule the user compiled), the hooks are
        # traced as doing nothing, so the compiled code is what it would be without featcheck
        # (a hook that did its work there would break the graph and change the kernels, hence
        # the output's bits); compiled code is not seen, as the op mode does not see it.
        # featcheck.compare (``_on_output``) wants the compiled candidate's records: its hooks
        # do their work, and dynamo breaks the graph around them.
        passes = self._on_output is None

        frames = self._frames

        def post(module: nn.Module, args: Any, *rest: Any) -> None:
            # (kwargs, output); (output) alone when torch calls it from its exception handler
            e = entries.get(id(module))
            if e is None or e.module is not module or (_compiling() and passes):
                return
            if not self._depth and _graph_task() != _NO_TASK:
                return  # recomputed by a backward pass (activation checkpointing): see _start
            out = rest[-1]
            resume = False
            if frames:
                if frames[-1] is _PAUSED:
                    frames.pop()
                    resume = True
                if frames and frames[-1] is e.frame:
                    frames.pop()
            try:
                if e.hooked:
                    self._post(e, module, args, out)
            finally:
                if resume and self._mode is not None and self._depth:
                    _stack_push(self._mode)  # the mode back on after a leaf
                    self._mode_on = True
                if e.root:
                    self._finish(args, rest[0] if len(rest) == 2 else {}, out)
                elif not self._depth:
                    self._alone_done()

        return post

    def _post(self, e: _Entry, module: nn.Module, args: Any, out: Any) -> None:
        """A hooked module's output: recorded, or its channel axis remembered."""
        # featcheck's own torch calls are seen by no torch function mode, the user's or its
        # own; no torch.no_grad() (2 us a call): everything starts from the output's data
        with _quiet():
            if e.record:
                name = e.name
                calls = self._calls
                k = calls.get(name, 0) + 1
                calls[name] = k
                base = name if k == 1 else f"{name}:{k}"
                if isinstance(out, torch.Tensor):
                    self._record(base, module, name, k, "", out, args, e)
                else:
                    for key, t in _flatten(out):
                        self._record(base + key, module, name, k, key, t, args, e)
            elif isinstance(out, torch.Tensor):
                self._tags.set(out, _layout.channel_dim(module, args, out, self._tags, e.rule))

    def _alone_done(self) -> None:
        """A module call outside a forward of the model returned: when it was the outermost one
        (the submodule run on its own, not one of its children), what it recorded is committed
        and its call counters restart, as after a forward, so that a submodule run on its own
        many times keeps its names (``encoder.layer.0``, not ``...:2``, ``...:3``)."""
        self._alone -= 1
        if self._alone <= 0:
            self._alone = 0
            with _quiet():
                self._commit()
            self._calls.clear()
            self._tags.clear()

    def _mode_off(self) -> None:
        if self._mode_on and self._mode is not None:
            self._mode_on = False
            _ops.remove(self._mode)
        self._frames.clear()

    def detach(self) -> None:
        """Remove every hook and the op mode (idempotent); what an interrupted forward left
        pending is dropped."""
        self._mode_off()
        while self._handles:
            self._handles.pop().remove()
        self._entries = {}
        self._alone = 0
        self._walk = None  # it holds every module, which a capture kept after its test must not keep alive
        self._tags.clear()
        if self._depth:
            self._abort()
        self._mode = None

    def _start(self, module: nn.Module) -> bool:
        """The root's call: a forward pass of the model begins, unless the root is calling itself
        (then False: one forward pass, and that call is one call within it)."""
        if not self._depth and _graph_task() != _NO_TASK:
            # A backward pass is running: activation checkpointing (torch.utils.checkpoint)
            # recomputing a segment of the forward, not a forward of the model. Its module and
            # operation calls are not recorded (they would count the segment twice), nor is the
            # model's when the whole model is checkpointed; the hooks see depth 0 and pass.
            return True
        self._depth += 1
        if self._depth > 1:
            return False
        if self.forwards == 0:
            with _quiet():
                self.default_batchnorm = _walk.default_batchnorm(module, self._walk)
        self._exc_at_start = sys.exc_info()[1]
        self._calls.clear()
        self._tags.clear()
        if self._mode is not None:
            self._frames.clear()
            root = self._entries[id(module)]
            self._frames.append(root.frame)
            if root.pauses:  # a leaf or fused model: the mode stays off
                self._frames.append(_PAUSED)
            else:
                _ops.push(self._mode)
                self._mode_on = True
        return True

    def _finish(self, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        """The root's call returned (or raised): the forward pass is committed (or forgotten)."""
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth:
            return
        self._mode_off()
        # The hook is always called: torch calls it from its exception handler when the forward
        # raised, where sys.exc_info() holds that exception.
        exc = sys.exc_info()[1]
        if exc is not None and exc is not self._exc_at_start:
            self._abort()
            return
        with _quiet():
            self._input_size = _spatial_size(args, kwargs)
            self._commit()
        self.output = output
        self.forwards += 1
        self._calls.clear()
        self._tags.clear()

    def _abort(self) -> None:
        """Forget the forward in progress: its pending blocks and the records it created."""
        self._depth = 0
        self._mode_off()
        self._pending.clear()
        for name in self._new:
            self.records.pop(name, None)
        self._new.clear()
        self._calls.clear()
        self._tags.clear()

    def _bounds_for(self, rname: str, mname: str, module: nn.Module | str) -> tuple[float, float] | None:
        if self._bounds:
            for pat, b in self._bounds.items():
                if any(fnmatch.fnmatchcase(n, pat) for n in (rname, mname)):
                    return (float(b[0]), float(b[1]))
        return _ops.op_bounds(module) if isinstance(module, str) else _module_bounds(module)

    # operations ----------------------------------------------------------------------
    def _on_op(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None, out: torch.Tensor) -> None:
        """Called by the mode after every torch call that returned a tensor."""
        frames = self._frames
        if not frames or not frames[-1][1]:
            return  # outside a forward of the model, or inside a leaf or fused module
        prefix = frames[-1][0]
        try:
            with _quiet():
                self._op(func, args, kwargs, out, prefix)
        except Exception as e:  # never break the user's forward: say so, record nothing
            _warn(f"featcheck: an operation called by {prefix[:-1] or 'the model'!r} was not recorded: {type(e).__name__}: {e}")

    def _op(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None, out: Any, prefix: str) -> None:
        name, inplace = _ops.name_and_inplace(func)
        tags = self._tags
        if not isinstance(out, torch.Tensor):  # the tensors of a split, chunk or unbind: their channel axes
            if name in _ops.SHAPE_OPS:
                for o in out:
                    if o.ndim >= 1:
                        tags.set(o, _layout.op_channel_dim(name, args, kwargs, o, tags))
            return
        if name in _ops.NOT_RECORDED:
            if name in _ops.SHAPE_OPS and out.ndim >= 1:
                tags.set(out, _layout.op_channel_dim(name, args, kwargs, out, tags))
            return
        if args and out is args[0]:  # an in-place op: its result is recorded
            if name in _ops.DROPOUTS:
                return  # eval-mode dropout hands its input back
        elif not inplace and out._is_view() and _views_an_input(out, args, kwargs):
            if out.ndim >= 1:  # a view of an input, such as x.diagonal(): no new values
                tags.set(out, _layout.op_channel_dim(name, args, kwargs, out, tags))
            return
        # (a view of a tensor the op made itself, as einsum, tensordot and repeat_interleave hand
        # back, and every result of a tensor subclass, is new values: recorded)
        cdim = _layout.op_channel_dim(name, args, kwargs, out, tags)
        if out.ndim == 0 or not out.is_floating_point():
            return
        base = prefix + name
        if base in self.module_names:
            base += "()"
        k = self._calls.get(base, 0) + 1
        self._calls[base] = k
        rname = base if k == 1 else f"{base}:{k}"
        if self._want_op is not None and not self._want_op(rname, base, name):
            self.unselected_ops[base] = None
            tags.set(out, cdim)
            return
        self._record(rname, name, base, k, "", out, args, auto_cdim=cdim)

    def _record(
        self,
        rname: str,
        module: nn.Module | str,
        mname: str,
        call: int,
        key: str,
        t: torch.Tensor,
        args: tuple[Any, ...] = (),
        entry: _Entry | None = None,
        auto_cdim: int | None = None,
    ) -> None:
        """Reduce one output. ``module`` is the module (with its ``entry``), or for an operation
        its name (``add``), whose channel axis the caller decided (``auto_cdim``); ``args`` are
        the module's or the operation's arguments."""
        rec = self.records.get(rname)
        try:
            if t.is_nested:  # no regular shape (or a symbolic one) to make a record of
                _warn(f"featcheck: layer {rname!r}: nested tensors ({t.layout}) are not reduced: no record")
                return
            cdim = None
            if self._override is not None:  # the user's channel_dim= depends on names only: asked once
                cdim = self._overrides.get(rname, _UNSET)
                if cdim is _UNSET:
                    cdim = self._overrides[rname] = self._override(rname, mname)
            if cdim is None:
                cdim = auto_cdim if entry is None else _layout.channel_dim(module, args, t, self._tags, entry.rule)  # type: ignore[arg-type]
            else:
                try:
                    cdim = _layout._normalise(cdim, t.ndim)
                except ValueError as e:  # the user's channel_dim: raised once the forward is over
                    self.errors.append(ValueError(f"layer {rname!r}: {e}"))
                    return
            self._tags.set(t, cdim)
            shape = t.shape
            channels = 1 if cdim is None else shape[cdim]
            if rec is None:
                rec = LayerCapture(
                    rname, module, mname, call, key, cdim, channels,
                    self._bounds_for(rname, mname, module),
                )
                self.records[rname] = rec
                self._new.append(rname)
            elif rec.module_name != mname or rec.key != key:  # never merge two outputs under one name
                _note(rec, (
                    f"an output of {mname!r}{f' at {key}' if key else ''} would take this record's name, "
                    f"which is {rec.module_name!r}{f' at {rec.key}' if rec.key else ''}'s: it was skipped "
                    "(rename the module or output key that makes the names collide)"
                ))
                return
            elif rec.channels != channels or rec.channel_dim != cdim:
                _note(rec, (
                    f"an output with {channels} channels on dim {cdim} was skipped: earlier "
                    f"forwards gave {rec.channels} on dim {rec.channel_dim}, and statistics cannot "
                    "be merged across layouts (use separate captures)"
                ))
                return
            dtype = t.dtype
            block = None
            sample: Any = None
            if (  # the usual small map: straight to the exact kernel (a hook's cost is its Python)
                dtype is torch.float32 and t.is_cpu and t.layout is torch.strided and self._on_output is None
                and _KERNEL is not None and 0 < (numel := t.numel())
                and (numel <= _stats._EXACT_ALL or _stats.exact_first(numel, shape, cdim, rec.bounds is not None))
                and t.is_contiguous()  # (nested tensors returned above)
            ):
                thr = self._thr.get(rname)
                if thr is None:
                    thr = self._thr[rname] = _stats._thresholds(rec.bounds, self._tol)
                block = rec._acc.buffer()
                address = t.data_ptr()
                _KERNEL(address, shape, -1 if cdim is None else cdim, block, *thr)
                if rec._sample is None and self._keep_samples:
                    sample = _samples.first(t, address, shape, cdim, numel)
            else:
                why = "" if dtype is torch.float32 and t.is_cpu and t.layout is torch.strided else _unsupported(t)
                if why:
                    _note(rec, why)
                elif self._on_output is not None:
                    self._on_output(rec, t, args)
                else:
                    block, sample = _reduce(t, cdim, rec.bounds, self._tol, self._scratch, rec._sample is None and self._keep_samples)
            self._pending.append((rec, block, shape, dtype, shape[0] if len(shape) and cdim != 0 else 1, sample))
            if self.grads is not None and t.requires_grad:
                self.grads.hook(rec, t, cdim)
        except Exception as e:  # never break the user's forward for a picture or a statistic
            why = f"an output was not recorded: {type(e).__name__}: {e}"
            if rec is None:  # no record to note it on
                _warn(f"featcheck: layer {rname!r}: {why}")
                return
            _note(rec, why)

    def _commit(self) -> None:
        """Apply what this forward's calls contributed: one host transfer per device."""
        pending, self._pending = self._pending, []
        self._new.clear()
        on_device: dict[torch.device, list[int]] = {}
        for i, p in enumerate(pending):
            block = p[1]
            if isinstance(block, torch.Tensor):
                if block.device.type == "cpu":
                    pending[i] = (p[0], block.numpy(), *p[2:])
                else:
                    on_device.setdefault(block.device, []).append(i)
        for group in on_device.values():
            blocks = [torch.as_tensor(pending[i][1]) for i in group]
            flat = torch.cat([b.reshape(-1) for b in blocks]).cpu().numpy()
            pos = 0
            for i, b in zip(group, blocks):
                p = pending[i]
                pending[i] = (p[0], flat[pos : pos + b.numel()].reshape(b.shape), *p[2:])
                pos += b.numel()
        input_size = self._input_size
        for rec, block, shape, dtype, samples, sample in pending:
            if block is not None:
                rec._add(block)
            rec.samples += samples
            rec.forwards += 1
            dtype = _DTYPE_NAMES.get(dtype) or str(dtype)
            if rec.shape != shape or rec.dtype != dtype or rec.input_size != input_size:
                rec.shape = tuple(shape)  # and what follows from it: the same in most forwards
                rec.dtype = dtype
                rec.input_size = input_size
                spatial = shape[2:] if rec.channel_dim == 1 else rec.spatial  # the usual layout, without a generator
                if input_size is None or not spatial or len(spatial) != len(input_size):
                    rec.stride = None
                elif len(spatial) == 2 and spatial[0] and spatial[1]:  # images
                    rec.stride = (input_size[0] / spatial[0], input_size[1] / spatial[1])
                else:
                    rec.stride = tuple((i / o) if o else math.inf for i, o in zip(input_size, spatial))
            if sample is not None and rec._sample is None:
                rec._sample, rec.sample_step = sample  # (bytes, shape) become a tensor when read

    def finalize(self) -> None:
        """The inspection is over: read what needs the model (parameter counts) while it lives,
        so that records answer without keeping it alive."""
        with _quiet():
            self.commit_outside_forward()
            _walk.count_params(self.records.values())

    def commit_outside_forward(self) -> None:
        """Records are read: commit what hooks outside a forward of the model left pending."""
        if self._pending and not self._depth:
            self._commit()


def _note(rec: LayerCapture, text: str) -> None:
    if text in rec.note:
        return
    rec.note = f"{rec.note}; {text}" if rec.note else text
    _warn(f"featcheck: layer {rec.name!r}: {text}")


def _warn(text: str) -> None:
    try:
        warnings.warn(text, RuntimeWarning, stacklevel=3)
    except Exception:  # warnings turned into errors (-W error) must not break the forward either
        pass
