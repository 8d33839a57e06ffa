"""The exact statistics kernel (``_fast.chanexact_ptr``) on every path it takes, against numpy in
extended precision: eight channels per vector for rows under 8 values (one load per row, four
loads and a transpose for rows of 4, gathers otherwise), four channels at a time for longer rows,
one channel at a time for the channels left over, blocks of 64 channels, rows of out a multiple
of 4 KiB apart, the vector finishing pass and the careful scalar passes for non-finite,
ill-conditioned and constant channels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from featcheck import _stats

pytestmark = pytest.mark.skipif(_stats._fast is None, reason="featcheck._fast was not built (no C compiler at install)")

BOUNDS = (0.0, 1.0)
TOL = 0.01


def hard_map(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Normal values, and channels that defeat one-pass arithmetic, some inside the first groups
    of four and eight channels, some last (the channels left over after the groups)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    c = shape[1]
    special = {
        0: lambda v: v.clamp(min=0),  # ReLU: runs of zeros
        1: lambda v: torch.full_like(v, 3.5),  # constant
        2: lambda v: 3.0 + 1e-6 * v,  # variance far below the mean square: the deviation pass
        3: lambda v: v * 1e30,  # squares beyond float32
        4: lambda v: v * 1e-30,  # squares below float32's normal range
        5: lambda v: torch.full_like(v, math.nan),  # no finite value
        6: lambda v: torch.where(v > 0, 1.0, 0.0),  # values exactly at the bounds
        10: lambda v: torch.full_like(v, 0.1),  # constant, the one-pass variance not exactly 0 (at 51 values)
        11: lambda v: torch.full_like(v, -0.0),  # constant -0.0: mean +0.0 (sums start at +0.0)
        12: lambda v: torch.full_like(v, 0.3),  # constant, as channel 10 (at 2046 values)
        c - 1: lambda v: 0.5 + 1e-7 * v,  # ill-conditioned, in the channels left over
    }
    for ch, make in special.items():
        if 0 <= ch < c:
            x[:, ch] = make(x[:, ch])
    flat = x.view(shape[0], c, -1)
    if c > 9:  # single bad values among finite ones
        flat[0, 7, 0] = math.nan
        flat[-1, 8, -1] = math.inf
        flat[0, 9, -1] = -math.inf
    flat[0, 0, 0] = -0.0
    return x


def reference_block(x: torch.Tensor, bounds: tuple[float, float] | None) -> np.ndarray:
    """The kernel's block (rows of ``_stats.ROWS``) in numpy's extended precision."""
    a = np.moveaxis(x.numpy(), 1, 0).reshape(x.shape[1], -1)
    out = np.zeros((len(_stats.ROWS), a.shape[0]))
    lo, hi, bounded = _stats._thresholds(bounds, TOL)
    for c, v in enumerate(a):
        fin = v[np.isfinite(v)].astype(np.longdouble)
        n = fin.size
        mean = fin.mean() if n else 0.0
        sd = np.sqrt(((fin - mean) ** 2).mean()) if n else 0.0
        out[:, c] = (
            n, mean, sd,
            fin.min() if n else math.inf, fin.max() if n else -math.inf,
            (v == 0).sum(), v.size - n,
            (v <= np.float32(lo)).sum() if bounded else 0, (v >= np.float32(hi)).sum() if bounded else 0,
        )  # fmt: skip
    return out


def kernel_block(x: torch.Tensor, bounds: tuple[float, float] | None, shape: object = None) -> np.ndarray:
    out = np.full((len(_stats.ROWS), x.shape[1]), 7.0)
    _stats._fast.chanexact_ptr(x.data_ptr(), x.shape if shape is None else shape, 1, out, *_stats._thresholds(bounds, TOL))
    return out


def assert_block_close(got: np.ndarray, want: np.ndarray, mean_tol: float = 1e-12, sd_rtol: float = 1e-6) -> None:
    """Counts, min and max exactly; the mean to ``mean_tol`` of the channel's largest |value|, and
    within [min, max]; the sd to a relative ``sd_rtol`` (the exact kernel's bound on the one-pass
    variance: 2^-20)."""
    n, mean, sd, mn, mx = (_stats.ROWS.index(k) for k in ("n", "mean", "sd", "min", "max"))
    counts = [i for i, k in enumerate(_stats.ROWS) if k in ("n", "zeros", "nonfinite", "at_lower", "at_upper")]
    np.testing.assert_array_equal(got[counts], want[counts])
    np.testing.assert_array_equal(got[[mn, mx]], want[[mn, mx]])
    scale = np.where(want[n] > 0, np.maximum(np.abs(want[mn]), np.abs(want[mx])), 0.0)
    assert (np.abs(got[mean] - want[mean]) <= mean_tol * scale).all(), (got[mean], want[mean])
    has = want[n] > 0  # the mean within [min, max]: a constant channel's mean is its value
    assert ((want[mn][has] <= got[mean][has]) & (got[mean][has] <= want[mx][has])).all()
    np.testing.assert_allclose(got[sd], want[sd], rtol=sd_rtol, atol=0)


@pytest.mark.parametrize("bounds", [None, BOUNDS])
@pytest.mark.parametrize(
    "shape",
    [
        (2, 1024),  # rows of 1 (eight channels per load), out's rows 8 KiB apart, 16 blocks
        (3, 70, 1, 1),  # a block of 64 and one of 6, which has no group of eight
        (2, 77, 2, 2),  # rows of 4: loads and a transpose; five channels left over
        (2, 13, 3),  # rows of 3: gathers
        (2, 70, 4, 4),  # rows of 16: four channels at a time, across a block boundary, two left over
        (3, 14, 17),  # rows of 17: eight-value lanes and a tail of one value per row
        (2, 40, 33, 31),  # 82K values: the GIL released
    ],
)
def test_every_path_of_the_exact_kernel_matches_extended_precision(shape, bounds) -> None:
    x = hard_map(shape, seed=len(shape) * 1000 + shape[1])
    assert_block_close(kernel_block(x, bounds), reference_block(x, bounds))


@pytest.mark.parametrize("shape", [(3, 40), (2, 20, 3, 3), (4, 9, 21), (2, 130, 8)])
def test_a_channel_gets_the_same_bits_among_others_as_alone(shape) -> None:
    # All channels take the vector paths (groups of eight or four channels, the vector finishing
    # pass); a channel asked for alone takes the one-channel loop and the scalar finishing pass.
    # For rows of 1 or of 8 and more values both add the same values in the same order, so the
    # results must agree to the last bit, bad channels included; only the sign of a zero min or
    # max may differ (the vector min keeps the later of two equal values, the scalar one the
    # earlier, as before the vector paths were added).
    x = hard_map(shape, seed=shape[1])
    a, c = shape[0], shape[1]
    b = x[0, 0].numel()
    whole = kernel_block(x, BOUNDS)
    alone = np.full_like(whole, 7.0)
    data = x.reshape(a, c, b).numpy()
    for ch in range(c):
        _stats._fast.chanexact(data, a, c, b, alone, *_stats._thresholds(BOUNDS, TOL), np.array([ch], dtype=np.int64))
    extremes = [_stats.ROWS.index("min"), _stats.ROWS.index("max")]
    np.testing.assert_array_equal(whole[extremes], alone[extremes])
    others = np.delete(np.arange(len(_stats.ROWS)), extremes)
    np.testing.assert_array_equal(whole[others].view(np.uint64), alone[others].view(np.uint64))


def test_the_shape_may_be_any_sequence_of_ints() -> None:
    x = hard_map((2, 12, 5), seed=1)
    want = kernel_block(x, None)
    for shape in ((2, 12, 5), [2, 12, 5], torch.Size([2, 12, 5])):
        np.testing.assert_array_equal(kernel_block(x, None, shape=shape), want)


def test_bad_arguments_raise_clear_errors() -> None:
    x = torch.ones(2, 3, 4)
    out = np.empty((len(_stats.ROWS), 3))
    f = _stats._fast.chanexact_ptr
    with pytest.raises(TypeError, match="expected 7 arguments"):
        f(x.data_ptr(), x.shape, 1, out, 0.0, 0.0)
    with pytest.raises(TypeError, match="address and cdim must be ints"):
        f(float(x.data_ptr()), x.shape, 1, out, 0.0, 0.0, False)
    with pytest.raises(TypeError, match="sequence of ints"):
        f(x.data_ptr(), 3, 1, out, 0.0, 0.0, False)
    with pytest.raises(ValueError, match="channel dimension within its rank"):
        f(x.data_ptr(), x.shape, 3, out, 0.0, 0.0, False)
    with pytest.raises(ValueError, match="sizes >= 0"):
        f(x.data_ptr(), (2, -3, 4), 1, out, 0.0, 0.0, False)
    with pytest.raises(ValueError, match="buffer sizes"):
        f(x.data_ptr(), (2, 4, 4), 1, out, 0.0, 0.0, False)  # out has 3 columns, not 4
    with pytest.raises(TypeError):
        f(x.data_ptr(), x.shape, 1, out, "0", 0.0, False)
    out.flags.writeable = False
    with pytest.raises((BufferError, ValueError)):
        f(x.data_ptr(), x.shape, 1, out, 0.0, 0.0, False)


def test_the_sample_arguments_are_checked_before_any_value_is_read() -> None:
    """chanstats' and rows_at's offsets must lie within a row, and the sample buffer hold C x K
    floats: an offset read past the row would read another channel's values, or past the map."""
    x = torch.randn(2, 3, 20)
    data = x.numpy()
    out = np.empty((5, 3))
    offsets = np.array([0, 5, 19], dtype=np.int64)
    sample = bytearray(3 * 3 * 4)
    _stats._fast.chanstats(data, 2, 3, 20, out, 0, 3, sample, offsets)
    np.testing.assert_array_equal(np.frombuffer(sample, dtype=np.float32).reshape(3, 3), x[0, :, [0, 5, 19]].numpy())
    np.testing.assert_array_equal(np.frombuffer(_stats._fast.rows_at(x.data_ptr(), 3, 20, offsets), dtype=np.float32), np.frombuffer(sample, dtype=np.float32))
    for bad in (np.array([0, 20], dtype=np.int64), np.array([-1], dtype=np.int64)):
        with pytest.raises(ValueError, match="outside a row of 20 values"):
            _stats._fast.chanstats(data, 2, 3, 20, out, 0, 3, sample, bad)
        with pytest.raises(ValueError, match="outside a row of 20 values"):
            _stats._fast.rows_at(x.data_ptr(), 3, 20, bad)
    with pytest.raises(ValueError, match="int64"):
        _stats._fast.rows_at(x.data_ptr(), 3, 20, np.array([0, 1, 2], dtype=np.int32)[:3].tobytes()[:6])
    with pytest.raises(ValueError, match="fewer than C x K floats"):
        _stats._fast.chanstats(data, 2, 3, 20, out, 0, 3, bytearray(8), offsets)
    with pytest.raises(ValueError, match="buffer sizes"):
        _stats._fast.chanstats(data, 2, 3, 20, out, 0, 3, sample)  # a sample without its offsets
    with pytest.raises(ValueError, match="data address"):
        _stats._fast.rows_at(0, 3, 20, offsets)
    with pytest.raises(TypeError, match="expected 4 arguments"):
        _stats._fast.rows_at(x.data_ptr(), 3, 20)
    with pytest.raises(ValueError, match="too large"):  # C x K x 4 bytes would overflow: refused before any allocation
        _stats._fast.rows_at(x.data_ptr(), 2**62, 20, offsets)


