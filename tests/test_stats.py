"""The per-channel reductions against plain float64 numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featcheck import _stats


def reference(x: torch.Tensor, cdim: int) -> dict[str, np.ndarray]:
    a = np.moveaxis(x.double().numpy(), cdim, -1).reshape(-1, x.shape[cdim])
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


@KERNEL
def test_the_one_pass_kernel_matches_numpy_per_channel() -> None:
    x = awkward((3, 7, 41, 13), 1)  # rows of 533 values: vector body and scalar tail
    a, c, b = 3, 7, 41 * 13
    out = np.empty((5, c))
    _stats._fast.chanstats(x.reshape(a, c, b).numpy(), a, c, b, out, 0, c)
    ref = np.moveaxis(x.double().numpy(), 1, 0).reshape(c, -1)
    np.testing.assert_array_equal(out[0], ref.min(1))
    np.testing.assert_array_equal(out[1], ref.max(1))
    np.testing.assert_allclose(out[2], ref.sum(1), rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(out[3], (ref**2).sum(1), rtol=1e-6)
    np.testing.assert_array_equal(out[4], (ref != 0).sum(1))
    with pytest.raises(ValueError, match="buffer sizes"):
        _stats._fast.chanstats(x.reshape(a, c, b).numpy(), a, c, b + 1, out, 0, c)


@KERNEL
def test_big_maps_split_across_threads_give_the_same_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    x = awkward((2, 8, 64, 64), 1)
    one = stats_of(x, 1)
    monkeypatch.setattr(_stats, "_KERNEL_SPLIT", 1)
    assert_matches(stats_of(x, 1), one, rtol=1e-9)


def test_without_the_kernel_the_torch_reductions_give_the_same_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    x = awkward((4, 6, 9, 7), 1)
    monkeypatch.setattr(_stats, "_fast", None)
    assert_matches(stats_of(x, 1), reference(x, 1))
