"""Heatmaps: one channel, or the mean over channels, with a colour bar, optionally over an image."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import _args
from ._draw import NONFINITE_PIXEL, _MAX_PICTURE_SIDE, _captioned, _font, _lut, _map_step, _upscale
from ._maps import _maps


def _image_array(image: Any) -> np.ndarray:
    """The image to draw over as ``[H, W, 3]`` uint8 (tensors in 0..1 are scaled to 0..255)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 3 and t.shape[0] in (1, 3):
            t = t.permute(1, 2, 0)
        a = t.numpy()
        if a.size and a.max() <= 1.0:
            a = a * 255
    elif isinstance(image, np.ndarray):
        a = image.astype(np.float32)
    else:
        raise TypeError(f"image must be a PIL image, a tensor or an array, got {type(image).__name__}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3) or a.size == 0:
        raise ValueError(
            "image must be a PIL image, a [3, H, W] / [1, 3, H, W] / [H, W] tensor or an [H, W, 3] / "
            f"[H, W] array, got shape {tuple(image.shape)}"
        )
    a = np.clip(a, 0, 255).astype(np.uint8)
    return np.repeat(a, 3, 2) if a.shape[2] == 1 else a


@torch.no_grad()
def heatmap(
    x2d: Any,
    *,
    channel: int | None = None,
    cmap: str = "viridis",
    image: Any = None,
    alpha: float = 0.5,
    min_size: int = 160,
    caption: bool = True,
    title: str | None = None,
) -> Image.Image:
    """One channel (or the mean over channels) with a colour bar, optionally over the input image.

    Maps larger than 512 pixels a side are subsampled first (the caption says so), and the
    picture stays within 1024 pixels a side, whatever the input's size.

    Args:
        x2d: ``[H, W]``, or ``[C, H, W]`` / ``[N, C, H, W]`` / a ``LayerCapture`` with
            ``channel`` chosen (default: the mean over channels).
        channel: the channel to draw, ``None`` for the mean over channels.
        cmap: a matplotlib colormap name.
        image: draw over this image (PIL image, ``[3, H, W]`` tensor in 0..1 or 0..255, or array),
            with the map resized bilinearly to it and blended with ``alpha``.
        alpha: the map's weight in the blend, in [0, 1].
        min_size: upscale (nearest neighbour) so the shorter side is at least this.
        caption: a caption with the layer and what is shown.
        title: the name to state (a LayerCapture states its own).

    Raises:
        TypeError, ValueError: for arguments it cannot draw, before any work.
    """
    from .._capture import LayerCapture

    _args._int(channel, "channel", minimum=0, none="the mean over channels")
    _args._cmap(cmap)
    _args._fraction(alpha, "alpha")
    _args._int(min_size, "min_size")
    _args._title(title)
    base = None if image is None else _image_array(image)
    is_map = isinstance(x2d, torch.Tensor) and x2d.ndim == 2
    maps = _maps(x2d[None] if is_map else x2d, None, "middle", None, fn="heatmap", ranges=False)
    m = maps.data
    if channel is not None and channel >= m.shape[0]:
        raise ValueError(f"channel must be in [0, {m.shape[0]}) for a map of {m.shape[0]} channels, got {channel}")
    step = _map_step(m.shape[1], m.shape[2])
    m = m[:, ::step, ::step]
    if channel is not None:
        what, t = f"channel {channel}", m[channel]
    elif is_map:
        what, t = "map", m[0]
    else:
        what, t = f"mean of {m.shape[0]} channels", torch.nan_to_num(m.float()).mean(0)
    notes = "".join(f"; {n}" for n in maps.notes) + (f"; shown at 1/{step} resolution" if step > 1 else "")
    a = t.double().cpu().numpy()
    fin = np.isfinite(a)
    lo, hi = (float(a[fin].min()), float(a[fin].max())) if fin.any() else (0.0, 0.0)
    span = hi - lo if hi > lo else 1.0
    q = (np.clip((np.where(fin, a, lo) - lo) / span, 0, 1) * 255 + 0.5).astype(np.uint8)
    lut = _lut(cmap)
    rgb = lut[q]
    rgb[~fin] = NONFINITE_PIXEL
    if base is not None:
        bh, bw = base.shape[:2]
        if max(bh, bw) > _MAX_PICTURE_SIDE:  # a huge photo is shown at the picture's size too
            f = _MAX_PICTURE_SIDE / max(bh, bw)
            size = (max(1, round(bw * f)), max(1, round(bh * f)))
            base = np.asarray(Image.fromarray(base).resize(size, Image.Resampling.BILINEAR))
        over = np.asarray(Image.fromarray(rgb).resize((base.shape[1], base.shape[0]), Image.Resampling.BILINEAR))
        rgb = (base.astype(np.float32) * (1 - alpha) + over.astype(np.float32) * alpha + 0.5).astype(np.uint8)
    else:
        up = _upscale(*rgb.shape[:2], min_size)
        rgb = rgb.repeat(up, 0).repeat(up, 1)
    body = _with_colour_bar(rgb, lut, lo, hi)
    if not caption:
        return Image.fromarray(body)
    name = title or (x2d.name if isinstance(x2d, LayerCapture) else "")
    return _captioned(body, [f"{name or 'map'}  {what}" + ("  over image" if base is not None else "") + notes])


def _with_colour_bar(rgb: np.ndarray, lut: np.ndarray, lo: float, hi: float) -> np.ndarray:
    h = rgb.shape[0]
    bar_w, gap, text_w = 14, 6, 64
    ramp = lut[np.linspace(255, 0, h).round().astype(np.uint8)]  # top = high
    panel = np.full((h, gap + bar_w + text_w, 3), 255, np.uint8)
    panel[:, gap : gap + bar_w] = ramp[:, None, :]
    im = Image.fromarray(panel)
    draw = ImageDraw.Draw(im)
    font = _font(11)
    for frac, value in ((0.0, hi), (0.5, (lo + hi) / 2), (1.0, lo)):
        y = int(frac * (h - 12))
        draw.text((gap + bar_w + 4, y), f"{value:.3g}", fill=(20, 20, 20), font=font)
    return np.concatenate([rgb, np.asarray(im)], 1)
