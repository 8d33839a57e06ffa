"""Pictures checked by their pixels: colours, frames, geometry, captions."""

from __future__ import annotations

import math
import os

import matplotlib
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import featcheck
from featcheck import _render
from featcheck._render import _draw, _grid, _maps
from fixtures import defects, models

PAD = _draw._PAD
VIRIDIS = _render._lut("viridis")
SAMPLE_PHOTO = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")


def px(image, y: int, x: int) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(image)[y, x])


def tile_origin(i: int, ncols: int, th: int, tw: int) -> tuple[int, int]:
    r, c = divmod(i, ncols)
    return r * (th + 2 * PAD) + PAD, c * (tw + 2 * PAD) + PAD


def test_a_ramp_maps_to_the_colormap_ends_and_a_dead_channel_gets_its_frame() -> None:
    x = torch.randn(4, 8, 8)
    x[0] = 0.0  # dead
    x[1] = torch.linspace(-2.0, 5.0, 8).expand(8, 8)  # ramp along the width
    img = featcheck.channel_grid(x, caption=False, labels=False, min_tile=8, ncols=4)
    assert img.size == (4 * (8 + 2 * PAD), 8 + 2 * PAD)
    y0, x0 = tile_origin(1, 4, 8, 8)
    assert px(img, y0 + 4, x0) == tuple(VIRIDIS[0]) and px(img, y0 + 4, x0 + 7) == tuple(VIRIDIS[255])
    y0, x0 = tile_origin(0, 4, 8, 8)
    red = _render.MARK_COLOURS["dead"]
    assert px(img, y0 - 1, x0 + 3) == red and px(img, y0 + 8, x0) == red and px(img, y0 + 3, x0 - 2) == red
    assert px(img, y0 + 3, x0 + 3) == tuple(VIRIDIS[128])  # a constant channel: the middle colour
    y0, x0 = tile_origin(2, 4, 8, 8)
    assert px(img, y0 - 1, x0 + 3) == _render.BACKGROUND  # healthy: no frame


def test_nan_pixels_and_all_nan_channels_never_spoil_the_picture() -> None:
    x = torch.rand(3, 6, 6)
    x[1, 2, 3] = float("nan")
    x[2] = float("inf")
    img = featcheck.channel_grid(x, caption=False, labels=False, min_tile=6, ncols=3, normalize="minmax", shared=True)
    magenta = _render.NONFINITE_PIXEL
    y0, x0 = tile_origin(1, 3, 6, 6)
    assert px(img, y0 + 2, x0 + 3) == magenta and px(img, y0 - 1, x0) == _render.MARK_COLOURS["nonfinite"]
    assert px(img, y0, x0) != magenta
    y2, x2 = tile_origin(2, 3, 6, 6)
    assert all(px(img, y2 + i, x2 + i) == magenta for i in range(6))
    # channel 0's colours come from the finite values only (shared range of 0..1)
    y, xx = tile_origin(0, 3, 6, 6)
    a = np.asarray(img)[y : y + 6, xx : xx + 6]
    assert {tuple(v) for v in a.reshape(-1, 3)} <= {tuple(c) for c in VIRIDIS}


@pytest.mark.parametrize("channels", [1, 3, 64, 512, 2048])
def test_grid_geometry(channels: int) -> None:
    x = torch.randn(channels, 12, 12)
    img = featcheck.channel_grid(x, max_channels=None, caption=False)
    tile = 24 + 2 * PAD  # 12 px maps are upscaled 2x to reach min_tile=24
    ncols = math.ceil(math.sqrt(channels))
    assert img.size == (ncols * tile, math.ceil(channels / ncols) * tile)


def test_caption_states_layer_shape_normalisation_and_the_cap() -> None:
    x = torch.randn(512, 7, 7)
    img = featcheck.channel_grid(x, title="stage4", select="variance")
    caption = img.info["caption"]
    assert "stage4  512x7x7  64 of 512 channels shown (variance)" in caption
    assert "minmax (data range, per channel), viridis" in caption
    assert img.size[1] > 8 * (28 + 2 * PAD)


