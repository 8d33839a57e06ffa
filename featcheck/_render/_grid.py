"""Channel grids: every channel of a feature map as a tile in one image, and per-channel files.

The fast path: normalise with ranges already known (a capture's per-channel statistics, or one
pass over a tensor without temporaries), subsample big maps to the tile size first, quantise to
uint8 where the data lives, move the uint8 to the host once, tile with numpy reshapes, colour
with a 256-entry lookup table and encode one PNG. Never one matplotlib Axes per channel.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .._paths import safe_filename
from . import _args
from ._draw import NONFINITE_PIXEL, _captioned, _fmt_shape, _legend, _lut, _scale_for, _tile
from ._maps import _DEPTHS, _check_source, _Maps, _maps

_NORMALISATIONS = ("minmax", "symmetric", "sigmoid", "percentile")
_SELECTIONS = ("first", "last", "energy", "variance")
_QUANTILE_MAX = 1 << 24  # the most values torch.quantile takes


def _check_grid(
    x: Any, *, max_channels: Any, select: Any, ncols: Any, normalize: Any, percentile: Any, cmap: Any,
    min_tile: Any, max_tile: Any, flagged: Any, bounds: Any, layout: Any, depth: Any, title: Any,
    capture_ok: bool = False, **_flags: Any,
) -> None:
    """Every check ``channel_grid`` makes before rendering (``_flags``: the boolean switches)."""
    _args._choice(normalize, "normalize", _NORMALISATIONS)
    _args._choice(select, "select", _SELECTIONS)
    _args._choice(depth, "depth", _DEPTHS)
    _args._int(max_channels, "max_channels", none="all channels")
    _args._int(ncols, "ncols", none="near-square")
    _args._int(min_tile, "min_tile")
    _args._int(max_tile, "max_tile")
    _args._percentile(percentile)
    _args._cmap(cmap, none=True)
    _args._channels(flagged, "flagged")
    if bounds is not None:
        _args._pair(bounds, "bounds", "the output bounds for saturation marks")
    _args._title(title)
    _check_source(x, layout, fn="channel_grid", capture_ok=capture_ok)


def _choose(maps: _Maps, data: torch.Tensor, k: int, select: str, flagged: Sequence[int]) -> list[int]:
    """The channels to show: at most ``k``, flagged ones first, then by ``select``. Scores come
    from the capture's statistics, else from ``data`` (the map as it will be shown)."""
    c = data.shape[0]
    if k >= c:
        return list(range(c))
    forced = sorted({int(i) for i in flagged if 0 <= i < c})[:k]
    if select == "first":
        order = list(range(c))
    elif select == "last":
        order = list(range(c - 1, -1, -1))
    else:
        if maps.mean is not None and maps.std is not None:
            mean, std = np.nan_to_num(maps.mean), np.nan_to_num(maps.std)
        else:
            flat = torch.nan_to_num(data.reshape(c, -1).float(), nan=0.0, posinf=0.0, neginf=0.0)
            mean = flat.mean(1).double().cpu().numpy()
            std = flat.std(1, correction=0).double().cpu().numpy()
        score = std**2 + (mean**2 if select == "energy" else 0.0)
        order = np.argsort(-score, kind="stable").tolist()
    chosen = set(forced)
    for i in order:
        if len(chosen) >= k:
            break
        chosen.add(i)
    return sorted(chosen)


