"""Pictures: channel grids, kernel grids, PCA composites and heatmaps.

The fast path, used for every picture: normalise with ranges already known (a capture's
per-channel statistics) or computed where the data lives, quantise to uint8 on that device, move
the uint8 to the host once, tile with numpy reshapes, colour with a 256-entry lookup table and
encode one PNG (``compress_level=1``). Never one matplotlib Axes per channel.

Layouts (the rule for a channel-first map ``[C, *spatial]``):

* ``[C, H, W]``: one tile per channel.
* ``[C, L]``: a horizontal strip per channel (1-D convolutions, signals).
* ``[C, D, H, W]``: the middle slice along D (``depth="middle"``), or the max or mean projection.
* token sequences ``[L, C]`` (tensors with ``layout="tokens"``, or capture records whose channels
  are on the last dim of a rank-3 output): when ``L = k * k + e`` with ``0 <= e <= 8``, the first
  ``e`` tokens (class and register tokens, which come first in ViT, DeiT and DINOv2) are dropped
  and the rest shown as a ``k x k`` grid; otherwise as strips.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from . import _config, _verdicts
from ._paths import safe_filename

__all__ = [
    "channel_grid",
    "heatmap",
    "kernel_grid",
    "load_image",
    "pca_rgb",
    "save_channels",
    "to_image",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MARK_COLOURS = {
    "flagged": (0, 190, 255),
    "nonfinite": (255, 0, 255),
    "dead": (230, 30, 30),
    "saturated": (255, 150, 0),
}
NONFINITE_PIXEL = (255, 0, 255)
BACKGROUND = (40, 40, 40)
_PAD = 3  # pixels around each tile; marks are 2-pixel frames drawn inside this padding
_MAX_TOKEN_EXTRAS = 8
_NORMALISATIONS = ("minmax", "symmetric", "sigmoid", "percentile")
_SELECTIONS = ("first", "last", "energy", "variance")


# -- small shared pieces ------------------------------------------------------------------------


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


# -- turning input into channel-first maps ----------------------------------------------------------


@dataclasses.dataclass
class _Maps:
    data: torch.Tensor  # [C, h, w] float, any device
    name: str
    shape: tuple[int, ...]  # the shape to state in the caption
    channels: int
    notes: list[str]
    lo: np.ndarray | None = None  # per-channel range already known (capture statistics)
    hi: np.ndarray | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    marks: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    range_source: str = "data range"


def _tokens_to_grid(m: torch.Tensor, notes: list[str]) -> torch.Tensor:
    """``[C, L]`` tokens to ``[C, k, k]`` when ``L = k * k + e`` (e leading extra tokens)."""
    length = m.shape[1]
    for extra in range(0, _MAX_TOKEN_EXTRAS + 1):
        k = math.isqrt(length - extra) if length > extra else 0
        if k >= 2 and k * k == length - extra:
            if extra:
                notes.append(f"tokens: first {extra} of {length} dropped, rest as {k}x{k}")
            else:
                notes.append(f"tokens: {length} as {k}x{k}")
            return m[:, extra:].reshape(m.shape[0], k, k)
    notes.append(f"tokens: {length} is not a square plus <= {_MAX_TOKEN_EXTRAS}, shown as strips")
    return m.unsqueeze(1)


def _to_2d(m: torch.Tensor, notes: list[str], depth: str, tokens: bool) -> torch.Tensor:
    if m.ndim == 1:
        return m.reshape(-1, 1, 1)
    if m.ndim == 2:
        return _tokens_to_grid(m, notes) if tokens else m.unsqueeze(1)
    if m.ndim == 3:
        return m
    if m.ndim == 4:
        if depth == "middle":
            notes.append(f"depth: slice {m.shape[1] // 2} of {m.shape[1]}")
            return m[:, m.shape[1] // 2]
        if depth in ("max", "mean"):
            notes.append(f"depth: {depth} over {m.shape[1]}")
            return m.amax(1) if depth == "max" else m.mean(1)
        raise ValueError(f"depth must be 'middle', 'max' or 'mean', got {depth!r}")
    raise ValueError(f"cannot lay out a map of rank {m.ndim + 1}; expected [N,] C followed by 0 to 3 spatial dims")


def _maps(x: Any, layout: str | None, depth: str, bounds: tuple[float, float] | None) -> _Maps:
    from ._capture import LayerCapture

    notes: list[str] = []
    if isinstance(x, LayerCapture):
        if x.sample is None:
            raise ValueError(
                f"layer {x.name!r} was captured with keep_samples=False: there is no sample to draw"
            )
        tokens = x.channel_dim is not None and len(x.shape) == 3 and x.channel_dim == 2
        if any(s > 1 for s in x.sample_step):
            notes.append("sample subsampled by " + "x".join(map(str, x.sample_step)))
        st = x.stats
        marks = {
            "nonfinite": np.flatnonzero(st["nonfinite"] > 0).tolist(),
            "dead": x.dead_channels(),
            "saturated": x.saturated_channels() if x.bounds is not None else [],
        }
        return _Maps(
            _to_2d(x.sample, notes, depth, tokens), x.name, tuple(x.shape), x.channels, notes,
            lo=st["min"], hi=st["max"], mean=st["mean"], std=st["std"], marks=marks,
            range_source=f"range over {x.samples} sample{'s' if x.samples != 1 else ''}",
        )
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a LayerCapture or a tensor, got {type(x).__name__}")
    if layout not in (None, "tokens"):
        raise ValueError(f"layout must be None or 'tokens', got {layout!r}")
    shape = tuple(x.shape)
    t = x.detach()
    if layout == "tokens":
        if t.ndim == 3:
            t = t[0]
        if t.ndim != 2:
            raise ValueError(f"layout='tokens' expects [L, C] or [N, L, C], got shape {shape}")
        t = t.transpose(0, 1)
        m = _to_2d(t, notes, depth, tokens=True)
    else:
        if t.ndim == 4 or t.ndim == 5:
            t = t[0]
            notes.append("first sample")
        if t.ndim < 1:
            raise ValueError(f"expected [C, H, W], [N, C, H, W], [C, L] or [C, D, H, W], got shape {shape}")
        m = _to_2d(t, notes, depth, tokens=False)
    if not (m.is_floating_point()):
        m = m.float()
    flat = m.reshape(m.shape[0], -1).float()
    fin = torch.isfinite(flat)
    big = torch.tensor(float("inf"), device=flat.device)
    lo = torch.where(fin, flat, big).amin(1)
    hi = torch.where(fin, flat, -big).amax(1)
    lo_h, hi_h = lo.cpu().numpy().astype(np.float64), hi.cpu().numpy().astype(np.float64)
    lo_h[~np.isfinite(lo_h)] = np.nan
    hi_h[~np.isfinite(hi_h)] = np.nan
    marks = {
        "nonfinite": torch.nonzero(~fin.all(1)).flatten().tolist(),
        "dead": _verdicts.dead(lo_h, hi_h, np.full(len(lo_h), flat.shape[1])),
        "saturated": [],
    }
    if bounds is not None:
        b_lo, b_hi = bounds
        eps = _config.get("saturation_tolerance") * (b_hi - b_lo)
        at = ((flat <= b_lo + eps) | (flat >= b_hi - eps)).float().mean(1)
        marks["saturated"] = _verdicts.saturated(at.cpu().numpy())
    return _Maps(m, "", shape, m.shape[0], notes, lo=lo_h, hi=hi_h, marks=marks)


# -- choosing, normalising and tiling -----------------------------------------------------------------


def _choose(maps: _Maps, k: int, select: str, flagged: Sequence[int]) -> list[int]:
    c = maps.data.shape[0]
    if k >= c:
        return list(range(c))
    forced = sorted({i for i in flagged if 0 <= i < c})[:k]
    if select == "first":
        order = list(range(c))
    elif select == "last":
        order = list(range(c - 1, -1, -1))
    else:
        if maps.mean is not None and maps.std is not None:
            mean, std = np.nan_to_num(maps.mean), np.nan_to_num(maps.std)
        else:
            flat = maps.data.reshape(c, -1).float()
            flat = torch.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0)
            mean = flat.mean(1).cpu().numpy()
            std = flat.std(1, correction=0).cpu().numpy()
        score = std**2 + (mean**2 if select == "energy" else 0.0)
        order = np.argsort(-score, kind="stable").tolist()
    chosen = set(forced)
    for i in order:
        if len(chosen) >= k:
            break
        chosen.add(i)
    return sorted(chosen)


def _ranges(
    maps: _Maps, idx: list[int], normalize: str, shared: bool, percentile: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Per shown channel, the value mapped to the colormap's low and high end."""
    data = maps.data[idx].reshape(len(idx), -1).float()
    dev = data.device
    if normalize in ("minmax", "symmetric"):
        if maps.lo is not None and maps.hi is not None:
            lo = torch.as_tensor(maps.lo[idx], dtype=torch.float32, device=dev)
            hi = torch.as_tensor(maps.hi[idx], dtype=torch.float32, device=dev)
            source = maps.range_source
        else:
            fin = torch.isfinite(data)
            lo = torch.where(fin, data, float("inf")).amin(1)
            hi = torch.where(fin, data, -float("inf")).amax(1)
            source = "data range"
        lo, hi = torch.nan_to_num(lo, nan=0.0), torch.nan_to_num(hi, nan=0.0)
        if normalize == "symmetric":
            hi = torch.maximum(lo.abs(), hi.abs())
            lo = -hi
        if shared:
            lo, hi = lo.amin().expand_as(lo), hi.amax().expand_as(hi)
        desc = f"{normalize} ({source}{', shared' if shared else ', per channel'})"
        return lo, hi, desc
    if normalize == "percentile":
        p_lo, p_hi = percentile
        if not 0 <= p_lo < p_hi <= 100:
            raise ValueError(f"percentile must be (low, high) with 0 <= low < high <= 100, got {percentile!r}")
        vals = torch.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
        if shared:
            vals = vals.reshape(1, -1)
        q = torch.quantile(vals, torch.tensor([p_lo / 100, p_hi / 100], device=dev), dim=1)
        lo, hi = q[0].expand(len(idx)), q[1].expand(len(idx))
        return lo, hi, f"percentile {p_lo:g}-{p_hi:g}{' shared' if shared else ' per channel'}"
    raise AssertionError(normalize)