def test_capped_selection_by_energy_and_flagged_channels_are_always_shown() -> None:
    x = torch.randn(32, 5, 5, generator=torch.Generator().manual_seed(0)) * 0.01
    checker = torch.ones(5, 5)
    checker[::2, 1::2] = checker[1::2, ::2] = -1.0  # mean about 0, mean square 1
    x[4], x[9], x[30] = 10.0 * checker, 20.0 * checker, 5.0 * checker  # energy ~100, ~400, ~25
    x[20] = 7.0  # constant: energy 49, no variance
    maps = _maps._maps(x, None, "middle", None, fn="channel_grid")
    assert _grid._choose(maps, maps.data, 4, "energy", flagged=[1]) == [1, 4, 9, 20]
    assert _grid._choose(maps, maps.data, 3, "variance", flagged=()) == [4, 9, 30]
    img = featcheck.channel_grid(x, max_channels=2, flagged=[17])
    assert "2 of 32 channels shown" in img.info["caption"] and "blue: flagged 1" in img.info["caption"]


def test_layer_capture_grid_marks_the_zoo_defect_channels() -> None:
    cap = featcheck.capture(defects.make("zeroed_filters", True), defects.batch())
    lc = cap["conv2"]  # 8 channels of 8x8, upscaled 3x to 24
    img = featcheck.channel_grid(lc, caption=False, labels=False, ncols=8)
    red = _render.MARK_COLOURS["dead"]
    for ch in range(8):
        y0, x0 = tile_origin(ch, 8, 24, 24)
        assert (px(img, y0 - 1, x0 + 5) == red) == (ch in (2, 5)), ch
    full = featcheck.channel_grid(lc)
    assert "conv2  8x8x8x8  all 8 channels" in full.info["caption"]
    assert "range over 8 samples" in full.info["caption"] and "red: dead 2" in full.info["caption"]


def test_token_sequences_drop_the_class_token_and_form_a_square() -> None:
    model = torchvision.models.vit_b_16(weights=None).eval()
    cap = featcheck.capture(model, torch.randn(1, 3, 224, 224), layers="encoder.layers.encoder_layer_0.mlp.1")
    img = featcheck.channel_grid(cap["encoder.layers.encoder_layer_0.mlp.1"], max_channels=4, caption=True, ncols=4)
    assert "tokens: first 1 of 197 dropped, rest as 14x14" in img.info["caption"]
    body = featcheck.channel_grid(cap["encoder.layers.encoder_layer_0.mlp.1"], max_channels=4, caption=False, ncols=4)
    assert body.size == (4 * (28 + 2 * PAD), 28 + 2 * PAD)
    tokens = torch.randn(2, 50, 6)  # 49 + 1: DeiT-style, as a tensor
    img = featcheck.channel_grid(tokens, layout="tokens")
    assert "tokens: first 1 of 50 dropped, rest as 7x7" in img.info["caption"]
    odd = featcheck.channel_grid(torch.randn(45, 6), layout="tokens")  # 36 + 9: too many extras
    assert "shown as strips" in odd.info["caption"]


def test_one_dimensional_maps_are_strips_and_volumes_are_sliced() -> None:
    cap = featcheck.capture(models.Conv1dNet(), torch.randn(2, 2, 40))
    img = featcheck.channel_grid(cap["act"], caption=False, labels=False)
    assert img.size == (80 + 2 * PAD, 6 * (10 + 2 * PAD))  # 6 strips of 20 positions, 4x wide
    vol = torch.randn(1, 4, 6, 8, 8)  # [N, C, D, H, W]
    img = featcheck.channel_grid(vol, caption=True)
    assert "depth: slice 3 of 6" in img.info["caption"] and "all 4 channels" in img.info["caption"]
    assert "depth: max over 6" in featcheck.channel_grid(vol, depth="max").info["caption"]
    cap = featcheck.capture(nn.Conv3d(2, 3, 3, padding=1), torch.randn(2, 2, 5, 8, 8))
    assert cap[""].stride == (1.0, 1.0, 1.0)
    assert "depth: slice 2 of 5" in featcheck.channel_grid(cap[""]).info["caption"]


