"""Operations: functional calls, tensor methods and Python operators, seen like modules.

Module hooks see only modules. Everything else a ``forward`` computes (``F.relu(x)``,
``out += identity``, ``torch.cat``, ``F.interpolate``, ``x * scale``) is seen through a
:class:`torch.overrides.TorchFunctionMode`, which torch calls for every torch function, tensor
method and Python operator at the Python level, before autograd. Why this mechanism: it sees
operators and methods (``__torch_function__`` overrides do), it is cheap when it returns at once,
and torch runs the intercepted call with the mode switched off, so the calls a functional makes
internally (``F.interpolate`` calls dozens) are never seen: only calls made by module code are.

The mode is pushed when a forward of the model starts and removed when it ends, also when it
raises (an always-called forward hook, and ``Recorder.detach`` for what no hook sees, such as
Ctrl-C), from wherever it is in the mode stack, leaving the user's modes as they were. Modes the
user entered before the forward sit below it and see every call after featcheck does; featcheck's
own bookkeeping runs with torch functions disabled, so those modes never see it.

This module holds what does not depend on a recording: the naming of operations, which ones are
never recorded, the function selectors (``layers=F.relu``), and the mode stack handling.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["DROPOUTS", "NOT_RECORDED", "Operation", "could_name_op", "is_op_selector", "op_bounds", "op_name"]


class Operation:
    """The ``module_class`` of op records: no module class selector matches it."""


# Python operators arrive as dunder methods; reversed (__radd__) and in-place (__iadd__) forms
# share the plain name, and FX's operator names are followed where they name a torch function.
_DUNDER = {
    "radd": "add", "iadd": "add",
    "rsub": "sub", "isub": "sub",
    "rmul": "mul", "imul": "mul",
    "truediv": "div", "rtruediv": "div", "itruediv": "div", "rdiv": "div", "idiv": "div",
    "floordiv": "floor_divide", "rfloordiv": "floor_divide", "ifloordiv": "floor_divide",
    "pow": "pow", "rpow": "pow", "ipow": "pow",
    "matmul": "matmul", "rmatmul": "matmul", "imatmul": "matmul",
    "mod": "remainder", "rmod": "remainder", "imod": "remainder",
    "and": "bitwise_and", "rand": "bitwise_and", "iand": "bitwise_and",
    "or": "bitwise_or", "ror": "bitwise_or", "ior": "bitwise_or",
    "xor": "bitwise_xor", "rxor": "bitwise_xor", "ixor": "bitwise_xor",
    "invert": "bitwise_not",
    "lshift": "bitwise_left_shift", "rlshift": "bitwise_left_shift", "ilshift": "bitwise_left_shift",
    "rshift": "bitwise_right_shift", "rrshift": "bitwise_right_shift", "irshift": "bitwise_right_shift",
}
_INPLACE_DUNDERS = frozenset(k for k in _DUNDER if k.startswith("i") and k != "invert")
# Other spellings of one operation.
_ALIASES = {
    "concat": "cat", "concatenate": "cat",
    "divide": "div", "true_divide": "div",
    "multiply": "mul", "subtract": "sub", "absolute": "abs", "negative": "neg",
    "clip": "clamp", "swapdims": "transpose", "swapaxes": "transpose", "moveaxis": "movedim",
    "greater": "gt", "less": "lt",
}

# Operations that are never recorded (by name, after normalisation); the shape and view ones
# still pass the channel axis on. Kept in the README.
SHAPE_OPS = frozenset({
    "view", "view_as", "reshape", "reshape_as", "permute", "transpose", "t", "T", "mT", "H", "mH",
    "movedim", "flatten", "unflatten", "squeeze", "unsqueeze", "expand", "expand_as",
    "broadcast_to", "contiguous", "getitem", "narrow", "select", "as_strided", "unfold",
    "split", "chunk", "unbind", "tensor_split", "size", "dim", "numel",
})
_CONVERSIONS = frozenset({
    "to", "float", "double", "half", "bfloat16", "type", "type_as", "cpu", "cuda",
    "clone", "detach", "requires_grad", "data",
})
_FACTORIES = frozenset({
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like",
    "zeros", "ones", "empty", "full", "arange", "range", "linspace", "logspace", "eye", "rand",
    "randn", "randint", "randperm", "tensor", "as_tensor", "new_zeros", "new_ones", "new_empty",
    "new_full", "new_tensor",
})
NOT_RECORDED = SHAPE_OPS | _CONVERSIONS | _FACTORIES
# Return their input itself when not training: nothing to record.
DROPOUTS = frozenset({"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"})

_BOUNDS: dict[str, tuple[float, float]] = {
    "sigmoid": (0.0, 1.0), "hardsigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0), "relu6": (0.0, 6.0),
}

_names: dict[Any, tuple[str, bool]] = {}


def _name_and_inplace(func: Any) -> tuple[str, bool]:
    raw = getattr(func, "__name__", None)
    if not isinstance(raw, str):
        raw = type(func).__name__
    if raw == "__get__":  # a property such as Tensor.T arrives as its descriptor's __get__
        raw = getattr(getattr(func, "__self__", None), "__name__", raw)
    inplace = False
    name = raw
    if len(raw) > 4 and raw.startswith("__") and raw.endswith("__"):
        name = raw[2:-2]
        inplace = name in _INPLACE_DUNDERS
        name = _DUNDER.get(name, name)
    elif raw.endswith("_") and not raw.startswith("_"):
        name, inplace = raw[:-1], True
    return _ALIASES.get(name, name), inplace


def name_and_inplace(func: Any) -> tuple[str, bool]:
    """The operation's record name (``add`` for ``+``, ``+=``, ``add_`` and ``torch.add``) and
    whether this form writes into its first argument."""
    try:
        return _names[func]
    except KeyError:
        pass
    except TypeError:  # an unhashable callable
        return _name_and_inplace(func)
    out = _names[func] = _name_and_inplace(func)
    return out


def op_name(func: Any) -> str:
    """The name an operation's records carry (see :func:`name_and_inplace`)."""
    return name_and_inplace(func)[0]


