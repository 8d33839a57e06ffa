"""PCA composites: a map's channels projected onto their first three principal components, as RGB.

Cost follows the picture, not the input: the map is first subsampled to the picture's size
(``_MAX_MAP_SIDE``); the basis is fitted on at most ``_FIT_POSITIONS`` of its positions (a regular
subsample), through the ``C x C`` covariance when there are fewer channels than positions and
through the ``P x P`` Gram matrix otherwise (same non-zero eigenvalues, eigenvectors mapped back
exactly), so ``eigh`` never sees a matrix larger than ``_FIT_POSITIONS``; the projection runs in
blocks of bounded size. Everything in float64 with ``eigh``: deterministic, no randomised solver.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import _args
from ._draw import _captioned, _map_step, _upscale
from ._maps import _maps

_FIT_POSITIONS = 256  # eigh cost grows with its cube; 256 keeps it near 0.1 s
_BLOCK = 1 << 22  # values per block of the projection


@dataclasses.dataclass(frozen=True)
class _PCABasis:
    mean: torch.Tensor  # [C] float64
    components: torch.Tensor  # [C, 3] float64
    lo: np.ndarray  # [3]
    hi: np.ndarray  # [3]
    explained: np.ndarray  # [3] share of variance


def _pca_input(x: Any, arg: str) -> tuple[torch.Tensor, str, list[str]]:
    """``x`` as ``[C, h, w]`` at the picture's resolution, its name and notes."""
    maps = _maps(x, None, "middle", None, fn="pca_rgb", ranges=False)
    if maps.one_d:
        raise ValueError(
            f"pca_rgb needs a 2-D map for {arg} ([C, H, W], [N, C, H, W], a volume or a token grid), "
            f"got a 1-D map of shape {maps.shape}; draw it with channel_grid"
        )
    m = maps.data
    step = _map_step(m.shape[1], m.shape[2])
    if step > 1:
        m = m[:, ::step, ::step]
        maps.notes.append(f"shown at 1/{step} resolution")
    return m, maps.name, maps.notes


