"""Before and after: reference | candidate | |difference| side by side.

``diff_grid`` draws a pair of :func:`featcheck.compare`; the baseline report draws a stored
picture against the current one with the same :func:`triptych`. Reference and candidate share one
colour scale (the range of both), so equal maps look equal; the difference has its own scale
from 0 to its largest value, stated in the caption, so that a small difference is still seen
where it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ._draw import BACKGROUND, NONFINITE_PIXEL, _arrange, _captioned, _lut, _scale_for

__all__ = ["diff_grid", "triptych"]

_GAP = 12  # pixels between the three panels
_MIN_TILE = 32
_MAX_TILE = 96


def _as_maps(x: Any) -> np.ndarray:
    """``[k, *spatial]`` as float64 ``[k, h, w]``: vectors become 1 x 1 tiles, signals strips."""
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)
    if a.ndim == 1:
        return a.reshape(-1, 1, 1)
    if a.ndim == 2:
        return a.reshape(a.shape[0], 1, a.shape[1])
    return a.reshape(a.shape[0], a.shape[1], -1) if a.ndim == 3 else a.reshape(a.shape[0], a.shape[-2], a.shape[-1])


def _quantised(a: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    bad = ~np.isfinite(a)
    span = hi - lo
    unit = (np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo) - lo) / span if span > 0 else np.full(a.shape, 0.5)
    return (np.clip(unit, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), bad


def _panel(
    q: np.ndarray, bad: np.ndarray, lut: np.ndarray, scale: tuple[int, int, int, int], ncols: int,
    labels: list[int], flagged: list[int],
) -> np.ndarray:
    up_y, up_x, step_y, step_x = scale
    q, bad = q[:, ::step_y, ::step_x], bad[:, ::step_y, ::step_x]
    q = q.repeat(up_y, 1).repeat(up_x, 2)
    bad = bad.repeat(up_y, 1).repeat(up_x, 2)
    rgb = lut[q]
    rgb[bad] = NONFINITE_PIXEL
    return _arrange(rgb, ncols=ncols, frames={"flagged": flagged}, labels=labels)


def panels(
    reference: Any, candidate: Any, labels: Sequence[int], flagged: Sequence[int] = (), cmap: str = "viridis"
) -> tuple[list[np.ndarray], tuple[float, float], float]:
    """The three panels (RGB arrays) of :func:`triptych`, the shared range and the difference's
    largest value. ``flagged`` are positions (in ``labels``) framed in blue."""
    ref, cand = _as_maps(reference), _as_maps(candidate)
    if ref.shape != cand.shape:
        raise ValueError(f"reference and candidate maps differ in shape: {ref.shape} vs {cand.shape}")
    both = np.concatenate([ref.ravel(), cand.ravel()])
    finite = both[np.isfinite(both)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    with np.errstate(invalid="ignore"):
        diff = np.abs(cand - ref)
    same = (ref == cand) | (np.isnan(ref) & np.isnan(cand))
    diff = np.where(same, 0.0, np.where(np.isfinite(diff), diff, np.nan))
    dmax = float(np.nanmax(diff)) if np.isfinite(diff).any() else 0.0
    k, h, w = ref.shape
    scale = _scale_for(h, w, _MIN_TILE, _MAX_TILE)
    ncols = max(1, math.ceil(math.sqrt(k)))
    lut = _lut(cmap)
    out = []
    for a, (a_lo, a_hi), table in ((ref, (lo, hi), lut), (cand, (lo, hi), lut), (diff, (0.0, dmax), _lut("magma"))):
        q, bad = _quantised(a, a_lo, a_hi)
        out.append(_panel(q, bad, table, scale, ncols, list(labels), list(flagged)))
    return out, (lo, hi), dmax


def triptych(
    reference: Any,
    candidate: Any,
    labels: Sequence[int],
    title: Sequence[str],
    *,
    flagged: Sequence[int] = (),
    names: tuple[str, str] = ("reference", "candidate"),
) -> Image.Image:
    """``reference | candidate | |difference|`` of ``[k, *spatial]`` maps (channels ``labels``)."""
    parts, (lo, hi), dmax = panels(reference, candidate, labels, flagged)
    height = max(p.shape[0] for p in parts)
    gap = np.empty((height, _GAP, 3), np.uint8)
    gap[...] = 255
    row: list[np.ndarray] = []
    for p in parts:
        if p.shape[0] < height:
            pad = np.empty((height - p.shape[0], p.shape[1], 3), np.uint8)
            pad[...] = BACKGROUND
            p = np.concatenate([p, pad], 0)
        row += [p, gap]
    body = np.concatenate(row[:-1], 1)
    lines = [
        *title,
        f"{names[0]} | {names[1]} (one scale, {lo:.4g} to {hi:.4g}) | |difference| (0 to {dmax:.3g})",
    ]
    return _captioned(body, lines)


def diff_grid(diff: Any, layer: str) -> Image.Image:
    """``reference | candidate | |difference|`` of one compared pair of :func:`featcheck.compare`.

    The batch entry holding the pair's largest difference is drawn, with up to 16 of its most
    diverging channels (channels outside tolerance framed in blue); reference and candidate on
    one colour scale, the difference on its own (both stated in the caption).

    Args:
        diff: what :func:`featcheck.compare` returned.
        layer: the reference's or the candidate's record name of the pair.

    Returns:
        A PIL image.

    Example:
        >>> featcheck.diff_grid(featcheck.compare(model, ported, x), "layer3.1.conv2").save("d.png")
    """
    from .._compare import Diff

    if not isinstance(diff, Diff):
        raise TypeError(f"diff_grid expects what featcheck.compare returned (a Diff), got {type(diff).__name__}")
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a record name (str), got {type(layer).__name__}: {layer!r}")
    row = diff.row(layer)
    if row._maps is None:
        why = row.note or "its output holds no values"
        raise ValueError(f"{layer!r} was not compared element-wise ({why}): there is nothing to draw")
    ref, cand, chosen = row._maps
    bad = set(row.channels)
    name = row.reference if row.candidate == row.reference else f"{row.reference} -> {row.candidate}"
    status = (
        f"max abs {row.max_abs:.3g}, {row.mismatched:.2%} out of tolerance in channels {row.channels[:8]}"
        + ("..." if len(row.channels) > 8 else "")
        if row.diverged
        else "agrees within tolerance"
    )
    return triptych(
        ref, cand, chosen, [f"{name}  {'x'.join(map(str, row.shape))}", status],
        flagged=[i for i, c in enumerate(chosen) if c in bad],
    )


# -- visual baselines: one small picture per layer, stored beside the JSON ------------------------

# Each layer keeps its first PICTURE_CHANNELS channels of the capture's sample, each map strided
# to at most PICTURE_SIDE per side, quantised to 8 bits on the layer's own finite range: at most
# 8 x 32 x 32 bytes a layer before PNG compression. The whole file is capped at PICTURE_MAX_KB.
PICTURE_CHANNELS = 8
PICTURE_SIDE = 32
PICTURE_MAX_KB = 1024
PICTURE_FORMAT = 1
_PICTURE_KEY = "featcheck-baseline-pictures"


def layer_maps(sample: torch.Tensor) -> np.ndarray:
    """The maps a visual baseline keeps of one record's sample (``[C, *spatial]``)."""
    maps = _as_maps(sample[:PICTURE_CHANNELS])
    steps = [max(1, math.ceil(s / PICTURE_SIDE)) for s in maps.shape[1:]]
    return maps[:, :: steps[0], :: steps[1]]