def _ranges(
    maps: _Maps, data: torch.Tensor, normalize: str, shared: bool, percentile: tuple[float, float], idx: list[int]
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Per shown channel (``data``: the shown channels), the values mapped to the colormap's ends."""
    dev = data.device
    if normalize in ("minmax", "symmetric"):
        if maps.lo is not None and maps.hi is not None:
            lo = torch.as_tensor(maps.lo[idx], dtype=torch.float32, device=dev)
            hi = torch.as_tensor(maps.hi[idx], dtype=torch.float32, device=dev)
            source = maps.range_source
        else:
            flat = data.reshape(len(idx), -1)
            fin = torch.isfinite(flat)
            lo = torch.where(fin, flat, float("inf")).amin(1)
            hi = torch.where(fin, flat, -float("inf")).amax(1)
            source = "data range"
        lo, hi = torch.nan_to_num(lo, nan=0.0), torch.nan_to_num(hi, nan=0.0)
        if normalize == "symmetric":
            hi = torch.maximum(lo.abs(), hi.abs())
            lo = -hi
        if shared:
            lo, hi = lo.amin().expand_as(lo), hi.amax().expand_as(hi)
        return lo, hi, f"{normalize} ({source}{', shared' if shared else ', per channel'})"
    p_lo, p_hi = percentile
    vals = torch.nan_to_num(data.reshape(len(idx), -1), nan=0.0, posinf=0.0, neginf=0.0)
    if shared:
        vals = vals.reshape(1, -1)
    if vals.numel() > _QUANTILE_MAX:  # torch.quantile refuses more; a regular subsample of the values
        vals = vals[:, :: math.ceil(vals.numel() / _QUANTILE_MAX)]
    q = torch.quantile(vals, torch.tensor([p_lo / 100, p_hi / 100], device=dev, dtype=vals.dtype), dim=1)
    lo, hi = q[0].expand(len(idx)), q[1].expand(len(idx))
    return lo, hi, f"percentile {p_lo:g}-{p_hi:g}{' shared' if shared else ' per channel'}"


def _quantise(
    maps: _Maps, data: torch.Tensor, idx: list[int], normalize: str, shared: bool, percentile: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, str]:
    """uint8 colormap indices and the non-finite mask of the shown channels ``data``, on the host."""
    data = data.float()
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
        lo, hi, desc = _ranges(maps, data, normalize, shared, percentile, idx)
        span = hi - lo
        unit = (view - lo[:, None]) / torch.where(span > 0, span, 1.0)[:, None]
        unit = torch.where((span > 0)[:, None], unit, 0.5)  # constant channel: the middle colour
    nonfinite = ~torch.isfinite(view)
    q = (unit.clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8)
    q = q.masked_fill(nonfinite, 0)
    packed = torch.stack([q, nonfinite.to(torch.uint8)]).cpu().numpy()  # one transfer
    shape = (len(idx), *data.shape[1:])
    return packed[0].reshape(shape), packed[1].reshape(shape).astype(bool), desc


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
            ``[L, C]`` / ``[N, L, C]`` with ``layout="tokens"`` (see ``featcheck._render._maps``).
        max_channels: at most this many tiles (``None``: all); the caption says "k of C shown".
        select: which channels when capped: ``"first"``, ``"last"``, or the top ones by
            ``"energy"`` (mean square) or ``"variance"``. Flagged channels are always shown.
        ncols: columns of the grid (default: near-square).
        normalize: ``"minmax"``, ``"symmetric"`` (around zero, for signed maps),
            ``"sigmoid"`` (squash the z-score) or ``"percentile"`` (clip to ``percentile``).
        shared: one range for all channels instead of one per channel.
        percentile: ``(low, high)`` percentages for ``normalize="percentile"``.
        cmap: a matplotlib colormap name (default ``"viridis"``, ``"RdBu_r"`` for symmetric).
        min_tile: maps smaller than this many pixels are upscaled (nearest neighbour).
        max_tile: maps larger than this are subsampled (before they are normalised, so the cost
            follows the picture; a tensor's min-max range and marks still cover all its values).
        marks: frame dead (red), saturated (orange) and NaN/Inf (magenta) channels; NaN and Inf
            pixels are magenta.
        flagged: channel indices to frame in blue (e.g. from a failed check).
        bounds: ``(low, high)`` output bounds for the saturation marks of a tensor.
        labels: write each tile's channel index in its corner when it fits.
        caption: a caption with the layer, shape, normalisation and how many channels are shown.
        layout: ``"tokens"`` for a tensor of tokens ``[L, C]`` / ``[N, L, C]``.
        depth: for volumes: ``"middle"`` slice, ``"max"`` or ``"mean"`` projection.
        title: the name to state for a tensor (a LayerCapture states its own).

    Returns:
        A ``PIL.Image.Image`` (RGB).

    Raises:
        TypeError, ValueError: for arguments it cannot draw, before any work.
    """
    _check_grid(
        x, max_channels=max_channels, select=select, ncols=ncols, normalize=normalize, percentile=percentile,
        cmap=cmap, min_tile=min_tile, max_tile=max_tile, flagged=flagged, bounds=bounds, layout=layout,
        depth=depth, title=title,
    )
    maps = _maps(x, layout, depth, bounds, fn="channel_grid")
    c, h, w = maps.data.shape
    idx = _choose(maps, maps.data, c if max_channels is None else max_channels, select, flagged)
    scale = _scale_for(h, w, min_tile, max_tile)
    data = maps.data
    if _tiles is None:  # subsample before normalising; save_channels needs the full resolution
        data = data[:, :: scale[2], :: scale[3]]
        scale = (*scale[:2], 1, 1)
    data = data if len(idx) == c else data[idx]  # a view when every channel is shown
    q, bad, desc = _quantise(maps, data, idx, normalize, shared, percentile)
    cmap = cmap or ("RdBu_r" if normalize == "symmetric" else "viridis")
    if _tiles is not None:  # save_channels reuses the quantised channels instead of redoing them
        _tiles[:] = [idx, q, bad, _lut(cmap), min_tile]
    pos = {ch: i for i, ch in enumerate(idx)}
    frames: dict[str, list[int]] = {}
    if marks:
        for kind, chans in maps.marks.items():
            frames[kind] = [pos[ch] for ch in chans if ch in pos]
    frames["flagged"] = [pos[ch] for ch in flagged if ch in pos]
    body = _tile(q, bad, _lut(cmap), scale=scale, ncols=ncols, frames=frames, labels=idx if labels else None)
    if not caption:
        return Image.fromarray(body)
    _, _, step_y, step_x = _scale_for(h, w, min_tile, max_tile)
    if step_y > 1 or step_x > 1:
        maps.notes.append(f"shown at 1/{max(step_y, step_x)} resolution (max_tile={max_tile})")
    name = title or maps.name or "tensor"
    shown = f"all {c} channels" if len(idx) == c else f"{len(idx)} of {c} channels shown ({select})"
    lines = [f"{name}  {_fmt_shape(maps.shape)}  {shown}", f"{desc}, {cmap}" + "".join(f"; {n}" for n in maps.notes)]
    legend = _legend({k: [idx[i] for i in v] for k, v in frames.items()})
    if legend:
        lines.append(legend)
    return _captioned(body, lines)


def save_channels(x: Any, directory: str | Path, *, name: str | None = None, **grid_options: Any) -> Path:
    """Every channel as its own PNG, plus the grid, in a folder named after the layer.

    Writes ``<directory>/<layer name, sanitised>/grid.png`` and ``channel_0000.png``, ... (one per
    channel, normalised and coloured as in the grid, at full resolution, upscaled when small).
    Returns the folder.

    Args:
        x: a ``LayerCapture`` or a tensor (see :func:`channel_grid`); a tensor needs ``name``.
        grid_options: passed to :func:`channel_grid` (``cmap``, ``normalize``, ...).
    """
    from .._capture import LayerCapture

    if not isinstance(directory, (str, Path)):
        raise TypeError(f"directory must be a str or a Path, got {type(directory).__name__}: {directory!r}")
    layer = x.name if isinstance(x, LayerCapture) else name
    if not layer or not isinstance(layer, str):
        raise ValueError(f"save_channels needs name= (a non-empty str) for a tensor: it names the folder; got {name!r}")
    unknown = sorted(set(grid_options) - _GRID_OPTIONS)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(map(repr, unknown))} for save_channels; known: {', '.join(sorted(_GRID_OPTIONS))}")
    folder = Path(directory) / safe_filename(layer)
    tiles: list[Any] = []
    grid = channel_grid(x, **{**grid_options, "max_channels": None}, _tiles=tiles)  # fails before any file is made
    folder.mkdir(parents=True, exist_ok=True)
    grid.save(folder / "grid.png", compress_level=1)
    idx, q, bad, lut, min_tile = tiles
    up_y, up_x, _, _ = _scale_for(q.shape[1], q.shape[2], min_tile, 1 << 30)
    width = max(4, len(str(len(idx) - 1)))
    for i in idx:
        rgb = lut[q[i].repeat(up_y, 0).repeat(up_x, 1)]
        rgb[bad[i].repeat(up_y, 0).repeat(up_x, 1)] = NONFINITE_PIXEL
        Image.fromarray(rgb).save(folder / f"channel_{i:0{width}d}.png", compress_level=1)
    return folder


# What save_channels passes on to channel_grid (max_channels is accepted and overridden: all channels).
_GRID_OPTIONS = frozenset(p for p in inspect.signature(channel_grid).parameters if p != "x" and not p.startswith("_"))
