"""Health and geometry assertions over a capture.

Every ``assert_*`` checks all the layers it is given and reports every offending one in a
compact table (layer, expected, measured, channels, samples), raising ``AssertionError`` with
``__tracebackhide__`` set so that pytest points at the test's line.

Why sample counts are in every row: a channel that fires with probability p per image looks dead
on N images with probability (1 - p) ** N, 0.92 for p = 0.01 at N = 8 but 0.08 at N = 256. A
verdict on one small batch is weak; run ``featcheck.watch`` over several batches before trusting
"dead".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from . import _verdicts
from ._errors import FeatcheckAssertionError

__all__ = [
    "assert_finite",
    "assert_no_dead_channels",
    "assert_not_saturated",
    "assert_shapes",
    "assert_strides",
    "dead_channels",
    "saturated_channels",
]

_SHOW_CHANNELS = 8


def _records(cap: Any, layers: Any) -> list[Any]:
    from ._capture import Capture, LayerCapture

    if isinstance(cap, LayerCapture):
        return [cap]
    if not isinstance(cap, Capture):
        raise TypeError(
            f"expected a featcheck Capture (from featcheck.capture or featcheck.watch) or a "
            f"LayerCapture, got {type(cap).__name__}"
        )
    return cap.select(layers)


def _channels(idx: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in idx[:_SHOW_CHANNELS])
    more = f", ... ({len(idx)} in all)" if len(idx) > _SHOW_CHANNELS else ""
    return f"[{shown}{more}]"


def _layers(n: int) -> str:
    return f"{n} layer" if n == 1 else f"{n} layers"


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    header = ("layer", "expected", "measured", "channels", "samples")
    rows = [(r[0] or "(root)", *r[1:]) for r in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


class _Offences:
    """The offending layers of one check: the failure table's rows and, for the report, the
    flagged ``(LayerCapture, channels, check)`` entries, always added together."""

    def __init__(self, check: str) -> None:
        self.check = check
        self.rows: list[tuple[str, ...]] = []
        self.flagged: list[tuple[Any, list[int], str]] = []

    def add(self, lc: Any, expected: str, measured: str, channels: list[int] | None = None) -> None:
        self.rows.append((lc.name, expected, measured, "-" if channels is None else _channels(channels), str(lc.samples)))
        self.flagged.append((lc, list(channels or []), self.check))

    def __len__(self) -> int:
        return len(self.rows)

    def fail(self, title: str, notes: Iterable[str] = ()) -> None:
        __tracebackhide__ = True
        text = f"{title}\n{_table(self.rows)}"
        for note in notes:
            text += f"\n{note}"
        raise FeatcheckAssertionError(text, self.flagged)


def _fraction(value: float | None, name: str) -> float:
    return _verdicts.fraction(value, name)


def _bn_note(cap: Any, kind: str) -> list[str]:
    """A warning when verdicts rest on BatchNorm layers that never saw data."""
    names = list(getattr(cap, "default_batchnorm", []) or [])
    if not names:
        return []
    shown = ", ".join(names[:3]) + (f", ... ({len(names)} in all)" if len(names) > 3 else "")
    text = (
        f"Warning: this {kind} verdict was taken in eval mode on a model whose BatchNorm layers "
        f"hold their default running statistics (mean 0, var 1): {shown}. Random-weight models "
        "really do have dead and saturated channels then; calibrate first with "
        "featcheck.calibrate_batchnorm(model, batches)."
    )
    warnings.warn(text, UserWarning, stacklevel=4)
    return [text]


# -- per-layer verdicts (owned by _verdicts) ---------------------------------------------------


def dead_channels(lc: Any, tolerance: float | None = None) -> list[int]:
    """Channels whose output never varied over every sample and position seen.

    A channel is dead when ``max - min <= tolerance * scale``, where ``scale`` is the layer's
    largest absolute value (so a layer that is all zeros is all dead). Channels with fewer than
    two values seen cannot vary and are not judged; channels with no finite value are not dead
    (``assert_finite`` reports them).
    """
    return _verdicts.dead_channels(lc, tolerance)


def saturated_channels(lc: Any, fraction: float | None = None) -> list[int]:
    """Channels with at least ``fraction`` of their values at the layer's output bounds.

    Bounds come from the module (Sigmoid, Tanh, Hardtanh, ReLU6, Hardsigmoid) or from
    ``bounds=`` given to capture; the counts were made in the hook, so this costs no forward pass.
    """
    return _verdicts.saturated_channels(lc, fraction)


# -- assertions ---------------------------------------------------------------------------------------


def assert_no_dead_channels(
    cap: Any, layers: Any = None, max_fraction: float | None = None, *, tolerance: float | None = None
) -> None:
    """Fail if any selected layer has more than ``max_fraction`` dead channels.

    Args:
        cap: a Capture (or one LayerCapture).
        layers: selectors as for capture; default every layer in the capture.
        max_fraction: share of dead channels a layer may have (ini ``featcheck_max_dead_fraction``,
            default 0).
        tolerance: see :func:`dead_channels` (ini ``featcheck_dead_tolerance``, default 1e-6).
    """
    __tracebackhide__ = True
    allowed = _fraction(max_fraction, "max_dead_fraction")
    tol = _verdicts.tolerance(tolerance)
    found = _Offences("dead")
    records = _records(cap, layers)
    for lc in records:
        dead = dead_channels(lc, tol)
        if dead and len(dead) / lc.channels > allowed:
            found.add(
                lc,
                f"<= {allowed:.0%} dead",
                f"{len(dead)}/{lc.channels} dead ({len(dead) / lc.channels:.1%})",
                dead,
            )
    notes = _bn_note(cap, "dead-channel")
    if found:
        found.fail(
            f"dead channels in {len(found)} of {_layers(len(records))} (a dead channel never varies: "
            f"max - min <= {tol:g} x the layer's largest |value|)",
            notes,
        )


def assert_not_saturated(
    cap: Any,
    layers: Any = None,
    max_fraction: float | None = None,
    *,
    fraction: float | None = None,
) -> None:
    """Fail if any selected layer has more than ``max_fraction`` saturated channels.

    With ``layers=None`` every layer with known bounds is checked; naming a layer without bounds
    is an error that says how to give them.

    Args:
        fraction: a channel is saturated when this share of its values sit at a bound
            (ini ``featcheck_saturation_fraction``, default 0.99).
        max_fraction: share of saturated channels a layer may have (default 0).
    """
    __tracebackhide__ = True
    allowed = _fraction(max_fraction, "max_saturated_fraction")
    q = _fraction(fraction, "saturation_fraction")
    records = _records(cap, layers)
    if layers is None:
        records = [lc for lc in records if lc.bounds is not None]
    found = _Offences("saturated")
    for lc in records:
        sat = saturated_channels(lc, q)
        if sat and len(sat) / lc.channels > allowed:
            at = lc.stats["lower_fraction"] + lc.stats["upper_fraction"]
            lo, hi = lc.bounds
            found.add(
                lc,
                f"<= {allowed:.0%} channels with >= {q:.0%} at {lo:g} or {hi:g}",
                f"{len(sat)}/{lc.channels} saturated (worst {at.max():.1%} at a bound)",
                sat,
            )
    notes = _bn_note(cap, "saturation")
    if found:
        found.fail(f"saturated channels in {len(found)} of {_layers(len(records))}", notes)


def assert_finite(cap: Any, layers: Any = None) -> None:
    """Fail if any selected layer produced a NaN or Inf; names the first such layer in call order
    (where to look: later layers usually inherit it)."""
    __tracebackhide__ = True
    found = _Offences("nonfinite")
    for lc in _records(cap, layers):
        bad = np.flatnonzero(lc.stats["nonfinite"] > 0).tolist()
        if bad:
            found.add(lc, "finite", f"{int(lc.stats['nonfinite'].sum())} NaN/Inf values", bad)
    if found:
        found.fail(f"non-finite values in {_layers(len(found))}; the first in call order is {found.rows[0][0]!r}")


def _expected_records(cap: Any, expected: Mapping[str, Any], what: str) -> list[tuple[Any, Any]]:
    if not isinstance(expected, Mapping):
        raise TypeError(f"{what} must be a mapping of layer name to expectation, got {type(expected).__name__}")
    out: list[tuple[Any, Any]] = []
    for key, want in expected.items():
        if not isinstance(key, str):
            raise TypeError(f"{what} keys must be layer names or patterns, got {key!r}")
        out.extend((lc, want) for lc in _records(cap, key))
    return out


def _fmt_shape(shape: Sequence[Any]) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"


def assert_shapes(cap: Any, expected: Mapping[str, Sequence[int | None]]) -> None:
    """Fail if any layer's output shape differs; ``None`` is a wildcard per dimension and a wrong
    rank is a failure. Keys are names or patterns (a pattern checks every layer it matches)."""
    __tracebackhide__ = True
    found = _Offences("shape")
    for lc, want in _expected_records(cap, expected, "expected shapes"):
        want = tuple(want)
        got = tuple(lc.shape)
        ok = len(got) == len(want) and all(w is None or w == g for w, g in zip(want, got))
        if not ok:
            found.add(lc, _fmt_shape(want), _fmt_shape(got))
    if found:
        found.fail(f"wrong output shape in {_layers(len(found))}")


def _stride_holds(size_in: int, size_out: int, s: float) -> bool:
    return size_out in (math.floor(size_in / s), math.ceil(size_in / s))


def assert_strides(cap: Any, expected: Mapping[str, float | Sequence[float]]) -> None:
    """Fail if a layer's reduction relative to the model input is not the expected stride.

    A stride ``s`` holds when every spatial output size is ``floor(in / s)`` or ``ceil(in / s)``,
    so inputs that don't divide evenly (225 x 225 into a ResNet) pass. A tuple gives one stride
    per spatial dimension. The message shows the measured reduction.
    """
    __tracebackhide__ = True
    found = _Offences("stride")
    for lc, want in _expected_records(cap, expected, "expected strides"):
        spatial, size_in = lc.spatial, lc.input_size
        wants = tuple(want) if isinstance(want, (tuple, list)) else (want,) * max(len(spatial), 1)
        if any(not isinstance(w, (int, float)) or w <= 0 for w in wants):
            raise ValueError(f"expected stride for {lc.name!r} must be positive numbers, got {want!r}")
        expected_text = "x".join(f"{w:g}" for w in wants)
        if lc.stride is None or size_in is None or len(wants) != len(spatial):
            found.add(
                lc,
                expected_text,
                f"no spatial dims matching the input (shape {tuple(lc.shape)})"
                if lc.stride is None
                else f"{len(spatial)} spatial dims, {len(wants)} strides given",
            )
            continue
        if not all(_stride_holds(i, o, w) for i, o, w in zip(size_in, spatial, wants)):
            measured = "x".join(f"{s:.4g}" for s in lc.stride)
            sizes = "x".join(map(str, size_in)) + " -> " + "x".join(map(str, spatial))
            found.add(lc, expected_text, f"{measured} ({sizes})")
    if found:
        found.fail(f"wrong stride in {_layers(len(found))} (expected: output = floor or ceil of input / stride)")
