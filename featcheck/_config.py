"""Project-wide thresholds: defaults, overridden by the ini file (set by the plugin), overridden
per call. Imports nothing heavy: the plugin loads it at configure time."""

from __future__ import annotations

import math

# name: (default, help)
THRESHOLDS: dict[str, tuple[float, str]] = {
    "dead_tolerance": (
        1e-6,
        "a channel is dead when max - min <= this times the layer's largest absolute value",
    ),
    "max_dead_fraction": (0.0, "share of dead channels a layer may have"),
    "saturation_fraction": (
        0.99,
        "a channel is saturated when at least this share of its values sit at a bound",
    ),
    "max_saturated_fraction": (0.0, "share of saturated channels a layer may have"),
    "baseline_max_kb": (2048.0, "size cap of one baseline file, in KiB"),
    "saturation_tolerance": (
        1e-3,
        "a value sits at a bound within this times (high - low); used while capturing",
    ),
}

# name: (low, high, the range in words): finite and ``low <= value <= high``, except that low is
# excluded for the names in _OPEN_LOW and high for those in _OPEN_HIGH
RANGES: dict[str, tuple[float, float, str]] = {
    "dead_tolerance": (0.0, math.inf, "a finite number >= 0"),
    "max_dead_fraction": (0.0, 1.0, "a fraction in [0, 1]"),
    "saturation_fraction": (0.0, 1.0, "a fraction in [0, 1]"),
    "max_saturated_fraction": (0.0, 1.0, "a fraction in [0, 1]"),
    "baseline_max_kb": (0.0, math.inf, "a finite number of KiB > 0"),
    "saturation_tolerance": (0.0, 0.5, "a number in [0, 0.5)"),
}
_OPEN_LOW = {"baseline_max_kb"}  # low itself is not allowed
_OPEN_HIGH = {"saturation_tolerance"}  # high itself is not allowed

_current: dict[str, float] = {k: v for k, (v, _) in THRESHOLDS.items()}


def check(name: str, value: float) -> float:
    """``value`` as a float if it is in the range of threshold ``name``.

    Raises:
        KeyError: ``name`` is no threshold.
        ValueError: ``value`` is out of range, NaN or infinite; the message states the range.
    """
    if name not in RANGES:
        raise KeyError(f"unknown featcheck threshold {name!r}; known: {sorted(RANGES)}")
    low, high, words = RANGES[name]
    v = float(value)
    inside = (
        math.isfinite(v)
        and (v > low if name in _OPEN_LOW else v >= low)
        and (v < high if name in _OPEN_HIGH else v <= high)
    )
    if not inside:
        raise ValueError(f"{name} must be {words}, got {value!r}")
    return v


def get(name: str, value: float | None = None) -> float:
    """``value`` if given, else the project-wide setting."""
    return _current[name] if value is None else float(value)


def set_from(values: dict[str, float]) -> dict[str, float]:
    """Set thresholds; returns the previous values (for restoring).

    Raises:
        KeyError, ValueError: as :func:`check`; then nothing is set.
    """
    before = dict(_current)
    checked = {k: check(k, v) for k, v in values.items()}  # all or nothing
    _current.update(checked)
    return before
