"""What "left as found" means for ``featcheck.capture``, and how it is kept.

``capture`` runs the user's own model, possibly in train mode or with autograd on, and must hand
it back as it was. :class:`ModelState` snapshots, before the forward, and puts back, after it
(also when it raised or was interrupted):

* every module's ``training`` flag and class;
* the registrations: which parameters, buffers and submodules each module holds, by identity
  (a buffer that forward rebinds, ``self.n = self.n + 1``, or a parameter, buffer or submodule
  registered lazily in forward, is undone), and plain tensor attributes (``self.cache = x``);
* every buffer's value, bitwise (buffers are small: they are copied and compared);
* every parameter's value, bitwise, for parameters of modules defined outside ``torch.nn``
  (copied and compared: a custom layer may update its own weights in forward), and for all
  parameters as far as their version counters show (torch.nn's own layers never write to their
  parameters in forward, and copying every weight would double the model's memory: a parameter
  of a torch.nn layer written in place by some other module's forward is detected, not undone,
  and the capture's ``note`` and a warning say so);
* ``requires_grad`` of parameters and buffers, and buffers made non-leaf by an in-place op with
  autograd on;
* the global random number generators (CPU, and CUDA where initialised), so ``train=True`` with
  dropout does not advance them.

Restoring never writes into a tensor that did not change: an in-place write bumps the version
counter and would invalidate an autograd graph the user still holds (``out = model(x)`` before
the capture, ``out.sum().backward()`` after it). Where a tensor did change and is written back,
its version counter is set back to what it was, since its values are again exactly those that
any earlier graph saved. Inference tensors (a model built under ``torch.inference_mode()``) are
written back inside inference mode.
"""

from __future__ import annotations

import contextlib
import operator
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["ModelState", "preserved_rng"]

_set_version = getattr(torch._C._autograd, "_unsafe_set_version_counter", None)


def _version(t: torch.Tensor) -> int | None:
    if t.is_inference():
        return None  # inference tensors keep no version counter
    return t._version


def _owned_by_torch(module: nn.Module) -> bool:
    return type(module).__module__.startswith("torch.nn.")


# isinstance against the C base class: the Python-level torch.Tensor check costs a metaclass call,
# and the snapshot looks at every attribute of every module.
_TensorBase = torch._C.TensorBase


class _Slot:
    """One registered tensor: what it was, and whether featcheck keeps a copy of its value."""

    __slots__ = ("tensor", "version", "requires_grad", "copied")

    def __init__(self, t: torch.Tensor) -> None:
        self.tensor = t
        self.version = _version(t)
        self.requires_grad = t.requires_grad
        self.copied = False


class _Copies:
    """Values of the tensors featcheck keeps a copy of, one flat tensor per device and dtype, so
    that snapshot and comparison cost one kernel each, not one per tensor."""

    def __init__(self, slots: list[_Slot]) -> None:
        self.groups: list[tuple[list[_Slot], torch.Tensor]] = []
        by_kind: dict[tuple[torch.device, torch.dtype], list[_Slot]] = {}
        for slot in slots:
            slot.copied = True
            if slot.tensor.device.type != "meta":
                by_kind.setdefault((slot.tensor.device, slot.tensor.dtype), []).append(slot)
        self.groups = [(group, _flat(group)) for group in by_kind.values()]

    def changed(self) -> list[tuple[_Slot, torch.Tensor]]:
        """The copied tensors whose values or versions differ now (bitwise), with their copies."""
        out = []
        for group, flat in self.groups:
            shapes = [s.tensor.numel() for s in group]
            if sum(shapes) == flat.numel() and all(_version(s.tensor) == s.version for s in group) and _same_bits(_flat(group), flat):
                continue
            pos = 0
            for slot in group:
                n = slot.tensor.numel()
                copy = flat[pos : pos + n]
                pos += n
                if _version(slot.tensor) != slot.version or not _equal(slot.tensor, copy):
                    out.append((slot, copy))
        return out
def _flat(group: list[_Slot]) -> torch.Tensor:
    return torch.cat([s.tensor.detach().reshape(-1) for s in group])


