"""A capture's walks over the model, each made once and at C speed where it can be.

A capture asks many questions of every module before and after its forward (which modules to
hook, which hold lazy parameters, which are in train mode, which BatchNorms hold their initial
statistics, how many parameters a recorded module has). Each ``named_modules()`` walk of
torchvision's mobilenet_v3_small (209 modules) costs about 0.15 ms, and every microsecond spent per
module costs 0.2 ms per capture; capture walks once (:class:`Modules`) and this module answers
the questions from that walk, with ``map`` over C-level callables rather than Python loops where
it can. :func:`count_params` needs no walk.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ._records import LayerCapture

__all__ = ["Modules", "count_params", "default_batchnorm", "default_layers", "has_children", "lazy_parameters", "set_mode"]

_chain = itertools.chain.from_iterable
_params_of = operator.attrgetter("_parameters")
_modules_of = operator.attrgetter("_modules")
_buffers_of = operator.attrgetter("_buffers")
_training_of = operator.attrgetter("training")
_values = dict.values


class Modules:
    """Every module of a model once, in ``named_modules()`` order (a module reached twice is
    listed under its first name, as ``named_modules()`` does).

    Attributes:
        names: qualified names, ``''`` for the root.
        modules: the modules, aligned with ``names``.
        leaves: for each module, whether it has no submodule (``None`` entries do not count).
        shared: whether some module is reachable under more than one name.
        scripted: names of TorchScript modules (scripted or traced) inside the model, whose
            submodules are not walked (they run inside TorchScript).
    """

    __slots__ = ("names", "modules", "leaves", "shared", "scripted")

    def __init__(self, model: nn.Module) -> None:
        names: list[str] = []
        modules: list[nn.Module] = []
        leaves: list[bool] = []
        seen: set[int] = set()
        shared = False
        scripted: list[str] = []
        # an explicit stack instead of named_modules()' nested generators: one frame, not one per
        # level of nesting, for each module yielded
        stack: list[tuple[str, nn.Module]] = [("", model)]
        while stack:
            name, m = stack.pop()
            if id(m) in seen:
                shared = True
                continue
            seen.add(id(m))
            names.append(name)
            modules.append(m)
            children = m._modules
            leaf = True
            if type(children) is not dict and isinstance(m, torch.jit.ScriptModule):
                scripted.append(name)  # its registries are TorchScript's, not dicts
            elif children:
                dot = f"{name}." if name else ""
                for n, c in reversed(children.items()):  # popped in registration order
                    if c is not None:
                        stack.append((dot + n, c))
                        leaf = False
            leaves.append(leaf)
        self.names = names
        self.modules = modules
        self.leaves = leaves
        self.shared = shared
        self.scripted = scripted


def has_children(m: nn.Module) -> bool:
    return any(c is not None for c in m._modules.values())


def default_layers(modules: Modules) -> list[str]:
    """Every leaf module, and every module holding parameters of its own (``nn.MultiheadAttention``);
    not the root when it has children."""
    out = []
    for name, m, leaf in zip(modules.names, modules.modules, modules.leaves):
        if leaf:
            out.append(name)
        elif name and m._parameters and any(p is not None for p in m._parameters.values()):
            out.append(name)
    return out


def lazy_parameters(modules: Modules) -> list[str]:
    """Names of the uninitialised lazy parameters (``nn.LazyLinear`` before its first forward)."""
    params = _chain(map(_values, map(_params_of, modules.modules)))
    kinds = set(map(type, params))
    if not any(issubclass(k, nn.parameter.UninitializedParameter) for k in kinds):
        return []  # the common case, decided without a Python-level isinstance per parameter
    root = modules.modules[0]
    return [n for n, p in root.named_parameters() if isinstance(p, nn.parameter.UninitializedParameter)]


def set_mode(
    model: nn.Module, modules: Modules, training: bool, flags: list[bool] | None = None, classes: list[type] | None = None
) -> None:
    """``model.train(training)``, skipped when it would change nothing: every module's flag
    already says ``training`` and no module overrides ``train`` (an override is always called,
    it may do more than set flags). ``flags`` and ``classes``: the modules' flags and classes
    now, when the caller has read them already."""
    if flags is None:
        flags = list(map(_training_of, modules.modules))
    if all(map(operator.is_, flags, itertools.repeat(training))):
        kinds = set(map(type, modules.modules) if classes is None else classes)
        if all(k.train is nn.Module.train for k in kinds):
            return
    model.train(training)


def count_params(records: Iterable[LayerCapture]) -> None:
    """Count and keep each record's ``params`` (``sum(p.numel() for p in module.parameters())``)
    once per module, not once per record; a module without children counts its own
    parameters, without the walk ``parameters()`` makes."""
    counts: dict[int, int] = {}
    numel = torch.Tensor.numel
    for rec in records:
        if rec._params is not None:
            continue  # an operation's record (0), or counted before
        m = rec._module()
        if m is None:
            continue
        n = counts.get(id(m))
        if n is None:
            if m._modules and has_children(m):
                n = sum(p.numel() for p in m.parameters())
            else:
                params = m._parameters
                if not params:
                    n = 0
                elif len(params) == 1:
                    p = next(iter(params.values()))
                    n = 0 if p is None else p.numel()
                else:
                    n = sum(map(numel, {id(p): p for p in params.values() if p is not None}.values()))
            counts[id(m)] = n
        rec._params = n


def default_batchnorm(model: nn.Module, walk: Modules | None = None) -> list[str]:
    """BatchNorm layers in eval mode that still hold their initial running statistics (no
    batches tracked, running mean all 0, running variance all 1); ``walk``: the model's modules,
    when the caller has walked them already."""
    if walk is None:
        walk = Modules(model)
    bns: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    for name, m in zip(walk.names, walk.modules):
        if isinstance(m, _BatchNorm) and not m.training:
            b = m._buffers  # not m.running_mean: nn.Module.__getattr__ is a Python call per read
            mean, var = b.get("running_mean"), b.get("running_var")
            if mean is not None and var is not None:
                bns.append((name, mean, var, b.get("num_batches_tracked")))
    if not bns:
        return []
    # a BatchNorm that tracked batches is not at its initial statistics: one read of all the
    # counters rules those out before any statistics are looked at
    tracked = iter(_read_counters([c for _, _, _, c in bns if c is not None]))
    fresh = [bn for bn in bns if bn[3] is None or next(tracked) == 0]
    return [bn[0] for bn, initial in zip(fresh, _initial([(mean, var) for _, mean, var, _ in fresh])) if initial]


_BatchNorm = nn.modules.batchnorm._BatchNorm


def _read_counters(counters: list[torch.Tensor]) -> list[int]:
    try:
        return [int(v) for v in torch.stack(counters).tolist()] if counters else []
    except (RuntimeError, TypeError):  # on several devices, or not one number each
        return [int(c) for c in counters]


def _initial(stats: list[tuple[torch.Tensor, torch.Tensor]]) -> list[bool]:
    """For each (running mean, running variance), whether the mean is all 0 and the variance
    all 1 (NaN is neither): a few kernels for all layers, not two reductions per layer."""
    if not stats:
        return []
    means, variances = [s[0] for s in stats], [s[1] for s in stats]
    try:
        # cat promotes mixed dtypes exactly; it refuses tensors on several devices or of other
        # ranks than 1, which are checked one by one
        bad = (torch.cat(means) != 0) | (torch.cat(variances) != 1)
    except RuntimeError:
        return [not bool(mean.any()) and bool((var == 1).all()) for mean, var in stats]
    if not bool(bad.any()):
        return [True] * len(stats)
    # some layer is off its initial statistics: count the bad values per layer
    if [m.numel() for m in means] != [v.numel() for v in variances]:
        return [not bool(mean.any()) and bool((var == 1).all()) for mean, var in stats]
    sizes = torch.tensor([m.numel() for m in means], device=bad.device)
    per_layer = torch.zeros(len(stats), dtype=torch.int64, device=bad.device)
    per_layer.index_add_(0, torch.repeat_interleave(sizes), bad.long())
    return [n == 0 for n in per_layer.tolist()]
