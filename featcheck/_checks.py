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
import os
import sys
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


def _all_records(cap: Any, layers: Any) -> list[Any]:
    from ._records import Capture, LayerCapture

    if isinstance(cap, LayerCapture):
        return [cap]
    if not isinstance(cap, Capture):
        raise TypeError(
            f"expected a featcheck Capture (from featcheck.capture or featcheck.watch) or a "
            f"LayerCapture, got {type(cap).__name__}"
        )
    return cap.select(layers)


def _records(cap: Any, layers: Any, check: str) -> list[Any]:
    """The records a check looks at; a check over nothing fails, saying why."""
    __tracebackhide__ = True
    records = _all_records(cap, layers)
    if not records:
        _nothing(cap, check, "" if layers is None else f"layers={layers!r} selected no record")
    return records


def _nothing(cap: Any, check: str, why: str) -> None:
    __tracebackhide__ = True
    if not why:
        forwards = getattr(cap, "forwards", 0)
        why = (
            f"the capture has no records: it saw {forwards} forward pass{'es' if forwards != 1 else ''}"
            + (" (a watch block in which the model never ran?)" if forwards == 0 else "")
        )
    raise FeatcheckAssertionError(
        f"{check}: nothing to check, {why}. A check over no layer proves nothing; capture the "
        "layers you mean to check, or select them with layers=."
    )


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
    """A warning, for a failing verdict, when it rests on BatchNorm layers that never saw data."""
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
    warnings.warn(text, UserWarning, stacklevel=_caller_level())
    return [text]


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside featcheck: the
    test's own line, whichever way the check was called."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame, level = frame.f_back, level + 1
    return level


def _record_notes(records: Iterable[Any]) -> list[str]:
    """Lines for records some of whose outputs were not reduced (their verdicts cover less)."""
    return [f"Note: {lc.name or '(root)'}: {lc.note}" for lc in records if getattr(lc, "note", "")][:5]


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
    records = _records(cap, layers, "assert_no_dead_channels")
    for lc in records:
        dead = dead_channels(lc, tol)
        if dead and len(dead) / lc.channels > allowed:
            found.add(
                lc,
                f"<= {allowed:.0%} dead",
                f"{len(dead)}/{lc.channels} dead ({len(dead) / lc.channels:.1%})",
                dead,
            )
    if found:
        found.fail(
            f"dead channels in {len(found)} of {_layers(len(records))} (a dead channel never varies: "
            f"max - min <= {tol:g} x the layer's largest |value|)",
            _bn_note(cap, "dead-channel") + _record_notes(records),
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
    records = _records(cap, layers, "assert_not_saturated")
    if layers is None:
        records = [lc for lc in records if lc.bounds is not None]
        if not records:
            _nothing(cap, "assert_not_saturated", (
                "no layer of the capture has known output bounds (Sigmoid, Tanh, Hardtanh, ReLU6, "
                "Hardsigmoid, or bounds= given to capture)"
            ))
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
    if found:
        found.fail(
            f"saturated channels in {len(found)} of {_layers(len(records))}",
            _bn_note(cap, "saturation") + _record_notes(records),
        )


def assert_finite(cap: Any, layers: Any = None) -> None:
    """Fail if any selected layer produced a NaN or Inf; names the first such layer in call order
    (where to look: later layers usually inherit it)."""
    __tracebackhide__ = True
    found = _Offences("nonfinite")
    records = _records(cap, layers, "assert_finite")
    for lc in records:
        bad = np.flatnonzero(lc.stats["nonfinite"] > 0).tolist()
        if bad:
            found.add(lc, "finite", f"{int(lc.stats['nonfinite'].sum())} NaN/Inf values", bad)
    if found:
        found.fail(
            f"non-finite values in {_layers(len(found))}; the first in call order is {found.rows[0][0]!r}",
            _record_notes(records),
        )


def _expected_records(
    cap: Any, expected: Mapping[str, Any], what: str, check: str, validate: Any
) -> list[tuple[Any, Any]]:
    """Validate every expectation first, then pair each with the records its key selects."""
    __tracebackhide__ = True
    if not isinstance(expected, Mapping):
        raise TypeError(f"{what} must be a mapping of layer name to expectation, got {type(expected).__name__}: {expected!r}")
    if not expected:
        _nothing(cap, check, f"{what} is empty")
    checked = {}
    for key, want in expected.items():
        if not isinstance(key, str):
            raise TypeError(f"{what} keys must be layer names or patterns (str), got {type(key).__name__}: {key!r}")
        checked[key] = validate(key, want)
    out: list[tuple[Any, Any]] = []
    for key, want in checked.items():
        out.extend((lc, want) for lc in _records(cap, key, check))
    return out


def _shape(key: str, want: Any) -> tuple[int | None, ...]:
    ok = isinstance(want, (tuple, list)) and all(
        w is None or (isinstance(w, int) and not isinstance(w, bool) and w >= 0) for w in want
    )
    if not ok:
        raise TypeError(
            f"expected shape for {key!r} must be a tuple of sizes (ints >= 0, or None for any), "
            f"e.g. (None, 64, 56, 56); got {type(want).__name__}: {want!r}"
        )
    return tuple(want)


def _strides(key: str, want: Any) -> Any:
    values = want if isinstance(want, (tuple, list)) else (want,)
    for w in values:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise ValueError(
                f"expected stride for {key!r} must be a positive finite number or a tuple of them "
                f"(one per spatial dim), got {want!r}"
            )
    if not values:
        raise ValueError(f"expected stride for {key!r} is an empty tuple; give one stride per spatial dim")
    return want


def _fmt_shape(shape: Sequence[Any]) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"


def assert_shapes(cap: Any, expected: Mapping[str, Sequence[int | None]]) -> None:
    """Fail if any layer's output shape differs; ``None`` is a wildcard per dimension and a wrong
    rank is a failure. Keys are names or patterns (a pattern checks every layer it matches)."""
    __tracebackhide__ = True
    found = _Offences("shape")
    for lc, want in _expected_records(cap, expected, "expected shapes", "assert_shapes", _shape):
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
    for lc, want in _expected_records(cap, expected, "expected strides", "assert_strides", _strides):
        spatial, size_in = lc.spatial, lc.input_size
        wants = tuple(want) if isinstance(want, (tuple, list)) else (want,) * max(len(spatial), 1)
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
