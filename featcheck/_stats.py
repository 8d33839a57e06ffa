"""Per-channel statistics, reduced inside the forward hook.

A hook sees the module's real output tensor, which a later in-place op (``ReLU(inplace=True)``,
``out += identity``) may overwrite. So everything is reduced right there, on the tensor's own
device, to a ``[ROWS, C]`` float64 block (see ``ROWS``); only that block outlives the hook.

Cost matters: this runs for every hooked layer of every forward. On the CPU the fast path
reduces a contiguous ``[A, C, B]`` view. With the optional C kernel (``_fast.c``: AVX2, one pass
per row for min, max, sum, sum of squares and the non-zero count) float32 maps are read once;
measured 0.8 ms on a 25 MiB map against 3.5 ms for the torch reductions below. Without it (no
compiler at install, half precision, short rows) four vectorised torch reductions run (``amin``,
``amax``, ``sum`` and ``vector_norm`` for the sum of squares; ``var_mean`` and ``x * x`` are
several times slower), and the zero count is derived where the range allows (a channel whose min
is above zero or whose max is below has none; a constant channel is all zeros or none) and
counted, as the sum of ``sign(x) ** 2``, only where it is not. The fast path falls back to the exact, slower robust path
for a tensor with non-finite values (so the other statistics stay meaningful) or with a channel
whose variance is too small next to its mean for sum-of-squares arithmetic to be trusted.
On CUDA the robust path always runs: its extra kernels are cheap there, and deciding to fall back
would need a device-to-host synchronisation per layer.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
import numpy as np
import torch

try:  # the optional C kernel (featcheck/_fast.c), built at install time when a compiler exists
    from . import _fast
except ImportError:  # pragma: no cover - exercised on machines without a compiler
    _fast = None

# Rows of the per-call block: finite count, mean, M2 (sum of squared deviations), min, max,
# zero count, non-finite count, values at the lower bound, values at the upper bound.
ROWS = ("n", "mean", "m2", "min", "max", "zeros", "nonfinite", "at_lower", "at_upper")
_N, _MEAN, _M2, _MIN, _MAX, _ZEROS, _NONFINITE, _LO, _HI = range(len(ROWS))

# Below this ratio of variance to mean square the float32 sum of squares loses too many digits.
_ILL_CONDITIONED = 1e-2


def _view3(x: torch.Tensor, cdim: int | None) -> torch.Tensor:
    """``x`` as ``[A, C, B]`` with channels in the middle, without a copy when the layout allows."""
    if cdim is None:
        return x.reshape(-1, 1, 1)
    c = x.shape[cdim]
    if x.is_contiguous():
        return x.view(-1, c, math.prod(x.shape[cdim + 1 :]))
    moved = x.movedim(cdim, -1)  # channels_last memory format and permuted views land here
    if moved.is_contiguous():
        return moved.view(-1, c, 1)
    return x.contiguous().view(-1, c, math.prod(x.shape[cdim + 1 :]))


def _rows(v: torch.Tensor, op: str) -> np.ndarray:
    """Reduce ``[A, C, B]`` over B with one vectorised torch kernel; returns ``[A, C]`` float64.

    The second stage (over A) runs in numpy: on arrays this small a numpy call costs a
    fraction of a torch call, and there are several per layer.
    """
    if v.shape[2] == 1:
        r = v[:, :, 0]
        if op == "sumsq":
            r = r.float().square()
    elif op == "min":
        r = v.amin(2)
    elif op == "max":
        r = v.amax(2)
    elif op == "sum":
        r = v.sum(2, dtype=torch.float32)
    elif op == "sumsq":
        r = torch.linalg.vector_norm(v, 2, 2, dtype=torch.float32)
    else:
        raise AssertionError(op)
    a = r.float().numpy().astype(np.float64)
    return a * a if op == "sumsq" and v.shape[2] > 1 else a


class Scratch:
    """A reusable CPU buffer for the one elementwise op of the fast path.

    A fresh tensor of an activation's size costs a page fault per 4 KiB on first touch, which
    measured here as much as the ``sign`` itself.
    """

    def __init__(self) -> None:
        self._buf = torch.empty(0)

    def like(self, v: torch.Tensor) -> torch.Tensor:
        if self._buf.numel() < v.numel() or self._buf.dtype != v.dtype:
            self._buf = torch.empty(v.numel(), dtype=v.dtype)
        return self._buf[: v.numel()].view(v.shape)


def _count_nonzero(v: torch.Tensor, scratch: Scratch | None) -> np.ndarray:
    """Per channel, how many values are not zero: the sum of ``sign(x) ** 2``, exact."""
    s = torch.sign(v) if scratch is None else torch.sign(v, out=scratch.like(v))
    if v.shape[2] > 1:
        r = torch.linalg.vector_norm(s, 2, 2, dtype=torch.float32).numpy().astype(np.float64)
        return np.round(r * r).sum(0)
    return np.abs(s[:, :, 0].float().numpy()).sum(0, dtype=np.float64)


def _bound_counts(
    v: torch.Tensor, bounds: tuple[float, float], tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel, how many values lie within ``tol * (high - low)`` of each bound."""
    lo, hi = bounds
    eps = tol * (hi - lo)
    return (
        (v <= lo + eps).sum((0, 2), dtype=torch.float64),
        (v >= hi - eps).sum((0, 2), dtype=torch.float64),
    )


