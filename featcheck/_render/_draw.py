"""Drawing with numpy: the colormap lookup, fonts and digit glyphs, captions, tiling and frames."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MARK_COLOURS = {
    "flagged": (0, 190, 255),
    "nonfinite": (255, 0, 255),
    "dead": (230, 30, 30),
    "saturated": (255, 150, 0),
}
NONFINITE_PIXEL = (255, 0, 255)
BACKGROUND = (40, 40, 40)
_PAD = 3  # pixels around each tile; marks are 2-pixel frames drawn inside this padding

# Heatmaps and PCA composites: the map is subsampled to at most _MAX_MAP_SIDE pixels on its longer
# side before anything is computed on it, and upscaling for small maps stops at _MAX_PICTURE_SIDE,
# so a picture's cost and size follow from these, not from the input's size.
_MAX_MAP_SIDE = 512
_MAX_PICTURE_SIDE = 1024


@functools.lru_cache(maxsize=32)
def _lut(cmap: str) -> np.ndarray:
    import matplotlib

    try:
        cm = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(
            f"unknown colormap {cmap!r}; use a matplotlib colormap name such as 'viridis', "
            "'gray', 'magma' or 'RdBu_r'"
        ) from None
    return (cm(np.linspace(0.0, 1.0, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


@functools.lru_cache(maxsize=1)
def _digits() -> list[np.ndarray]:
    """Boolean glyph masks for 0-9, rendered once, for labelling tiles with numpy blits."""
    font = _font(9)
    out = []
    for d in "0123456789":
        im = Image.new("L", (8, 12), 0)
        ImageDraw.Draw(im).text((0, 0), d, fill=255, font=font)
        a = np.asarray(im) > 96
        cols = np.flatnonzero(a.any(0))
        out.append(a[:, : cols.max() + 1] if cols.size else a[:, :4])
    rows = np.flatnonzero(np.any([g.any(1) for g in out], axis=0))
    return [g[rows.min() : rows.max() + 1] for g in out]


def _caption(lines: Sequence[str], width: int) -> np.ndarray:
    font = _font(12)
    line_h = 16
    width = max(width, 8 + max(int(font.getlength(t)) for t in lines))
    im = Image.new("RGB", (width, 6 + line_h * len(lines)), (250, 250, 250))
    draw = ImageDraw.Draw(im)
    for i, text in enumerate(lines):
        draw.text((4, 3 + i * line_h), text, fill=(20, 20, 20), font=font)
    return np.asarray(im)


def _captioned(body: np.ndarray, lines: Sequence[str]) -> Image.Image:
    """The picture with its caption drawn above; the text is also in ``image.info["caption"]``
    (alt text for reports)."""
    cap = _caption(lines, body.shape[1])
    if cap.shape[1] > body.shape[1]:
        pad = np.full((body.shape[0], cap.shape[1] - body.shape[1], 3), 255, np.uint8)
        body = np.concatenate([body, pad], 1)
    image = Image.fromarray(np.concatenate([cap, body], 0))
    image.info["caption"] = "\n".join(lines)
    return image


def _fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def _map_step(h: int, w: int) -> int:
    """The subsampling step that brings an ``h x w`` map within ``_MAX_MAP_SIDE``."""
    return max(1, math.ceil(max(h, w) / _MAX_MAP_SIDE))


def _upscale(h: int, w: int, min_size: int) -> int:
    """Nearest-neighbour factor so the shorter side reaches ``min_size``, the longer side staying
    within ``_MAX_PICTURE_SIDE`` (a 1 x 500 map is not blown up to 160 x 80000)."""
    up = math.ceil(min_size / max(1, min(h, w)))
    return max(1, min(up, _MAX_PICTURE_SIDE // max(1, h, w)))


def _scale_for(h: int, w: int, min_tile: int, max_tile: int) -> tuple[int, int, int, int]:
    """(up_y, up_x, step_y, step_x): integer upscaling of small maps, subsampling of big ones."""
    if h == 1 and w > 1:  # strips
        step = max(1, math.ceil(w / (max_tile * 4)))
        up = max(1, (min_tile * 4) // max(1, math.ceil(w / step)))
        return 10, up, 1, step
    side = max(h, w)
    if side > max_tile:
        step = math.ceil(side / max_tile)
        return 1, 1, step, step
    up = max(1, math.ceil(min_tile / side))
    return up, up, 1, 1


def _tile(
    q: np.ndarray,
    bad: np.ndarray,
    lut: np.ndarray,
    *,
    scale: tuple[int, int, int, int],
    ncols: int | None,
    frames: dict[str, list[int]],
    labels: list[int] | None,
) -> np.ndarray:
    """Colours ``[k, h, w]`` uint8 indices, scaled by ``scale`` (see ``_scale_for``), and arranges
    them."""
    up_y, up_x, step_y, step_x = scale
    if step_y > 1 or step_x > 1:
        q, bad = q[:, ::step_y, ::step_x], bad[:, ::step_y, ::step_x]
    if up_y > 1 or up_x > 1:
        q = q.repeat(up_y, 1).repeat(up_x, 2)
        bad = bad.repeat(up_y, 1).repeat(up_x, 2)
    rgb = lut[q]
    if bad.any():
        rgb[bad] = NONFINITE_PIXEL
    return _arrange(rgb, ncols=ncols, frames=frames, labels=labels)


def _arrange(
    rgb: np.ndarray, *, ncols: int | None, frames: dict[str, list[int]], labels: list[int] | None
) -> np.ndarray:
    """RGB tiles ``[k, th, tw, 3]`` in one near-square (or ``ncols``-wide) grid, with frames drawn
    in the padding and channel indices in the corners."""
    k, th, tw = rgb.shape[:3]
    if ncols is None:
        ncols = max(1, math.ceil(math.sqrt(k * th / tw)))
    ncols = min(ncols, k)
    nrows = math.ceil(k / ncols)
    th2, tw2 = th + 2 * _PAD, tw + 2 * _PAD
    canvas = np.empty((nrows * ncols, th2, tw2, 3), np.uint8)
    canvas[...] = BACKGROUND
    canvas[:k, _PAD : _PAD + th, _PAD : _PAD + tw] = rgb
    p0, p1 = _PAD - 2, _PAD
    for kind in ("dead", "saturated", "nonfinite", "flagged"):  # later kinds draw over earlier
        sel = [i for i in frames.get(kind, []) if 0 <= i < k]
        if not sel:
            continue
        colour = MARK_COLOURS[kind]
        canvas[sel, p0:p1, p0 : tw2 - p0] = colour
        canvas[sel, th2 - p1 : th2 - p0, p0 : tw2 - p0] = colour
        canvas[sel, p0 : th2 - p0, p0:p1] = colour
        canvas[sel, p0 : th2 - p0, tw2 - p1 : tw2 - p0] = colour
    if labels is not None:
        _label(canvas, labels, th, tw)
    grid = canvas.reshape(nrows, ncols, th2, tw2, 3).swapaxes(1, 2)
    return grid.reshape(nrows * th2, ncols * tw2, 3)


def _label(canvas: np.ndarray, labels: list[int], th: int, tw: int) -> None:
    """Channel indices in each tile's top-left corner (white on black), when they fit."""
    glyphs = _digits()
    gh = glyphs[0].shape[0]
    widest = sum(glyphs[int(d)].shape[1] + 1 for d in str(max(labels)))
    if th < gh + 6 or tw < widest + 6:
        return
    for i, n in enumerate(labels):
        x0 = y0 = _PAD
        digits = [glyphs[int(d)] for d in str(n)]
        width = sum(g.shape[1] + 1 for g in digits) + 1
        canvas[i, y0 : y0 + gh + 2, x0 : x0 + width] = 0
        x = x0 + 1
        for g in digits:
            region = canvas[i, y0 + 1 : y0 + 1 + gh, x : x + g.shape[1]]
            region[g] = 255
            x += g.shape[1] + 1


def _legend(frames: dict[str, list[int]]) -> str:
    names = {"dead": "red: dead", "saturated": "orange: saturated", "nonfinite": "magenta: NaN/Inf", "flagged": "blue: flagged"}
    parts = [f"{names[k]} {len(v)}" for k, v in frames.items() if v]
    return "frames: " + ", ".join(parts) if parts else ""
