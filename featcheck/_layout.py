"""Which axis of a layer's output holds its channels.

The rule, in order:

1. ``channel_dim=`` given by the user for that layer wins.
2. Modules that work channels-first (convolutions, batch/instance/group norm,
   pooling, padding, upsampling, pixel shuffle, channel dropout, torchvision's
   ``LayerNorm2d`` and ``FrozenBatchNorm2d``): dim 1.
3. Modules that work on the last dim (``Linear``, ``Bilinear``, ``LayerNorm``,
   ``RMSNorm``, ``Embedding``, ``MultiheadAttention``, transformer layers): the last dim.
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

import weakref
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
_CHANNELS_LAST: tuple[type, ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.LayerNorm,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.Transformer,
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


def channel_dim(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor, tags: Tags) -> int | None:
    """The channel axis of ``out``, produced by ``module`` from ``args`` (rules 2 to 6)."""
    ndim = out.ndim
    if ndim < 2:
        return None
    if type(module).__name__ in _CHANNELS_FIRST_NAMES:
        return 1
    if isinstance(module, nn.LayerNorm):
        ns = module.normalized_shape
        if len(ns) == 1 and out.shape[-1] != ns[0] and out.shape[1] == ns[0]:
            return 1  # a LayerNorm subclass that permutes internally
        return ndim - 1
    if isinstance(module, _CHANNELS_FIRST):
        return 1
    if isinstance(module, _CHANNELS_LAST):
        return ndim - 1
    if isinstance(module, nn.Flatten):
        return 1
    inp = first_tensor(args)
    if inp is not None:
        known, cdim = tags.get(inp)
        if known and cdim is not None:
            dims = getattr(module, "dims", None)
            if type(module).__name__ == "Permute" and isinstance(dims, (list, tuple)):
                if len(dims) == ndim and cdim in dims:
                    return list(dims).index(cdim)
            elif inp.ndim == ndim:
                return cdim
    return ndim - 1 if ndim == 3 else 1
