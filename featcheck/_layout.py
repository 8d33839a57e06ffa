"""Which axis of a layer's output holds its channels.

The rule, in order:

1. ``channel_dim=`` given by the user for that layer wins.
2. Modules that work channels-first (convolutions, batch/instance/group norm,
   pooling, padding, upsampling, pixel shuffle, channel dropout, torchvision's
   ``LayerNorm2d`` and ``FrozenBatchNorm2d``): dim 1.
3. Modules that work on the last dim (``Linear``, ``Bilinear``, ``LayerNorm``,
   ``RMSNorm``, ``Embedding``, ``MultiheadAttention``, transformer layers, Hugging Face's
   ``Conv1D`` of GPT-2): the last dim.
4. ``Permute`` modules (torchvision's ``ops.misc.Permute``) move the channel axis of
   their input to where their ``dims`` put it; ``Flatten`` gives dim 1.
5. Anything else (activations, dropout, identity, containers, custom blocks)
   inherits the channel axis of its input when the input came out of a module seen in
   the same forward pass and has the same rank. That is how the GELU inside a
   ConvNeXt block, which runs after ``Permute([0, 2, 3, 1])`` and ``Linear``, gets its
   384 channels from the last dim.
6. Failing all that: the last dim for rank-3 outputs (token sequences ``[N, L, C]``),
   dim 1 otherwise.

Rank-1 outputs ``[N]`` have one channel (``None`` here); rank-0 outputs likewise.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

_CHANNELS_FIRST: tuple[type, ...] = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._NormBase,  # batch norm and instance norm
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._LPPoolNd,
    nn.modules.pooling._MaxUnpoolNd,
    nn.FractionalMaxPool2d,
    nn.FractionalMaxPool3d,
    nn.modules.padding._ConstantPadNd,
    nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd,
    nn.Upsample,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.ChannelShuffle,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
)
_CHANNELS_FIRST_NAMES = frozenset({"LayerNorm2d", "FrozenBatchNorm2d"})
# torch's fused attention and transformer modules (channels last; see also _recorder)
FUSED: tuple[type, ...] = (
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.Transformer,
)
_CHANNELS_LAST: tuple[type, ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.LayerNorm,
    nn.Embedding,
    nn.EmbeddingBag,
    *FUSED,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def _normalise(dim: int, ndim: int) -> int | None:
    if ndim < 2:
        return None
    if not -ndim <= dim < ndim:
        raise ValueError(
            f"channel_dim={dim} is out of range for an output of rank {ndim}; "
            f"expected a dim in [{-ndim}, {ndim - 1}]"
        )
    return dim % ndim


_UNDECIDED = object()


class Tags:
    """Remembers, for the tensors modules produced in one forward, their channel axis."""

    def __init__(self) -> None:
        self._tags: dict[int, tuple[weakref.ref[torch.Tensor], int | None]] = {}

    def clear(self) -> None:
        self._tags.clear()

    def set(self, t: torch.Tensor, cdim: int | None) -> None:
        self._tags[id(t)] = (weakref.ref(t), cdim)

    def get(self, t: torch.Tensor) -> tuple[bool, int | None]:
        entry = self._tags.get(id(t))
        if entry is not None and entry[0]() is t:
            return True, entry[1]
        return False, None


def first_tensor(args: Any) -> torch.Tensor | None:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    return None


FIRST = 1  # module_rule: dim 1
LAST = -1  # module_rule: the last dim
NORM = 0  # module_rule: a LayerNorm (the last dim, or dim 1 where it permutes internally)
INHERIT = None  # module_rule: the input's channel axis (rules 4 to 6)


def module_rule(module: nn.Module) -> int | None:
    """Which of the rules decides ``module``'s channel axis: :data:`FIRST`, :data:`LAST`,
    :data:`NORM` or :data:`INHERIT`. The rules look at the class only: decided once per class,
    so that hooks pay for the class checks once, not once per call."""
    return class_rule(type(module))


def class_rule(cls: type) -> int | None:
    """:func:`module_rule` of a module of class ``cls``."""
    return per_class(_module_rule, cls)


_per_class: dict[tuple[int, int], tuple[weakref.ref[type], Any]] = {}


def per_class(fn: Callable[[type], Any], cls: type) -> Any:
    """``fn(cls)``, computed once per function and class. Classes are not kept alive (a test's
    local classes come and go): entries are keyed by ids and checked by a weak reference, which
    drops the entry when the class goes. (A ``WeakKeyDictionary`` lookup makes a weak reference
    per call: a hook's cost, paid for every module of every capture.)"""
    key = (id(fn), id(cls))
    hit = _per_class.get(key)
    if hit is not None and hit[0]() is cls:
        return hit[1]
    value = fn(cls)
    _per_class[key] = (weakref.ref(cls, lambda _, key=key: _per_class.pop(key, None)), value)
    return value


# Channels-last classes of other libraries, by module prefix and class name: Hugging Face's
# ``Conv1D`` (GPT-2 and its kin) is a Linear with its weight transposed, ``[..., nx] -> [..., nf]``.
_CHANNELS_LAST_ELSEWHERE = frozenset({("transformers", "Conv1D")})


def _module_rule(cls: type) -> int | None:
    if cls.__name__ in _CHANNELS_FIRST_NAMES:
        return FIRST
    if (cls.__module__.partition(".")[0], cls.__name__) in _CHANNELS_LAST_ELSEWHERE:
        return LAST
    if issubclass(cls, nn.LayerNorm):
        return NORM
    if issubclass(cls, _CHANNELS_FIRST):
        return FIRST
    if issubclass(cls, _CHANNELS_LAST):
        return LAST
    if issubclass(cls, nn.Flatten):
        return FIRST
    return INHERIT


def channel_dim(
    module: nn.Module, args: tuple[Any, ...], out: torch.Tensor, tags: Tags, rule: Any = _UNDECIDED
) -> int | None:
    """The channel axis of ``out``, produced by ``module`` from ``args`` (rules 2 to 6);
    ``rule`` is :func:`module_rule`'s answer where the caller has it."""
    ndim = out.ndim
    if ndim < 2:
        return None
    if rule is _UNDECIDED:
        rule = module_rule(module)
    if rule == FIRST:
        return 1
    if rule == LAST:
        return ndim - 1
    if rule == NORM:
        ns = module.normalized_shape  # type: ignore[union-attr]
        if len(ns) == 1 and out.shape[-1] != ns[0] and out.shape[1] == ns[0]:
            return 1  # a LayerNorm subclass that permutes internally
        return ndim - 1
    inp = first_tensor(args)
    if inp is not None:
        known, cdim = tags.get(inp)
        if known and cdim is not None:
            if type(module).__name__ == "Permute" and isinstance(dims := getattr(module, "dims", None), (list, tuple)):
                if len(dims) == ndim and cdim in dims:
                    return list(dims).index(cdim)
            elif inp.ndim == ndim:
                return cdim
    return ndim - 1 if ndim == 3 else 1


# -- operations (see featcheck._ops) -----------------------------------------------------------

# Reductions whose ``dim`` argument removes axes (or keeps them with size 1).
_REDUCTIONS = frozenset({
    "sum", "mean", "nansum", "nanmean", "amax", "amin", "std", "var", "norm", "logsumexp", "prod",
    "count_nonzero",
})


def _tensors(args: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(x for x in a if isinstance(x, torch.Tensor))
    return out


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any] | None, pos: int, *names: str) -> Any:
    if kwargs:
        for n in names:
            if n in kwargs:
                return kwargs[n]
    return args[pos] if len(args) > pos else None


