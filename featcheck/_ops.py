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
import functools
import inspect
import operator
import types
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = [
    "DROPOUTS", "NOT_RECORDED", "Operation", "could_name_op", "is_op_selector", "op_bounds", "op_name", "selector_op",
]


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


# -- function selectors (layers=F.relu) -------------------------------------------------------------
#
# A selector that is a torch function or an operator is never called: it is recognised by what it
# is. torch.overrides.get_overridable_functions() misses many (F.relu_, F.hardswish, F.tanh,
# torch.clamp_, torch.sigmoid_, operator.add), so a callable is torch's when it is
# * in that set;
# * a function, builtin or descriptor that torch defines: its ``__module__`` is ``torch`` or
#   ``torch.*`` (torch.nn.functional, torch._C._nn, torch._C._special, ...), it is a method or
#   slot of the tensor class (``__objclass__``), or a builtin method bound to a tensor (``x.add``);
# * a Python method bound to a tensor, or an object of a class torch defines (torch.ops.aten.relu);
# * a ``functools.partial`` of one of these.
# ``operator`` module functions select the tensor operator of their name (operator.add: ``+``,
# operator.iadd: ``+=``). Predicates (lambdas, the user's functions, partials of them, objects of
# the user's classes, bound methods of the user's objects) are none of these.

_FUNCTION_KINDS = (
    types.FunctionType, types.BuiltinFunctionType, types.MethodDescriptorType,
    types.WrapperDescriptorType, types.MethodWrapperType, types.ClassMethodDescriptorType,
)
# Python functions of torch.nn.functional whose records carry another operation's name.
_SELECTOR_ALIASES = {"upsample": "interpolate", "upsample_bilinear": "interpolate", "upsample_nearest": "interpolate"}
_OPERATOR_ALIASES = {"inv": "invert"}
# Why a selected operation can never have a record.
_NEVER = (
    (SHAPE_OPS, "shape and view operations (view, reshape, flatten, permute, transpose, indexing, "
     "split, ...) compute no new values; featcheck only passes the channel axis through them"),
    (_CONVERSIONS, "conversions (to, float, half, type_as, clone, detach, ...) compute no new values"),
    (_FACTORIES, "factories (zeros, ones, full, arange, rand, randn, tensor, new_*, *_like, ...) "
     "compute nothing from the layer's input"),
    (frozenset({"setitem", "delitem"}), "assignments (x[i] = v) are not recorded"),
)


def _torch_module(mod: Any) -> bool:
    return isinstance(mod, str) and (mod == "torch" or mod.startswith("torch."))


def _is_torch_callable(obj: Any) -> bool:
    """Is ``obj`` (no partial, class or module) a function, method or callable object of torch's?
    Decided from its type and attributes, never by calling it."""
    try:
        if obj in _functions():
            return True
    except TypeError:  # unhashable
        pass
    if isinstance(obj, types.MethodType):  # a Python method bound to an object
        return isinstance(obj.__self__, torch.Tensor)
    if isinstance(obj, _FUNCTION_KINDS):
        if _torch_module(getattr(obj, "__module__", None)):
            return True
        owner = getattr(obj, "__objclass__", None)  # Tensor.add, Tensor.__getitem__
        if isinstance(owner, type) and issubclass(owner, torch._C.TensorBase):
            return True
        return isinstance(getattr(obj, "__self__", None), torch.Tensor)  # x.add
    return _torch_module(type(obj).__module__)  # torch.ops.aten.relu and other callable objects


def _operator_op(name: str) -> str | None:
    """The operation an ``operator`` module function performs on tensors (``None``: tensors have
    no such operator)."""
    bare = _OPERATOR_ALIASES.get(name, name.rstrip("_"))
    dunder = inspect.getattr_static(torch.Tensor, f"__{bare}__", None)
    if callable(dunder):
        return op_name(dunder)
    return _DUNDER.get(bare)


def _selector(obj: Any) -> tuple[str, str | None, Any] | None:
    """``(op name, why it is never recorded or None, the function)`` for a function selector
    (a partial is unwrapped); ``None`` for anything else (a predicate, a class, a module)."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    if isinstance(obj, (type, torch.nn.Module)) or not callable(obj):
        return None
    name = getattr(obj, "__name__", None)
    if isinstance(name, str) and getattr(operator, name, None) is obj:
        op = _operator_op(name)
        if op is None:
            return name, "tensors have no such operator", obj
    elif _is_torch_callable(obj):
        op = op_name(obj)
        op = _SELECTOR_ALIASES.get(op, op)
    else:
        return None
    why = next((why for ops, why in _NEVER if op in ops), None)
    return op, why, obj


def _describe(obj: Any) -> str:
    """How the user spelled a function selector, near enough: ``torch.flatten``, ``Tensor.view``."""
    name = getattr(obj, "__name__", None)
    if not isinstance(name, str):
        return type(obj).__name__
    if getattr(obj, "__objclass__", None) is not None or isinstance(getattr(obj, "__self__", None), torch.Tensor):
        return f"Tensor.{name}"
    mod = getattr(obj, "__module__", None)
    mod = {"_operator": "operator", "torch._C._nn": "torch.nn.functional"}.get(mod, mod)
    return f"{mod}.{name}" if isinstance(mod, str) else name


def is_op_selector(obj: Any) -> bool:
    """Is ``obj`` a torch function (``F.relu``, ``torch.cat``, ``torch.Tensor.add``, ``F.relu_``,
    ``torch.clamp_``) or an ``operator`` function (``operator.add``) that selects operations,
    rather than a predicate ``(name, module) -> bool``? Never calls ``obj``."""
    return _selector(obj) is not None


def selector_op(obj: Any) -> str | None:
    """The name of the operation a function selector selects (the name its records carry:
    ``relu`` for ``F.relu``, ``F.relu_``, ``torch.relu`` and ``Tensor.relu_``, ``add`` for
    ``operator.add`` and ``operator.iadd``); ``None`` when ``obj`` is not one (a predicate).
    Raises ValueError for one featcheck never records (``torch.flatten``, ``Tensor.view``,
    ``torch.zeros``): it could select nothing."""
    sel = _selector(obj)
    if sel is None:
        return None
    op, why, func = sel
    if why is not None:
        raise ValueError(
            f"layers= got {_describe(func)}, which featcheck never records, so it could select nothing: {why}. "
            "Select the layers or operations that compute the values instead (by name, class or "
            "function); the README's Operations section lists what is not recorded."
        )
    return op


_compiling = torch.compiler.is_compiling

# -- the mode ----------------------------------------------------------------------------------


class OpMode(TorchFunctionMode):
    """Calls ``on_op(func, args, kwargs, out)`` after every torch call made while it is active that
    returned a tensor, or a tuple or list of tensors (``split``, ``chunk``, ``unbind``).

    ``on_op`` must not raise; it runs with the mode off (torch pops it for the handler)."""

    def __init__(self, on_op: Callable[[Any, tuple[Any, ...], dict[str, Any] | None, Any], None]) -> None:
        super().__init__()
        self._on_op = on_op

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        # Inside a torch.compile'd region dynamo traces modes: there the mode only passes calls
        # through, so compiled code is not seen (and featcheck's bookkeeping never enters a graph).
        if isinstance(out, torch.Tensor):
            if not _compiling():
                self._on_op(func, args, kwargs, out)
        elif type(out) in (tuple, list) and out and all(isinstance(o, torch.Tensor) for o in out) and not _compiling():
            self._on_op(func, args, kwargs, out)  # split, chunk, unbind: their tensors' channel axes
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