def reduce_robust(
    x: torch.Tensor, cdim: int | None, bounds: tuple[float, float] | None = None, tol: float = 0.0
) -> torch.Tensor:
    """Exact statistics with non-finite values counted and left out of the others."""
    v = _view3(x, cdim).float()
    fin = torch.isfinite(v)
    n = fin.sum((0, 2), dtype=torch.float64)
    out = torch.zeros(len(ROWS), v.shape[1], dtype=torch.float64, device=v.device)
    out[_N] = n
    out[_NONFINITE] = (v.shape[0] * v.shape[2]) - n
    inf = torch.tensor(float("inf"), device=v.device)
    out[_MIN] = torch.where(fin, v, inf).amin((0, 2)).double()
    out[_MAX] = torch.where(fin, v, -inf).amax((0, 2)).double()
    finite = torch.where(fin, v, 0.0)
    mean = finite.sum((0, 2), dtype=torch.float64) / n.clamp_min(1)
    out[_MEAN] = mean
    dev = torch.where(fin, v - mean.view(1, -1, 1).float(), 0.0)
    out[_M2] = dev.square().sum((0, 2), dtype=torch.float64)
    out[_ZEROS] = (v == 0).sum((0, 2), dtype=torch.float64)
    if bounds is not None:
        out[_LO], out[_HI] = _bound_counts(v, bounds, tol)  # NaN compares false: not counted
    return out


# Rows shorter than this go to torch (channels-last layouts have rows of one value).
_KERNEL_MIN_ROW = 16
# Maps larger than this are split across two threads (the kernel releases the GIL). Measured on
# a 25 MiB map: 0.85 -> 0.50 ms when it is still in cache, 0.94 -> 1.20 ms when it is not; a
# compromise, since a hook cannot know which.
_KERNEL_SPLIT = 1 << 22
_pool: ThreadPoolExecutor | None = None


def _kernel(v: torch.Tensor) -> np.ndarray | None:
    """``[5, C]`` per-channel min, max, sum, sum of squares and non-zero count from one pass of
    the C kernel, or ``None`` where it does not apply (no kernel, not float32, short rows)."""
    global _pool
    if _fast is None or v.dtype != torch.float32 or v.shape[2] < _KERNEL_MIN_ROW or not v.is_contiguous():
        return None
    a, c, b = v.shape
    data = v.numpy()
    out = np.empty((5, c))
    if v.numel() >= _KERNEL_SPLIT and c >= 2 and torch.get_num_threads() > 1:
        if _pool is None:
            _pool = ThreadPoolExecutor(1, thread_name_prefix="featcheck")
        half = c // 2
        other = _pool.submit(_fast.chanstats, data, a, c, b, out, half, c)
        _fast.chanstats(data, a, c, b, out, 0, half)
        other.result()
    else:
        _fast.chanstats(data, a, c, b, out, 0, c)
    return out