def test_bad_arguments_fail_clearly() -> None:
    x = torch.randn(3, 4, 4)
    with pytest.raises(ValueError, match="normalize must be one of"):
        featcheck.channel_grid(x, normalize="zscore")
    with pytest.raises(ValueError, match="unknown colormap 'virdis'"):
        featcheck.channel_grid(x, cmap="virdis")
    with pytest.raises(TypeError, match="LayerCapture or a tensor"):
        featcheck.channel_grid(np.zeros((3, 4, 4)))
    cap = featcheck.capture(models.TinyCNN(), torch.randn(1, 3, 8, 8), keep_samples=False)
    with pytest.raises(ValueError, match="keep_samples=False"):
        featcheck.channel_grid(cap["conv1"])


@pytest.mark.parametrize("normalize", ["symmetric", "sigmoid", "percentile"])
def test_other_normalisations_use_the_whole_colormap(normalize: str) -> None:
    x = torch.randn(4, 16, 16) * 3 + (0 if normalize == "symmetric" else 1)
    a = np.asarray(featcheck.channel_grid(x, normalize=normalize, cmap="gray", caption=False, labels=False, ncols=4))
    grey = a[PAD : PAD + 16, PAD : PAD + 16, 0]
    assert grey.min() < 40 and grey.max() > 215


# -- kernels ---------------------------------------------------------------------------------------------


def test_first_layer_kernels_are_rgb_with_zero_at_grey() -> None:
    conv = nn.Conv2d(3, 8, 3)
    with torch.no_grad():
        conv.weight[5] = 0.0
        conv.weight[2] = 0.0
        conv.weight[2, 0, 1, 1] = 1.0  # pure red centre pixel
    img = featcheck.kernel_grid(conv, caption=False)
    tile = 24 + 2 * PAD
    assert img.size == (3 * tile, 3 * tile)
    y0, x0 = tile_origin(5, 3, 24, 24)
    assert px(img, y0 + 3, x0 + 3) in {(127, 127, 127), (128, 128, 128)}
    y0, x0 = tile_origin(2, 3, 24, 24)
    r, g, b = px(img, y0 + 12, x0 + 12)
    assert r == 255 and g in (127, 128) and b in (127, 128)


def test_other_convolutions_are_out_by_in_grids_capped_and_grouped() -> None:
    big = featcheck.kernel_grid(nn.Conv2d(64, 128, 3))
    assert "rows: 16 of 128 filters, columns: 16 of 64 inputs per group" in big.info["caption"]
    grouped = featcheck.kernel_grid(nn.Conv2d(8, 6, 3, groups=2), caption=False)
    assert grouped.size == (4 * (24 + 2 * PAD), 6 * (24 + 2 * PAD))
    assert "groups=2" in featcheck.kernel_grid(nn.Conv2d(8, 6, 3, groups=2)).info["caption"]
    depthwise = nn.Conv2d(16, 16, 3, groups=16)
    with torch.no_grad():
        depthwise.weight[0] = 0.0
    img = featcheck.kernel_grid(depthwise, caption=False)
    assert img.size == (4 * (24 + 2 * PAD), 4 * (24 + 2 * PAD))
    centre = _render._lut("RdBu_r")[127:129]
    assert px(img, PAD + 2, PAD + 2) in {tuple(c) for c in centre}
    assert "weight 4x3x1x5" in featcheck.kernel_grid(nn.Conv1d(3, 4, 5)).info["caption"]


# -- PCA and heatmaps ---------------------------------------------------------------------------------------


def three_patterns(h: int = 24, w: int = 24) -> tuple[torch.Tensor, list[np.ndarray]]:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    patterns = [3.0 * xx, 2.0 * yy, 1.0 * torch.sign(torch.sin(6 * xx) * torch.sin(6 * yy))]
    g = torch.Generator().manual_seed(0)
    mixing = torch.linalg.qr(torch.randn(16, 3, generator=g))[0]  # orthonormal columns
    stack = torch.stack(patterns)  # [3, H, W]
    x = torch.einsum("ck,khw->chw", mixing, stack) + 0.001 * torch.randn(16, h, w, generator=g) + 5.0
    return x, [p.numpy() for p in patterns]


