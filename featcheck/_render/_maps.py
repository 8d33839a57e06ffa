"""Turning what the user passes (a capture record or a tensor) into channel-first 2-D maps.

Layouts (the rule for a channel-first map ``[C, *spatial]``):

* ``[C, H, W]``: one tile per channel.
* ``[C, L]``: a horizontal strip per channel (1-D convolutions, signals).
* ``[C, D, H, W]``: the middle slice along D (``depth="middle"``), or the max or mean projection.
* ``[C, A, ..., D, H, W]`` (more than three spatial dims, e.g. windowed attention's
  ``[N, 3, 3, 7, 7, C]``): the leading dims are folded into D (``3x3x7`` -> depth 63), then as
  above; the caption says so.
* token sequences ``[L, C]`` (tensors with ``layout="tokens"``, or capture records whose channels
  are on the last dim of a rank-3 output): when ``L = k * k + e`` with ``0 <= e <= 8``, the first
  ``e`` tokens (class and register tokens, which come first in ViT, DeiT and DINOv2) are dropped
  and the rest shown as a ``k x k`` grid; otherwise as strips.

A strip ``[C, L]`` is held as ``[C, 1, L]``, like a real map of height 1 (``[N, C, 1, L]``
attention maps); ``_Maps.one_d`` tells them apart.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from .. import _config, _verdicts
from ._draw import _fmt_shape

_MAX_TOKEN_EXTRAS = 8
_DEPTHS = ("middle", "max", "mean")
_LAYOUTS = (None, "tokens")
# Values per block when a pass over a huge map needs a temporary (non-finite channels, saturation
# counts): bounds the extra memory to a few MiB whatever the input's size.
_BLOCK = 1 << 22


@dataclasses.dataclass
class _Maps:
    data: torch.Tensor  # [C, h, w], any device, full resolution
    name: str
    shape: tuple[int, ...]  # the shape to state in the caption
    channels: int
    notes: list[str]
    one_d: bool = False  # the map had one spatial dim (held as [C, 1, L]), not a map of height 1
    lo: np.ndarray | None = None  # per-channel finite range (capture statistics or the full data)
    hi: np.ndarray | None = None
    mean: np.ndarray | None = None  # per-channel mean and std over all samples (captures only)
    std: np.ndarray | None = None
    marks: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    range_source: str = "data range"


def _tokens_to_grid(m: torch.Tensor, notes: list[str]) -> tuple[torch.Tensor, bool]:
    """``[C, L]`` tokens to ``[C, k, k]`` when ``L = k * k + e`` (e leading extra tokens); else
    strips. Returns the map and whether it stayed one-dimensional."""
    length = m.shape[1]
    for extra in range(0, _MAX_TOKEN_EXTRAS + 1):
        k = math.isqrt(length - extra) if length > extra else 0
        if k >= 2 and k * k == length - extra:
            if extra:
                notes.append(f"tokens: first {extra} of {length} dropped, rest as {k}x{k}")
            else:
                notes.append(f"tokens: {length} as {k}x{k}")
            return m[:, extra:].reshape(m.shape[0], k, k), False
    notes.append(f"tokens: {length} is not a square plus <= {_MAX_TOKEN_EXTRAS}, shown as strips")
    return m.unsqueeze(1), True


def _to_2d(m: torch.Tensor, notes: list[str], depth: str, tokens: bool) -> tuple[torch.Tensor, bool]:
    """A channel-first map ``[C, *spatial]`` as ``[C, h, w]``, and whether it was one-dimensional."""
    if m.ndim == 1:
        return m.reshape(-1, 1, 1), False
    if m.ndim == 2:
        return _tokens_to_grid(m, notes) if tokens else (m.unsqueeze(1), True)
    if m.ndim == 3:
        return m, False
    if m.ndim > 4:
        lead = m.shape[1:-2]
        m = m.reshape(m.shape[0], -1, *m.shape[-2:])
        notes.append(f"dims {_fmt_shape(lead)} folded into depth {m.shape[1]}")
    if depth == "middle":
        notes.append(f"depth: slice {m.shape[1] // 2} of {m.shape[1]}")
        return m[:, m.shape[1] // 2], False
    notes.append(f"depth: {depth} over {m.shape[1]}")
    return (m.amax(1) if depth == "max" else m.mean(1)), False


def no_sample(lc: Any, keep_samples: bool | None = None) -> tuple[str, str]:
    """Why the record ``lc`` holds no rendering sample, and what to do: ``(reason, advice)``.

    ``keep_samples``: the capture's setting where the caller knows it (``None``: unknown). A
    capture keeps no sample when it was asked not to, and otherwise only when no output of the
    layer held a value (a batch of 0, a size of 0) or none could be recorded (``lc.note`` says
    why), or the layer has not run yet.
    """
    if keep_samples is not False:
        shape = tuple(lc.shape)
        if lc.forwards and 0 in shape:
            batch0 = shape[0] == 0 and lc.channel_dim != 0
            return (
                f"the output held no values ({'a batch of 0' if batch0 else f'shape {_fmt_shape(shape)}'})",
                "capture it with an input of at least one sample" if batch0 else "there is nothing to draw",
            )
        if lc.note:
            return f"no output was recorded ({lc.note})", "see the layer's note"
        if not lc.forwards:
            return "the layer has not run", "run a forward pass first"
    return "captured with keep_samples=False", "capture it again with keep_samples=True"


def _check_source(x: Any, layout: Any, *, fn: str, capture_ok: bool = False) -> None:
    """Fail clearly, before any work, on what cannot be drawn."""
    from .._capture import Capture, LayerCapture

    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be None or 'tokens', got {layout!r}")
    if isinstance(x, Capture) and not capture_ok:
        raise TypeError(
            f"{fn} draws one layer, got a whole Capture; pass one record, e.g. {fn}(cap['layer1'])"
        )
    if isinstance(x, (Capture, LayerCapture)):
        records = x.select(None) if isinstance(x, Capture) else [x]
        for lc in records:
            if isinstance(x, LayerCapture) and lc.sample is None:
                reason, advice = no_sample(lc)
                raise ValueError(f"layer {lc.name!r} has no sample to draw: {reason}; {advice}")
            if lc.sample is not None and lc.sample.numel() == 0:
                raise ValueError(
                    f"layer {lc.name!r} has an empty output (shape {tuple(lc.shape)}): no channel "
                    "or no position to draw"
                )
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{fn} expects a LayerCapture or a tensor, got {type(x).__name__}; pass a record (cap['layer1']) or a tensor"
        )
    if x.layout != torch.strided:
        raise TypeError(f"{fn} draws dense tensors, got a {x.layout} tensor; pass x.to_dense()")
    if x.is_complex():
        raise TypeError(f"{fn} draws real tensors, got {x.dtype}; pass x.abs() or x.real")
    if x.ndim == 0:
        raise ValueError(f"{fn} expects [C, H, W], [N, C, H, W], [C, L] or [C, D, H, W], got a scalar")
    if x.numel() == 0:
        raise ValueError(
            f"{fn} got an empty tensor (shape {tuple(x.shape)}): no channel or no position to draw"
        )
    if layout == "tokens" and x.ndim not in (2, 3):
        raise ValueError(f"layout='tokens' expects [L, C] or [N, L, C], got shape {tuple(x.shape)}")


def _maps(x: Any, layout: str | None, depth: str, bounds: tuple[float, float] | None, *, fn: str, ranges: bool = True) -> _Maps:
    """``x`` as channel-first maps with what is known of them. For a tensor, ``ranges`` asks for the
    per-channel finite range and the marks, computed over the full data in one pass without
    full-size temporaries."""
    from .._capture import LayerCapture

    _check_source(x, layout, fn=fn)
    notes: list[str] = []
    if isinstance(x, LayerCapture):
        assert x.sample is not None  # _check_source said so
        tokens = x.channel_dim is not None and len(x.shape) == 3 and x.channel_dim == 2
        if any(s > 1 for s in x.sample_step):
            notes.append("sample subsampled by " + "x".join(map(str, x.sample_step)))
        m, one_d = _to_2d(x.sample, notes, depth, tokens)
        st = x.stats
        marks = {
            "nonfinite": np.flatnonzero(st["nonfinite"] > 0).tolist(),
            "dead": x.dead_channels(),
            "saturated": x.saturated_channels() if x.bounds is not None else [],
        }
        return _Maps(
            m, x.name, tuple(x.shape), x.channels, notes, one_d,
            lo=st["min"], hi=st["max"], mean=st["mean"], std=st["std"], marks=marks,
            range_source=f"range over {x.samples} sample{'s' if x.samples != 1 else ''}",
        )
    shape = tuple(x.shape)
    t = x.detach()
    if layout == "tokens":
        m, one_d = _to_2d((t[0] if t.ndim == 3 else t).transpose(0, 1), notes, depth, tokens=True)
    else:
        if t.ndim >= 4:
            t = t[0]
            notes.append("first sample")
        m, one_d = _to_2d(t, notes, depth, tokens=False)
    if not m.is_floating_point():
        m = m.float()
    maps = _Maps(m, "", shape, m.shape[0], notes, one_d)
    if ranges:
        flat = m.reshape(m.shape[0], -1)
        maps.lo, maps.hi, nonfinite = _finite_range(flat)
        maps.marks = {
            "nonfinite": nonfinite,
            "dead": _verdicts.dead(maps.lo, maps.hi, np.full(len(maps.lo), flat.shape[1])),
            "saturated": [] if bounds is None else _verdicts.saturated(_at_bounds(flat, bounds)),
        }
    return maps


def _finite_range(flat: torch.Tensor) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Per row of ``[C, P]``: min and max of the finite values (NaN where there is none) and the
    rows holding NaN or Inf. Plain ``amin``/``amax`` first (no temporary); only rows whose result
    is not finite are searched again, block by block."""
    lo_t, hi_t = flat.amin(1), flat.amax(1)
    bad = torch.nonzero(~(torch.isfinite(lo_t) & torch.isfinite(hi_t))).flatten().tolist()
    lo = lo_t.double().cpu().numpy()
    hi = hi_t.double().cpu().numpy()
    for r in bad:
        row_lo, row_hi = math.inf, -math.inf
        for s in range(0, flat.shape[1], _BLOCK):
            v = flat[r, s : s + _BLOCK]
            v = v[torch.isfinite(v)]
            if v.numel():
                row_lo, row_hi = min(row_lo, float(v.min())), max(row_hi, float(v.max()))
        lo[r], hi[r] = (row_lo, row_hi) if row_lo <= row_hi else (math.nan, math.nan)
    return lo, hi, bad


def _at_bounds(flat: torch.Tensor, bounds: tuple[float, float]) -> np.ndarray:
    """Per row of ``[C, P]``: the share of values within the saturation tolerance of a bound."""
    b_lo, b_hi = bounds
    eps = _config.get("saturation_tolerance") * (b_hi - b_lo)
    counts = torch.zeros(flat.shape[0], dtype=torch.float64, device=flat.device)
    step = max(1, _BLOCK // max(1, flat.shape[0]))
    for s in range(0, flat.shape[1], step):
        v = flat[:, s : s + step]
        counts += ((v <= b_lo + eps) | (v >= b_hi - eps)).sum(1, dtype=torch.float64)
    return (counts / flat.shape[1]).cpu().numpy()
