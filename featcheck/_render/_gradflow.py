"""The gradient-flow picture: per record, in forward order, the RMS and the largest |gradient| on a
log scale, with the vanishing and exploding zones of ``assert_gradients_flow`` shaded.

It is the classic ``plot_grad_flow`` of the PyTorch forums, drawn from what the gradient hooks
already reduced (no tensor is touched): per record rather than per parameter, so that layers
without parameters (activations, ``out += identity``) show where the gradient dies. One
matplotlib Axes for the whole picture (the Agg backend, never pyplot's global state).
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from PIL import Image

from . import _args

_VANISH, _EXPLODE = "#1565c0", "#c62828"
_MAX_LABELS = 60


def _data(cap: Any, layers: Any) -> tuple[list[str], np.ndarray, np.ndarray, list[bool], list[bool]]:
    """Names in forward order, RMS and max |grad| per record (NaN without a gradient), and which
    records have non-finite gradients, and which have no gradient at all."""
    from .._grads import max_abs, rms

    names, scale, peak, bad, missing = [], [], [], [], []
    for lc in cap.select(layers):
        names.append(lc.name or "(root)")
        if lc.grad is None:
            scale.append(math.nan)
            peak.append(math.nan)
            bad.append(False)
            missing.append(True)
            continue
        st = lc.grad.stats
        scale.append(rms(st))
        peak.append(max_abs(st))
        bad.append(bool(st["nonfinite"].sum()))
        missing.append(False)
    return names, np.array(scale, dtype=float), np.array(peak, dtype=float), bad, missing


def gradient_flow(
    cap: Any,
    *,
    layers: Any = None,
    min_ratio: float = 1e-4,
    max_ratio: float = 1e4,
    title: str | None = None,
) -> Image.Image:
    """Gradient flow through a model: one pair of bars per record in forward order.

    Dark bars are the RMS of d(loss)/d(output), light bars the largest |value|, on a log scale.
    The dashed line is the RMS at the record closest to the loss (the first in backward order);
    the zones below ``min_ratio`` and above ``max_ratio`` times it are shaded (vanishing blue,
    exploding red), as :func:`featcheck.assert_gradients_flow` judges them. Records whose
    gradient holds NaN or Inf are marked with a red cross at the top, records with an all-zero
    gradient with a blue ``0`` at the bottom, and records without a gradient path with a grey
    dash; their names are coloured the same way.

    Args:
        cap: a Capture with gradients (``featcheck.capture(..., backward=...)`` or a watch over a
            backward pass).
        layers: which records to draw (same selectors as capture; default all).
        min_ratio: lower edge of the allowed zone, relative to the loss end.
        max_ratio: upper edge of the allowed zone.
        title: the picture's title (default "gradient flow: <model>").

    Returns:
        An RGB PIL image; ``image.info["caption"]`` summarises it.
    """
    from .._records import Capture

    if not isinstance(cap, Capture):
        raise TypeError(f"gradient_flow expects a featcheck Capture with gradients, got {type(cap).__name__}")
    for name, value in (("min_ratio", min_ratio), ("max_ratio", max_ratio)):
        if not _args._is_number(value) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if not min_ratio < max_ratio:
        raise ValueError(f"min_ratio must be below max_ratio, got {min_ratio!r} and {max_ratio!r}")
    _args._title(title)
    grads = cap._rec.grads
    order = [n for n in (grads.order if grads is not None else ()) if n in cap._rec.records]
    if not order:
        raise ValueError(
            "gradient_flow needs a capture with gradients: featcheck.capture(model, x, backward="
            "lambda out: loss) or featcheck.watch over a backward pass; this one holds none"
        )
    names, scale, peak, bad, missing = _data(cap, layers)
    if not names:
        raise ValueError(f"layers={layers!r} selected no record of the capture")
    ref_name = order[0]
    ref = _ref_scale(cap, ref_name)
    return _draw(names, scale, peak, bad, missing, ref, ref_name, min_ratio, max_ratio,
                 title or f"gradient flow: {cap.model_name}")


def _ref_scale(cap: Any, name: str) -> float:
    from .._grads import rms

    return rms(cap[name].grad.stats)


def _draw(
    names: list[str], scale: np.ndarray, peak: np.ndarray, bad: list[bool], missing: list[bool],
    ref: float, ref_name: str, lo: float, hi: float, title: str,
) -> Image.Image:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(names)
    x = np.arange(n)
    positive = np.concatenate([scale[scale > 0], peak[peak > 0]])
    positive = positive[np.isfinite(positive)]
    have_ref = ref > 0 and math.isfinite(ref)
    bounds = [*positive.tolist(), *([ref * lo, ref * hi] if have_ref else [])]
    ymin = 10 ** math.floor(math.log10(min(bounds)) - 1) if bounds else 1e-8
    ymax = 10 ** math.ceil(math.log10(max(bounds)) + 1) if bounds else 1.0
    fig = Figure(figsize=(min(24.0, max(8.0, 0.16 * n + 3)), 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_yscale("log")
    ax.set_ylim(ymin, ymax)
    ax.set_xlim(-1, n)
    zeros = (scale == 0) & ~np.array(missing)
    vanishing = exploding = 0
    if have_ref:
        ax.axhspan(ymin, ref * lo, color=_VANISH, alpha=0.10, lw=0, label=f"vanishing (< {lo:g} x loss end)")
        ax.axhspan(ref * hi, ymax, color=_EXPLODE, alpha=0.10, lw=0, label=f"exploding (> {hi:g} x loss end)")
        ax.axhline(ref, color="#444", ls="--", lw=0.8, label=f"RMS at the loss end ({ref_name})")
        with np.errstate(invalid="ignore"):
            vanishing = int(np.sum((scale < ref * lo) & ~np.isnan(scale)))
            exploding = int(np.sum(scale > ref * hi))
    ok = np.isfinite(peak) & (peak > 0)
    ax.bar(x[ok], peak[ok] - ymin, bottom=ymin, width=0.8, color="#90caf9", label="max |grad|")
    ok = np.isfinite(scale) & (scale > 0)
    ax.bar(x[ok], scale[ok] - ymin, bottom=ymin, width=0.5, color="#0d47a1", label="RMS of grad")
    if zeros.any():
        ax.scatter(x[zeros], np.full(int(zeros.sum()), ymin * 1.6), marker="$0$", color=_VANISH, s=30, label="all zero")
    if any(missing):
        idx = x[np.array(missing)]
        ax.scatter(idx, np.full(len(idx), ymin * 1.6), marker="_", color="#9e9e9e", s=40, label="no gradient path")
    if any(bad):
        idx = x[np.array(bad)]
        ax.scatter(idx, np.full(len(idx), ymax / 1.8), marker="x", color=_EXPLODE, s=40, label="NaN/Inf")
    step = max(1, math.ceil(n / _MAX_LABELS))
    ticks = list(range(0, n, step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([names[i] for i in ticks], rotation=90, fontsize=6)
    for label, i in zip(ax.get_xticklabels(), ticks):
        if bad[i]:
            label.set_color(_EXPLODE)
        elif missing[i]:
            label.set_color("#9e9e9e")
        elif zeros[i] or (have_ref and scale[i] < ref * lo):
            label.set_color(_VANISH)
        elif have_ref and scale[i] > ref * hi:
            label.set_color(_EXPLODE)
    ax.set_ylabel("|d loss / d output|")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=6, loc="upper right", ncol=2, framealpha=0.8)
    ax.grid(axis="y", which="major", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    counts = (f"{vanishing} vanishing, {exploding} exploding, {sum(bad)} with NaN/Inf, "
              f"{int(sum(missing))} without a gradient path")
    image.info["caption"] = (
        f"{title}\n{n} records in forward order{'' if step == 1 else f' (every {step}th named)'}; "
        f"relative to {ref_name!r} (closest to the loss, RMS {ref:.3g}): {counts}"
    )
    return image