def _quantise(
    maps: _Maps, idx: list[int], normalize: str, shared: bool, percentile: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, str]:
    """uint8 colormap indices and the non-finite mask of the shown channels, on the host."""
    data = maps.data[idx].float()
    view = data.reshape(len(idx), -1)
    if normalize == "sigmoid":
        if maps.mean is not None and maps.std is not None:
            mean = torch.as_tensor(np.nan_to_num(maps.mean[idx]), dtype=torch.float32, device=data.device)
            std = torch.as_tensor(np.nan_to_num(maps.std[idx]), dtype=torch.float32, device=data.device)
        else:
            clean = torch.nan_to_num(view, nan=0.0, posinf=0.0, neginf=0.0)
            mean, std = clean.mean(1), clean.std(1, correction=0)
        if shared:
            mean, std = mean.mean().expand_as(mean), std.mean().expand_as(std)
        unit = torch.sigmoid((view - mean[:, None]) / (std[:, None] + 1e-12))
        desc = "sigmoid of z-score" + (" (shared)" if shared else " (per channel)")
    else:
        lo, hi, desc = _ranges(maps, idx, normalize, shared, percentile)
        span = hi - lo
        unit = (view - lo[:, None]) / torch.where(span > 0, span, 1.0)[:, None]
        unit = torch.where((span > 0)[:, None], unit, 0.5)  # constant channel: the middle colour
    nonfinite = ~torch.isfinite(view)
    q = (unit.clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8)
    q = q.masked_fill(nonfinite, 0)
    packed = torch.stack([q, nonfinite.to(torch.uint8)]).cpu().numpy()  # one transfer
    shape = (len(idx), *data.shape[1:])
    return packed[0].reshape(shape), packed[1].reshape(shape).astype(bool), desc


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
    ncols: int | None,
    min_tile: int,
    max_tile: int,
    frames: dict[str, list[int]],
    labels: list[int] | None,
) -> np.ndarray:
    """Colours ``[k, h, w]`` uint8 indices (scaled to tile size) and arranges them."""
    h, w = q.shape[1:]
    up_y, up_x, step_y, step_x = _scale_for(h, w, min_tile, max_tile)
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


