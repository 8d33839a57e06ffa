"""Per-channel statistics, reduced inside the forward hook.

A hook sees the module's real output tensor, which a later in-place op (``ReLU(inplace=True)``,
``out += identity``) may overwrite. So everything is reduced right there, on the tensor's own
device, to a ``[ROWS, C]`` float64 block (see ``ROWS``); only that block outlives the hook.

Cost matters: this runs for every hooked layer of every forward. On the CPU the fast path
reduces a contiguous ``[A, C, B]`` float32 view. With the optional C kernel (``_fast.c``: AVX2,
one pass per row for min, max, sum, sum of squares and the non-zero count) float32 maps are read
once; measured 0.8 ms on a 25 MiB map against 3.5 ms for the torch reductions below. Without it
(no compiler at install, short rows) four vectorised torch reductions run (``amin``, ``amax``,
``sum`` and ``vector_norm`` for the sum of squares; ``var_mean`` and ``x * x`` are several times
slower), and the zero count is derived where the range allows (a channel whose min is above zero
or whose max is below has none; a constant channel is all zeros or none) and counted, as the sum
of ``sign(x) ** 2``, only where it is not. Half precision, small integers and bool are widened to
float32 (exact) for it.

The exact path (:func:`reduce_robust`) gives correct statistics for finite values of any
magnitude a real dtype holds: it works in float32 where float32 holds every value of the dtype
(float32 and narrower floats, integers of up to 16 bits, bool) and in float64 otherwise (float64,
int32, int64: 2^40 + k keeps its k), scales each channel by a power of two that brings its
largest finite |value| near 1 (exact: only exponents change), and sums in float64. So neither
sums nor squares overflow (float64 data of 1e300) or underflow (values of 1e-25), and non-finite
values are counted and left out of the other statistics. On CUDA it always runs: its extra
kernels are cheap there, and deciding to fall back would need a device-to-host synchronisation
per layer. float64 and wide integer maps take it on the CPU too.

The fast path recomputes exactly the channels its arithmetic cannot get right (the whole map
when they are most of it), in the same C call (``_fast.chanfast``), or in numpy and the exact
kernel after ``_fast.chanstats`` where bounds are counted (with torch):
- a sum or sum of squares that is not finite: non-finite values, or float32 sums that overflowed
  (the kernel's cannot below |values| of 2^58, see ``_fast.c``). Overflow cannot hide: a float32
  sum that overflows becomes +-inf or NaN and stays so in the float64 totals;
- a mean square below ``_TINY_MEANSQ`` (2^-100), unless the channel is constant: squares below
  float32's normal range (2^-126) lose digits silently (values of 1e-25 square to 0). Above it,
  underflow moves each of the N squares by at most 2^-150, so the sum of squares (at least
  N * 2^-100) by a relative 2^-50 at most. (Not higher: random-weight efficientnet_b0 has whole
  layers of values around 1e-13, mean square 1e-26, which the fast path gets right.)
- a variance too small next to the mean square for sum-of-squares arithmetic to be trusted.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

try:  # the optional C kernel (featcheck/_fast.c), built at install time when a compiler exists
    from . import _fast
except ImportError:  # pragma: no cover - exercised on machines without a compiler
    _fast = None
if _fast is not None and not all(hasattr(_fast, f) for f in ("chanexact_ptr", "chanfast", "rows_at")):
    _fast = None  # a stale build from an older _fast.c (an editable install not rebuilt): not used
_chanmerge = getattr(_fast, "chanmerge", None)

# Rows of the per-call block: finite count, mean, standard deviation (population, of the finite
# values; kept rather than the sum of squared deviations, which overflows float64 for data of
# 1e300), min, max, zero count, non-finite count, values at the lower bound, at the upper bound.
ROWS = ("n", "mean", "sd", "min", "max", "zeros", "nonfinite", "at_lower", "at_upper")
_N, _MEAN, _SD, _MIN, _MAX, _ZEROS, _NONFINITE, _LO, _HI = range(len(ROWS))

# Below this ratio of variance to mean square the float32 sum of squares loses too many digits.
_ILL_CONDITIONED = 1e-2
# Channels whose mean square is below this go to the exact path (see the module docstring).
_TINY_MEANSQ = 2.0**-100


def _check_reducible(x: torch.Tensor) -> None:
    """Raise a TypeError naming what makes ``x`` impossible to reduce per channel."""
    if x.is_nested:
        problem = "a nested tensor"
    elif x.is_quantized:
        problem = f"a quantized tensor ({x.dtype})"
    elif x.layout != torch.strided:
        problem = f"a tensor with layout {x.layout}"
    elif x.is_complex():
        problem = f"a complex tensor ({x.dtype})"
    elif x.device.type == "meta":
        problem = "a tensor on the meta device, which holds no values"
    else:
        return
    raise TypeError(
        f"featcheck cannot compute per-channel statistics of {problem}: expected a dense "
        "(strided) tensor of real or integer values. Record a real view of it instead (for "
        "example .real, .abs(), .to_dense() or .dequantize() in a module of your own), or leave "
        "the layer out with layers=."
    )


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 where it holds every value of ``dtype`` exactly, float64 otherwise."""
    if dtype.is_floating_point:
        return torch.float64 if dtype.itemsize > 4 else torch.float32
    return torch.float32 if dtype.itemsize <= 2 else torch.float64


