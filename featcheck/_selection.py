"""Layer selection: exact names, glob patterns, module classes and predicates.

A selector is one of

* a ``str``: an exact qualified name as ``named_modules()`` gives it, or a glob
  pattern (``fnmatch`` syntax: ``*`` also matches dots, so ``layer*.conv2``
  matches ``layer1.0.conv2``);
* a module class (or tuple of classes): every module that is an instance;
* a torch function (``F.relu``, ``torch.cat``, ``torch.Tensor.add``): every record of that
  operation (in-place and operator forms included: ``torch.add`` selects ``+`` and ``+=``); it is
  never called;
* a callable ``(name, module) -> bool``: a predicate, shown modules only;
* a list or tuple mixing the above (a tuple of classes counts as one class selector).

Names and patterns are references: one that matches nothing raises
:class:`LayerNotFoundError` naming the closest existing names (capture and watch check a name that
matches no module again after the forward, against the operations recorded). Classes, torch
functions and predicates are filters and may match nothing.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, Union

from ._errors import LayerNotFoundError

Selector = Union[str, type, Callable[[str, Any], bool], Sequence[Any]]

_GLOB_CHARS = frozenset("*?[")
T = TypeVar("T")


def is_pattern(name: str) -> bool:
    return any(c in _GLOB_CHARS for c in name)


def closest_names(name: str, names: Iterable[str], n: int = 5) -> list[str]:
    names = [x for x in names if x]
    stem = name
    for i, c in enumerate(name):
        if c in _GLOB_CHARS:
            stem = name[:i]
            break
    close = [x for x in names if x.startswith(name + ".") or x.startswith(name + ":") or x.startswith(name + "[")][:n]
    close += [x for x in difflib.get_close_matches(name, names, n=n, cutoff=0.5) if x not in close]
    close = close[:n]
    if len(close) < n and stem:
        close += [x for x in names if x.startswith(stem) and x not in close][: n - len(close)]
    if len(close) < n:
        close += [
            x for x in difflib.get_close_matches(stem, names, n=n, cutoff=0.3) if x not in close
        ][: n - len(close)]
    return close


def not_found(name: str, names: Sequence[str], where: str) -> LayerNotFoundError:
    kind = "pattern" if is_pattern(name) else "layer"
    close = closest_names(name, names)
    hint = (
        "Closest names: " + ", ".join(repr(c) for c in close) + "."
        if close
        else "Its names include " + ", ".join(repr(c) for c in list(names)[:5]) + "."
    )
    return LayerNotFoundError(
        f"{kind} {name!r} matches nothing in {where}. {hint} "
        "Use exact names as model.named_modules() gives them, or fnmatch patterns "
        "such as 'layer*.conv2'."
    )


def _flatten_selectors(layers: Any) -> list[Any]:
    if isinstance(layers, (str, type)) or callable(layers) and not isinstance(layers, type):
        return [layers]
    if isinstance(layers, tuple) and layers and all(isinstance(c, type) for c in layers):
        return [layers]
    if isinstance(layers, (list, tuple, set, frozenset)):
        out: list[Any] = []
        for item in layers:
            out.extend(_flatten_selectors(item))
        return out
    raise TypeError(
        "layers must be a name, a glob pattern, a module class, a torch function (F.relu), a "
        f"predicate (name, module) -> bool, or a list of these; got {type(layers).__name__}: {layers!r}"
    )


def select(
    items: Sequence[tuple[str, T]],
    layers: Any,
    where: str,
    *,
    aliases: Callable[[str], Iterable[str]] | None = None,
    instance_of: Callable[[T, Any], bool] = isinstance,
    call: Callable[[Callable[[str, Any], bool], str, T], bool] | None = None,
    op_of: Callable[[T], str | None] = lambda obj: None,
    unmatched: list[str] | None = None,
) -> list[str]:
    """Return the names in ``items`` chosen by ``layers``, in the order of ``items``.

    ``items`` are ``(name, obj)`` pairs; ``aliases(name)`` gives further names an item
    answers to (a capture record answers to its module's name too); ``op_of(obj)`` the name of
    the operation an item records (``None`` for modules). Names that match nothing raise, or
    are appended to ``unmatched`` when it is given.
    """
    from . import _ops  # imports torch: not at plugin import time

    selectors = _flatten_selectors(layers)
    names = [n for n, _ in items]
    chosen: set[str] = set()
    for sel in selectors:
        if isinstance(sel, str):
            if not is_pattern(sel):
                hits = [n for n in names if n == sel or aliases and sel in aliases(n)]
            else:
                hits = [n for n in names if any(fnmatch.fnmatchcase(a, sel) for a in ([n, *aliases(n)] if aliases else [n]))]
            if not hits:
                if unmatched is None:
                    raise not_found(sel, names, where)
                unmatched.append(sel)
            chosen.update(hits)
        elif isinstance(sel, type) or isinstance(sel, tuple):
            chosen.update(n for n, obj in items if instance_of(obj, sel))
        elif _ops.is_op_selector(sel):
            op = _ops.op_name(sel)
            chosen.update(n for n, obj in items if op_of(obj) == op)
        else:
            chosen.update(
                n for n, obj in items if (call(sel, n, obj) if call else sel(n, obj))
            )
    return [n for n in names if n in chosen]


def op_filter(layers: Any) -> Callable[[str, str, str], bool] | None:
    """Which operations ``layers`` asks capture to record, as ``want(record name, record name
    without the call counter, op name)``;
    ``None`` records every operation. Names and patterns select operations by name, torch
    functions by operation; classes and predicates select modules only."""
    if layers is None:
        return None
    from . import _ops

    strings = []
    ops = set()
    for sel in _flatten_selectors(layers):
        if isinstance(sel, str):
            strings.append(sel)
        elif not isinstance(sel, (type, tuple)) and _ops.is_op_selector(sel):
            ops.add(_ops.op_name(sel))

    def want(name: str, base: str, op: str) -> bool:
        return op in ops or any(
            (fnmatch.fnmatchcase(name, s) or fnmatch.fnmatchcase(base, s)) if is_pattern(s) else s in (name, base)
            for s in strings
        )

    return want
