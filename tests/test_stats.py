"""The per-channel reductions against plain float64 numpy."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from featcheck import _stats


def reference(x: torch.Tensor, cdim: int) -> dict[str, np.ndarray]:
    return per_channel(np.moveaxis(x.double().numpy(), cdim, -1).reshape(-1, x.shape[cdim]))


def per_channel(a: np.ndarray) -> dict[str, np.ndarray]:
    """numpy statistics of the columns of ``a`` (rows: values, columns: channels)."""
    fin = np.isfinite(a)
    masked = np.where(fin, a, np.nan)
    return {
        "min": np.nanmin(masked, 0),
        "max": np.nanmax(masked, 0),
        "mean": np.nanmean(masked, 0),
        "std": np.nanstd(masked, 0),
        "zero_fraction": (a == 0).mean(0),
        "nonfinite": (~fin).sum(0),
        "count": np.full(a.shape[1], a.shape[0]),
    }


def stats_of(x: torch.Tensor, cdim: int, robust: bool = False, chunks: int = 1) -> dict[str, np.ndarray]:
    acc = _stats.Accumulator(x.shape[cdim])
    for part in x.chunk(chunks, 0):
        block = _stats.reduce_robust(part, cdim) if robust else _stats.reduce(part, cdim)
        acc.add(np.asarray(block))
    return acc.stats()


def assert_matches(got: dict[str, np.ndarray], want: dict[str, np.ndarray], rtol: float = 1e-5) -> None:
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=rtol, atol=1e-6, err_msg=k)


def awkward(shape: tuple[int, ...], cdim: int) -> torch.Tensor:
    """Signed values with ReLU-style zero runs, a zeroed channel, a constant channel, -0.0."""
    x = torch.randn(shape)
    idx = [slice(None)] * len(shape)
    idx[cdim] = 0
    x[tuple(idx)] = x[tuple(idx)].clamp(min=0)
    idx[cdim] = 1
    x[tuple(idx)] = 0.0
    idx[cdim] = 2
    x[tuple(idx)] = 3.5
    idx[cdim] = 3
    x[tuple(idx)] = x[tuple(idx)].abs() + 0.1
    x.view(-1)[5] = -0.0
    return x


@pytest.mark.parametrize(
    "shape,cdim",
    [((4, 6, 9, 7), 1), ((3, 10, 6), 2), ((5, 6), 1), ((2, 4, 3, 5, 6), 1), ((2, 5, 5, 8), 3)],
)
@pytest.mark.parametrize("robust", [False, True])
def test_fast_and_robust_paths_match_numpy(shape, cdim, robust) -> None:
    x = awkward(shape, cdim)
    assert_matches(stats_of(x, cdim, robust), reference(x, cdim))


def test_channels_last_memory_format_is_reduced_per_channel() -> None:
    x = awkward((2, 6, 5, 7), 1).contiguous(memory_format=torch.channels_last)
    assert not x.is_contiguous()
    assert_matches(stats_of(x, 1), reference(x.contiguous(), 1))


def test_nonfinite_values_are_counted_and_left_out_of_the_other_statistics() -> None:
    x = torch.randn(4, 3, 8, 8)
    x[0, 1, 2, 3] = float("nan")
    x[1, 1, 0, 0] = float("inf")
    x[2, 2, 5, 5] = -float("inf")
    got = stats_of(x, 1)
    assert got["nonfinite"].tolist() == [0, 2, 1]
    assert np.isfinite(got["mean"]).all() and np.isfinite(got["std"]).all()
    assert_matches(got, reference(x, 1))


def test_a_channel_with_no_finite_value_reports_nan_not_garbage() -> None:
    x = torch.randn(2, 2, 3, 3)
    x[:, 0] = float("nan")
    got = stats_of(x, 1)
    assert np.isnan(got["min"][0]) and np.isnan(got["std"][0])
    assert got["nonfinite"][0] == 18 and got["nonfinite"][1] == 0


def test_ill_conditioned_channels_keep_their_small_std() -> None:
    # mean 1000, std 1e-3: the float32 sum of squares alone cannot resolve this variance.
    x = 1000.0 + 1e-3 * torch.randn(8, 4, 16, 16)
    got = stats_of(x, 1)
    want = reference(x, 1)
    np.testing.assert_allclose(got["std"], want["std"], rtol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_reduced_in_float32(dtype) -> None:
    x = awkward((4, 5, 6, 6), 1).to(dtype)
    assert_matches(stats_of(x, 1), reference(x.float(), 1), rtol=1e-3)


def test_accumulating_chunks_equals_one_pass() -> None:
    x = awkward((12, 6, 5, 5), 1) * 3 + 2
    assert_matches(stats_of(x, 1, chunks=4), reference(x, 1))


def test_saturation_bounds_are_counted_with_tolerance() -> None:
    x = torch.full((2, 3, 4, 4), 0.5)
    x[:, 0] = 0.9995  # within 1e-3 of the upper bound 1
    x[:, 1, :2] = 0.0
    acc = _stats.Accumulator(3)
    acc.add(np.asarray(_stats.reduce(x, 1, bounds=(0.0, 1.0), tol=1e-3)))
    got = acc.stats()
    assert got["upper_fraction"].tolist() == [1.0, 0.0, 0.0]
    assert got["lower_fraction"].tolist() == [0.0, 0.5, 0.0]


KERNEL = pytest.mark.skipif(_stats._fast is None, reason="featcheck._fast was not built (no C compiler at install)")


def assert_kernel_rows(out: np.ndarray, x: torch.Tensor) -> None:
    """``out`` holds the per-channel min, max, sum, sum of squares and non-zero count of x."""
    ref = np.moveaxis(x.double().numpy(), 1, 0).reshape(x.shape[1], -1)
    np.testing.assert_array_equal(out[0], ref.min(1))
    np.testing.assert_array_equal(out[1], ref.max(1))
    np.testing.assert_allclose(out[2], ref.sum(1), rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(out[3], (ref**2).sum(1), rtol=1e-6)
    np.testing.assert_array_equal(out[4], (ref != 0).sum(1))


@KERNEL
def test_the_one_pass_kernel_matches_numpy_per_channel() -> None:
    x = awkward((3, 7, 41, 13), 1)  # rows of 533 values: vector body and scalar tail
    a, c, b = 3, 7, 41 * 13
    out = np.empty((5, c))
    _stats._fast.chanstats(x.reshape(a, c, b).numpy(), a, c, b, out, 0, c)
    assert_kernel_rows(out, x)
    with pytest.raises(ValueError, match="buffer sizes"):
        _stats._fast.chanstats(x.reshape(a, c, b).numpy(), a, c, b + 1, out, 0, c)


@KERNEL
def test_big_maps_split_across_threads_match_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel's own rows, not the final statistics: the exact path would repair a channel
    # the split left out. The split needs torch to allow more than one thread: set it, so the
    # test cannot pass by taking the unsplit path on a one-thread machine or under xdist.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(_stats, "_KERNEL_SPLIT", 1)
        x = awkward((2, 9, 64, 64), 1)  # an odd channel count: the halves differ in size
        out = _stats._kernel(x.view(2, 9, -1))
        assert out is not None
        assert_kernel_rows(out, x)
        assert any(t.name.startswith("featcheck") for t in threading.enumerate())
    finally:
        torch.set_num_threads(threads)


@KERNEL
@pytest.mark.filterwarnings("ignore:.*(slice|empty):RuntimeWarning")  # numpy on the NaN channel
@pytest.mark.parametrize("bounds", [None, (0.0, 1.0)])
@pytest.mark.parametrize(
    "shape",  # rows of 35 (vector body and tail), and of 3 and 1 value (eight channels at a time)
    [(3, 9, 5, 7), (3, 19, 3, 1), (4, 19, 1, 1)],
)
def test_the_exact_kernel_matches_numpy_for_all_or_some_channels(bounds, shape) -> None:
    x = awkward(shape, 1)
    x[0, 4, 0, :3] = torch.tensor([math.nan, math.inf, -math.inf])[: shape[3]]
    x[:, 5] = math.nan  # a channel with no finite value
    x[1, 6] = 1.0  # values exactly at a bound
    x[2, 8] = 1e30  # magnitudes whose squares overflow float32
    a, c, b = shape[0], shape[1], shape[2] * shape[3]
    tol = 0.01
    want = reference_exact(x, 1, bounds, tol)
    out = _stats._exact_kernel(x.view(a, c, b), bounds, tol)
    acc = _stats.Accumulator(c)
    acc.add(out)
    got = acc.stats()
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-12, atol=1e-12, err_msg=k)
    # some channels only: the other columns are left as they were
    part = np.full((len(_stats.ROWS), c), 7.0)
    idx = np.array([8, 0, 5, c - 1], dtype=np.int64)
    _stats._exact_kernel(x.view(a, c, b), bounds, tol, part, idx)
    np.testing.assert_array_equal(part[:, idx], out[:, idx])
    assert (np.delete(part, idx, axis=1) == 7.0).all()
    with pytest.raises(ValueError, match="indices"):
        _stats._exact_kernel(x.view(a, c, b), bounds, tol, part, np.array([c], dtype=np.int64))
    with pytest.raises(ValueError, match="buffer sizes"):
        _stats._fast.chanexact(x.view(a, c, b).numpy(), a, c, b + 1, part, 0.0, 0.0, False, None)


def test_without_the_kernel_the_torch_reductions_give_the_same_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    x = awkward((4, 6, 9, 7), 1)
    monkeypatch.setattr(_stats, "_fast", None)
    assert_matches(stats_of(x, 1), reference(x, 1))


# Extremes: every real dtype, magnitudes from subnormal to near each dtype's largest value.


def reference_exact(
    x: torch.Tensor, cdim: int, bounds: tuple[float, float] | None = None, tol: float = 0.0
) -> dict[str, np.ndarray]:
    """The statistics in numpy's extended precision: exact for every int64, no overflow in the
    squares of float64 data of 1e300, no underflow in those of 1e-300."""
    data = (x.float() if x.dtype == torch.bfloat16 else x).numpy().astype(np.longdouble)
    a = np.moveaxis(data, cdim, -1).reshape(-1, x.shape[cdim])
    want = per_channel(a)
    if bounds is not None:
        eps = tol * (bounds[1] - bounds[0])
        want["lower_fraction"] = (a <= bounds[0] + eps).mean(0)
        want["upper_fraction"] = (a >= bounds[1] - eps).mean(0)
    return {k: v.astype(np.float64) for k, v in want.items()}


def assert_close_at_scale(
    got: dict[str, np.ndarray], want: dict[str, np.ndarray], rtol: float
) -> None:
    """Counts and fractions exactly, min and max to float64 rounding, mean and std to ``rtol``
    of each channel's largest |value| (a mean near 0 cannot be relatively exact)."""
    for k in ("zero_fraction", "nonfinite", "count", "lower_fraction", "upper_fraction"):
        if k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    for k in ("min", "max"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-15, atol=0, err_msg=k)
    scale = np.maximum(np.abs(want["min"]), np.abs(want["max"]))
    for k in ("mean", "std"):
        assert np.isfinite(got[k]).all(), (k, got[k])
        assert (np.abs(got[k] - want[k]) <= rtol * scale).all(), (k, got[k], want[k])
    np.testing.assert_allclose(got["std"], want["std"], rtol=10 * rtol, err_msg="std")


