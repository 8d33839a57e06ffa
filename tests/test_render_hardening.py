"""Rendering under hostile input: huge maps, odd ranks, bad arguments (issue 9, items 9, 12, 14)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import featcheck
from featcheck import _render
from featcheck._render import _draw, _pca
from fixtures import models

BAR = 6 + 14 + 64  # the heatmap's colour bar panel


# -- costs follow the picture ------------------------------------------------------------------------


def test_pca_with_more_channels_than_positions_uses_the_gram_matrix_and_matches_the_covariance() -> None:
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(300, 3, generator=g))[0]
    scores = torch.randn(3, 5, 4, generator=g) * torch.tensor([5.0, 3.0, 1.0])[:, None, None]
    x = torch.einsum("ck,khw->chw", basis, scores) + 0.01 * torch.randn(300, 5, 4, generator=g)
    fitted = _pca._fit_pca(x)  # 300 channels, 20 positions: the Gram path
    xs = x.reshape(300, -1).double().T.numpy()
    xc = xs - xs.mean(0)
    vals, vecs = np.linalg.eigh(xc.T @ xc / xs.shape[0])  # the 300 x 300 covariance
    ref = vecs[:, ::-1][:, :3]
    ref = ref * np.sign(ref[np.abs(ref).argmax(0), range(3)])  # largest loading positive
    np.testing.assert_allclose(fitted.components.numpy(), ref, atol=1e-8)
    np.testing.assert_allclose(fitted.explained, vals[::-1][:3] / vals.clip(0).sum(), atol=1e-10)


def test_pca_of_a_hundred_thousand_channels_is_drawn() -> None:
    # the C x C covariance would take 80 GB
    img = featcheck.pca_rgb(torch.randn(100_000, 3, 3, generator=torch.Generator().manual_seed(1)))
    assert "100000 channels -> RGB" in img.info["caption"]


def test_pca_and_heatmap_of_huge_maps_stay_picture_sized() -> None:
    pca = featcheck.pca_rgb(torch.randn(4, 2000, 1500), caption=True)
    assert pca.size[0] <= _draw._MAX_PICTURE_SIDE and "shown at 1/4 resolution" in pca.info["caption"]
    assert "shown at 1/6 resolution" in featcheck.heatmap(torch.randn(3000, 2000)).info["caption"]
    assert featcheck.heatmap(torch.randn(3000, 2000), caption=False).size == (334 + BAR, 500)
    strip = featcheck.heatmap(torch.randn(1, 1, 1, 900), caption=False)  # a 1 x 900 map: not 160 x 144000
    assert strip.size == (2 * 450 + BAR, 2)
    photo = Image.new("RGB", (4000, 3000), (200, 10, 10))
    over = featcheck.heatmap(torch.randn(8, 8), image=photo, caption=False)
    assert over.size == (1024 + BAR, 768)


def test_huge_grid_is_subsampled_before_normalising_but_ranges_and_marks_cover_every_value() -> None:
    x = torch.zeros(3, 5000, 5000)
    x[1, 1, 1] = 1.0  # varies only at a position the picture does not show
    x[2] = torch.linspace(0, 1, 5000)
    x[2, 1, 1] = float("nan")
    img = featcheck.channel_grid(x, normalize="percentile")  # torch.quantile refuses 25M values
    assert "shown at 1/79 resolution" in img.info["caption"]
    caption = featcheck.channel_grid(x).info["caption"]
    assert "red: dead 1" in caption and "magenta: NaN/Inf 1" in caption


# -- layouts found on real architectures ------------------------------------------------------------------


class WindowedQKV(nn.Module):
    """A Linear over windows, as in timm's twins_svt attention: output [N, 3, 3, 7, 7, C]."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.qkv(x)