# -- public renderers ------------------------------------------------------------------------------------


@torch.no_grad()
def channel_grid(
    x: Any,
    *,
    max_channels: int | None = 64,
    select: str = "first",
    ncols: int | None = None,
    normalize: str = "minmax",
    shared: bool = False,
    percentile: tuple[float, float] = (1.0, 99.0),
    cmap: str | None = None,
    min_tile: int = 24,
    max_tile: int = 64,
    marks: bool = True,
    flagged: Sequence[int] = (),
    bounds: tuple[float, float] | None = None,
    labels: bool = True,
    caption: bool = True,
    layout: str | None = None,
    depth: str = "middle",
    title: str | None = None,
    _tiles: list[Any] | None = None,
) -> Image.Image:
    """Every channel of a feature map as a tile in one image.

    Args:
        x: a ``LayerCapture`` (its first sample, normalised with the capture's per-channel
            statistics, marks from its health figures), or a tensor ``[C, H, W]``,
            ``[N, C, H, W]`` (first sample), ``[C, L]``, ``[C, D, H, W]``, or tokens
            ``[L, C]`` / ``[N, L, C]`` with ``layout="tokens"`` (see the module docstring).
        max_channels: at most this many tiles (``None``: all); the caption says "k of C shown".
        select: which channels when capped: ``"first"``, ``"last"``, or the top ones by
            ``"energy"`` (mean square) or ``"variance"``. Flagged channels are always shown.
        ncols: columns of the grid (default: near-square).
        normalize: ``"minmax"``, ``"symmetric"`` (around zero, for signed maps),
            ``"sigmoid"`` (squash the z-score) or ``"percentile"`` (clip to ``percentile``).
        shared: one range for all channels instead of one per channel.
        cmap: a matplotlib colormap name (default ``"viridis"``, ``"RdBu_r"`` for symmetric).
        min_tile: maps smaller than this many pixels are upscaled (nearest neighbour).
        max_tile: maps larger than this are subsampled.
        marks: frame dead (red), saturated (orange) and NaN/Inf (magenta) channels; NaN and Inf
            pixels are magenta.
        flagged: channel indices to frame in blue (e.g. from a failed check).
        bounds: ``(low, high)`` output bounds for the saturation marks of a tensor.
        labels: write each tile's channel index in its corner when it fits.
        caption: a caption with the layer, shape, normalisation and how many channels are shown.
        title: the name to state for a tensor (a LayerCapture states its own).

    Returns:
        A ``PIL.Image.Image`` (RGB).
    """
    if normalize not in _NORMALISATIONS:
        raise ValueError(f"normalize must be one of {_NORMALISATIONS}, got {normalize!r}")
    if select not in _SELECTIONS:
        raise ValueError(f"select must be one of {_SELECTIONS}, got {select!r}")
    if max_channels is not None and max_channels < 1:
        raise ValueError(f"max_channels must be >= 1 or None, got {max_channels!r}")
    if ncols is not None and ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols!r}")
    maps = _maps(x, layout, depth, bounds)
    c = maps.data.shape[0]
    idx = _choose(maps, c if max_channels is None else max_channels, select, flagged)
    q, bad, desc = _quantise(maps, idx, normalize, shared, percentile)
    cmap = cmap or ("RdBu_r" if normalize == "symmetric" else "viridis")
    if _tiles is not None:  # save_channels reuses the quantised channels instead of redoing them
        _tiles[:] = [idx, q, bad, _lut(cmap), min_tile]
    pos = {ch: i for i, ch in enumerate(idx)}
    frames: dict[str, list[int]] = {}
    if marks:
        for kind, chans in maps.marks.items():
            frames[kind] = [pos[ch] for ch in chans if ch in pos]
    frames["flagged"] = [pos[ch] for ch in flagged if ch in pos]
    body = _tile(
        q, bad, _lut(cmap), ncols=ncols, min_tile=min_tile, max_tile=max_tile, frames=frames,
        labels=idx if labels else None,
    )
    if not caption:
        return Image.fromarray(body)
    _, _, step_y, step_x = _scale_for(q.shape[1], q.shape[2], min_tile, max_tile)
    if step_y > 1 or step_x > 1:
        maps.notes.append(f"shown at 1/{max(step_y, step_x)} resolution (max_tile={max_tile})")
    name = title or maps.name or "tensor"
    shown = f"all {c} channels" if len(idx) == c else f"{len(idx)} of {c} channels shown ({select})"
    lines = [f"{name}  {_fmt_shape(maps.shape)}  {shown}", f"{desc}, {cmap}" + "".join(f"; {n}" for n in maps.notes)]
    legend = _legend({k: [idx[i] for i in v] for k, v in frames.items()})
    if legend:
        lines.append(legend)
    return _captioned(body, lines)