def _on_scale(maps: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``maps`` rounded to the 8-bit grid of ``[lo, hi]`` (not clipped), as values."""
    if not hi > lo:
        return maps
    # the arithmetic of encode_pictures and decode_pictures, without the clipping to [lo, hi]
    q = np.floor((maps - lo) / (hi - lo) * 255.0 + 0.5)
    return lo + q / 255 * (hi - lo)


def encode_pictures(layers: list[tuple[str, np.ndarray]]) -> bytes:
    """One greyscale PNG holding every layer's maps as a band, the index in a text chunk."""
    import io
    import json

    from PIL import PngImagePlugin

    bands, index, y = [], [], 0
    for name, maps in layers:
        k, h, w = maps.shape
        finite = maps[np.isfinite(maps)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        q, _ = _quantised(maps, lo, hi)
        bands.append(q.transpose(1, 0, 2).reshape(h, k * w))
        index.append({"name": name, "y": y, "channels": k, "h": h, "w": w, "lo": lo, "hi": hi})
        y += h
    width = max((b.shape[1] for b in bands), default=1)
    atlas = np.zeros((max(1, y), width), np.uint8)
    for band, entry in zip(bands, index):
        atlas[entry["y"] : entry["y"] + band.shape[0], : band.shape[1]] = band
    info = PngImagePlugin.PngInfo()
    info.add_text(_PICTURE_KEY, json.dumps({"format": PICTURE_FORMAT, "layers": index}))
    buf = io.BytesIO()
    Image.fromarray(atlas, "L").save(buf, format="png", pnginfo=info, compress_level=9)
    return buf.getvalue()


def decode_pictures(data: bytes) -> dict[str, np.ndarray]:
    """``{layer: maps}`` (values on the stored 8-bit grid) of a file from :func:`encode_pictures`;
    ValueError saying what is wrong for anything else."""
    import io
    import json

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        meta = json.loads(image.info[_PICTURE_KEY])
        atlas = np.asarray(image.convert("L"))
        if meta.get("format") != PICTURE_FORMAT:
            raise ValueError(f"has format {meta.get('format')!r}, featcheck reads format {PICTURE_FORMAT}")
        out = {}
        for e in meta["layers"]:
            k, h, w, y = int(e["channels"]), int(e["h"]), int(e["w"]), int(e["y"])
            band = atlas[y : y + h, : k * w]
            if band.shape != (h, k * w):
                raise ValueError(f"is cut short at layer {e['name']!r}")
            q = band.reshape(h, k, w).transpose(1, 0, 2).astype(np.float64)
            lo, hi = float(e["lo"]), float(e["hi"])
            out[str(e["name"])] = lo + q / 255 * (hi - lo)
        return out
    except ValueError:
        raise
    except Exception as e:  # a truncated PNG, a missing index, a malformed entry
        raise ValueError(f"is not a featcheck pictures file ({type(e).__name__}: {e})") from None


class BaselinePicture:
    """A changed layer of a visual baseline as the report draws it: baseline | current |
    difference (``draw``), in place of a LayerCapture among a failure's flagged layers."""

    def __init__(self, name: str, stored: np.ndarray, current: np.ndarray, why: str) -> None:
        self.name = name
        self._stored = stored
        self._current = current
        self._why = why

    def draw(self) -> tuple[Image.Image, list[tuple[str, str]]]:
        """The picture and the figures beside it."""
        stored = self._stored
        finite = stored[np.isfinite(stored)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        current = _on_scale(self._current, lo, hi)  # same grid as the stored maps: equal is equal
        image = triptych(
            stored, current, list(range(stored.shape[0])),
            [self.name or "(root)", self._why, f"first {stored.shape[0]} channels of the first sample, stored with 8 bits"],
            names=("baseline", "current"),
        )
        return image, [("baseline", self._why)]
