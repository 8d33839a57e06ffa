"""Argument checks shared by the renderers: each says what was expected, what came, what to do.

The renderers run these before touching any data, and ``check_options`` runs the same checks at
the fixture's ``show`` call, so a bad option fails at the test's own line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._draw import _lut


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _int(value: Any, name: str, *, minimum: int = 1, none: str | None = None) -> None:
    """An integer >= ``minimum``; ``none`` (what ``None`` means) allows ``None``."""
    if value is None and none is not None:
        return
    also = f" or None ({none})" if none is not None else ""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int >= {minimum}{also}, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{also}, got {value!r}")


def _choice(value: Any, name: str, choices: Sequence[Any]) -> None:
    if not any(value is c or (isinstance(value, str) and value == c) for c in choices):
        raise ValueError(f"{name} must be one of {tuple(choices)!r}, got {value!r}")


def _cmap(value: Any, *, none: bool = False) -> None:
    if value is None and none:
        return
    if not isinstance(value, str):
        raise TypeError(
            f"cmap must be a matplotlib colormap name (a str{' or None' if none else ''}), "
            f"got {type(value).__name__}: {value!r}"
        )
    _lut(value)  # raises ValueError naming the unknown colormap


def _fraction(value: Any, name: str) -> None:
    if not _is_number(value):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(value).__name__}: {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def _pair(value: Any, name: str, what: str) -> tuple[float, float]:
    """Two finite numbers ``(low, high)`` with ``low < high``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2 or not all(map(_is_number, value)):
        raise TypeError(f"{name} must be a pair of numbers (low, high), {what}; got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{name} must be (low, high) with finite low < high, {what}; got {value!r}")
    return lo, hi


def _percentile(value: Any) -> None:
    lo, hi = _pair(value, "percentile", "percentages such as (1, 99)")
    if not 0 <= lo < hi <= 100:
        raise ValueError(f"percentile must be (low, high) with 0 <= low < high <= 100, got {value!r}")


def _channels(value: Any, name: str) -> None:
    """A sequence of channel indices (ints)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be a sequence of channel indices (ints), got {type(value).__name__}: {value!r}")
    bad = [v for v in value if not _is_int(v)]
    if bad:
        raise TypeError(f"{name} must hold channel indices (ints), got {bad[0]!r}")


def _title(value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"title must be a str or None, got {type(value).__name__}: {value!r}")
