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
        raise ValueError(f"{layer!r} was not compared element-wise ({row.note}): there is nothing to draw")
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