class AttentionRow(nn.Module):
    """Attention maps of height 1, as in volo and crossvit: output [N, 12, 1, 17]."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Conv2d(3, 12, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x)


def test_records_with_four_spatial_dims_are_drawn_with_the_extra_dims_folded() -> None:
    x = torch.randn(2, 3, 3, 7, 7, 8)
    cap = featcheck.capture(WindowedQKV(), x, layers="qkv")
    lc = cap["qkv"]
    assert lc.shape == (2, 3, 3, 7, 7, 12) and lc.channels == 12
    img = featcheck.channel_grid(lc, ncols=12, labels=False)
    assert "dims 3x3 folded into depth 9; depth: slice 4 of 9" in img.info["caption"]
    body = np.asarray(featcheck.channel_grid(lc, ncols=12, labels=False, caption=False, min_tile=7))
    pad = _draw._PAD
    tile = body[pad : pad + 7, pad : pad + 7]  # channel 0 of window (1, 1): its extremes are the colormap's ends
    sample = lc.sample[0, 1, 1]
    lut = _render._lut("viridis")
    assert tuple(tile[np.unravel_index(int(sample.argmax()), (7, 7))]) == tuple(lut[round(255 * float((sample.max() - lc.stats["min"][0]) / (lc.stats["max"][0] - lc.stats["min"][0])))])
    assert "dims 3x3 folded" in featcheck.heatmap(lc).info["caption"]
    assert featcheck.pca_rgb(lc).size[0] > 0


def test_maps_of_height_one_get_a_pca_but_one_dimensional_signals_do_not() -> None:
    cap = featcheck.capture(AttentionRow(), torch.randn(2, 3, 1, 17), layers="attn")
    img = featcheck.pca_rgb(cap["attn"], caption=False)
    assert img.size == (17 * 60, 60)  # 1 x 17 upscaled towards 128, within 1024 pixels
    signal = featcheck.capture(models.Conv1dNet(), torch.randn(2, 2, 40))
    with pytest.raises(ValueError, match="pca_rgb needs a 2-D map .* got a 1-D map"):
        featcheck.pca_rgb(signal["act"])
    with pytest.raises(ValueError, match="1-D map"):
        featcheck.pca_rgb(torch.randn(6, 40))


# -- arguments checked up front ---------------------------------------------------------------------------


X = torch.randn(3, 4, 4)
CONV = nn.Conv2d(4, 8, 3)

BAD = [
    (featcheck.channel_grid, (X,), {"max_tile": 0}, ValueError, r"max_tile must be an int >= 1, got 0"),
    (featcheck.channel_grid, (X,), {"min_tile": 0}, ValueError, r"min_tile must be an int >= 1, got 0"),
    (featcheck.channel_grid, (X,), {"max_tile": 2.5}, TypeError, r"max_tile must be an int >= 1, got float"),
    (featcheck.channel_grid, (X,), {"max_channels": 0}, ValueError, r"max_channels must be an int >= 1 or None"),
    (featcheck.channel_grid, (X,), {"ncols": "4"}, TypeError, r"ncols must be an int >= 1 or None"),
    (featcheck.channel_grid, (X,), {"select": "top"}, ValueError, r"select must be one of \('first'"),
    (featcheck.channel_grid, (X,), {"depth": "deep"}, ValueError, r"depth must be one of \('middle'"),
    (featcheck.channel_grid, (X,), {"layout": "nhwc"}, ValueError, r"layout must be None or 'tokens', got 'nhwc'"),
    (featcheck.channel_grid, (X,), {"percentile": (99, 1)}, ValueError, r"percentile must be \(low, high\) with"),
    (featcheck.channel_grid, (X,), {"percentile": 5}, TypeError, r"percentile must be a pair of numbers"),
    (featcheck.channel_grid, (X,), {"cmap": 3}, TypeError, r"cmap must be a matplotlib colormap name"),
    (featcheck.channel_grid, (X,), {"cmap": "nope"}, ValueError, r"unknown colormap 'nope'"),
    (featcheck.channel_grid, (X,), {"flagged": 3}, TypeError, r"flagged must be a sequence of channel indices"),
    (featcheck.channel_grid, (X,), {"bounds": (1, 0)}, ValueError, r"bounds must be \(low, high\) with finite low < high"),
    (featcheck.channel_grid, ("str",), {}, TypeError, r"channel_grid expects a LayerCapture or a tensor, got str"),
    (featcheck.channel_grid, (torch.zeros(0, 4, 4),), {}, ValueError, r"empty tensor \(shape \(0, 4, 4\)\)"),
    (featcheck.channel_grid, (torch.zeros(3, 0),), {}, ValueError, r"empty tensor"),
    (featcheck.channel_grid, (torch.randn(3, 4, dtype=torch.complex64),), {}, TypeError, r"x.abs\(\) or x.real"),
    (featcheck.channel_grid, (torch.randn(2, 3, 4), ), {"layout": "tokens", "cmap": "nope"}, ValueError, r"unknown colormap"),
    (featcheck.kernel_grid, (CONV,), {"max_out": 0}, ValueError, r"max_out must be an int >= 1, got 0"),
    (featcheck.kernel_grid, (CONV,), {"max_out": -1}, ValueError, r"max_out must be an int >= 1, got -1"),
    (featcheck.kernel_grid, (CONV,), {"max_in": True}, TypeError, r"max_in must be an int >= 1, got bool"),
    (featcheck.kernel_grid, (CONV,), {"min_tile": 0}, ValueError, r"min_tile must be an int >= 1"),
    (featcheck.kernel_grid, (CONV,), {"cmap": "nope"}, ValueError, r"unknown colormap 'nope'"),
    (featcheck.kernel_grid, (torch.zeros(0, 3, 3, 3),), {}, ValueError, r"empty weight"),
    (featcheck.kernel_grid, (torch.zeros(8, 3, 3, 3),), {"groups": 3}, ValueError, r"groups=3 does not divide"),
    (featcheck.kernel_grid, (nn.ReLU(),), {}, TypeError, r"ReLU has no weight tensor to draw"),
    (featcheck.heatmap, (None,), {}, TypeError, r"heatmap expects a LayerCapture or a tensor, got NoneType"),
    (featcheck.heatmap, (X,), {"alpha": 2.0}, ValueError, r"alpha must be a number in \[0, 1\], got 2.0"),
    (featcheck.heatmap, (X,), {"channel": -1}, ValueError, r"channel must be an int >= 0 or None"),
    (featcheck.heatmap, (X,), {"channel": 1.0}, TypeError, r"channel must be an int >= 0 or None"),
    (featcheck.heatmap, (X,), {"channel": 3}, ValueError, r"channel must be in \[0, 3\)"),
    (featcheck.heatmap, (X,), {"min_size": 0}, ValueError, r"min_size must be an int >= 1"),
    (featcheck.heatmap, (X,), {"cmap": "nope"}, ValueError, r"unknown colormap 'nope'"),
    (featcheck.heatmap, (X,), {"image": torch.zeros(2, 4, 4)}, ValueError, r"image must be a PIL image, a \[3, H, W\]"),
    (featcheck.heatmap, (torch.zeros(0, 5),), {}, ValueError, r"empty tensor"),
    (featcheck.pca_rgb, (X,), {"fit": np.zeros((3, 4, 4))}, TypeError, r"fit must be None, a LayerCapture or a tensor"),
    (featcheck.pca_rgb, (X,), {"min_size": -3}, ValueError, r"min_size must be an int >= 1, got -3"),
    (featcheck.pca_rgb, (torch.zeros(3, 0, 4),), {}, ValueError, r"empty tensor"),
    (featcheck.to_image, (torch.zeros(2, 4, 4),), {}, ValueError, r"to_image expects \[3, H, W\]"),
    (featcheck.to_image, (torch.zeros(4, 4),), {}, ValueError, r"to_image expects \[3, H, W\]"),
    (featcheck.to_image, (X,), {"mean": (0.5,)}, TypeError, r"mean must be three numbers"),
    (featcheck.load_image, (__file__,), {}, ValueError, r"is not an image file Pillow can read"),
    (featcheck.load_image, (__file__,), {"size": 0}, ValueError, r"size must be an int >= 1 or None"),
    (featcheck.save_channels, (X, "out"), {"name": "x", "colour": "red"}, TypeError, r"unknown option\(s\) 'colour' for save_channels"),
]


@pytest.mark.parametrize(("fn", "args", "kwargs", "error", "match"), BAD, ids=[f"{b[0].__name__}-{i}" for i, b in enumerate(BAD)])
def test_bad_arguments_say_what_was_expected_and_what_came(fn, args, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)


def test_save_channels_with_a_bad_option_leaves_no_folder(tmp_path) -> None:
    with pytest.raises(ValueError, match="normalize must be one of"):
        featcheck.save_channels(X, tmp_path, name="layer", normalize="zscore")
    assert list(tmp_path.iterdir()) == []


def test_check_options_raises_what_the_renderer_would_without_rendering() -> None:
    cap = featcheck.capture(models.TinyCNN(), torch.randn(1, 3, 8, 8))
    assert _render.check_options("channel_grid", cap, {"max_channels": 4, "select": "energy", "title": "t"}) is None
    assert _render.check_options("kernel_grid", models.TinyCNN(), {"max_out": 2}) is None
    for fn, args, kwargs, error, match in BAD:
        # show_kernels looks for the convolutions inside any module, so a module without weight passes
        if fn in (featcheck.channel_grid, featcheck.kernel_grid) and not isinstance(args[0], nn.ReLU):
            with pytest.raises(error, match=match):
                _render.check_options(fn.__name__, args[0], kwargs)
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'colour' for channel_grid; known: max_channels"):
        _render.check_options("channel_grid", cap, {"colour": "red"})
    with pytest.raises(TypeError, match="kernel_grid expects a convolution module or a weight tensor, got str"):
        _render.check_options("kernel_grid", "conv1", {})
    no_samples = featcheck.capture(models.TinyCNN(), torch.randn(1, 3, 8, 8), keep_samples=False)
    with pytest.raises(ValueError, match="keep_samples=False"):
        _render.check_options("channel_grid", no_samples["conv1"], {})
    with pytest.raises(ValueError, match="renderer must be one of"):
        _render.check_options("pca_rgb", X, {})
