"""Project-wide thresholds: defaults, overridden by the ini file (set by the plugin), overridden
per call. Imports nothing heavy: the plugin loads it at configure time."""

from __future__ import annotations

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

_current: dict[str, float] = {k: v for k, (v, _) in THRESHOLDS.items()}


def get(name: str, value: float | None = None) -> float:
    """``value`` if given, else the project-wide setting."""
    return _current[name] if value is None else float(value)


def set_from(values: dict[str, float]) -> dict[str, float]:
    """Set thresholds; returns the previous values (for restoring)."""
    before = dict(_current)
    for k, v in values.items():
        if k not in _current:
            raise KeyError(f"unknown featcheck threshold {k!r}; known: {sorted(_current)}")
        _current[k] = float(v)
    return before