def _follow_reshape(old: torch.Size, cdim: int, new: torch.Size) -> int | None:
    """Where the channel axis went in a reshape: the axis of the same size with the same number of
    values before it (so ``flatten(1)`` of ``[N, C, 1, 1]`` keeps C on dim 1); where it was split
    into several axes (attention's heads, ``[B, T, C] -> [B, T, H, C // H]``), the innermost of
    them, whose size stays when the number of heads changes; where it was merged with its
    neighbours (``[B, T, H, D] -> [B, T, H * D]``, the heads put back together), the merged
    axis. ``None`` when the reshape moves values across it otherwise."""
    before = math.prod(old[:cdim])
    size = old[cdim]
    after = before * size
    p = 1
    for j, s in enumerate(new):
        if p == before and s == size:
            return j
        p *= s
        if p > before and before:
            break
    if not after:
        return None
    p, first = 1, None  # p: the values before new axis j
    for j, s in enumerate(new):
        q = p * s
        if p == before and first is None:
            first = j  # a split starts here
        if first is not None and q == after and j > first:
            return j  # split: its innermost axis
        if p <= before and after <= q and before % p == 0 and q % after == 0 and s != size:
            return j  # merged: the axis holding all of it
        if q > after:
            break
        p = q
    return None


def _as_dims(d: Any, ndim: int) -> list[int] | None:
    if isinstance(d, int):
        d = [d]
    if not isinstance(d, (list, tuple)) or not all(isinstance(i, int) for i in d):
        return None
    return [i % ndim for i in d] if ndim else None


