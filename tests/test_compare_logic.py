"""The comparison math and diff_grid, in-process and fast: tolerances, NaN, channels, pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import featcheck
from featcheck._compare import compare_tensors, default_tolerances
from featcheck._render._diff import _GAP, panels
from featcheck._render._draw import _PAD, _lut


def test_tolerance_boundary_is_atol_plus_rtol_times_reference() -> None:
    ref = torch.tensor([[1.0, -2.0, 0.0, 4.0]])
    at_edge = ref + torch.tensor([[0.75, 0.0, 0.0, 0.0]])  # exactly atol + rtol * |ref| (binary exact)
    res = compare_tensors(ref, at_edge, 1, rtol=0.25, atol=0.5)
    assert res.mismatched == 0 and res.max_abs == 0.75
    beyond = ref + torch.tensor([[0.0, 0.0, 0.0, 1.5 + 2**-10]])  # just over 0.5 + 0.25 * 4
    res = compare_tensors(ref, beyond, 1, rtol=0.25, atol=0.5)
    assert res.mismatched == 0.25 and res.channels == [3]
    assert res.max_rel == pytest.approx((1.5 + 2**-10) / 4)


def test_nan_against_nan_agrees_and_nan_against_a_number_does_not() -> None:
    ref = torch.tensor([[1.0, math.nan, math.inf, 2.0]])
    same = compare_tensors(ref, ref.clone(), 1, 1e-4, 1e-5)
    assert same.mismatched == 0 and same.max_abs == 0
    cand = torch.tensor([[1.0, 3.0, math.inf, 2.0]])
    res = compare_tensors(ref, cand, 1, 1e-4, 1e-5)
    assert res.max_abs == math.inf and res.mismatched == 0.25 and res.channels == [1]


def test_diverging_channels_follow_the_channel_dim_and_worst_comes_first() -> None:
    ref = torch.zeros(2, 5, 3, 3)
    cand = ref.clone()
    cand[1, 4, 0, 0] = 0.5
    cand[0, 2, 1, 1] = 2.0
    res = compare_tensors(ref, cand, 1, 1e-4, 1e-5)
    assert res.channels == [2, 4] and res.worst == [2, 4]
    tokens = compare_tensors(ref.permute(0, 2, 3, 1), cand.permute(0, 2, 3, 1), 3, 1e-4, 1e-5)
    assert tokens.channels == [2, 4]


def test_relative_error_where_the_reference_is_zero_is_infinite_not_a_huge_number() -> None:
    res = compare_tensors(torch.zeros(1, 2), torch.tensor([[0.0, 1e-3]]), 1, 1e-4, 1e-5)
    assert res.max_rel == math.inf and res.max_abs == pytest.approx(1e-3)


def test_shapes_that_differ_are_a_note_not_an_error() -> None:
    res = compare_tensors(torch.zeros(1, 2, 4), torch.zeros(1, 2, 5), 1, 1e-4, 1e-5)
    assert res.note == "shapes differ: (1, 2, 4) vs (1, 2, 5)" and math.isnan(res.max_abs)


def test_empty_outputs_agree_and_keep_no_maps() -> None:
    # a detector with random weights finds no boxes: outputs of shape [0, 4] must compare, not crash
    res = compare_tensors(torch.zeros(0, 4), torch.zeros(0, 4), 1, 1e-4, 1e-5, keep=True)
    assert (res.max_abs, res.mismatched, res.channels) == (0.0, 0.0, [])
    assert res.maps is None


def test_comparison_is_in_float32_or_wider_and_default_atol_scales_with_the_layer() -> None:
    ref = torch.tensor([[100.0, 0.0]])
    cand = torch.tensor([[100.0, 5e-4]], dtype=torch.bfloat16)  # bf16 rounds 5e-4 to 5.0021e-4
    fixed = compare_tensors(ref, cand, 1, 0.0, 1e-5)
    assert fixed.mismatched == 0.5 and fixed.atol == 1e-5
    scaled = compare_tensors(ref, cand, 1, 0.0, 1e-5, scale_atol=True)
    assert scaled.mismatched == 0 and scaled.atol == pytest.approx(1e-3)
    assert compare_tensors(ref.double(), ref.double() + 1e-12, 1, 0.0, 0.0).max_abs == pytest.approx(1e-12)


def test_default_tolerances_follow_the_least_precise_dtype() -> None:
    assert default_tolerances(torch.float32, torch.float32) == (1e-4, 1e-5)
    assert default_tolerances(torch.float32, torch.bfloat16) == (5e-2, 1e-2)
    assert default_tolerances(torch.float16, torch.float64) == (1e-2, 1e-3)
    assert default_tolerances(torch.int64, torch.float64) == (1e-7, 1e-7)


class _Bump(nn.Module):
    """Adds ``delta`` (a buffer): a reference with zero delta and a candidate with one bump."""

    def __init__(self, delta: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("delta", delta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.delta


def test_diff_grid_puts_a_known_difference_where_it_belongs() -> None:
    x = torch.rand(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    delta = torch.zeros(1, 4, 16, 16)
    delta[0, 2, 5, 7] = 3.0
    diff = featcheck.compare(_Bump(torch.zeros(1, 4, 16, 16)), _Bump(delta), x)
    assert diff.first is not None and diff.first.channels == [2]
    image = np.asarray(featcheck.diff_grid(diff, ""))
    # 4 channels of 16 x 16, upscaled 2x to 32-pixel tiles, 2 x 2 tiles of (32 + 2 pads) each
    tile = 32 + 2 * _PAD
    side = 2 * tile
    assert image.shape[1] >= 3 * side + 2 * _GAP  # a wider caption pads the body on the right
    panel = image[-side:, 2 * (side + _GAP) : 3 * side + 2 * _GAP]
    hot = np.argwhere((panel == _lut("magma")[255]).all(-1))
    # channel 2 is the first tile of the second row; the bump at (5, 7) covers 2 x 2 pixels
    y0, x0 = tile + _PAD + 5 * 2, _PAD + 7 * 2
    assert sorted(map(tuple, hot.tolist())) == [(y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)]
    # reference and candidate panels share one scale: outside the bump they are the same pixels
    ref_panel, cand_panel = image[-side:, :side], image[-side:, side + _GAP : 2 * side + _GAP]
    differs = np.argwhere((ref_panel != cand_panel).any(-1))
    assert {tuple(p) for p in differs.tolist()} == {(y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)}


def test_panels_of_equal_maps_show_no_difference() -> None:
    maps = torch.randn(3, 8, 8)
    parts, (lo, hi), dmax = panels(maps, maps.clone(), [0, 1, 2])
    assert dmax == 0 and lo == float(maps.min()) and np.array_equal(parts[0], parts[1])


def test_diff_grid_checks_its_arguments() -> None:
    diff = featcheck.compare(_Bump(torch.zeros(1)), _Bump(torch.zeros(1)), torch.zeros(2, 3))
    with pytest.raises(TypeError, match="expects what featcheck.compare returned"):
        featcheck.diff_grid("diff", "")  # type: ignore[arg-type]
    with pytest.raises(featcheck.LayerNotFoundError, match="layer3"):
        featcheck.diff_grid(diff, "layer3")


def test_copies_compare_by_their_bytes_and_equal_values_in_other_bytes_still_agree() -> None:
    from featcheck._compare import _same_bits

    x = torch.randn(2, 3, 5, 5)
    assert _same_bits(x, x.clone()) and not _same_bits(x, x + 1)
    cl = x.to(memory_format=torch.channels_last)
    assert _same_bits(cl, cl.clone()) and not _same_bits(x, cl)  # layouts differ: not told this way
    assert compare_tensors(x, cl, 1, 0.0, 0.0).max_abs == 0  # ... but compared by value
    zeros, negative = torch.zeros(1, 4), -torch.zeros(1, 4)
    assert not _same_bits(zeros, negative)
    res = compare_tensors(zeros, negative, 1, 0.0, 0.0)
    assert res.mismatched == 0 and res.max_abs == 0
