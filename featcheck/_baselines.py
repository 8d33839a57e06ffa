"""Regression baselines: a small JSON file of a capture's structure and statistics per check.

Storage: ``__featcheck__/<test module>/<test>[.<name>].json`` next to the test file, one file per
check (so pytest-xdist workers never share a file). Every file has a version; keys are sorted and
number lists kept on one line, so that a change reads well in code review. Statistics only, never
raw tensors, and a size cap. Per-channel statistics keep 4 significant digits, and a layer whose
statistics repeat an earlier layer's refers to it (``"same_as"``); files written with 6 digits
and no references (before this was so) are read as they are.

Semantics (syrupy's): a missing baseline fails and writes nothing; ``--featcheck-update`` writes
missing and changed baselines (those checks pass and the terminal summary lists them); a file
that cannot be read or has an unknown version fails with its path and is only ever rewritten by
``--featcheck-update``. Every field of a file is checked when it is read, so a damaged file
fails with its path, the field at fault and the update command. Writes are atomic (a temporary
file renamed into place); a directory or a file standing where a baseline or its folder must go
is never replaced.

The diff matches layers by name and, where names moved, by call order (a sequence alignment of
the layers' signatures), so that an inserted block reads as one added layer and renamed followers,
not as "everything changed". Structure changes and numeric drift are reported separately.
"""

from __future__ import annotations

import difflib
import json
import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import FeatcheckAssertionError
from ._paths import safe_filename, write_atomic

FORMAT_VERSION = 1
STAT_DIGITS = 4
_STRUCTURE = ("module_type", "shape", "dtype", "stride", "channels", "params")


# -- what is stored --------------------------------------------------------------------------------


def _sig(v: float, digits: int = 6) -> float | None:
    """``digits`` significant digits; NaN and Inf become null."""
    if not math.isfinite(v):
        return None
    return float(f"{v:.{digits}g}")


def _channel_values(values: Any) -> list[float | None]:
    """Per-channel statistics keep STAT_DIGITS significant digits: a difference of one unit in
    the last digit is never reported as drift (see ``_drift``), and each value costs about 8
    bytes, so that the default baseline of common models stays under the size cap."""
    return [_sig(v, STAT_DIGITS) for v in values]


def layer_entry(lc: Any, stats: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": lc.name,
        "module_type": lc.module_type,
        "shape": [None, *lc.shape[1:]] if len(lc.shape) >= 1 else [],
        "dtype": lc.dtype,
        "stride": None if lc.stride is None else [_sig(s) for s in lc.stride],
        "channels": lc.channels,
        "params": lc.params,
    }
    if stats:
        st = lc.stats
        entry["stats"] = {
            "mean": _channel_values(st["mean"]),
            "std": _channel_values(st["std"]),
            "dead_fraction": _sig(len(lc.dead_channels()) / lc.channels) if lc.channels else None,
            "saturated_fraction": (
                _sig(len(lc.saturated_channels()) / lc.channels) if lc.bounds is not None and lc.channels else None
            ),
        }
    return entry


def document(
    layers: list[dict[str, Any]], nodeid: str, name: str | None, stats: bool, ops: bool = False
) -> dict[str, Any]:
    """``ops``: the layers include records of operations (``featcheck._ops``). Files written
    before operations were recorded have no ``ops`` field and hold module records only."""
    import torch

    doc = {
        "featcheck_baseline": FORMAT_VERSION,
        "test": nodeid,
        "name": name,
        "stats": stats,
        "torch": torch.__version__.split("+")[0],
        "layers": layers,
    }
    if ops:
        doc["ops"] = True
    return doc


def stored(doc: dict[str, Any]) -> dict[str, Any]:
    """The document as written: a layer whose statistics equal an earlier layer's (Dropout,
    Identity and StochasticDepth in eval mode, Permute, Flatten of a 1 x 1 map) stores
    ``"stats": {"same_as": <that layer>}`` instead of a copy (a third of a ViT's baseline)."""
    first: dict[str, str] = {}
    layers = []
    for layer in doc["layers"]:
        st = layer.get("stats")
        if st is not None:
            key = json.dumps([layer["channels"], st], sort_keys=True)
            if key in first:
                layer = {**layer, "stats": {"same_as": first[key]}}
            else:
                first[key] = layer["name"]
        layers.append(layer)
    return {**doc, "layers": layers}


