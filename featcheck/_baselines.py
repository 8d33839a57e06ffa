"""Regression baselines: a small JSON file of a capture's structure and statistics per check.

Storage: ``__featcheck__/<test module>/<test>[.<name>].json`` next to the test file, one file per
check (so pytest-xdist workers never share a file). Every file has a version; keys are sorted and
number lists kept on one line, so that a change reads well in code review. Statistics only, never
raw tensors, and a size cap. Per-channel statistics keep 4 significant digits, and a layer whose
statistics repeat an earlier layer's refers to it (``"same_as"``); files written with 6 digits
and no references (before this was so) are read as they are.

Semantics (syrupy's): a missing baseline fails and writes nothing; ``--featcheck-update`` writes
missing and changed baselines (those checks pass and the terminal summary lists them); a file
that cannot be read or is damaged fails with its path and is only ever rewritten by
``--featcheck-update``; a file of a newer format version is never rewritten. Every field of a
file is checked when it is read (types, list lengths, numbers within float range), so a damaged
file fails with its path, the field at fault and the update command, never with an internal
error. Writes are atomic (a temporary file renamed into place); a symbolic link is written
through, never replaced; a directory or a file standing where a baseline or its folder must go
is never replaced.

One file per test: the name is a function of the node id without loss (see ``_stem``), and two
tests of one session that still reach one file fail naming both (``_claim``). featcheck 0.1.0
joined ``::`` with ``.`` first, so ``test_p[a::b]`` and ``test_p[a.b]`` shared a file; ids like
``test_p[a::b]`` have a new name, and a file 0.1.0 wrote under the old name is read there and
moved by ``--featcheck-update`` (``check``).

The diff matches layers by name and, where names moved, by call order (a sequence alignment of
the layers' signatures), so that an inserted block reads as one added layer and renamed followers,
not as "everything changed". Structure changes and numeric drift are reported separately.
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import json
import math
import numbers
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import FeatcheckAssertionError
from ._paths import _UNSAFE, safe_filename, write_atomic

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


class NewerBaselineError(BaselineError):
    """A baseline of a format version above :data:`FORMAT_VERSION`: a newer featcheck wrote it, so
    it is never rewritten (that would downgrade it), not even by ``--featcheck-update``."""


def _show(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**15:
        digits = len(str(abs(value)))
        return f"{str(value)[:13 if value < 0 else 12]}...({digits} digits)"
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


_FLOAT_MAX = sys.float_info.max
_RANGE_NOTE = "numbers must be finite and within float range; NaN and infinity are stored as null"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_count(v: Any) -> bool:
    """A non-negative int that converts to a float (an int of 400 digits does not)."""
    return _is_int(v) and 0 <= v <= _FLOAT_MAX


def _is_number(v: Any) -> bool:
    """A JSON number that converts to a finite float (``bool`` is an ``int`` in Python, but not
    here). Comparing an int with a float is exact in Python, so a huge int is refused, not
    converted (``float(10**400)`` raises OverflowError); NaN fails every comparison."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and -_FLOAT_MAX <= v <= _FLOAT_MAX


def _is_fraction(v: Any) -> bool:
    return v is None or (_is_number(v) and 0 <= v <= 1)


def _first_non_number(v: list[Any]) -> int | None:
    """The index of the first item of ``v`` that is neither a number nor null."""
    return next((i for i, x in enumerate(v) if not (x is None or _is_number(x))), None)


def _number_list_problem(key: str, v: Any, expected: str, length: int | None = None) -> str | None:
    """What is wrong with a list of numbers or nulls (None if nothing): its type, its length, or
    the first item at fault, with its index."""
    if not isinstance(v, list) or (length is not None and len(v) != length):
        return f"'{key}' must be {expected}, found {_show(v)}"
    bad = _first_non_number(v)
    if bad is None:
        return None
    item = v[bad]
    if isinstance(item, (int, float)) and not isinstance(item, bool):  # out of range, or NaN
        return f"'{key}' must be {expected}, found {_show(item)} at index {bad} ({_RANGE_NOTE})"
    whole = _show(v)
    if not whole.endswith("..."):
        return f"'{key}' must be {expected}, found {whole}"
    return f"'{key}' must be {expected}, found {_show(item)} at index {bad}"


