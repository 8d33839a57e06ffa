"""Layer selection: exact names, glob patterns, module classes, modules, torch functions and predicates.

A selector is one of

* a ``str``: an exact qualified name as ``named_modules()`` gives it, or a glob
  pattern (``fnmatch`` syntax: ``*`` also matches dots, so ``layer*.conv2``
  matches ``layer1.0.conv2``);
* a module class (or tuple of classes): every module that is an instance;
* a module (``model.layer1``): that module, by identity, under whatever name it has; it is never
  called;
* a torch function (``F.relu``, ``F.relu_``, ``torch.cat``, ``torch.Tensor.add``) or an
  ``operator`` function (``operator.add``): every record of that operation (in-place and operator
  forms included: ``torch.add`` selects ``+`` and ``+=``); it is never called (see
  ``_ops.selector_op`` for how one is told from a predicate), and one that featcheck never records
  (``torch.flatten``, ``Tensor.view``, ``torch.zeros``) raises ValueError;
* any other callable ``(name, module) -> bool``: a predicate, shown modules only;
* a list or tuple mixing the above (a tuple of classes counts as one class selector).

Names, patterns and modules are references: one that matches nothing raises
:class:`LayerNotFoundError` naming the closest existing names (capture and watch check a name that
matches no module again after the forward, against the operations recorded; a module is checked
before it). Classes, torch functions and predicates are filters and may match nothing.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import sys
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
    some = [n for n in names if n][:5]  # ('' is the root's name: no help)
    if close:
        hint = "Closest names: " + ", ".join(repr(c) for c in close) + "."
    elif some:
        hint = "Its names include " + ", ".join(repr(c) for c in some) + "."
    else:
        hint = "It has no names at all (nothing was recorded: did a forward pass run?)."
    return LayerNotFoundError(
        f"{kind} {name!r} matches nothing in {where}. {hint} "
        "Use exact names as model.named_modules() gives them, or fnmatch patterns "
        "such as 'layer*.conv2'."
    )


_RECORD_SUFFIX = re.compile(r"(:\d+)?(\[[^\]]*\])*$")


def _is_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")  # no module exists before torch is imported
    return torch is not None and isinstance(obj, torch.nn.Module)


def _module_of(obj: Any) -> Any:
    """The module an item of :func:`select` stands for: the item itself, or a record's module."""
    if _is_module(obj):
        return obj
    return getattr(obj, "module", None)


def _class_ref(cls: type) -> str:
    mod = cls.__module__
    return f"nn.{cls.__name__}" if mod.startswith("torch.nn.") else cls.__name__


def module_not_found(
    module: Any, items: Sequence[tuple[str, Any]], where: str, module_of: Callable[[Any], Any]
) -> LayerNotFoundError:
    """The error for a module selector that is none of ``items``' modules: what was expected, what
    was found, and what to pass instead, with an example taken from ``items``."""
    cls = type(module).__name__
    mods = [(n, module_of(obj)) for n, obj in items]
    names = [_RECORD_SUFFIX.sub("", n) for n, m in mods if m is not None and n]
    example = next((n for n in names if all(p.isidentifier() for p in n.split("."))), None)
    if example is not None:
        attr = f"model.{example}"
    elif names:
        example = names[0]
        attr = f"model.get_submodule({example!r})"
    else:
        example, attr = "name", "model.child"
    if any(_is_module(obj) for _, obj in items):  # items: every module of the model but its root
        inside = {id(m) for m in module.modules()}
        if any(id(m) in inside for _, m in mods):
            return LayerNotFoundError(
                f"layers= got a {cls} instance that matches nothing in {where}: it is the model "
                "itself (or holds the model), which is not one of its layers. Pass its layers: "
                f"modules of the model ({attr}), their names ({example!r}) or classes, or leave "
                "layers= out for the default layers."
            )
        why = "it is not a module of this model"
    else:
        why = (
            "it is not a module of the model, or it has no record here (not selected when "
            "capturing, or never called)"
        )
    return LayerNotFoundError(
        f"layers= got a {cls} instance that matches nothing in {where}: {why}. Pass a module of "
        f"the model ({attr}), its name ({example!r}) or its class ({_class_ref(type(module))})."
    )


def _flatten_selectors(layers: Any) -> list[Any]:
    if isinstance(layers, (str, type)):
        return [layers]
    if callable(layers):
        if not _is_module(layers):
            from . import _ops  # imports torch: not at plugin import time

            _ops.selector_op(layers)  # raises for a torch function featcheck never records
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
    module_of: Callable[[T], Any] = _module_of,
) -> list[str]:
    """Return the names in ``items`` chosen by ``layers``, in the order of ``items``.

    ``items`` are ``(name, obj)`` pairs; ``aliases(name)`` gives further names an item
    answers to (a capture record answers to its module's name too); ``op_of(obj)`` the name of
    the operation an item records (``None`` for modules); ``module_of(obj)`` the module it stands
    for (the item itself, or a record's ``module``), which a module selector is compared with by
    identity. Names that match nothing raise, or are appended to ``unmatched`` when it is given;
    a module that matches nothing always raises.
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
        elif _is_module(sel):
            hits = [n for n, obj in items if module_of(obj) is sel]
            if not hits:
                raise module_not_found(sel, items, where, module_of)
            chosen.update(hits)
        elif (op := _ops.selector_op(sel)) is not None:
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
    functions by operation; classes, modules and predicates select modules only."""
    if layers is None:
        return None
    from . import _ops

    strings = []
    ops = set()
    for sel in _flatten_selectors(layers):
        if isinstance(sel, str):
            strings.append(sel)
        elif not isinstance(sel, (type, tuple)) and not _is_module(sel):
            op = _ops.selector_op(sel)
            if op is not None:
                ops.add(op)

    def want(name: str, base: str, op: str) -> bool:
        return op in ops or any(
            (fnmatch.fnmatchcase(name, s) or fnmatch.fnmatchcase(base, s)) if is_pattern(s) else s in (name, base)
            for s in strings
        )

    return want