def _view3(x: torch.Tensor, cdim: int | None) -> torch.Tensor:
    """``x`` as ``[A, C, B]`` with channels in the middle, without a copy when the layout allows.

    The sizes are spelled out rather than inferred, so that empty tensors keep their shape.
    """
    if cdim is None:
        return x.reshape(x.numel(), 1, 1)
    a, c, b = math.prod(x.shape[:cdim]), x.shape[cdim], math.prod(x.shape[cdim + 1 :])
    if x.is_contiguous():
        return x.view(a, c, b)
    moved = x.movedim(cdim, -1)  # channels_last memory format and permuted views land here
    if moved.is_contiguous():
        return moved.view(a * b, c, 1)
    return x.contiguous().view(a, c, b)


def _empty_block(channels: int, device: torch.device) -> np.ndarray | torch.Tensor:
    """The block of a map with no values (batch 0, zero spatial size): every count 0."""
    out = torch.zeros(len(ROWS), channels, dtype=torch.float64, device=device)
    out[_MIN] = math.inf
    out[_MAX] = -math.inf
    return out.numpy() if device.type == "cpu" else out


def _rows(v: torch.Tensor, op: str) -> np.ndarray:
    """Reduce float32 ``[A, C, B]`` over B with one vectorised torch kernel; returns ``[A, C]``
    float64.

    The second stage (over A) runs in numpy: on arrays this small a numpy call costs a
    fraction of a torch call, and there are several per layer.
    """
    if v.shape[2] == 1:
        r = v[:, :, 0]
        if op == "sumsq":
            r = r.square()
    elif op == "min":
        r = v.amin(2)
    elif op == "max":
        r = v.amax(2)
    elif op == "sum":
        r = v.sum(2)
    elif op == "sumsq":
        r = torch.linalg.vector_norm(v, 2, 2)
    else:
        raise AssertionError(op)
    a = r.numpy().astype(np.float64)
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
            # Allocated outside inference mode even when the forward runs in it: an inference
            # tensor could not be written by a later forward under no_grad or with autograd.
            with torch.inference_mode(False):
                self._buf = torch.empty(v.numel(), dtype=v.dtype)
        return self._buf[: v.numel()].view(v.shape)


def _count_nonzero(v: torch.Tensor, scratch: Scratch | None) -> np.ndarray:
    """Per channel, how many values are not zero: the sum of ``sign(x) ** 2``, exact."""
    s = torch.sign(v) if scratch is None else torch.sign(v, out=scratch.like(v))
    if v.shape[2] > 1:
        r = torch.linalg.vector_norm(s, 2, 2).numpy().astype(np.float64)
        return np.round(r * r).sum(0)
    return np.abs(s[:, :, 0].numpy()).sum(0, dtype=np.float64)