_LAYER_FIELDS: dict[str, tuple[Any, str]] = {
    "name": (lambda v: isinstance(v, str), "a string"),
    "module_type": (lambda v: isinstance(v, str), "a string"),
    "shape": (lambda v: isinstance(v, list) and all(x is None or _is_count(x) for x in v),
              "a list of non-negative ints and nulls"),
    "dtype": (lambda v: isinstance(v, str), "a string"),
    "stride": (lambda v: v is None or isinstance(v, list), "null or a list of numbers"),
    "channels": (_is_count, "a non-negative int"),
    "params": (lambda v: v is None or _is_count(v), "null or a non-negative int"),
}


def _check_stride(stride: list[Any] | None, shape: list[Any]) -> str | None:
    """What is wrong with a layer's ``stride`` (None if nothing): one number per spatial dimension,
    i.e. per dimension of ``shape`` other than batch and channels (null where the output has
    none; an entry is null where the output's size was 0, an infinite stride). A layer whose
    channel axis was set to the batch dim has one spatial dimension more."""
    if stride is None:
        return None
    problem = _number_list_problem("stride", stride, "null or a list of numbers")
    if problem:
        return problem
    spatial = [n for n in (len(shape) - 2, len(shape) - 1) if n >= 1]
    if not spatial:
        return f"'stride' must be null for shape {_show(shape)} (no spatial dimensions), found {_show(stride)}"
    if len(stride) not in spatial:
        return (
            f"'stride' must be null or a list of {spatial[0]} numbers or nulls (one per spatial dimension of "
            f"shape {_show(shape)}), found {_show(stride)}"
        )
    return None


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
        expected = f"a list of {channels} numbers or nulls (one per channel)"
        problem = _number_list_problem(f"stats.{key}", st.get(key), expected, channels)
        if problem:
            return problem
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
    if version > FORMAT_VERSION:
        raise NewerBaselineError(
            f"has format version {_show(version)}; this featcheck reads version {FORMAT_VERSION}: it was written "
            "by a newer featcheck"
        )
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
        problem = _check_stride(layer["stride"], layer["shape"])
        if problem:
            raise BaselineError(f"is malformed: {where}: {problem}")
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
    except (ValueError, RecursionError) as e:  # RecursionError: lists nested thousands deep
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
    """``2``, ``2x4``; a null entry is an output of size 0 there (an infinite stride)."""
    if stride is None:
        return "-"
    shown = ["inf" if s is None else f"{s:g}" for s in stride]
    return "x".join(shown) if len(set(shown)) > 1 else "".join(shown[:1]) or "-"


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
    with np.errstate(over="ignore", invalid="ignore"):  # 1e308 - (-1e308) is inf: drift, not a warning
        out += _channel_drift(so, sn, rtol, atol)
    for key, label in (("dead_fraction", "dead channels"), ("saturated_fraction", "saturated channels")):
        x, y = so.get(key), sn.get(key)
        if x is not None and y is not None and abs(x - y) > 1e-9:
            c = old["channels"]
            out.append(f"{label} {round(x * c)}/{c} -> {round(y * c)}/{c}")
    return out


def _channel_drift(so: dict[str, Any], sn: dict[str, Any], rtol: float, atol: float) -> list[str]:
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


def _test_id(nodeid: str) -> str:
    """A node id without its file part: ``[Class::]test[params]``. The file part depends on the
    rootdir pytest picked; the folder of a baseline stands for its test file."""
    return nodeid.split("::", 1)[1] if "::" in nodeid else nodeid


def _old_stem(test_id: str) -> str:
    """featcheck 0.1.0's name: ``::`` turned into ``.``, then sanitised. Not one name per test:
    ``test_p[a::b]`` and ``test_p[a.b]`` both became ``test_p_a.b_-1831475a``."""
    return safe_filename(test_id.replace("::", "."), 100)