def op_bounds(name: str) -> tuple[float, float] | None:
    """Known output bounds of an operation (saturation is counted against them)."""
    return _BOUNDS.get(name)


_overridable: frozenset[Any] | None = None
_known: frozenset[str] | None = None


def _functions() -> frozenset[Any]:
    global _overridable
    if _overridable is None:
        funcs = torch.overrides.get_overridable_functions()
        _overridable = frozenset(f for fs in funcs.values() for f in fs)
    return _overridable


def could_name_op(stem: str, module_names: Mapping[str, Any]) -> bool:
    """Could ``stem`` (a record name without ``:k`` and ``[key]``) name an operation of a model
    with these modules: ``<op>`` or ``<module>.<op>``, with ``<op>`` the name of some torch
    operation (or a pattern that could match one)? A name that cannot is a typo, reported before
    any forward."""
    global _known
    if _known is None:
        _known = frozenset(op_name(f) for f in _functions())
    if stem.endswith("()"):
        stem = stem[:-2]
    head, dot, tail = stem.rpartition(".")
    pattern = any(c in "*?[" for c in tail)
    if dot and not any(c in "*?[" for c in head) and head not in module_names:
        return False
    return any(fnmatch.fnmatchcase(n, tail) for n in _known) if pattern else tail in _known


def is_op_selector(obj: Any) -> bool:
    """Is ``obj`` a torch function (``F.relu``, ``torch.cat``, ``torch.Tensor.add``) that selects
    operations, rather than a predicate ``(name, module) -> bool``?"""
    if not callable(obj) or isinstance(obj, type):
        return False
    try:
        return obj in _functions()
    except TypeError:
        return False


_compiling = torch.compiler.is_compiling

# -- the mode ----------------------------------------------------------------------------------


class OpMode(TorchFunctionMode):
    """Calls ``on_op(func, args, kwargs, out)`` after every torch call made while it is active.

    ``on_op`` must not raise; it runs with the mode off (torch pops it for the handler)."""

    def __init__(self, on_op: Callable[[Any, tuple[Any, ...], dict[str, Any] | None, Any], None]) -> None:
        super().__init__()
        self._on_op = on_op

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        # Inside a torch.compile'd region dynamo traces modes: there the mode only passes calls
        # through, so compiled code is not seen (and featcheck's bookkeeping never enters a graph).
        if isinstance(out, torch.Tensor) and not _compiling():
            self._on_op(func, args, kwargs, out)
        return out


def push(mode: TorchFunctionMode) -> None:
    """Put ``mode`` on top of this thread's torch function mode stack."""
    torch._C._push_on_torch_function_stack(mode)


def remove(mode: TorchFunctionMode) -> bool:
    """Take ``mode`` off this thread's mode stack wherever it is, keeping the order of the modes
    above it; returns whether it was there."""
    n = torch._C._len_torch_function_stack()
    if n and torch._C._get_function_stack_at(n - 1) is mode:  # on top: the usual case
        torch._C._pop_torch_function_stack()
        return True
    for i in range(n - 2, -1, -1):
        if torch._C._get_function_stack_at(i) is mode:
            above = [torch._C._pop_torch_function_stack() for _ in range(n - 1 - i)]
            torch._C._pop_torch_function_stack()
            for m in reversed(above):
                torch._C._push_on_torch_function_stack(m)
            return True
    return False
