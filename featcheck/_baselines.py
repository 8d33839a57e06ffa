"""Regression baselines: a small JSON file of a capture's structure and statistics per check.

Storage: ``__featcheck__/<test module>/<test>[.<name>].json`` next to the test file, one file per
check (so pytest-xdist workers never share a file). Every file has a version; keys are sorted and
number lists kept on one line, so that a change reads well in code review. Statistics only, never
raw tensors, and a size cap.

Semantics (syrupy's): a missing baseline fails and writes nothing; ``--featcheck-update`` writes
missing and changed baselines (those checks pass and the terminal summary lists them); a file
that cannot be read or has an unknown version fails with its path and is only ever rewritten by
``--featcheck-update``. Writes are atomic (a temporary file renamed into place).

The diff matches layers by name and, where names moved, by call order (a sequence alignment of
the layers' signatures), so that an inserted block reads as one added layer and renamed followers,
not as "everything changed". Structure changes and numeric drift are reported separately.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import FeatcheckAssertionError
from ._paths import safe_filename, write_atomic

FORMAT_VERSION = 1
DEFAULT_MAX_KB = 2048
_STRUCTURE = ("module_type", "shape", "dtype", "stride", "channels", "params")


# -- what is stored --------------------------------------------------------------------------------


def _sig(v: float) -> float | None:
    """Six significant digits: enough to see drift, small in a diff. NaN and Inf become null."""
    if not math.isfinite(v):
        return None
    return float(f"{v:.6g}")


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
            "mean": [_sig(v) for v in st["mean"]],
            "std": [_sig(v) for v in st["std"]],
            "dead_fraction": _sig(len(lc.dead_channels()) / lc.channels),
            "saturated_fraction": None if lc.bounds is None else _sig(len(lc.saturated_channels()) / lc.channels),
        }
    return entry


def document(layers: list[dict[str, Any]], nodeid: str, name: str | None, stats: bool) -> dict[str, Any]:
    import torch

    return {
        "featcheck_baseline": FORMAT_VERSION,
        "test": nodeid,
        "name": name,
        "stats": stats,
        "torch": torch.__version__.split("+")[0],
        "layers": layers,
    }


_NUMBER_LIST = re.compile(r"\[\s*((?:-?[\d.eE+-]+|null)(?:,\s*(?:-?[\d.eE+-]+|null))*)\s*\]")


def dumps(doc: dict[str, Any]) -> str:
    text = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


# -- reading ---------------------------------------------------------------------------------------


class BaselineError(Exception):
    """A baseline file that cannot be used (unreadable, malformed, unknown version)."""


def load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BaselineError(f"cannot be read as JSON ({e.__class__.__name__}: {e})") from None
    if not isinstance(doc, dict) or "featcheck_baseline" not in doc:
        raise BaselineError("is not a featcheck baseline (no 'featcheck_baseline' version field)")
    if doc["featcheck_baseline"] != FORMAT_VERSION:
        raise BaselineError(
            f"has format version {doc['featcheck_baseline']!r}; this featcheck reads version {FORMAT_VERSION}"
        )
    layers = doc.get("layers")
    if not isinstance(layers, list) or not all(isinstance(x, dict) and "name" in x for x in layers):
        raise BaselineError("has no valid 'layers' list")
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
        tol = atol + rtol * np.abs(a)
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


def render_diff(diff: Diff, path: str, rtol: float, atol: float, command: str) -> str:
    lines = [f"featcheck baseline {path} differs from this capture"]
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
) -> str | None:
    """Compare (or, with ``update``, write) one baseline. Returns 'written' / 'updated' / None."""
    __tracebackhide__ = True
    if rtol < 0 or atol < 0:
        raise ValueError(f"rtol and atol must be >= 0, got rtol={rtol!r}, atol={atol!r}")
    records = cap.select(layers)
    if not records:
        raise ValueError("the capture has no layers to compare; capture some or widen layers=")
    new_doc = document([layer_entry(lc, stats) for lc in records], nodeid, name, stats)
    text = dumps(new_doc)
    size_kb = len(text.encode()) / 1024
    if size_kb > max_kb:
        raise FeatcheckAssertionError(
            f"featcheck baseline {display_path} would be {size_kb:.0f} KiB, above the cap of "
            f"{max_kb:g} KiB (ini featcheck_baseline_max_kb). Check fewer layers (layers=...), "
            "or pass stats=False to guard the architecture only."
        )
    if not path.exists():
        if update:
            write_atomic(path, text.encode(), durable=True)
            return "written"
        raise FeatcheckAssertionError(
            f"featcheck baseline {display_path} does not exist; nothing was written.\n"
            f"Create it with: {command}"
        )
    try:
        old_doc = load(path)
    except BaselineError as e:
        if update:
            write_atomic(path, text.encode(), durable=True)
            return "updated"
        raise FeatcheckAssertionError(
            f"featcheck baseline {display_path} {e}. It was left as it is.\n"
            f"Rewrite it from this capture with: {command}"
        ) from None
    diff = compare(old_doc, new_doc, rtol, atol, stats and bool(old_doc.get("stats", True)))
    if not diff.structural and not diff.drift:
        return None
    if update:
        write_atomic(path, text.encode(), durable=True)
        return "updated"
    by_name = {lc.name: lc for lc in records}
    touched = [y["name"] for y in diff.added] + [y["name"] for _, y, _ in diff.changed] + [n for n, _ in diff.drift]
    flagged: list[tuple[Any, list[int], str]] = [(by_name[n], [], "baseline") for n in dict.fromkeys(touched) if n in by_name]
    raise FeatcheckAssertionError(render_diff(diff, display_path, rtol, atol, command), flagged)