class ModelState:
    """A snapshot of a model's state that :meth:`restore` puts back, touching only what changed."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules: list[tuple[nn.Module, type, tuple[str, ...], tuple[Any, ...], dict[str, Any], dict[str, Any], dict[str, Any]]] = []
        self.slots: dict[int, _Slot] = {}
        self.unrestorable: list[str] = []
        copied: list[_Slot] = []
        for m in model.modules():
            d = m.__dict__
            self.modules.append((m, type(m), tuple(d), tuple(d.values()), dict(m._parameters), dict(m._buffers), dict(m._modules)))
            own = not _owned_by_torch(m)
            for p in m._parameters.values():
                if p is not None and id(p) not in self.slots:
                    self.slots[id(p)] = slot = _Slot(p)
                    if own:
                        copied.append(slot)
            for b in m._buffers.values():
                if b is not None and id(b) not in self.slots:
                    self.slots[id(b)] = slot = _Slot(b)
                    copied.append(slot)
        self._copies = _Copies(copied)

    def tensors(self) -> Iterator[torch.Tensor]:
        """Every parameter and buffer of the model."""
        return (slot.tensor for slot in self.slots.values())

    def restore(self) -> None:
        """Put back everything that changed; raises nothing for what it cannot undo, but records
        it in ``unrestorable`` (and warns)."""
        for m, cls, keys, values, params, buffers, modules in self.modules:
            if type(m) is not cls:
                m.__class__ = cls
            _put_back(m._parameters, params)
            _put_back(m._buffers, buffers)
            _put_back(m._modules, modules)
            d = m.__dict__
            if len(d) == len(keys) and all(map(operator.is_, d.values(), values)):
                continue  # nothing rebound (checked at C speed: this runs for every module)
            was = dict(zip(keys, values))
            d["training"] = was["training"]
            for k in [k for k, v in d.items() if isinstance(v, _TensorBase) and k not in was]:
                del d[k]  # tensor attributes added in forward
            for k, v in was.items():
                if isinstance(v, _TensorBase) or isinstance(d.get(k), _TensorBase):
                    d[k] = v  # tensor attributes rebound (or a non-tensor that became one)
        for slot in self.slots.values():
            t = slot.tensor
            if not t.is_leaf:
                t.detach_()  # an in-place op with autograd on made it part of a graph
            if t.requires_grad != slot.requires_grad:
                t.requires_grad_(slot.requires_grad)
            if not slot.copied and slot.version is not None and _version(t) != slot.version:
                names = {id(x): n for n, x in _named_tensors(self.model)}
                self.unrestorable.append(names.get(id(t), "?"))
        for slot, copy in self._copies.changed():
            t = slot.tensor
            with torch.inference_mode() if t.is_inference() else torch.no_grad():
                t.copy_(copy.view(t.shape))
            if slot.version is not None and _set_version is not None:
                _set_version((t,), (slot.version,))
        if self.unrestorable:
            warnings.warn(
                "featcheck.capture: the forward pass wrote in place into parameters it keeps no "
                "copy of (torch.nn layers' weights): " + ", ".join(self.unrestorable[:5])
                + (f" ({len(self.unrestorable)} in all)" if len(self.unrestorable) > 5 else "")
                + ". They were left as the forward made them.",
                RuntimeWarning,
                stacklevel=4,
            )


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (a NaN equals the same NaN, -0.0 differs from 0.0)."""
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    return _same_bits(a.detach().reshape(-1), b.reshape(-1))


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != torch.bool:
        a, b = a.view(torch.uint8), b.view(torch.uint8)
    return bool(torch.equal(a, b))


def _put_back(current: dict[str, Any], saved: dict[str, Any]) -> None:
    if current.keys() == saved.keys() and all(map(operator.is_, current.values(), saved.values())):
        return
    current.clear()
    current.update(saved)


def _named_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters(remove_duplicate=True)
    yield from model.named_buffers(remove_duplicate=True)


@contextlib.contextmanager
def preserved_rng(tensors: list[torch.Tensor]) -> Iterator[None]:
    """Restore the global CPU generator, and the CUDA generators of the devices the model uses
    (and any already initialised), after the block."""
    devices: list[int] = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        devices = list(range(torch.cuda.device_count()))
    else:
        devices = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        yield