def op_channel_dim(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None, out: torch.Tensor, tags: Tags
) -> int | None:
    """The channel axis of an operation's output ``out``: inherited from its first input whose axis
    is known (preferring inputs of the output's rank, so ``layer_scale * x`` takes ``x``'s),
    moved by permutations, transposes and reshapes, removed by a reduction over it. Unknown
    inputs fall back to the module rule 6 (last dim for rank 3, else dim 1)."""
    ndim = out.ndim
    if ndim < 2:
        return None
    inp: torch.Tensor | None = None
    cdim: int | None = None
    for t in _tensors(args):
        known, c = tags.get(t)
        if known and (inp is None or (t.ndim == ndim and inp.ndim != ndim)):
            inp, cdim = t, c
            if t.ndim == ndim:
                break
    if inp is not None and cdim is None and inp.ndim == ndim:
        return None  # computed from a map without channels (a mean over them)
    if inp is None or cdim is None:
        return ndim - 1 if ndim == 3 else 1
    moved = _moved(name, args, kwargs, inp, cdim, out)
    if moved is not _UNKNOWN:
        return moved  # type: ignore[return-value]
    if inp.ndim == ndim:
        return cdim
    found = _follow_reshape(inp.shape, cdim, out.shape)
    if found is not None:
        return found
    return ndim - 1 if ndim == 3 else 1


_UNKNOWN = object()


def _moved(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any] | None, inp: torch.Tensor, cdim: int, out: torch.Tensor
) -> Any:
    """The channel axis after an op that moves or removes axes; _UNKNOWN for every other op."""
    nd = inp.ndim
    if name == "permute":
        dims = args[1:] if len(args) > 2 or (len(args) == 2 and isinstance(args[1], int)) else _arg(args, kwargs, 1, "dims")
        dims = _as_dims(dims, nd)
        return dims.index(cdim) if dims and cdim in dims and len(dims) == out.ndim else _UNKNOWN
    if name == "transpose":
        pair = _as_dims([_arg(args, kwargs, 1, "dim0", "axis0"), _arg(args, kwargs, 2, "dim1", "axis1")], nd)
        if pair is None:
            return _UNKNOWN
        return pair[1] if cdim == pair[0] else pair[0] if cdim == pair[1] else cdim
    if name in ("T", "t"):
        return nd - 1 - cdim
    if name in ("mT", "mH"):
        return {nd - 1: nd - 2, nd - 2: nd - 1}.get(cdim, cdim)
    if name == "movedim":
        src = _as_dims(_arg(args, kwargs, 1, "source"), nd)
        dst = _as_dims(_arg(args, kwargs, 2, "destination"), nd)
        if src is None or dst is None or len(src) != len(dst):
            return _UNKNOWN
        order = [d for d in range(nd) if d not in src]
        result: list[int | None] = [None] * nd
        for s, d in zip(src, dst):
            result[d] = s
        rest = iter(order)
        result = [r if r is not None else next(rest) for r in result]
        return result.index(cdim)
    if name in ("unbind", "select"):  # the axis removed: its index
        d = _arg(args, kwargs, 1, "dim")
        d = _as_dims(0 if d is None and name == "unbind" else d, nd)
        if not d:
            return _UNKNOWN
        return None if d[0] == cdim else cdim - (d[0] < cdim)
    if name == "getitem":  # x[0], x[:, 1], x[..., :4]: integers remove their axes, slices keep them
        index = args[1] if len(args) > 1 else None
        index = index if isinstance(index, tuple) else (index,)
        if any(not isinstance(i, (int, slice)) or isinstance(i, bool) for i in index) or len(index) > nd:
            return _UNKNOWN  # None, Ellipsis, tensors, lists: left to the reshape rule
        removed = [d for d, i in enumerate(index) if isinstance(i, int)]
        return None if cdim in removed else cdim - sum(1 for d in removed if d < cdim)
    if name == "stack":
        d = _arg(args, kwargs, 1, "dim")
        d = 0 if d is None else d % out.ndim
        return cdim + 1 if d <= cdim else cdim
    if name in _REDUCTIONS:
        dims = _as_dims(_arg(args, kwargs, 1, "dim", "axis"), nd)
        if dims is None:
            return _UNKNOWN
        if cdim in dims:
            return None
        keep = _arg(args, kwargs, 2, "keepdim")
        if name in ("std", "var") and not isinstance(keep, bool):
            keep = (kwargs or {}).get("keepdim", False)
        return cdim if keep is True else cdim - sum(1 for d in dims if d < cdim)
    return _UNKNOWN