def channels_at(dtype: torch.dtype, scales: list[float], offsets: list[float]) -> torch.Tensor:
    """``[4, C, 8, 8]`` of ``dtype``: channel c is N(offsets[c], scales[c]), with zeros."""
    g = torch.Generator().manual_seed(0)
    s = torch.tensor(scales, dtype=torch.float64).view(1, -1, 1, 1)
    o = torch.tensor(offsets, dtype=torch.float64).view(1, -1, 1, 1)
    x = torch.randn(4, len(scales), 8, 8, generator=g, dtype=torch.float64) * s + o
    x[0, :, 0, :3] = 0.0
    if not dtype.is_floating_point:
        if dtype == torch.bool:
            return x > 0
        info = torch.iinfo(dtype)
        x = x.round().clamp(info.min, info.max)
        return x.to(torch.int64).to(dtype) if dtype == torch.int64 else x.to(dtype)
    return x.to(dtype)


EXTREMES = {
    # float32: std of 1e19 data was inf (float32 sum of squares), of 1e-25 data 0 (underflow)
    "float32 large": (torch.float32, [1e19, 1e30, 2e37, 1.0], [0.0, 0.0, 0.0, 0.5], 1e-6),
    "float32 small": (torch.float32, [1e-25, 1e-30, 1e-40, 1.0], [0.0, 1e-25, 0.0, 0.0], 1e-6),
    "float32 mixed": (torch.float32, [1.0, 1e-25, 1e19, 3.0], [2.0, 0.0, 0.0, -1.0], 1e-6),
    # float64: 1e300 was cast to float32 and counted non-finite
    "float64 large": (torch.float64, [1e300, 1e307, 1.0, 1e100], [0.0, 1e307, 0.0, 0.0], 1e-12),
    "float64 small": (torch.float64, [1e-300, 1e-310, 1e-25, 1e-100], [0.0, 0.0, 1e-25, 0.0], 1e-12),
    "float16": (torch.float16, [1e4, 1e-3, 1.0, 1e-6], [5e4, 0.0, 0.0, 0.0], 1e-6),
    "bfloat16": (torch.bfloat16, [1e37, 1e-30, 1.0, 1e20], [0.0, 0.0, 0.0, 1e20], 1e-6),
    "int8": (torch.int8, [60.0, 1.0, 0.3, 10.0], [0.0, -120.0, 0.0, 100.0], 1e-6),
    "uint8": (torch.uint8, [60.0, 1.0, 0.3, 10.0], [128.0, 250.0, 0.0, 5.0], 1e-6),
    "int16": (torch.int16, [1e4, 3.0, 0.3, 100.0], [0.0, 30000.0, 0.0, -3e4], 1e-6),
    "int32": (torch.int32, [1e9, 30.0, 0.3, 1e3], [0.0, 2.0**30, 0.0, -(2.0**30)], 1e-12),
    # int64: 2^40 + small ints collapsed to a constant channel in float32
    "int64": (torch.int64, [30.0, 1e15, 0.3, 30.0], [2.0**40, 0.0, 0.0, 2.0**62], 1e-12),
    "bool": (torch.bool, [1.0, 1.0, 1.0, 1.0], [0.0, 5.0, -5.0, 0.5], 1e-6),
}