def test_chanfast_checks_its_arguments_and_gives_the_fast_paths_block() -> None:
    x = hard_map((2, 12, 40), seed=3)  # channels that defeat one-pass arithmetic: recomputed exactly
    data = x.numpy()
    out = np.empty((len(_stats.ROWS), 12))
    _stats._fast.chanfast(data, 2, 12, 40, out, 0, 12)
    assert_block_close(out, kernel_block(x, None))  # the exact kernel's block
    with pytest.raises(ValueError, match="buffer sizes"):
        _stats._fast.chanfast(data, 2, 12, 40, np.empty((5, 12)), 0, 12)  # chanstats' 5 rows, not 9
    with pytest.raises(ValueError, match="buffer sizes"):
        _stats._fast.chanfast(data, 2, 12, 41, out, 0, 12)
    with pytest.raises(ValueError, match="outside a row of 40 values"):
        _stats._fast.chanfast(data, 2, 12, 40, out, 0, 12, bytearray(12 * 4), np.array([40], dtype=np.int64))
    with pytest.raises(ValueError, match="fewer than C x K floats"):
        _stats._fast.chanfast(data, 2, 12, 40, out, 0, 12, bytearray(4), np.array([0, 1], dtype=np.int64))


@pytest.mark.parametrize("channels", [11, 16, 24, 70])
def test_a_maps_statistics_do_not_depend_on_the_number_of_threads(channels: int) -> None:
    """Maps of 4M values and more are split across two threads, at a multiple of 8 channels:
    chanfast decides which channels to recompute exactly per group of 8 at fixed positions, so a
    well-conditioned channel gets the same bits whether a group's neighbours were recomputed by
    the other thread or not."""
    g = torch.Generator().manual_seed(channels)
    x = torch.randn(2, channels, 600, 3600 // channels * 10, generator=g)
    assert x.numel() >= _stats._KERNEL_SPLIT
    # channels 0-4 are recomputed exactly: most of the first 8, fewer than half of all channels
    # (so a rule decided per thread's half recomputed channels 5-7 with two threads, not with one)
    x[0, 0, 0, 0] = float("nan")
    x[:, 1:5] = 1000 + 1e-3 * torch.randn(2, 4, *x.shape[2:], generator=g)
    threads = torch.get_num_threads()
    try:
        blocks = []
        for n in (1, 2):
            torch.set_num_threads(n)
            blocks.append(_stats.reduce(x, 1))
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(blocks[0], blocks[1])


def test_the_fast_paths_mean_stays_within_min_and_max() -> None:
    """float32 partial sums of a constant channel can round above its value: kept within [min, max]
    (as the exact kernel keeps it)."""
    x = torch.full((2, 8, 64, 65), 0.1)
    x[:, 1:] = torch.randn(2, 7, 64, 65)
    assert not _stats.exact_first(x.numel(), x.shape, 1, False)  # the fast path's map
    block = _stats.reduce(x, 1)
    assert block[_stats.ROWS.index("mean"), 0] == np.float32(0.1) and block[_stats.ROWS.index("sd"), 0] == 0.0


@pytest.mark.parametrize(
    "shape",
    [
        (8, 40, 7, 7),  # rows of 49: six vectors of 8 and one value left per row
        (3, 20, 14, 14),  # rows of 196: the pairs of vectors, one more vector, four values left
        (2, 24, 8),  # rows of exactly one vector
        (2, 17, 255),  # the longest short row
        (2, 17, 256),  # the shortest long row (a row at a time)
        (700, 4, 12),  # 8400 values per channel: the float32 partial sums flushed within a channel
    ],
)
def test_chanfast_short_rows_a_channel_at_a_time_match_the_exact_kernel(shape) -> None:
    """Rows under 256 values are reduced a channel at a time with the lanes kept across its rows
    (``chan_avx2``); the block matches the exact kernel's (counts, min and max exactly; the mean
    and sd to float32 rounding of the partial sums), special channels included, and the sample its
    pass copies is the first sample's values at the offsets."""
    x = hard_map(shape, seed=sum(shape))
    x[:, 13:] += 5.0  # channels whose mean is far from 0, as a BatchNorm's with a bias
    a, c = shape[0], shape[1]
    b = x[0, 0].numel()
    data = x.reshape(a, c, b).numpy()
    out = np.full((len(_stats.ROWS), c), 7.0)
    offsets = np.array([0, b // 3, b - 1], dtype=np.int64)
    sample = bytearray(c * len(offsets) * 4)
    _stats._fast.chanfast(data, a, c, b, out, 0, c, sample, offsets)
    assert_block_close(out, kernel_block(x, None), mean_tol=1e-6, sd_rtol=1e-5)  # float32 partial sums
    got_sample = np.frombuffer(sample, dtype=np.float32).reshape(c, len(offsets))
    np.testing.assert_array_equal(got_sample, data[0][:, offsets])