def _stem(test_id: str) -> str:
    """One name per test id. Where ``::`` only separates class and test names and ``.`` appears
    in none of them (every test function and method, parametrized or not, unless its parameter
    id holds ``::``), the dotted form tells the id apart from any other, so it keeps featcheck
    0.1.0's name and existing baselines stay valid. Any other id takes a hash of the id itself
    after a ``+``, a character 0.1.0's names never hold."""
    head, _, params = test_id.partition("[")
    if "." not in head and "::" not in params:
        return _old_stem(test_id)
    readable = _UNSAFE.sub("_", test_id.replace("::", ".")).lstrip(".") or "_"
    digest = hashlib.sha1(test_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{readable[:83]}+{digest}"


def _file_name(stem: str, name: str | None) -> str:
    return f"{stem}.{safe_filename(name, 40)}.json" if name is not None else f"{stem}.json"


def baseline_path(test_file: Path, nodeid: str, name: str | None) -> Path:
    """``__featcheck__/<module>/<test, class and parametrize id sanitised>[.<name>].json``; one
    file per test id (see :func:`_stem`)."""
    folder = test_file.parent / "__featcheck__" / safe_filename(test_file.stem, 80)
    return folder / _file_name(_stem(_test_id(nodeid)), name)


# Which test checked each baseline file in this process (one pytest session, or one xdist
# worker): its real path -> (node id, path as named, whether that test reached it through a link
# of its own: the file, its module folder or ``__featcheck__`` is a symbolic link).
_CLAIMS: dict[str, tuple[str, str, bool]] = {}


def _claim(path: Path, nodeid: str, display_path: str, command: str) -> str | None:
    """Record that ``nodeid`` checks the baseline at ``path``. Two tests whose baselines are one
    file fail here, naming both: with ``--featcheck-update`` the later would silently overwrite
    the earlier's. Links are the exception: tests whose baselines link to one file share it on
    purpose; the node id of the test that checked it first is returned, and that file is then
    never written for another test."""
    __tracebackhide__ = True
    named = os.path.abspath(path)
    real = os.path.realpath(path)
    via_link = any(p.is_symlink() for p in (path, path.parent, path.parent.parent))
    first, first_named, first_via_link = _CLAIMS.setdefault(real, (nodeid, named, via_link))
    if first_named == named and _test_id(first) == _test_id(nodeid):
        return None  # the same test (its node id may start elsewhere when another rootdir was picked)
    if via_link or first_via_link:
        return first
    raise FeatcheckAssertionError(
        f"featcheck baseline {display_path} is also the baseline of {first}, checked earlier in this session: "
        f"two tests cannot share one file (with --featcheck-update the later would overwrite the earlier's). "
        f"Nothing was written. Give one of them another parametrize id or test name, or its check_baseline a "
        f"name= of its own; then run: {command}"
    )


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _target(path: Path, display_path: str, command: str) -> Path:
    """Where a baseline is written: the file itself, or, for a symbolic link, the file it points
    to (the link stays; a file shared through links stays shared)."""
    __tracebackhide__ = True
    if not path.is_symlink():
        return path
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise FeatcheckAssertionError(
                f"featcheck baseline {display_path} is a symbolic link in a loop (it never reaches a file); "
                f"featcheck never replaces it. Point it at a file or remove it, then run: {command}"
            ) from None
    return Path(os.path.realpath(path))


def _owner(doc: dict[str, Any]) -> str:
    return _test_id(doc["test"])


def _read(path: Path) -> tuple[dict[str, Any] | None, BaselineError | None]:
    try:
        return load(path), None
    except BaselineError as e:
        return None, e


def _displaced_owner(path: Path, doc: dict[str, Any] | None, test_id: str, name: str | None) -> str | None:
    """The test whose baseline ``doc`` (at ``path``, this test's file) is because featcheck 0.1.0
    gave both tests this name, where they have names of their own now (None if it is not so). A
    file another test wrote under a name this test never shared (a copy) is not meant."""
    if doc is None or doc["name"] != name:
        return None
    owner = _owner(doc)
    if owner == test_id:
        return None
    if path.name == _file_name(_old_stem(owner), name) != _file_name(_stem(owner), name):
        return owner
    return None


def _move(src: Path, dst: Path) -> None:
    """Rename ``src`` (a file or a link) to ``dst`` in one folder, never replacing a file there
    (FileExistsError): two workers moving one file cannot overwrite what the other wrote."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise
    except (OSError, NotImplementedError):  # no hard links here
        if _present(dst):
            raise FileExistsError(errno.EEXIST, "File exists", str(dst)) from None
        os.replace(src, dst)
        return
    os.unlink(src)


def _move_baseline(src: Path, dst: Path, display_path: str, command: str) -> None:
    """Move a baseline and the pictures beside it (``.png``) to their new name."""
    __tracebackhide__ = True
    try:
        _move(src, dst)
        if src.with_suffix(".png").is_file() and not _present(dst.with_suffix(".png")):
            _move(src.with_suffix(".png"), dst.with_suffix(".png"))
    except OSError as e:
        raise FeatcheckAssertionError(
            f"featcheck baseline {display_path} could not be moved to {dst.name} ({e.__class__.__name__}: "
            f"{e.strerror or e}); it was left as it is. Make its folder writable, then run: {command}"
        ) from None


def _blocking_file(path: Path) -> Path | None:
    """The nearest existing ancestor folder of ``path`` when it is a file (then nothing can be
    stored there), else None."""
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            return None if parent.is_dir() else parent
    return None


def _write(path: Path, text: str, display_path: str, command: str) -> None:
    """Write ``text`` to ``path`` atomically; a symbolic link is written through (see
    :func:`_target`)."""
    __tracebackhide__ = True
    target = _target(path, display_path, command)
    try:
        write_atomic(target, text.encode(), durable=True)
    except OSError as e:
        if target != path:
            display_path = f"{display_path} (a link to {target})"
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
    """Compare (or, with ``update``, write) one baseline. Returns what was written, for the
    terminal summary ('written', 'updated', 'rewritten (replaced an invalid file, ...)', 'moved
    from <old name> to'...), or None. With ``pictures`` a visual baseline is kept beside it (see
    ``featcheck._visual_baselines``).

    A baseline featcheck 0.1.0 wrote under this test's old name (see :func:`_stem`) is compared
    there, and moved to the new name by ``update``; a file at this test's name that holds another
    test's baseline because 0.1.0 gave both that name fails, and ``update`` moves it to that
    test's new name first."""
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
    shared_with = _claim(path, nodeid, display_path, command)
    _target(path, display_path, command)  # a link that leads to itself fails here
    from ._visual_baselines import Pictures

    test_id = _test_id(nodeid)
    source, source_display = path, display_path  # the file compared: the baseline, or its old name
    moved_from = ""
    note = ""  # for the terminal summary
    hint = ""  # for the failure of a missing baseline
    old_doc, problem = _read(path) if path.exists() else (None, None)
    owner = _displaced_owner(path, old_doc, test_id, name)
    if owner is not None:  # featcheck 0.1.0 stored another test's baseline under this test's name
        owner_path = path.with_name(_file_name(_stem(owner), name))
        owner_nodeid = f"{nodeid.split('::', 1)[0]}::{owner}" if "::" in nodeid else owner
        if not update:
            raise FeatcheckAssertionError(
                f"featcheck baseline {display_path} holds the baseline of {owner}, not of this test: featcheck "
                f"0.1.0 gave both tests this file name. It was left as it is.\n"
                f"Move it to {owner}'s own file and write this test's with: {command} {shlex.quote(owner_nodeid)}"
            )
        if _present(owner_path):
            raise FeatcheckAssertionError(
                f"featcheck baseline {display_path} holds an old copy of the baseline of {owner} (featcheck 0.1.0 "
                f"gave both tests this file name), which has a file of its own now, {owner_path.name}. It was left "
                f"as it is. Delete it if that copy is not needed, then run: {command}"
            )
        _move_baseline(path, owner_path, display_path, command)
        note = f" ({owner}'s baseline, which featcheck 0.1.0 had stored here, was moved to {owner_path.name})"
        old_doc = None
    elif not _present(path):
        old = path.with_name(_file_name(_old_stem(test_id), name))
        old_display = os.path.join(os.path.dirname(display_path), old.name)
        doc, _ = _read(old) if old != path and old.is_file() else (None, None)
        if doc is not None and _owner(doc) == test_id and doc["name"] == name:
            # written by featcheck 0.1.0 under a name that did not tell this test from another
            if update:
                _move_baseline(old, path, old_display, command)
                moved_from = old.name
            else:
                source, source_display = old, old_display
            old_doc = doc
        elif doc is not None:
            hint = (
                f" ({old_display}, featcheck 0.1.0's name for it, holds the baseline of {_owner(doc)}, which had "
                "the same name there)"
            )

    def done(what: str | None) -> str | None:
        if moved_from:
            return f"{what + ' and ' if what else ''}moved from {moved_from} to"
        return what

    def refuse_shared(diff_text: str = "") -> FeatcheckAssertionError:
        where = f"is a link to {os.readlink(path)}, which" if path.is_symlink() else "is linked to by another baseline that"
        return FeatcheckAssertionError(
            f"{diff_text}featcheck baseline {display_path} {where} {shared_with} also checked in this session; "
            f"writing it would change that test's baseline. It was left as it is. Give this test a baseline of "
            f"its own (replace the link with a file), then run: {command}"
        )

    pics = Pictures(records, source, source_display, command) if pictures else None
    if old_doc is None and problem is None:
        if update:
            if shared_with is not None:
                raise refuse_shared()
            _write(path, text, display_path, command)
            if pics is not None:
                pics.write()
            return "written" + note
        missing = "does not exist"
        if path.is_symlink():
            missing = f"is a link to {os.readlink(path)}, which does not exist"
        raise FeatcheckAssertionError(
            f"featcheck baseline {display_path} {missing}{hint}; nothing was written.\n"
            f"Create it with: {command}"
        )
    if problem is not None:
        if isinstance(problem, NewerBaselineError):  # never downgraded, not even by an update
            raise FeatcheckAssertionError(
                f"featcheck baseline {display_path} {problem}. It was left as it is.\n"
                f"Upgrade featcheck to check against it, or delete it and write a version {FORMAT_VERSION} "
                f"baseline with: {command}"
            )
        if update:
            if shared_with is not None:
                raise refuse_shared()
            _write(path, text, display_path, command)
            if pics is not None:
                pics.write()
            return f"rewritten (replaced an invalid file, which {problem})"
        raise FeatcheckAssertionError(
            f"featcheck baseline {display_path} {problem}. It was left as it is.\n"
            f"Rewrite it from this capture with: {command}"
        )
    assert old_doc is not None
    compared = new_doc
    if has_ops and not old_doc.get("ops", False):
        # a module-only baseline keeps guarding module records only
        module_records = [lc for lc in records if not getattr(lc, "op", None)]
        compared = document([layer_entry(lc, stats) for lc in module_records], nodeid, name, stats)
    diff = compare(old_doc, compared, rtol, atol, stats and old_doc["stats"])
    if not diff.structural and not diff.drift:
        return done(pics.check(update) if pics is not None else None)
    if update:
        if shared_with is not None:
            raise refuse_shared(render_diff(diff, display_path, rtol, atol, None) + "\n")
        _write(path, text, display_path, command)
        if pics is not None:
            pics.write()
        return done("updated (now with op records)" if compared is not new_doc else "updated")
    by_name = {lc.name: lc for lc in records}
    touched = [y["name"] for y in diff.added] + [y["name"] for _, y, _ in diff.changed] + [n for n, _ in diff.drift]
    flagged: list[tuple[Any, list[int], str]] = [(by_name[n], [], "baseline") for n in dict.fromkeys(touched) if n in by_name]
    if pics is not None:
        flagged = pics.flagged(flagged, diff)
    raise FeatcheckAssertionError(render_diff(diff, source_display, rtol, atol, command), flagged)