def test_pca_recovers_three_known_patterns_in_order() -> None:
    x, patterns = three_patterns()
    img = featcheck.pca_rgb(x, caption=False, min_size=24)
    rgb = np.asarray(img).astype(np.float64)
    for ch, pattern in enumerate(patterns):
        r = np.corrcoef(rgb[..., ch].ravel(), pattern.ravel())[0, 1]
        assert abs(r) > 0.97, (ch, r)
    assert np.asarray(featcheck.pca_rgb(x)).tobytes() == np.asarray(featcheck.pca_rgb(x)).tobytes()
    assert "explained variance" in featcheck.pca_rgb(x).info["caption"]


def test_pca_basis_fitted_on_one_map_is_reused_on_another() -> None:
    x, _ = three_patterns()
    same = featcheck.pca_rgb(x, fit=x.clone(), caption=False)
    assert np.array_equal(np.asarray(same), np.asarray(featcheck.pca_rgb(x, caption=False)))
    shifted = featcheck.pca_rgb(x + 10.0, fit=x, caption=False)  # brighter in the fitted basis...
    own = featcheck.pca_rgb(x + 10.0, caption=False)  # ...but not in its own
    assert not np.array_equal(np.asarray(shifted), np.asarray(own))
    with pytest.raises(ValueError, match="channels"):
        featcheck.pca_rgb(x, fit=x[:5])


def test_heatmap_has_a_colour_bar_and_blends_over_the_input() -> None:
    t = torch.linspace(0, 1, 100).reshape(10, 10)
    img = featcheck.heatmap(t, caption=False, min_size=100)
    a = np.asarray(img)
    assert a.shape[:2] == (100, 100 + 6 + 14 + 64)
    bar_x = 100 + 6 + 7
    assert tuple(a[0, bar_x]) == tuple(VIRIDIS[255]) and tuple(a[-1, bar_x]) == tuple(VIRIDIS[0])
    photo = featcheck.to_image(featcheck.load_image(SAMPLE_PHOTO, size=64))
    over = featcheck.heatmap(torch.zeros(4, 8, 8), image=photo, alpha=0.0, caption=False)
    assert np.array_equal(np.asarray(over)[:, :64], np.asarray(photo))
    with pytest.raises(ValueError, match="channel must be"):
        featcheck.heatmap(torch.zeros(4, 8, 8), channel=4)


# -- files and images -------------------------------------------------------------------------------------


def test_save_channels_writes_every_channel_and_the_grid_inside_a_safe_folder(tmp_path) -> None:
    x = torch.randn(5, 6, 6)
    folder = featcheck.save_channels(x, tmp_path, name="../../etc/layer<1>")
    assert folder.parent == tmp_path and ".." not in folder.name and "/" not in folder.name
    assert sorted(p.name for p in folder.iterdir()) == ["channel_0000.png", "channel_0001.png", "channel_0002.png", "channel_0003.png", "channel_0004.png", "grid.png"]
    from PIL import Image

    with Image.open(folder / "channel_0001.png") as ch:
        assert ch.size == (24, 24)
    with pytest.raises(ValueError, match="name="):
        featcheck.save_channels(x, tmp_path)


def test_load_image_and_to_image_round_trip() -> None:
    batch = featcheck.load_image(SAMPLE_PHOTO)
    assert batch.shape == (1, 3, 224, 224) and abs(float(batch.mean())) < 1.5
    back = np.asarray(featcheck.to_image(batch)).astype(int)
    raw = featcheck.load_image(SAMPLE_PHOTO, mean=None, std=None)
    assert float(raw.min()) >= 0 and float(raw.max()) <= 1
    assert np.abs(back - np.asarray(featcheck.to_image(raw, mean=None, std=None)).astype(int)).max() <= 1
    with pytest.raises(FileNotFoundError):
        featcheck.load_image("no/such/file.jpg")