_NUMBER_LIST = re.compile(r"\[\s*((?:-?[\d.eE+-]+|null)(?:,\s*(?:-?[\d.eE+-]+|null))*)\s*\]")


def dumps(doc: dict[str, Any]) -> str:
    text = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False)
    return _NUMBER_LIST.sub(lambda m: "[" + ",".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


# -- reading ---------------------------------------------------------------------------------------


class BaselineError(Exception):
    """A baseline file that cannot be used (unreadable, malformed, unknown version)."""


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite JSON number (``bool`` is an ``int`` in Python, but not here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_fraction(v: Any) -> bool:
    return v is None or (_is_number(v) and 0 <= v <= 1)


def _is_number_list(v: Any) -> bool:
    return isinstance(v, list) and all(x is None or _is_number(x) for x in v)


_LAYER_FIELDS: dict[str, tuple[Any, str]] = {
    "name": (lambda v: isinstance(v, str), "a string"),
    "module_type": (lambda v: isinstance(v, str), "a string"),
    "shape": (lambda v: isinstance(v, list) and all(x is None or (_is_int(x) and x >= 0) for x in v),
              "a list of non-negative ints and nulls"),
    "dtype": (lambda v: isinstance(v, str), "a string"),
    "stride": (lambda v: v is None or _is_number_list(v), "null or a list of numbers"),
    "channels": (lambda v: _is_int(v) and v >= 0, "a non-negative int"),
    "params": (lambda v: v is None or (_is_int(v) and v >= 0), "null or a non-negative int"),
}


def _check_stats(st: Any, channels: int, earlier: dict[str, dict[str, Any]]) -> str | None:
    """What is wrong with one layer's ``stats`` (None if nothing)."""
    if not isinstance(st, dict):
        return f"'stats' must be an object, found {_show(st)}"
    if "same_as" in st:
        ref = st["same_as"]
        if set(st) != {"same_as"} or not isinstance(ref, str):
            return f"'stats' with 'same_as' must hold only a layer name, found {_show(st)}"
        target = earlier.get(ref)
        if target is None or not isinstance(target.get("stats"), dict) or "same_as" in target["stats"]:
            return f"'stats.same_as' must name an earlier layer with its own statistics, found {_show(ref)}"
        if target["channels"] != channels:
            return f"'stats.same_as' names {ref!r}, which has {target['channels']} channels, not {channels}"
        return None
    for key in ("mean", "std"):
        v = st.get(key)
        if not _is_number_list(v) or len(v) != channels:
            return f"'stats.{key}' must be a list of {channels} numbers or nulls (one per channel), found {_show(v)}"
    for key in ("dead_fraction", "saturated_fraction"):
        if key not in st or not _is_fraction(st[key]):
            return f"'stats.{key}' must be null or a number from 0 to 1, found {_show(st.get(key))}"
    return None


def _validate(doc: Any) -> None:
    """Every field's type, per layer; raises BaselineError saying which field of which layer."""
    if not isinstance(doc, dict) or "featcheck_baseline" not in doc:
        raise BaselineError("is not a featcheck baseline (no 'featcheck_baseline' version field)")
    version = doc["featcheck_baseline"]
    if not _is_int(version):
        raise BaselineError(f"has 'featcheck_baseline': {_show(version)}, which is not a format version number")
    if version != FORMAT_VERSION:
        raise BaselineError(f"has format version {version}; this featcheck reads version {FORMAT_VERSION}")
    for key, ok, expected in (
        ("stats", lambda v: isinstance(v, bool), "true or false"),
        ("layers", lambda v: isinstance(v, list), "a list of layers"),
        ("test", lambda v: isinstance(v, str), "a string"),
        ("name", lambda v: v is None or isinstance(v, str), "null or a string"),
        ("torch", lambda v: isinstance(v, str), "a string"),
        ("ops", lambda v: isinstance(v, bool), "true or false"),
    ):
        if key == "ops" and key not in doc:
            continue  # optional: files without it hold module records only
        if key not in doc or not ok(doc[key]):
            found = _show(doc[key]) if key in doc else "nothing"
            raise BaselineError(f"is malformed: '{key}' must be {expected}, found {found}")
    earlier: dict[str, dict[str, Any]] = {}
    for i, layer in enumerate(doc["layers"]):
        where = f"layer {i}"
        if not isinstance(layer, dict):
            raise BaselineError(f"is malformed: {where} must be an object, found {_show(layer)}")
        if isinstance(layer.get("name"), str):
            where += f" ({layer['name']!r})"
        for key, (ok, expected) in _LAYER_FIELDS.items():
            if key not in layer or not ok(layer[key]):
                found = _show(layer[key]) if key in layer else "nothing"
                raise BaselineError(f"is malformed: {where}: '{key}' must be {expected}, found {found}")
        if layer["name"] in earlier:
            raise BaselineError(f"is malformed: {where}: the name appears twice")
        if "stats" in layer or doc["stats"]:
            problem = _check_stats(layer.get("stats"), layer["channels"], earlier)
            if problem:
                raise BaselineError(f"is malformed: {where}: {problem}")
        earlier[layer["name"]] = layer


def load(path: Path) -> dict[str, Any]:
    """Read and validate a baseline; layers stored as ``"stats": {"same_as": name}`` get a copy of
    that layer's statistics, so that comparing never sees the shorthand."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BaselineError(f"cannot be read ({e.__class__.__name__}: {e})") from None
    return parse(text)


def parse(text: str) -> dict[str, Any]:
    """:func:`load` without the file: JSON text to a validated document."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise BaselineError(f"cannot be read as JSON ({e.__class__.__name__}: {e})") from None
    _validate(doc)
    by_name: dict[str, dict[str, Any]] = {}
    for layer in doc["layers"]:
        ref = layer.get("stats", {}).get("same_as")
        if ref is not None:
            layer["stats"] = dict(by_name[ref]["stats"])
        by_name[layer["name"]] = layer
    return doc


# -- comparing -------------------------------------------------------------------------------------


def _fmt_params(n: int | None) -> str:
    if n is None:
        return "?"
    if n >= 1_000_000:
        return f"{n / 1e6:.3g}M"
    if n >= 1_000:
        return f"{n / 1e3:.3g}k"
    return str(n)


def _fmt_shape(shape: list[Any]) -> str:
    return "x".join(str(s) for s in shape[1:]) if shape else "scalar"


def _fmt_stride(stride: list[Any] | None) -> str:
    if stride is None:
        return "-"
    return "x".join(f"{s:g}" for s in stride) if len(set(stride)) > 1 else f"{stride[0]:g}"


def _describe(e: dict[str, Any]) -> str:
    return (
        f"{e['module_type']}  {_fmt_shape(e['shape'])}  stride {_fmt_stride(e['stride'])}  "
        f"params {_fmt_params(e['params'])}"
    )


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    if old["module_type"] != new["module_type"]:
        out.append(f"type {old['module_type']} -> {new['module_type']}")
    if old["shape"] != new["shape"]:
        out.append(f"shape {_fmt_shape(old['shape'])} -> {_fmt_shape(new['shape'])}")
    if old["stride"] != new["stride"]:
        out.append(f"stride {_fmt_stride(old['stride'])} -> {_fmt_stride(new['stride'])}")
    if old["params"] != new["params"]:
        out.append(f"params {_fmt_params(old['params'])} -> {_fmt_params(new['params'])}")
    if old["dtype"] != new["dtype"]:
        out.append(f"dtype {old['dtype']} -> {new['dtype']}")
    if old["channels"] != new["channels"] and old["shape"] == new["shape"]:
        out.append(f"channels {old['channels']} -> {new['channels']}")
    return out


def _signature(e: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(json.dumps(e.get(k)) for k in _STRUCTURE)


@dataclass
class Diff:
    added: list[dict[str, Any]]
    removed: list[dict[str, Any]]
    changed: list[tuple[dict[str, Any], dict[str, Any], list[str]]]
    renamed: list[tuple[dict[str, Any], dict[str, Any]]]
    drift: list[tuple[str, list[str]]]
    matched: list[tuple[dict[str, Any], dict[str, Any]]]

    @property
    def structural(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.renamed)


def _align(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> Diff:
    diff = Diff([], [], [], [], [], [])
    sm = difflib.SequenceMatcher(a=[_signature(e) for e in old], b=[_signature(e) for e in new], autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        a, b = old[i1:i2], new[j1:j2]
        if tag == "equal":
            for x, y in zip(a, b):
                diff.matched.append((x, y))
                if x["name"] != y["name"]:
                    diff.renamed.append((x, y))
            continue
        # Within a replaced block: pair by name first, then by module type in order.
        left, right = list(a), list(b)
        by_name = {r["name"]: r for r in right}
        for x in list(left):
            same = by_name.get(x["name"])
            if same is not None:
                diff.changed.append((x, same, _changes(x, same)))
                diff.matched.append((x, same))
                left.remove(x)
                right.remove(same)
        # Then a layer whose name is gone with a layer whose name is new, of the same type.
        old_names, new_names = {o["name"] for o in old}, {n["name"] for n in new}
        for x in list(left):
            if x["name"] in new_names:
                continue
            moved = next((r for r in right if r["module_type"] == x["module_type"] and r["name"] not in old_names), None)
            if moved is not None:
                diff.changed.append((x, moved, [f"renamed {x['name']} -> {moved['name']}", *_changes(x, moved)]))
                diff.matched.append((x, moved))
                left.remove(x)
                right.remove(moved)
        diff.removed += left
        diff.added += right
    return diff


def _last_digit(a: np.ndarray) -> np.ndarray:
    """One unit in the last stored digit of each value: two captures whose statistics round to
    neighbouring stored values may differ by less than that, so it is never drift."""
    mag = np.abs(np.nan_to_num(a))
    exponent = np.floor(np.log10(np.where(mag > 0, mag, 1.0)))
    # A hair more than one unit: 1.235 - 1.234 is 1.0000000000001e-3 in binary floating point.
    return np.where(mag > 0, 10.0 ** (exponent - (STAT_DIGITS - 1)) * (1 + 1e-9), 0.0)


def _drift(
    old: dict[str, Any], new: dict[str, Any], rtol: float, atol: float
) -> list[str]:
    so, sn = old.get("stats"), new.get("stats")
    if not so or not sn or old["channels"] != new["channels"]:
        return []
    out = []
    for key in ("mean", "std"):
        a = np.array([np.nan if v is None else v for v in so[key]], dtype=np.float64)
        b = np.array([np.nan if v is None else v for v in sn[key]], dtype=np.float64)
        if a.shape != b.shape:
            continue
        tol = np.maximum(atol + rtol * np.abs(a), _last_digit(a))
        nan_changed = np.isnan(a) != np.isnan(b)
        over = (np.abs(b - a) > tol) & ~np.isnan(a) & ~np.isnan(b) | nan_changed
        if over.any():
            excess = np.where(nan_changed, np.inf, np.abs(b - a) / np.where(tol > 0, tol, 1.0))
            worst = np.argsort(-np.nan_to_num(excess, nan=0.0), kind="stable")[:3]
            shown = ", ".join(f"ch {i} {a[i]:.4g} -> {b[i]:.4g}" for i in worst if over[i])
            out.append(f"{key}: {int(over.sum())}/{len(a)} channels, worst {shown}")
    for key, label in (("dead_fraction", "dead channels"), ("saturated_fraction", "saturated channels")):
        x, y = so.get(key), sn.get(key)
        if x is not None and y is not None and abs(x - y) > 1e-9:
            c = old["channels"]
            out.append(f"{label} {round(x * c)}/{c} -> {round(y * c)}/{c}")
    return out


def compare(old_doc: dict[str, Any], new_doc: dict[str, Any], rtol: float, atol: float, stats: bool) -> Diff:
    diff = _align(old_doc["layers"], new_doc["layers"])
    if stats:
        for x, y in diff.matched:
            if _signature(x) == _signature(y):
                lines = _drift(x, y, rtol, atol)
                if lines:
                    diff.drift.append((y["name"], lines))
    return diff


def render_diff(diff: Diff, path: str, rtol: float, atol: float, command: str | None, header: str | None = None) -> str:
    """The readable diff; ``header`` replaces the first line, and without ``command`` no update
    command is suggested (``featcheck diff``)."""
    lines = [header if header is not None else f"featcheck baseline {path} differs from this capture"]
    if diff.structural:
        n = len(diff.added) + len(diff.removed) + len(diff.changed) + len(diff.renamed)
        lines.append(
            f"structure: {n} differences ({len(diff.added)} added, {len(diff.removed)} removed, "
            f"{len(diff.changed)} changed, {len(diff.renamed)} renamed)"
        )
        for e in diff.added:
            lines.append(f"  + added    {e['name'] or '(root)'}  {_describe(e)}")
        for e in diff.removed:
            lines.append(f"  - removed  {e['name'] or '(root)'}  {_describe(e)}")
        for x, y, what in diff.changed:
            lines.append(f"  ~ changed  {y['name'] or '(root)'} ({y['module_type']}): {', '.join(what) or 'statistics layout'}")
        for x, y in diff.renamed[:8]:
            lines.append(f"  > renamed  {x['name']} -> {y['name']} ({y['module_type']}, otherwise unchanged)")
        if len(diff.renamed) > 8:
            lines.append(f"  > ... and {len(diff.renamed) - 8} more renamed layers")
    if diff.drift:
        lines.append(f"numeric drift beyond rtol={rtol:g}, atol={atol:g} in {len(diff.drift)} layers (structure unchanged there):")
        for name, what in diff.drift[:12]:
            lines.append(f"  {name or '(root)'}: " + "; ".join(what))
        if len(diff.drift) > 12:
            lines.append(f"  ... and {len(diff.drift) - 12} more layers")
    if command is not None:
        lines.append(f"If the change is intended, update the baseline: {command}")
    return "\n".join(lines)


# -- files -----------------------------------------------------------------------------------------


def baseline_path(test_file: Path, nodeid: str, name: str | None) -> Path:
    """``__featcheck__/<module>/<test, class and parametrize id sanitised>[.<name>].json``."""
    parts = nodeid.split("::")
    test = ".".join(parts[1:]) if len(parts) > 1 else parts[0]
    stem = safe_filename(test, 100)
    if name is not None:
        stem += "." + safe_filename(name, 40)
    return test_file.parent / "__featcheck__" / safe_filename(test_file.stem, 80) / f"{stem}.json"


def _blocking_file(path: Path) -> Path | None:
    """The nearest existing ancestor folder of ``path`` when it is a file (then nothing can be
    stored there), else None."""
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            return None if parent.is_dir() else parent
    return None


def _write(path: Path, text: str, display_path: str, command: str) -> None:
    __tracebackhide__ = True
    try:
        write_atomic(path, text.encode(), durable=True)
    except OSError as e:
        raise FeatcheckAssertionError(
            f"featcheck baseline {display_path} could not be written ({e.__class__.__name__}: "
            f"{e.strerror or e}); any existing file was left as it is. Make its folder writable, "
            f"then run: {command}"
        ) from None


def _check_place(path: Path, display_path: str, command: str) -> None:
    """Fail clearly where a directory or a file stands where the baseline or its folder must go."""
    __tracebackhide__ = True
    if path.is_dir():
        raise FeatcheckAssertionError(
            f"featcheck baseline {display_path} is a directory, not a baseline file; featcheck "
            f"never replaces it. Move it away, then run: {command}"
        )
    blocker = _blocking_file(path)
    if blocker is not None:
        depth = len(path.relative_to(blocker).parts)
        shown = Path(display_path).parents[depth - 1]
        raise FeatcheckAssertionError(
            f"featcheck baseline {display_path} cannot be stored: {shown} is a file, not a folder; "
            f"featcheck never replaces it. Move it away, then run: {command}"
        )


def _with_grads(records: list[Any]) -> list[Any]:
    """Each record followed by its gradient record (``"<layer> (grad)"``), compared like any
    other layer."""
    if not any(lc.grad is not None for lc in records):
        raise ValueError(
            "check_baseline(..., grads=True): the capture holds no gradients; capture with "
            "backward=lambda out: loss, or run a backward pass inside watch"
        )
    return [r for lc in records for r in (lc, lc.grad) if r is not None]


def check(
    cap: Any,
    *,
    path: Path,
    display_path: str,
    nodeid: str,
    name: str | None,
    layers: Any,
    rtol: float,
    atol: float,
    stats: bool,
    update: bool,
    max_kb: float,
    command: str,
    grads: bool = False,
    pictures: bool = False,
) -> str | None:
    """Compare (or, with ``update``, write) one baseline. Returns 'written' / 'updated' / None.
    With ``pictures`` a visual baseline is kept beside it (see ``featcheck._visual_baselines``)."""
    __tracebackhide__ = True
    for arg, value in (("rtol", rtol), ("atol", atol)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value < math.inf:
            raise ValueError(f"{arg} must be a finite number >= 0, got {value!r}")
    records = cap.select(layers)
    if not records:
        raise ValueError("the capture has no layers to compare; capture some or widen layers=")
    if grads:
        records = _with_grads(records)
    has_ops = any(getattr(lc, "op", None) for lc in records)
    new_doc = document([layer_entry(lc, stats) for lc in records], nodeid, name, stats, has_ops)
    text = dumps(stored(new_doc))
    size_kb = len(text.encode()) / 1024
    if size_kb > max_kb:
        raise FeatcheckAssertionError(
            f"featcheck baseline {display_path} would be {size_kb:.0f} KiB, above the cap of "
            f"{max_kb:g} KiB (ini featcheck_baseline_max_kb). Check fewer layers (layers=...), "
            "or pass stats=False to guard the architecture only."
        )
    _check_place(path, display_path, command)
    from ._visual_baselines import Pictures

    pics = Pictures(records, path, display_path, command) if pictures else None
    if not path.exists():
        if update:
            _write(path, text, display_path, command)
            if pics is not None:
                pics.write()
            return "written"
        raise FeatcheckAssertionError(
            f"featcheck baseline {display_path} does not exist; nothing was written.\n"
            f"Create it with: {command}"
        )
    try:
        old_doc = load(path)
    except BaselineError as e:
        if update:
            _write(path, text, display_path, command)
            if pics is not None:
                pics.write()
            return "updated"
        raise FeatcheckAssertionError(
            f"featcheck baseline {display_path} {e}. It was left as it is.\n"
            f"Rewrite it from this capture with: {command}"
        ) from None
    compared = new_doc
    if has_ops and not old_doc.get("ops", False):
        # a module-only baseline keeps guarding module records only
        module_records = [lc for lc in records if not getattr(lc, "op", None)]
        compared = document([layer_entry(lc, stats) for lc in module_records], nodeid, name, stats)
    diff = compare(old_doc, compared, rtol, atol, stats and old_doc["stats"])
    if not diff.structural and not diff.drift:
        return pics.check(update) if pics is not None else None
    if update:
        _write(path, text, display_path, command)
        if pics is not None:
            pics.write()
        return "updated (now with op records)" if compared is not new_doc else "updated"
    by_name = {lc.name: lc for lc in records}
    touched = [y["name"] for y in diff.added] + [y["name"] for _, y, _ in diff.changed] + [n for n, _ in diff.drift]
    flagged: list[tuple[Any, list[int], str]] = [(by_name[n], [], "baseline") for n in dict.fromkeys(touched) if n in by_name]
    if pics is not None:
        flagged = pics.flagged(flagged, diff)
    raise FeatcheckAssertionError(render_diff(diff, display_path, rtol, atol, command), flagged)