def _weight(conv_or_weight: Any) -> tuple[torch.Tensor, int, str]:
    if isinstance(conv_or_weight, torch.nn.Module):
        w = getattr(conv_or_weight, "weight", None)
        if not isinstance(w, torch.Tensor):
            raise TypeError(f"{type(conv_or_weight).__name__} has no weight tensor to draw")
        return w.detach(), int(getattr(conv_or_weight, "groups", 1)), type(conv_or_weight).__name__
    if isinstance(conv_or_weight, torch.Tensor):
        return conv_or_weight.detach(), 1, "weight"
    raise TypeError(f"expected a convolution module or a weight tensor, got {type(conv_or_weight).__name__}")


@torch.no_grad()
def kernel_grid(
    conv_or_weight: Any,
    *,
    max_out: int = 16,
    max_in: int = 16,
    groups: int | None = None,
    cmap: str = "RdBu_r",
    min_tile: int = 24,
    caption: bool = True,
    title: str | None = None,
) -> Image.Image:
    """The kernels of a convolution.

    First-layer kernels with 3 input channels are drawn as RGB tiles, one per filter, each scaled
    symmetrically so that zero is mid-grey. Other convolutions are an out x in grid of tiles in a
    diverging colormap centred at zero with one scale for the layer (capped at ``max_out`` x
    ``max_in``, saying so). Depthwise convolutions (one input per filter) are one tile per filter.

    Args:
        conv_or_weight: a ``Conv1d/2d/3d`` (or any module with a ``weight``) or a weight tensor
            ``[out, in/groups, *kernel]``.
        groups: the convolution's groups for a bare weight tensor (a module states its own).
    """
    w, mod_groups, kind = _weight(conv_or_weight)
    g = groups or mod_groups
    w = w.float()
    if w.ndim == 2:
        w = w[:, :, None, None]
    elif w.ndim == 3:
        w = w[:, :, None, :]
    elif w.ndim == 5:
        w = w[:, :, w.shape[2] // 2]
    elif w.ndim != 4:
        raise ValueError(f"expected a weight of rank 2 to 5, got shape {tuple(w.shape)}")
    out_c, in_c = w.shape[:2]
    notes = [f"groups={g}"] if g > 1 else []
    if in_c == 3 and g == 1:
        k = min(out_c, max_out)
        sel = w[:k]
        scale = sel.abs().amax((1, 2, 3), keepdim=True).clamp_min(1e-12)
        grey_at_zero = ((sel / scale) * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8)
        rgb = grey_at_zero.permute(0, 2, 3, 1).cpu().numpy()  # [k, kh, kw, 3]
        up_y, up_x, _, _ = _scale_for(rgb.shape[1], rgb.shape[2], min_tile, 1 << 30)
        body = _arrange(rgb.repeat(up_y, 1).repeat(up_x, 2), ncols=None, frames={}, labels=None)
        desc = f"RGB per filter, scaled so 0 is grey; {k} of {out_c} filters" if k < out_c else f"RGB per filter, scaled so 0 is grey; {out_c} filters"
    else:
        m = float(w.abs().amax().clamp_min(1e-12))
        if in_c == 1:
            k = min(out_c, max_out * max_in)
            tiles = w[:k, 0]
            ncols = None
            desc = f"{k} of {out_c} filters" if k < out_c else f"{out_c} filters"
        else:
            ko, ki = min(out_c, max_out), min(in_c, max_in)
            tiles = w[:ko, :ki].reshape(ko * ki, *w.shape[2:])
            ncols = ki
            desc = f"rows: {ko} of {out_c} filters, columns: {ki} of {in_c} inputs per group"
        q = ((tiles / m) * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        body = _tile(q, np.zeros(q.shape, bool), _lut(cmap), ncols=ncols, min_tile=min_tile,
                     max_tile=1 << 30, frames={}, labels=None)
        desc += f"; {cmap} centred at 0, |w| <= {m:.3g}"
    if not caption:
        return Image.fromarray(body)
    lines = [f"{title or kind}  weight {_fmt_shape(tuple(w.shape))}", desc + "".join(f"; {n}" for n in notes)]
    return _captioned(body, lines)


@dataclasses.dataclass(frozen=True)
class _PCABasis:
    mean: np.ndarray  # [C]
    components: np.ndarray  # [C, 3]
    lo: np.ndarray  # [3]
    hi: np.ndarray  # [3]
    explained: np.ndarray  # [3] share of variance


def _pca_input(x: Any) -> tuple[torch.Tensor, str]:
    maps = _maps(x, None, "middle", None)
    m = maps.data
    if m.shape[1] == 1 and m.shape[2] > 1:
        raise ValueError("pca_rgb needs a 2-D map ([C, H, W] or a token grid), got a 1-D map")
    return m, maps.name


def _fit_pca(m: torch.Tensor) -> _PCABasis:
    c = m.shape[0]
    xs = m.reshape(c, -1).double().T  # [HW, C]
    xs = torch.nan_to_num(xs, nan=0.0, posinf=0.0, neginf=0.0)
    mean = xs.mean(0)
    xc = xs - mean
    cov = xc.T @ xc / max(xs.shape[0], 1)
    vals, vecs = torch.linalg.eigh(cov)  # deterministic, ascending
    order = torch.argsort(vals, descending=True, stable=True)[:3]
    comps = vecs[:, order]
    flip = torch.sign(comps.gather(0, comps.abs().argmax(0, keepdim=True)))
    comps = comps * torch.where(flip == 0, 1.0, flip)
    if comps.shape[1] < 3:
        comps = torch.cat([comps, torch.zeros(c, 3 - comps.shape[1], dtype=comps.dtype)], 1)
    proj = xc @ comps
    lo = torch.quantile(proj, 0.01, dim=0) if proj.shape[0] > 1 else proj.amin(0)
    hi = torch.quantile(proj, 0.99, dim=0) if proj.shape[0] > 1 else proj.amax(0)
    total = float(vals.clamp_min(0).sum())
    top = vals[order].clamp_min(0)
    explained = (top / total if total > 0 else top * 0).cpu().numpy()
    explained = np.pad(explained, (0, 3 - len(explained)))
    return _PCABasis(mean.cpu().numpy(), comps.cpu().numpy(), lo.cpu().numpy(), hi.cpu().numpy(), explained)


@torch.no_grad()
def pca_rgb(x: Any, *, fit: Any = None, min_size: int = 128, caption: bool = True) -> Image.Image:
    """A map's channels projected onto their first three principal components, as RGB.

    Deterministic: the basis comes from the eigendecomposition of the float64 channel covariance
    (no randomised solver), each component's sign fixed so its largest loading is positive, and
    colours scaled to the 1st-99th percentile of each component.

    Args:
        x: a ``LayerCapture`` or a ``[C, H, W]`` / ``[N, C, H, W]`` tensor.
        fit: fit the basis (and the colour scaling) on this map instead, e.g. the baseline's
            capture, so that the same colours mean the same directions in both pictures.
        min_size: upscale (nearest neighbour) so the shorter side is at least this.
    """
    m, name = _pca_input(x)
    basis = _fit_pca(m if fit is None else _pca_input(fit)[0])
    c, h, w = m.shape
    if basis.mean.shape[0] != c:
        raise ValueError(f"fit has {basis.mean.shape[0]} channels but x has {c}; they must match")
    xs = torch.nan_to_num(m.reshape(c, -1).double().T.cpu(), nan=0.0, posinf=0.0, neginf=0.0).numpy()
    proj = (xs - basis.mean) @ basis.components
    span = np.where(basis.hi > basis.lo, basis.hi - basis.lo, 1.0)
    rgb = (np.clip((proj - basis.lo) / span, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(h, w, 3)
    up = max(1, math.ceil(min_size / max(1, min(h, w))))
    body = rgb.repeat(up, 0).repeat(up, 1)
    if not caption:
        return Image.fromarray(body)
    ev = "/".join(f"{e:.0%}" for e in basis.explained)
    lines = [f"PCA of {name or 'tensor'}  {c} channels -> RGB", f"explained variance {ev}" + ("; basis fitted on another map" if fit is not None else "")]
    return _captioned(body, lines)


def _image_array(image: Any) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        if t.ndim == 4:
            t = t[0]
        if t.ndim == 3 and t.shape[0] in (1, 3):
            t = t.permute(1, 2, 0)
        a = t.numpy()
        if a.max() <= 1.0:
            a = a * 255
        a = np.clip(a, 0, 255).astype(np.uint8)
        return np.repeat(a, 3, 2) if a.shape[2] == 1 else a
    if isinstance(image, np.ndarray):
        return image if image.ndim == 3 else np.repeat(image[..., None], 3, 2)
    raise TypeError(f"image must be a PIL image, a tensor or an array, got {type(image).__name__}")


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

    Args:
        x2d: ``[H, W]``, or ``[C, H, W]`` / ``[N, C, H, W]`` / a ``LayerCapture`` with
            ``channel`` chosen (default: the mean over channels).
        image: draw over this image (PIL image, ``[3, H, W]`` tensor in 0..1 or 0..255, or array),
            with the map resized bilinearly to it and blended with ``alpha``.
    """
    from ._capture import LayerCapture

    name = title or (x2d.name if isinstance(x2d, LayerCapture) else "")
    t = x2d.sample if isinstance(x2d, LayerCapture) else x2d
    if t is None:
        raise ValueError("this LayerCapture has no sample (captured with keep_samples=False)")
    t = t.detach().float()
    if t.ndim == 4:
        t = t[0]
    if t.ndim == 3:
        if channel is None:
            what = f"mean of {t.shape[0]} channels"
            t = torch.nan_to_num(t).mean(0)
        else:
            if not 0 <= channel < t.shape[0]:
                raise ValueError(f"channel must be in [0, {t.shape[0]}), got {channel}")
            what = f"channel {channel}"
            t = t[channel]
    elif t.ndim == 2:
        what = "map"
    else:
        raise ValueError(f"heatmap expects [H, W], [C, H, W] or [N, C, H, W], got shape {tuple(t.shape)}")
    a = t.cpu().numpy().astype(np.float64)
    fin = np.isfinite(a)
    lo, hi = (float(a[fin].min()), float(a[fin].max())) if fin.any() else (0.0, 0.0)
    span = hi - lo if hi > lo else 1.0
    q = (np.clip((np.where(fin, a, lo) - lo) / span, 0, 1) * 255 + 0.5).astype(np.uint8)
    lut = _lut(cmap)
    rgb = lut[q]
    rgb[~fin] = NONFINITE_PIXEL
    if image is not None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        base = _image_array(image)
        over = np.asarray(Image.fromarray(rgb).resize((base.shape[1], base.shape[0]), Image.Resampling.BILINEAR))
        rgb = (base.astype(np.float32) * (1 - alpha) + over.astype(np.float32) * alpha + 0.5).astype(np.uint8)
    else:
        up = max(1, math.ceil(min_size / max(1, min(rgb.shape[:2]))))
        rgb = rgb.repeat(up, 0).repeat(up, 1)
    body = _with_colour_bar(rgb, lut, lo, hi)
    if not caption:
        return Image.fromarray(body)
    return _captioned(body, [f"{name or 'map'}  {what}" + ("  over image" if image is not None else "")])


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


def save_channels(x: Any, directory: str | Path, *, name: str | None = None, **grid_options: Any) -> Path:
    """Every channel as its own PNG, plus the grid, in a folder named after the layer.

    Writes ``<directory>/<layer name, sanitised>/grid.png`` and ``channel_0000.png``, ... (one per
    channel, normalised and coloured as in the grid, upscaled when small). Returns the folder.

    Args:
        x: a ``LayerCapture`` or a tensor (see :func:`channel_grid`); a tensor needs ``name``.
        grid_options: passed to :func:`channel_grid` (``cmap``, ``normalize``, ...).
    """
    from ._capture import LayerCapture

    layer = x.name if isinstance(x, LayerCapture) else name
    if not layer:
        raise ValueError("save_channels needs name= for a tensor: it names the folder")
    folder = Path(directory) / safe_filename(layer)
    folder.mkdir(parents=True, exist_ok=True)
    tiles: list[Any] = []
    channel_grid(x, **{**grid_options, "max_channels": None}, _tiles=tiles).save(folder / "grid.png", compress_level=1)
    idx, q, bad, lut, min_tile = tiles
    up_y, up_x, _, _ = _scale_for(q.shape[1], q.shape[2], min_tile, 1 << 30)
    width = max(4, len(str(len(idx) - 1)))
    for i in idx:
        rgb = lut[q[i].repeat(up_y, 0).repeat(up_x, 1)]
        rgb[bad[i].repeat(up_y, 0).repeat(up_x, 1)] = NONFINITE_PIXEL
        Image.fromarray(rgb).save(folder / f"channel_{i:0{width}d}.png", compress_level=1)
    return folder


def load_image(
    path: str | Path,
    size: int | None = 224,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
) -> torch.Tensor:
    """An image file as a normalised ``[1, 3, size, size]`` batch.

    The shorter side is resized to ``size`` and the centre cropped square (``size=None`` keeps the
    image as it is); values are scaled to 0..1 and normalised with ``mean`` / ``std`` (ImageNet's
    by default; ``None`` for none).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    im = Image.open(path).convert("RGB")
    if size is not None:
        if size < 1:
            raise ValueError(f"size must be >= 1 or None, got {size!r}")
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BILINEAR)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
    t = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    if mean is not None and std is not None:
        t = (t - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return t.unsqueeze(0).contiguous()


def to_image(
    t: torch.Tensor,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
) -> Image.Image:
    """A normalised ``[3, H, W]`` or ``[1, 3, H, W]`` tensor back to a displayable RGB image."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"expected a tensor, got {type(t).__name__}")
    x = t.detach().float().cpu()
    if x.ndim == 4:
        x = x[0]
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected [3, H, W] or [1, 3, H, W], got shape {tuple(t.shape)}")
    if mean is not None and std is not None and x.shape[0] == 3:
        x = x * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    a = (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.repeat(a, 3, 2) if a.shape[2] == 1 else a)
