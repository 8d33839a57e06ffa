"""The rendering sample: what a record keeps of its output's values for pictures.

A record keeps the first sample of its first call (``LayerCapture.sample``), on the CPU, float32,
channels first (``[C, *spatial]``), subsampled with a regular step per spatial dimension
(``LayerCapture.sample_step``) to at most :data:`SAMPLE_MAX_POSITIONS` positions per channel
(32 x 32 for images) and about :data:`SAMPLE_MAX_VALUES` values per layer, but never below 8 x 8.
1-D maps (signals, token sequences, which must keep their square grid) keep up to 4096 positions.

Copying it is part of every hook's cost, so the usual case avoids torch: a contiguous float32 CPU
map with channels on dim 1 has its sample copied in C at its data address, whole
(``_fast.bytes_at``) or at the subsample's offsets within each channel's values
(``_fast.rows_at``), and a large map has it copied by the statistics kernel's own pass over the
data (:class:`Rows`, ``_fast.chanstats``): cut out with torch afterwards, a resnet50 capture's
samples (batch 8, 224 x 224) read their 40 MiB of strided values from memory again, 20-30 ms per
capture. The copies are kept as ``(buffer, shape)`` (a bytearray or a numpy array) and become tensors when the record's
``sample`` is first read. Other maps (another layout, dtype or device, channels elsewhere) are cut
with torch (:func:`cut`), with the same result.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

from . import _stats

__all__ = ["SAMPLE_MAX_POSITIONS", "SAMPLE_MAX_VALUES", "Rows", "cut", "first", "plan", "rows"]

SAMPLE_MAX_POSITIONS = 1024
SAMPLE_MAX_VALUES = 1 << 16
_SAMPLE_MIN_POSITIONS = 64
_SAMPLE_MAX_1D = 4096

_BYTES = getattr(_stats._fast, "bytes_at", None)
_ROWS = getattr(_stats._fast, "rows_at", None)


def _cap(ndim: int, channels: int) -> int:
    """Positions per channel a sample of rank ``ndim`` (channels first) keeps at most."""
    if ndim == 2:  # 1-D maps keep their square grid
        return _SAMPLE_MAX_1D
    return max(_SAMPLE_MIN_POSITIONS, min(SAMPLE_MAX_POSITIONS, SAMPLE_MAX_VALUES // max(1, channels)))


def _steps(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The step per spatial dimension of a channels-first sample of ``shape`` (``[C, *spatial]``)."""
    ndim = len(shape)
    if ndim < 2:
        return ()
    cap = _cap(ndim, shape[0])
    spatial = shape[1:]
    if not shape[0] or math.prod(spatial) <= cap:  # (no channels: nothing to subsample)
        return (1,) * len(spatial)
    side = max(1, int(cap ** (1 / len(spatial))))
    return tuple(max(1, math.ceil(n / side)) for n in spatial)


def cut(t: torch.Tensor, cdim: int | None) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The sample of any output with torch: ``(values, steps)``."""
    if t.ndim == 0:
        return t.detach().reshape(1).to("cpu", torch.float32, copy=True), ()
    s = t.detach()[0]
    if cdim is None:
        if s.ndim == 0:
            return s.reshape(1).to("cpu", torch.float32, copy=True), ()
        s = s.unsqueeze(0)  # an operation's output without channels (a mean over them): one
    elif cdim != 1:
        s = s.movedim(cdim - 1, 0)
    steps = _steps(tuple(s.shape))
    if any(st > 1 for st in steps):
        s = s[(slice(None), *(slice(None, None, st) for st in steps))]
    if s.is_cpu and s.dtype is torch.float32:
        return s.clone(), steps
    return s.to("cpu", torch.float32, copy=True), steps


@functools.lru_cache(maxsize=256)
def _offsets(spatial: tuple[int, ...], steps: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Where a subsample with ``steps`` lies within one channel's values (row-major ``spatial``),
    as int64 offsets, and its spatial shape."""
    idx = np.zeros(1, dtype=np.int64)
    for n, st in zip(spatial, steps):
        idx = (idx[:, None] * n + np.arange(0, n, st, dtype=np.int64)[None, :]).reshape(-1)
    idx.setflags(write=False)
    return idx, tuple(-(-n // st) for n, st in zip(spatial, steps))


@functools.lru_cache(maxsize=256)
def plan(shape: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
    """For a map of ``shape`` with channels on dim 1 and a spatial extent: the sample's offsets
    within each channel's values of the first sample, its shape and its steps."""
    steps = _steps(tuple(shape[1:]))
    offsets, spatial = _offsets(tuple(shape[2:]), steps)
    return offsets, (shape[1], *spatial), steps


def first(t: torch.Tensor, address: int, shape: torch.Size, cdim: int | None, numel: int) -> tuple[Any, tuple[int, ...]]:
    """:func:`cut` of a contiguous float32 CPU map of ``numel`` values at ``address``: with
    channels on dim 1, copied in C, whole (one copy of its leading bytes, about 0.5 us instead of
    8) or at the subsample's offsets, and kept as ``(buffer, shape)``."""
    ndim = len(shape)
    if _BYTES is None or _ROWS is None or cdim != 1 or ndim < 2 or not numel:
        return cut(t, cdim)
    channels, per = shape[1], numel // (shape[0] * shape[1])
    if per <= _cap(ndim - 1, channels):
        return (_BYTES(address, channels * per * 4), shape[1:]), (1,) * (ndim - 2)
    steps = _steps(tuple(shape[1:]))
    offsets, spatial = _offsets(tuple(shape[2:]), steps)
    return (_ROWS(address, channels, per, offsets), (channels, *spatial)), steps


class Rows:
    """A large map's sample, copied by the statistics kernel's pass (``_stats.reduce(...,
    sample=)``), which sets ``filled``; :meth:`take` gives it, copying it itself where the pass did
    not run (a map the kernel left to torch)."""

    __slots__ = ("address", "channels", "per", "offsets", "shape", "steps", "buffer", "filled")

    def __init__(self, address: int, channels: int, per: int, offsets: np.ndarray, shape: tuple[int, ...], steps: tuple[int, ...]) -> None:
        self.address = address
        self.channels = channels
        self.per = per  # values per channel in each sample
        self.offsets = offsets
        self.shape = shape
        self.steps = steps
        self.buffer: Any = np.empty(channels * len(offsets), dtype=np.float32)  # not zeroed, as a bytearray would be: the pass writes every value
        self.filled = False

    def take(self) -> tuple[Any, tuple[int, ...]]:
        if not self.filled:
            self.buffer = _ROWS(self.address, self.channels, self.per, self.offsets)  # type: ignore[misc]
            self.filled = True
        return (self.buffer, self.shape), self.steps


def rows(x: torch.Tensor, cdim: int | None) -> Rows | None:
    """The :class:`Rows` of ``x`` when its sample can be copied by address (a contiguous float32
    CPU map with channels on dim 1 and a spatial extent), else ``None`` (then :func:`cut`)."""
    if (
        _ROWS is None or cdim != 1 or x.ndim < 3 or x.dtype is not torch.float32 or not x.is_cpu
        or x.layout is not torch.strided or x.is_nested or not x.is_contiguous() or not x.numel()
    ):
        return None
    shape = x.shape
    offsets, sample_shape, steps = plan(shape)
    return Rows(x.data_ptr(), shape[1], x.numel() // (shape[0] * shape[1]), offsets, sample_shape, steps)