def _bound_counts(
    v: torch.Tensor, bounds: tuple[float, float], tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel, how many values lie within ``tol * (high - low)`` of each bound."""
    lo, hi = bounds
    eps = tol * (hi - lo)
    return (v <= lo + eps).sum((0, 2)).double(), (v >= hi - eps).sum((0, 2)).double()


def _exact(v: torch.Tensor, bounds: tuple[float, float] | None, tol: float) -> torch.Tensor:
    """The block of a non-empty ``[A, C, B]`` map of any real dtype, on its device (see the
    module docstring for why each step is there)."""
    w = _work_dtype(v.dtype)
    v = v.to(w)
    a, c, b = v.shape
    dims = (0, 2)
    fin = torch.isfinite(v)
    n = fin.sum(dims).double()
    mn = v.where(fin, math.inf).amin(dims).double()
    mx = v.where(fin, -math.inf).amax(dims).double()
    # 2^-e brings the largest finite |value| into [0.5, 1); clamped so that 2^e and 2^-e are
    # normal numbers of the working dtype (frexp gives e = 0 for a channel with no finite value).
    limit = 126 if w == torch.float32 else 1022
    e = torch.frexp(torch.maximum(mn.abs(), mx.abs())).exponent.clamp(-limit, limit).double()
    y = (v * torch.exp2(-e).to(w).view(1, -1, 1)).where(fin, 0.0)
    n1 = n.clamp_min(1)
    mean = y.sum(dims, dtype=torch.float64) / n1
    # Deviations from the mean rounded to the working dtype; the sum of the deviations corrects
    # the sum of their squares for that rounding.
    y -= mean.to(w).view(1, -1, 1)
    y.mul_(fin)
    shift = y.sum(dims, dtype=torch.float64)
    sq = y.square_().sum(dims, dtype=torch.float64)
    scale = torch.exp2(e)
    sd = ((sq - shift * shift / n1) / n1).clamp_min(0.0).sqrt() * scale
    mean = torch.clamp(mean * scale, mn, mx).where(n > 0, 0.0)
    zeros = (v == 0).sum(dims).double()
    if bounds is None:
        lo = hi = torch.zeros_like(n)
    else:
        lo, hi = _bound_counts(v, bounds, tol)  # NaN compares false: not counted
    return torch.stack([n, mean, sd, mn, mx, zeros, a * b - n, lo, hi])


def reduce_robust(
    x: torch.Tensor, cdim: int | None, bounds: tuple[float, float] | None = None, tol: float = 0.0
) -> torch.Tensor:
    """Exact statistics of a non-empty map, non-finite values counted and left out of the others;
    a float64 tensor on ``x``'s device."""
    return _exact(_view3(x, cdim), bounds, tol)


# Rows shorter than this go to torch (channels-last layouts have rows of one value).
_KERNEL_MIN_ROW = 16
# Maps larger than this are split across two threads (the kernel releases the GIL). Measured on
# a 25 MiB map: 0.85 -> 0.50 ms when it is still in cache, 0.94 -> 1.20 ms when it is not; a
# compromise, since a hook cannot know which.
_KERNEL_SPLIT = 1 << 22
_pool: ThreadPoolExecutor | None = None


def _kernel(v: torch.Tensor, sample: Any = None, whole: bool = False) -> np.ndarray | None:
    """``[5, C]`` per-channel min, max, sum, sum of squares and non-zero count from one pass of
    the C kernel (``_fast.chanstats``), or ``None`` where it does not apply (no kernel, short
    rows, not contiguous). ``whole``: the finished block instead (``[len(ROWS), C]`` without
    bound counts, ``_fast.chanfast``: the same pass, the channels it cannot get right recomputed
    exactly). ``sample``: a ``featcheck._samples.Rows`` of ``v``'s map, which the pass fills too."""
    if _fast is None or v.shape[2] < _KERNEL_MIN_ROW or not v.is_contiguous():
        return None
    a, c, b = v.shape
    extra = () if sample is None or sample.per != b or sample.channels != c else (sample.buffer, sample.offsets)
    out = (fast_block if whole else _five_rows)(v.numpy(), a, c, b, extra)
    if extra:
        sample.filled = True
    return out


def fast_block(data: np.ndarray, a: int, c: int, b: int, extra: tuple[np.ndarray, np.ndarray] | tuple[()] = ()) -> np.ndarray:
    """The block of a C-contiguous float32 ``[A, C, B]`` array (rows of at least _KERNEL_MIN_ROW
    values) without bound counts, from ``_fast.chanfast``; ``extra``: a rendering sample's buffer
    and offsets, which its pass fills."""
    out = np.empty((len(ROWS), c))
    # split at a multiple of 8 channels: chanfast decides which to recompute per group of 8 at
    # fixed positions, so that no channel's numbers depend on the number of threads
    _pass(_fast.chanfast, data, a, c, b, out, extra, c // 2 // 8 * 8)
    return out


def _five_rows(data: np.ndarray, a: int, c: int, b: int, extra: tuple[np.ndarray, np.ndarray] | tuple[()] = ()) -> np.ndarray:
    """``_fast.chanstats``' ``[5, C]`` rows (min, max, sum, sum of squares, non-zero count) of the
    same array, for the fast path that counts bounds."""
    out = np.empty((5, c))
    _pass(_fast.chanstats, data, a, c, b, out, extra, c // 2)
    return out


def _pass(kernel: Any, data: np.ndarray, a: int, c: int, b: int, out: np.ndarray, extra: tuple[Any, ...], half: int) -> None:
    """One pass of ``kernel`` over all channels, split across two threads at ``half`` for large
    maps where torch allows more than one thread (the kernels release the GIL)."""
    global _pool
    if a * c * b >= _KERNEL_SPLIT and half and torch.get_num_threads() > 1:
        if _pool is None:
            _pool = ThreadPoolExecutor(1, thread_name_prefix="featcheck")
        other = _pool.submit(kernel, data, a, c, b, out, half, c, *extra)
        kernel(data, a, c, b, out, 0, half, *extra)
        other.result()
    else:
        kernel(data, a, c, b, out, 0, c, *extra)


# Which kernel a contiguous float32 map takes. Small maps take the exact kernel
# (``_fast.chanexact``: double sums, one pass for most channels) outright: below _EXACT_ALL values
# the fast path's extra calls cost more than the kernel's double arithmetic (mobilenet_v3_small at
# 64 x 64 spent 300 us per record in the fast path's numpy and torch calls, before they moved
# into C). Up to _SMALL values it still wins where rows are short (a channel's values within one
# sample: 7 x 7 maps), where the float32 pass's per-row cost dominates, and where bounds are
# counted (which the fast path does with torch). Otherwise the fast path's one float32 pass
# (``_fast.chanfast``) takes half the exact kernel's time or less, measured right after the map
# was written: [8, 128, 28, 28] 122 against 277 us, [8, 512, 14, 14] 225 against 485 us (whose
# rows the exact kernel reads in eight streams a multiple of 4 KiB apart), [2, 64, 32, 32] 43
# against 81 us; [8, 2048, 7, 7] 328 against 237 us.
_EXACT_ALL = 1 << 16
_SMALL = 1 << 20
_LONG_ROW = 128


def exact_first(numel: int, shape: tuple[int, ...], cdim: int | None, bounded: bool) -> bool:
    """Whether a contiguous float32 map of ``numel`` > 0 values takes the exact kernel outright
    (else the fast path; see _EXACT_ALL). ``cdim``: its channel dim (>= 0) or None."""
    if numel > _SMALL:
        return False
    if numel <= _EXACT_ALL:
        return True
    return bounded or cdim is None or numel // math.prod(shape[: cdim + 1]) < _LONG_ROW


def _exact_kernel(
    v: torch.Tensor,
    bounds: tuple[float, float] | None,
    tol: float,
    out: np.ndarray | None = None,
    idx: np.ndarray | None = None,
) -> np.ndarray:
    """The exact block of a contiguous float32 ``[A, C, B]`` map from the C kernel (two passes in
    double, see ``_fast.c``), for every channel or for the channels ``idx`` (written into
    ``out``)."""
    a, c, b = v.shape
    if out is None:
        out = np.empty((len(ROWS), c))
    _fast.chanexact(v.numpy(), a, c, b, out, *_thresholds(bounds, tol), idx)
    return out


def _thresholds(bounds: tuple[float, float] | None, tol: float) -> tuple[float, float, bool]:
    """The exact kernel's bound arguments: values at or below ``lo``, at or above ``hi``, and
    whether to count them at all."""
    if bounds is None:
        return 0.0, 0.0, False
    eps = tol * (bounds[1] - bounds[0])
    return bounds[0] + eps, bounds[1] - eps, True


def reduce_fast(
    x: torch.Tensor,
    cdim: int | None,
    bounds: tuple[float, float] | None = None,
    tol: float = 0.0,
    scratch: Scratch | None = None,
    sample: Any = None,
) -> np.ndarray:
    """The CPU fast path for a non-empty map; channels it cannot get right go to the exact path.
    ``sample``: see :func:`reduce`."""
    v = _view3(x, cdim)
    if _work_dtype(v.dtype) != torch.float32:
        return _exact(v, bounds, tol).numpy()
    v = v.float()
    exact_kernel = _fast is not None and v.is_contiguous()
    if exact_kernel and exact_first(v.numel(), v.shape, 1, bounds is not None):
        return _exact_kernel(v, bounds, tol)
    if bounds is None:  # the whole block in C (bound counts: below, with torch)
        block = _kernel(v, sample, whole=True)
        if block is not None:
            return block
    fused = _kernel(v, sample)
    if fused is not None:
        mn, mx, s, sq, nonzero = fused
    else:
        nonzero = None
        s = _rows(v, "sum").sum(0)  # first, so that maps non-finite everywhere skip the rest
        if not np.isfinite(s).any():
            return _exact(v, bounds, tol).numpy()
        mn = _rows(v, "min").min(0)
        mx = _rows(v, "max").max(0)
        sq = _rows(v, "sumsq").sum(0)
    count = float(v.shape[0] * v.shape[2])
    # A non-finite sum implies a non-finite sum of squares (a non-finite value, or |values| big
    # enough to overflow float32 sums, whose squares overflow too): checking sq covers both.
    with np.errstate(invalid="ignore", over="ignore"):
        mean = s / count
        meansq = sq / count
        var = meansq - mean * mean
        constant = mn == mx
        redo = ~np.isfinite(sq) | (
            ~constant & ((var < _ILL_CONDITIONED * meansq) | (meansq < _TINY_MEANSQ))
        )
    n_redo = np.count_nonzero(redo)
    if n_redo * 2 > redo.size:  # gathering most channels would cost more than it saves
        return _exact_kernel(v, bounds, tol) if exact_kernel else _exact(v, bounds, tol).numpy()
    out = np.zeros((len(ROWS), v.shape[1]))
    out[_N] = count
    out[_MEAN] = mean
    out[_SD] = np.where(constant, 0.0, np.sqrt(np.maximum(var, 0.0)))
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
    if n_redo:
        idx = np.flatnonzero(redo)
        if exact_kernel:
            _exact_kernel(v, bounds, tol, out, idx.astype(np.int64))
        else:
            out[:, idx] = _exact(v.index_select(1, torch.from_numpy(idx)), bounds, tol).numpy()
    return out


def reduce(
    x: torch.Tensor,
    cdim: int | None,
    bounds: tuple[float, float] | None = None,
    tol: float = 0.0,
    scratch: Scratch | None = None,
    sample: Any = None,
) -> np.ndarray | torch.Tensor:
    """A ``[len(ROWS), C]`` float64 block: numpy on the CPU, a device tensor elsewhere.

    Args:
        x: a module's output, any real or integer dtype and any shape; an empty one (batch 0,
            zero channels or zero spatial size) gives a block whose counts are all 0.
        cdim: the channel dimension (negative counts from the end), or ``None`` for one channel
            over the whole tensor.
        bounds: ``(low, high)`` output bounds whose neighbourhoods are counted, or ``None``.
        tol: the neighbourhood of a bound, as a fraction of ``high - low``.
        scratch: a buffer reused across calls on the CPU.
        sample: a ``featcheck._samples.Rows`` of ``x``, which the C kernel's pass fills (and marks
            ``filled``) where it runs; left as it is otherwise.

    Raises:
        TypeError: for tensors without per-channel real values (complex, sparse and other
            non-strided layouts, quantized, nested, meta).
    """
    if cdim is not None:
        cdim %= max(x.ndim, 1)
    if (  # the usual small map: straight to the exact kernel (a hook's cost is mostly Python)
        x.dtype is torch.float32 and x.is_cpu and x.layout is torch.strided and not x.is_nested
        and 0 < (numel := x.numel()) and exact_first(numel, x.shape, cdim, bounds is not None)
        and _fast is not None and x.is_contiguous()
    ):
        out = np.empty((len(ROWS), 1 if cdim is None else x.shape[cdim]))
        _fast.chanexact_ptr(x.data_ptr(), x.shape, -1 if cdim is None else cdim, out, *_thresholds(bounds, tol))
        return out
    _check_reducible(x)
    channels = 1 if cdim is None else x.shape[cdim]
    if x.numel() == 0:
        return _empty_block(channels, x.device)
    if x.device.type == "cpu":
        return reduce_fast(x, cdim, bounds, tol, scratch, sample)
    return reduce_robust(x, cdim, bounds, tol)


class Accumulator:
    """Merges per-call blocks on the host (Chan et al.'s parallel update, float64).

    With the C kernel, each block is merged into the total as it arrives (``_fast.chanmerge``, one
    call), and the merged block's array is handed back by :meth:`buffer` for the next call to
    write into: a block kept per forward pass is fresh memory, and its page faults (2-4 us per
    4 KiB page here) cost more than reducing a small map. Without it, blocks are kept as they
    come and merged in batches, all at once: merging each call's block as it arrives with numpy
    cost about 50 us per record and forward.
    """

    __slots__ = ("channels", "_blocks", "_spare")
    _BATCH = 64  # blocks held before they are merged (9 x C float64 each), without the C merge

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self._blocks: list[np.ndarray] = []
        self._spare: np.ndarray | None = None

    def buffer(self) -> np.ndarray:
        """An array for the next call's block: the last block merged (its values are in the
        total already), or a new one."""
        spare, self._spare = self._spare, None
        return spare if spare is not None else np.empty((len(ROWS), self.channels))

    def add(self, block: np.ndarray) -> None:
        """Take one call's block (blocks are fresh arrays or :meth:`buffer`'s, kept without a
        copy: the first becomes the total)."""
        # every block kept is float64 and C-contiguous (no copy when it is already): the C merge
        # writes into the total
        block = np.ascontiguousarray(block, dtype=np.float64)
        blocks = self._blocks
        if _chanmerge is not None and len(blocks) == 1 and block.shape == blocks[0].shape:
            _chanmerge(blocks[0], block)
            self._spare = block
            return
        blocks.append(block)
        if len(blocks) >= self._BATCH:
            self._merge()

    @property
    def block(self) -> np.ndarray | None:
        """Every block added so far merged into one, or ``None`` before the first."""
        if len(self._blocks) > 1:
            self._merge()
        return self._blocks[0] if self._blocks else None

    def _merge(self) -> None:
        b = np.stack(self._blocks)  # [K, ROWS, C]
        n_k, m_k, s_k = b[:, _N], b[:, _MEAN], b[:, _SD]
        n = n_k.sum(0)
        w = np.divide(n_k, n, out=np.zeros_like(n_k), where=n > 0)
        # Means and spreads in units of a power of two at least as large as all of them, so that
        # no square overflows float64 (data of 1e300).
        _, e = np.frexp(np.maximum(np.abs(m_k).max(0), s_k.max(0)))
        k = np.ldexp(1.0, np.clip(e, -1022, 1022))
        m = m_k / k
        mean = (w * m).sum(0)
        d = m - mean
        var = (w * ((s_k / k) ** 2 + d * d)).sum(0)
        seen = n_k > 0
        out = np.empty_like(b[0])
        out[_N] = n
        out[_MEAN] = np.where(
            n > 0,
            np.clip(mean * k, np.where(seen, m_k, np.inf).min(0), np.where(seen, m_k, -np.inf).max(0)),
            0.0,
        )
        out[_SD] = np.sqrt(var) * k
        out[_MIN] = b[:, _MIN].min(0)
        out[_MAX] = b[:, _MAX].max(0)
        out[_ZEROS:] = b[:, _ZEROS:].sum(0)
        self._blocks = [out]

    def stats(self) -> dict[str, np.ndarray]:
        a = self.block
        if a is None:
            a = np.asarray(_empty_block(self.channels, torch.device("cpu")))
        n, total = a[_N], a[_N] + a[_NONFINITE]
        seen = n > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {
                "min": np.where(seen, a[_MIN], np.nan),
                "max": np.where(seen, a[_MAX], np.nan),
                "mean": np.where(seen, a[_MEAN], np.nan),
                "std": np.where(seen, a[_SD], np.nan),
                "zero_fraction": np.where(total > 0, a[_ZEROS] / total, np.nan),
                "nonfinite": a[_NONFINITE].astype(np.int64),
                "count": total.astype(np.int64),
                "lower_fraction": np.where(total > 0, a[_LO] / total, np.nan),
                "upper_fraction": np.where(total > 0, a[_HI] / total, np.nan),
            }
        for v in out.values():
            v.setflags(write=False)
        return out