@pytest.mark.parametrize("path", ["small", "fast", "fast bounded", "torch", "exact"])
@pytest.mark.parametrize("case", list(EXTREMES))
def test_finite_data_of_any_dtype_and_magnitude_gives_finite_correct_statistics(
    case: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every path: the exact kernel (small), the one-pass kernel finished in C (fast) or, where
    bounds are counted, in numpy with torch's bound counts (fast bounded), torch alone, and the
    exact torch path."""
    dtype, scales, offsets, rtol = EXTREMES[case]
    x = channels_at(dtype, scales, offsets)
    bounds = (0.0, 1.0) if path == "fast bounded" else None
    if path == "torch":
        monkeypatch.setattr(_stats, "_fast", None)
    elif path.startswith("fast"):  # small maps take the exact kernel outright: force the one-pass kernel
        monkeypatch.setattr(_stats, "_SMALL", 0)
        assert not _stats.exact_first(x.numel(), x.shape, 1, bounds is not None)
    block = _stats.reduce_robust(x, 1) if path == "exact" else _stats.reduce(x, 1, bounds, 0.01)
    acc = _stats.Accumulator(x.shape[1])
    acc.add(np.asarray(block))
    assert_close_at_scale(acc.stats(), reference_exact(x, 1, bounds, 0.01), rtol)


@pytest.mark.parametrize("merge", ["C", "numpy"])
@pytest.mark.parametrize("case", ["float32 mixed", "float64 large", "int64"])
def test_extremes_survive_accumulation_over_calls(case: str, merge: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if merge == "numpy":
        monkeypatch.setattr(_stats, "_chanmerge", None)
    else:
        assert _stats._chanmerge is not None, "the C kernel was not built"
    dtype, scales, offsets, rtol = EXTREMES[case]
    x = channels_at(dtype, scales, offsets)
    acc = _stats.Accumulator(x.shape[1])
    for part in x.chunk(4, 0):
        acc.add(np.asarray(_stats.reduce(part, 1)))
    assert_close_at_scale(acc.stats(), reference_exact(x, 1), rtol)


def test_bound_fractions_are_counted_in_every_dtype() -> None:
    x = channels_at(torch.float64, [1e-3, 0.2, 1.0], [1.0 - 1e-4, 0.5, 0.0]).clamp(0, 1)
    for dtype in (torch.float64, torch.float32, torch.float16):
        y = x.to(dtype)
        acc = _stats.Accumulator(3)
        acc.add(np.asarray(_stats.reduce(y, 1, bounds=(0.0, 1.0), tol=1e-3)))
        assert_close_at_scale(acc.stats(), reference_exact(y, 1, (0.0, 1.0), 1e-3), 1e-6)


def test_nonfinite_values_among_extremes_are_counted_and_left_out() -> None:
    x = channels_at(torch.float64, [1e300, 1e-300, 1.0], [0.0, 0.0, 0.0])
    x[1, 0, 2, 2] = float("inf")
    x[2, 1, 3, 3] = float("nan")
    acc = _stats.Accumulator(3)
    acc.add(np.asarray(_stats.reduce(x, 1)))
    got = acc.stats()
    assert got["nonfinite"].tolist() == [1, 1, 0]
    assert_close_at_scale(got, reference_exact(x, 1), 1e-12)


@pytest.mark.parametrize(
    "shape,cdim", [((0, 3, 4, 4), 1), ((2, 0, 4, 4), 1), ((2, 3, 0, 4), 1), ((0, 5), 1), ((2, 3, 0), 2)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64])
def test_empty_maps_give_a_block_with_count_zero(shape, cdim, dtype) -> None:
    x = torch.zeros(shape, dtype=dtype)
    block = np.asarray(_stats.reduce(x, cdim))
    assert block.shape == (len(_stats.ROWS), shape[cdim])
    got = _stats.Accumulator(shape[cdim])
    got.add(block)
    stats = got.stats()
    assert stats["count"].tolist() == [0] * shape[cdim]
    assert np.isnan(stats["mean"]).all() and np.isnan(stats["zero_fraction"]).all()


def test_an_empty_call_leaves_the_accumulated_statistics_unchanged() -> None:
    x = awkward((4, 6, 5, 5), 1)
    acc = _stats.Accumulator(6)
    acc.add(np.asarray(_stats.reduce(x[:0], 1)))
    acc.add(np.asarray(_stats.reduce(x, 1)))
    acc.add(np.asarray(_stats.reduce(x[:, :, :0], 1)))
    assert_matches(acc.stats(), reference(x, 1))


@pytest.mark.parametrize(
    "make,what",
    [
        (lambda: torch.randn(2, 3, 4, dtype=torch.complex64), "complex"),
        (lambda: torch.randn(2, 3, 4).to_sparse(), "sparse_coo"),
        (lambda: torch.randn(2, 3, 4).to_sparse_csr(), "sparse_csr"),
        (lambda: torch._make_per_tensor_quantized_tensor(torch.zeros(2, 3, dtype=torch.int8), 0.1, 0), "quantized"),
        (lambda: torch.nested.nested_tensor([torch.randn(3, 4), torch.randn(3, 5)]), "nested"),
        (lambda: torch.empty(2, 3, 4, device="meta"), "meta"),
    ],
)
@pytest.mark.filterwarnings("ignore:.*(beta|prototype|deprecated).*:UserWarning")  # torch's own
def test_tensors_without_real_values_per_channel_raise_a_clear_type_error(make, what) -> None:
    expected = f"featcheck cannot compute per-channel statistics of .*{what}.*layers="
    with pytest.raises(TypeError, match=expected):
        _stats.reduce(make(), 1)


@pytest.mark.parametrize("path", ["fast", "torch"])
def test_tiny_values_whose_squares_vanish_in_float32_keep_their_std(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # +-k * 2^-90 sums to exactly 0 and squares to 0 in float32: mean 0, mean square 0 looks like
    # a well-conditioned channel of zeros unless the tiny mean square sends it to the exact path.
    if path == "torch":
        monkeypatch.setattr(_stats, "_fast", None)
    k = torch.arange(1, 33, dtype=torch.float32) * 2.0**-90
    x = torch.randn(2, 4, 64)
    x[:, 1] = torch.cat([k, -k])
    acc = _stats.Accumulator(4)
    acc.add(np.asarray(_stats.reduce(x, 1)))
    assert_close_at_scale(acc.stats(), reference_exact(x, 1), 1e-6)


def test_the_c_merge_gives_the_numpy_merge_and_hands_its_block_back_for_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    x = awkward((8, 6, 5, 5), 1)
    x[0, 2] = 0.0  # a channel whose first call is all zeros
    parts = [x[i : i + 2] for i in range(0, 8, 2)]
    by_c = _stats.Accumulator(6)
    for i, part in enumerate(parts):
        block = by_c.buffer()
        if i == 1:  # the first block is the total: never handed out
            assert block is not previous
        elif i > 1:  # the block merged last: its values are in the total already
            assert block is previous
        block[...] = np.asarray(_stats.reduce(part, 1))
        by_c.add(block)
        previous = block
    monkeypatch.setattr(_stats, "_chanmerge", None)
    by_numpy = _stats.Accumulator(6)
    for part in parts:
        by_numpy.add(np.asarray(_stats.reduce(part, 1)))
    got, want = by_c.stats(), by_numpy.stats()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-14, atol=0, err_msg=k)
    assert_matches(got, reference(x, 1))


def test_a_stale_build_of_the_kernel_is_not_used(tmp_path: Path) -> None:
    """An editable install whose featcheck/_fast.c changed but was not rebuilt has an extension
    without this version's functions: featcheck falls back to torch rather than failing in every
    hook. In a subprocess: the extension is chosen at import."""
    code = (
        "import sys, types\n"
        "stale = types.ModuleType('featcheck._fast')\n"
        "stale.chanexact_ptr = stale.chanstats = stale.chanexact = stale.bytes_at = lambda *a: None\n"
        "sys.modules['featcheck._fast'] = stale  # an older build: no chanfast, no rows_at\n"
        "import torch, featcheck\n"
        "from featcheck import _stats, _samples, _recorder\n"
        "assert _stats._fast is None and _samples._ROWS is None and _recorder._KERNEL is None\n"
        "x = torch.randn(2, 3, 300, 300)\n"
        "cap = featcheck.capture(torch.nn.Conv2d(3, 4, 3), x)\n"
        "assert not cap[''].note and cap[''].sample is not None, cap[''].note\n"
        "print('fallback ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0 and "fallback ok" in done.stdout, done.stderr[-2000:]