def _project(m: torch.Tensor, mean: torch.Tensor, comps: torch.Tensor) -> torch.Tensor:
    """``[C, h, w]`` centred and projected onto ``comps``: ``[h * w, 3]`` float64, block by block."""
    xs = m.reshape(m.shape[0], -1)
    rows = max(1, _BLOCK // max(1, m.shape[0]))
    out = [
        (torch.nan_to_num(xs[:, s : s + rows].double(), nan=0.0, posinf=0.0, neginf=0.0) - mean[:, None]).T @ comps
        for s in range(0, xs.shape[1], rows)
    ]
    return torch.cat(out)


def _eigh(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of a small symmetric matrix, deterministic. numpy's
    LAPACK on the host: torch's CPU ``eigh`` of a 256 x 256 matrix was measured at 0.06 s on one
    thread and 5-7.5 s on two busy cores (its threads spin), numpy's at 0.08 s."""
    vals, vecs = np.linalg.eigh(a.cpu().numpy())
    return torch.from_numpy(vals).to(a.device), torch.from_numpy(vecs).to(a.device)


def _fit_pca(m: torch.Tensor) -> _PCABasis:
    c = m.shape[0]
    xs = m.reshape(c, -1)
    every = math.ceil(xs.shape[1] / _FIT_POSITIONS)
    fit = torch.nan_to_num(xs[:, ::every].double(), nan=0.0, posinf=0.0, neginf=0.0)  # [C, P]
    p = fit.shape[1]
    mean = fit.mean(1)
    xc = fit - mean[:, None]
    if c <= p:
        vals, vecs = _eigh(xc @ xc.T / p)  # the covariance
        order = torch.argsort(vals, descending=True, stable=True)[:3]
        comps = vecs[:, order]
    else:
        # Gram matrix G = X^T X / p: for G u = l u, v = X u / sqrt(p l) is a unit eigenvector of
        # the covariance X X^T / p with the same eigenvalue l.
        vals, u = _eigh(xc.T @ xc / p)
        order = torch.argsort(vals, descending=True, stable=True)[:3]
        top = vals[order]
        keep = top > top[0].clamp_min(0) * 1e-12  # directions without variance have no direction
        comps = (xc @ u[:, order]) / torch.sqrt(p * torch.where(keep, top, 1.0))
        comps = comps * keep
    flip = torch.sign(comps.gather(0, comps.abs().argmax(0, keepdim=True)))
    comps = comps * torch.where(flip == 0, 1.0, flip)
    if comps.shape[1] < 3:
        comps = torch.cat([comps, torch.zeros(c, 3 - comps.shape[1], dtype=comps.dtype, device=comps.device)], 1)
    proj = _project(m, mean, comps)
    lo = torch.quantile(proj, 0.01, dim=0) if proj.shape[0] > 1 else proj.amin(0)
    hi = torch.quantile(proj, 0.99, dim=0) if proj.shape[0] > 1 else proj.amax(0)
    total = float(vals.clamp_min(0).sum())
    top = vals[order].clamp_min(0)
    explained = (top / total if total > 0 else top * 0).cpu().numpy()
    explained = np.pad(explained, (0, 3 - len(explained)))
    return _PCABasis(mean, comps, lo.cpu().numpy(), hi.cpu().numpy(), explained)


@torch.no_grad()
def pca_rgb(x: Any, *, fit: Any = None, min_size: int = 128, caption: bool = True) -> Image.Image:
    """A map's channels projected onto their first three principal components, as RGB.

    Deterministic: the basis comes from the eigendecomposition of the float64 channel covariance
    (through the Gram matrix when there are more channels than positions; no randomised solver),
    each component's sign fixed so its largest loading is positive, and colours scaled to the
    1st-99th percentile of each component. Maps larger than the picture (512 pixels a side) are
    subsampled first, and the basis is fitted on at most 256 positions of the map (a regular
    subsample), so the cost follows the picture rather than the input.

    Args:
        x: a ``LayerCapture`` or a ``[C, H, W]`` / ``[N, C, H, W]`` tensor (a volume: its middle
            slice; tokens of a capture: their grid).
        fit: fit the basis (and the colour scaling) on this map instead, e.g. the baseline's
            capture, so that the same colours mean the same directions in both pictures.
        min_size: upscale (nearest neighbour) so the shorter side is at least this.
        caption: a caption with the layer, channel count and explained variance.

    Raises:
        TypeError, ValueError: for arguments it cannot draw, before any work.
    """
    from .._capture import LayerCapture

    if fit is not None and not isinstance(fit, (LayerCapture, torch.Tensor)):
        raise TypeError(f"fit must be None, a LayerCapture or a tensor (a map like x), got {type(fit).__name__}")
    _args._int(min_size, "min_size")
    m, name, notes = _pca_input(x, "x")
    ref = m if fit is None else _pca_input(fit, "fit")[0]
    c, h, w = m.shape
    if ref.shape[0] != c:
        raise ValueError(f"fit has {ref.shape[0]} channels but x has {c}; they must match")
    basis = _fit_pca(ref)
    proj = _project(m, basis.mean, basis.components).cpu().numpy()
    span = np.where(basis.hi > basis.lo, basis.hi - basis.lo, 1.0)
    rgb = (np.clip((proj - basis.lo) / span, 0, 1) * 255 + 0.5).astype(np.uint8).reshape(h, w, 3)
    up = _upscale(h, w, min_size)
    body = rgb.repeat(up, 0).repeat(up, 1)
    if not caption:
        return Image.fromarray(body)
    ev = "/".join(f"{e:.0%}" for e in basis.explained)
    lines = [
        f"PCA of {name or 'tensor'}  {c} channels -> RGB" + "".join(f"; {n}" for n in notes),
        f"explained variance {ev}" + ("; basis fitted on another map" if fit is not None else ""),
    ]
    return _captioned(body, lines)