def reduce_fast(
    x: torch.Tensor,
    cdim: int | None,
    bounds: tuple[float, float] | None = None,
    tol: float = 0.0,
    scratch: Scratch | None = None,
) -> np.ndarray | torch.Tensor:
    """The CPU fast path; falls back to :func:`reduce_robust` where it cannot be exact."""
    v = _view3(x, cdim)
    fused = _kernel(v)
    if fused is not None:
        mn, mx, s, sq, nonzero = fused
    else:
        nonzero = None
        s = _rows(v, "sum").sum(0)  # first, so that non-finite maps skip the other passes
    if not np.isfinite(s).all():
        return reduce_robust(x, cdim, bounds, tol)
    if fused is None:
        mn = _rows(v, "min").min(0)
        mx = _rows(v, "max").max(0)
        sq = _rows(v, "sumsq").sum(0)
    count = float(v.shape[0] * v.shape[2])
    mean = s / count
    meansq = sq / count
    var = meansq - mean * mean
    constant = mn == mx
    if ((var < _ILL_CONDITIONED * meansq) & ~constant).any():
        return reduce_robust(x, cdim, bounds, tol)
    out = np.zeros((len(ROWS), v.shape[1]))
    out[_N] = count
    out[_MEAN] = mean
    out[_M2] = np.where(constant, 0.0, np.maximum(var, 0.0) * count)
    out[_MIN] = mn
    out[_MAX] = mx
    if nonzero is not None:
        out[_ZEROS] = count - nonzero
    else:  # count only the channels whose range cannot rule zeros in or out
        zeros = np.where(constant & (mn == 0), count, 0.0)
        undecided = ~constant & (mn <= 0) & (mx >= 0)
        if undecided.any():
            zeros = np.where(undecided, count - _count_nonzero(v, scratch), zeros)
        out[_ZEROS] = zeros
    if bounds is not None:
        lo, hi = _bound_counts(v, bounds, tol)
        out[_LO], out[_HI] = lo.numpy(), hi.numpy()
    return out


def reduce(
    x: torch.Tensor,
    cdim: int | None,
    bounds: tuple[float, float] | None = None,
    tol: float = 0.0,
    scratch: Scratch | None = None,
) -> np.ndarray | torch.Tensor:
    """A ``[len(ROWS), C]`` float64 block: numpy on the CPU, a device tensor elsewhere."""
    if x.device.type == "cpu":
        return reduce_fast(x, cdim, bounds, tol, scratch)
    return reduce_robust(x, cdim, bounds, tol)


class Accumulator:
    """Merges per-call blocks on the host (Chan et al.'s parallel variance update, float64)."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.block: np.ndarray | None = None

    def add(self, block: np.ndarray) -> None:
        """Merge one call's block; the first one is kept as it is (blocks are fresh arrays)."""
        if self.block is None:
            self.block = block if block.dtype == np.float64 else block.astype(np.float64)
            return
        a, b = self.block, block
        n = a[_N] + b[_N]
        delta = b[_MEAN] - a[_MEAN]
        w = np.divide(b[_N], n, out=np.zeros_like(n), where=n > 0)
        a[_M2] += b[_M2] + delta * delta * a[_N] * w
        a[_MEAN] += delta * w
        a[_N] = n
        np.minimum(a[_MIN], b[_MIN], out=a[_MIN])
        np.maximum(a[_MAX], b[_MAX], out=a[_MAX])
        a[_ZEROS:] += b[_ZEROS:]

    def stats(self) -> dict[str, np.ndarray]:
        a = self.block if self.block is not None else np.zeros((len(ROWS), self.channels))
        n, total = a[_N], a[_N] + a[_NONFINITE]
        seen = n > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {
                "min": np.where(seen, a[_MIN], np.nan),
                "max": np.where(seen, a[_MAX], np.nan),
                "mean": np.where(seen, a[_MEAN], np.nan),
                "std": np.where(seen, np.sqrt(np.maximum(a[_M2], 0.0) / n), np.nan),
                "zero_fraction": np.where(total > 0, a[_ZEROS] / total, np.nan),
                "nonfinite": a[_NONFINITE].astype(np.int64),
                "count": total.astype(np.int64),
                "lower_fraction": np.where(total > 0, a[_LO] / total, np.nan),
                "upper_fraction": np.where(total > 0, a[_HI] / total, np.nan),
            }
        for v in out.values():
            v.setflags(write=False)
        return out
