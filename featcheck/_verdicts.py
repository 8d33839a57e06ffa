"""Verdicts: which channels are dead and which are saturated.

The one place where these thresholds are applied; checks, pictures, the report and baselines all
ask here, so a picture's red frames, a failure table and a baseline's dead fraction never
disagree. Thresholds come from the call, else from the ini file (``featcheck_dead_tolerance``,
``featcheck_saturation_fraction``, ...), else from the defaults in ``_config``.

Imports numpy only: it works on per-channel arrays, whatever produced them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _config

__all__ = ["dead", "dead_channels", "fraction", "saturated", "saturated_channels", "tolerance"]


def fraction(value: Any, name: str) -> float:
    """A share in [0, 1]: ``value`` if given, else the project-wide setting ``name``."""
    v = _number(value, name, _config.get(name))
    if not 0.0 <= v <= 1.0:
        where = "" if value is not None else f" (the project-wide setting featcheck_{name})"
        raise ValueError(f"{name} must be a fraction in [0, 1], got {v!r}{where}")
    return v


def tolerance(value: Any = None) -> float:
    """The dead-channel tolerance: ``value`` if given, else the project-wide setting."""
    v = _number(value, "tolerance", _config.get("dead_tolerance"))
    if v < 0:
        where = "" if value is not None else " (the project-wide setting featcheck_dead_tolerance)"
        raise ValueError(f"tolerance must be a number >= 0, got {v!r}{where}")
    return v


def _number(value: Any, name: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
    v = float(value)
    if math.isnan(v):
        raise ValueError(f"{name} must be a number, got NaN")
    return v


def dead(mn: np.ndarray, mx: np.ndarray, count: np.ndarray, tol: float | None = None) -> list[int]:
    """Channels whose values never varied: ``max - min <= tol * scale``, ``scale`` the largest
    absolute finite value of the layer (so a layer of all zeros is all dead). Channels with fewer
    than two values cannot vary and are not judged; channels with no finite value are not dead
    (they are non-finite, which ``assert_finite`` reports)."""
    t = tolerance(tol)
    mn, mx = np.asarray(mn, np.float64), np.asarray(mx, np.float64)
    finite = np.isfinite(mn) & np.isfinite(mx)
    if not finite.any():
        return []
    scale = float(np.max(np.abs(np.concatenate([mn[finite], mx[finite]]))))
    with np.errstate(invalid="ignore"):
        out = finite & (np.asarray(count) >= 2) & ((mx - mn) <= t * scale)
    return np.flatnonzero(out).tolist()


def saturated(at_bound: np.ndarray, frac: float | None = None) -> list[int]:
    """Channels with at least ``frac`` of their values at a bound (``at_bound``: the per-channel
    share of values within the saturation tolerance of either bound)."""
    q = fraction(frac, "saturation_fraction")
    with np.errstate(invalid="ignore"):
        return np.flatnonzero(np.asarray(at_bound, np.float64) >= q).tolist()


def dead_channels(lc: Any, tol: float | None = None) -> list[int]:
    """Dead channels of a capture record, from its statistics."""
    st = lc.stats
    return dead(st["min"], st["max"], st["count"], tol)


def saturated_channels(lc: Any, frac: float | None = None) -> list[int]:
    """Saturated channels of a capture record; it must have bounds."""
    if lc.bounds is None:
        raise ValueError(
            f"layer {lc.name!r} ({lc.module_type}) has no known output bounds, so its saturation "
            "was not counted. Pass bounds={'" + lc.module_name + "': (low, high)} to "
            "featcheck.capture / featcheck.watch."
        )
    st = lc.stats
    return saturated(st["lower_fraction"] + st["upper_fraction"], frac)
