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

Both run once per capture over every module and tensor, so they are built for it: the snapshot
is the entries of every module's ``__dict__`` and registries in flat lists (no copy per module)
plus flat lists of the tensors' versions and flags, and restore first checks, by identity and at C speed (``map`` over flat lists, no
Python loop per module), that nothing differs; only when something does, the module-by-module
repair runs. A ``train=True`` capture's flags are put back before that check, so that it, too,
stays on the fast path. The copied values are one flat tensor per device, dtype and rank, made
and compared with a few kernels. No guarantee depends on the fast path: a buffer written
through ``.data`` (no version bump) is still found by the bitwise comparison.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ._walk import _buffers_of, _chain, _modules_of, _params_of, _training_of, _values

try:
    from . import _snap  # the C loops of _Flat (featcheck/_snap.c), when it was built
except ImportError:
    _snap = None

__all__ = ["ModelState", "preserved_rng"]

_set_version = getattr(torch._C._autograd, "_unsafe_set_version_counter", None)


def _version(t: torch.Tensor) -> int | None:
    if t.is_inference():
        return None  # inference tensors keep no version counter
    return t._version


def _versions(tensors: list[torch.Tensor]) -> list[int | None]:
    try:
        return list(map(_version_of, tensors))
    except RuntimeError:  # an inference tensor among them: it keeps no version counter
        return list(map(_version, tensors))


# isinstance against the C base class: the Python-level torch.Tensor check costs a metaclass call,
# and the snapshot looks at every attribute of every module.
_TensorBase = torch._C.TensorBase

# The snapshot and the check that nothing changed run once per capture over every module (209 in
# mobilenet_v3_small) and every tensor: they map C-level callables over flat lists instead of
# looping in Python, and fall back to the per-module repair only where something did change.
_dict_of = operator.attrgetter("__dict__")
_keys = dict.keys
_version_of = operator.attrgetter("_version")
_requires_grad_of = operator.attrgetter("requires_grad")


class _Copies:
    """Values of the tensors featcheck keeps a copy of: contiguous CPU tensors as one bytes object
    copied and compared by featcheck._snap (one call each), the others one flat tensor per device,
    dtype and rank, so that snapshot and comparison cost a few kernels, not one per tensor."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        if any(map(_is_meta_of, tensors)):
            tensors = [t for t in tensors if not t.is_meta]  # they hold no values
        # contiguous CPU tensors: (tensors, versions, nbytes, dtypes, shapes, their bytes)
        self.host: tuple[list[torch.Tensor], list[int | None], list[int], list[torch.dtype], list[torch.Size], bytes] | None = None
        if _snap is not None and tensors:
            host = _host(tensors)
            if host:
                copied = set(map(id, host))  # the rest keep the torch path
                tensors = [t for t in tensors if id(t) not in copied] if len(host) < len(tensors) else []
                sizes = list(map(_nbytes_of, host))
                data = _snap.gather(list(map(_data_ptr, host)), sizes)
                self.host = (host, _versions(host), sizes, list(map(_dtype_of, host)), list(map(_shape_of, host)), data)
        # torch's own grouping (used by the foreach optimizers): one C++ call, not a device and
        # dtype read per tensor
        by_kind = _group_by_device_and_dtype([tensors], False) if tensors else {}
        self.groups: list[tuple[list[torch.Tensor], list[int | None], list[torch.Size], torch.Tensor]] = []
        with torch.no_grad():
            for [group], _ in by_kind.values():
                ranks = list(map(_dim, group))
                by_rank: dict[int, list[torch.Tensor]] = {}
                for t, rank in zip(group, ranks) if len(set(ranks)) > 1 else ():
                    by_rank.setdefault(min(rank, 2), []).append(t)
                for same in by_rank.values() if by_rank else [group]:
                    flat = _flat(same)
                    shapes = list(map(_shape_of, same))
                    self.groups.append((same, _versions(same), shapes, flat.clone() if len(same) == 1 else flat))

    def changed(self, versions_same: bool) -> list[tuple[torch.Tensor, int | None, torch.Tensor]]:
        """The copied tensors whose values (bitwise) or versions differ now, with their versions
        and copies; ``versions_same``: no tensor of the model has a new version."""
        out = []
        with torch.no_grad():
            if self.host is not None:
                out += self._host_changed(versions_same)
            for group, versions, shapes, flat in self.groups:
                if (versions_same or _versions(group) == versions) and _same_bits(_flat(group), flat):
                    continue  # a tensor resized in place changes the length: not the same bits
                pos = 0
                for t, version, shape in zip(group, versions, shapes):
                    n = shape.numel()  # as it was: a tensor resized since must not shift the others
                    copy = flat[pos : pos + n].view(shape)
                    pos += n
                    if _version(t) != version or not _equal(t, copy):
                        out.append((t, version, copy))
        return out

    def _host_changed(self, versions_same: bool) -> list[tuple[torch.Tensor, int | None, torch.Tensor]]:
        host, versions, sizes, dtypes, shapes, data = self.host  # type: ignore[misc]
        if (
            (versions_same or _versions(host) == versions)
            and len(_host(host)) == len(host)  # still contiguous and on the CPU: their bytes are where data_ptr says
            and list(map(_nbytes_of, host)) == sizes
            and _snap.same_bytes(list(map(_data_ptr, host)), sizes, data)
        ):
            return []
        out = []
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        pos = 0
        for t, version, size, dtype, shape in zip(host, versions, sizes, dtypes, shapes):
            copy = raw[pos : pos + size].clone().view(dtype).view(shape)
            pos += size
            if _version(t) != version or not _equal(t, copy):
                out.append((t, version, copy))
        return out


def _host(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The plain (not subclassed), strided, unquantized, contiguous CPU tensors among ``tensors``,
    whose bytes lie at ``data_ptr()`` for ``nbytes``: usually all of them (the list itself),
    decided with a few maps of C-level reads, each asked only where the ones before said yes."""
    if (
        all(map(_PLAIN.__contains__, map(type, tensors)))
        and all(map(operator.is_, map(_layout_of, tensors), itertools.repeat(torch.strided)))
        and all(map(_is_cpu_of, tensors))
        and not any(map(_is_quantized_of, tensors))
        and all(map(_is_contiguous, tensors))
    ):
        return tensors
    return [t for t in tensors if _on_host(t)]


def _on_host(t: torch.Tensor) -> bool:
    return type(t) in _PLAIN and t.layout is torch.strided and t.is_cpu and not t.is_quantized and t.is_contiguous()


_PLAIN = frozenset({torch.Tensor, nn.Parameter})
_layout_of = operator.attrgetter("layout")
_is_cpu_of = operator.attrgetter("is_cpu")
_is_quantized_of = operator.attrgetter("is_quantized")
_is_contiguous = torch.Tensor.is_contiguous
_data_ptr = torch.Tensor.data_ptr
_nbytes_of = operator.attrgetter("nbytes")
_dtype_of = operator.attrgetter("dtype")
_shape_of = operator.attrgetter("shape")
_group_by_device_and_dtype = torch._C._group_tensors_by_device_and_dtype
_dim = torch.Tensor.dim
_is_meta_of = operator.attrgetter("is_meta")
_is_cuda_of = operator.attrgetter("is_cuda")


def _flat(group: list[torch.Tensor]) -> torch.Tensor:
    """Tensors of one device, dtype and rank as one flat tensor (a view of a lone tensor):
    ``cat`` and ``stack`` take them as they are, saving a view per tensor."""
    rank = group[0].dim()
    if rank == 0 and all(t.dim() == 0 for t in group):
        return torch.stack(group)
    if rank == 1 and all(t.dim() == 1 for t in group):
        return torch.cat(group)
    return torch._utils._flatten_dense_tensors(group)


class _Flat:
    """The entries of many dicts (every module's ``__dict__``, or every module's ``_parameters``)
    in flat lists: a few objects for the garbage collector to track instead of one copy per
    module (mobilenet_v3_small: 836 copies, about one collection per capture), compared at C
    speed. ``dicts``: the dicts themselves, compared by identity."""

    __slots__ = ("dicts", "lens", "keys", "values")

    def __init__(self, dicts: list[dict[str, Any]]) -> None:
        self.dicts = dicts
        if _snap is not None:  # one C pass (featcheck/_snap.c), the same lists
            self.lens, self.keys, self.values = _snap.entries(dicts)
            return
        self.lens = list(map(len, dicts))
        # most registries are empty (a leaf's submodules): entries are read from the others
        filled = list(itertools.compress(dicts, self.lens))
        # keys and values both in the dicts' own order, as featcheck/_snap.c reads them (an
        # OrderedDict iterates in its own, which move_to_end changes)
        self.keys = list(_chain(map(_keys, filled)))
        self.values = list(_chain(map(_values, filled)))

    def unchanged(self, dicts: list[dict[str, Any]]) -> bool:
        """Are ``dicts`` the same dicts holding the same entries, by identity and in order?"""
        if _snap is not None:
            return _snap.same(dicts, self.dicts, self.lens, self.keys, self.values)
        filled = list(itertools.compress(self.dicts, self.lens))
        return (
            all(map(operator.is_, dicts, self.dicts))
            and list(map(len, dicts)) == self.lens
            and all(map(operator.is_, _chain(map(_values, filled)), self.values))
            and list(_chain(map(_keys, filled))) == self.keys
        )

    def saved(self) -> list[dict[str, Any]]:
        """Each dict's entries as they were, one dict per module (for the repair)."""
        out = []
        keys, values = iter(self.keys), iter(self.values)
        for n in self.lens:
            out.append(dict(zip(itertools.islice(keys, n), itertools.islice(values, n))) if n else {})
        return out


class ModelState:
    """A snapshot of a model's state that :meth:`restore` puts back, touching only what changed."""

    def __init__(self, model: nn.Module, modules: list[nn.Module] | None = None) -> None:
        """``modules``: ``list(model.modules())`` when the caller has it already."""
        self.model = model
        self.unrestorable: list[str] = []
        mods = list(model.modules()) if modules is None else modules
        self._modules = mods
        self._classes = list(map(type, mods))
        # per module its __dict__, and its _parameters, _buffers and _modules, with their entries:
        # identity of every entry is what restore compares, and what it puts back
        self._attrs = _Flat(list(map(_dict_of, mods)))
        self._params = _Flat(list(map(_params_of, mods)))
        self._buffers = _Flat(list(map(_buffers_of, mods)))
        self._children = _Flat(list(map(_modules_of, mods)))
        # by id: Tensor.__hash__ is a Python-level call
        params = {id(p): p for p in self._params.values if p is not None}
        buffers = {id(b): b for b in self._buffers.values if b is not None and id(b) not in params}
        tensors = [*params.values(), *buffers.values()]
        self._tensors = tensors
        self._training = list(map(_training_of, mods))
        self._versions = _versions(tensors)
        self._requires_grad = list(map(_requires_grad_of, tensors))
        # copied: buffers (small), and parameters of modules defined outside torch.nn
        own = {cls for cls in set(self._classes) if not cls.__module__.startswith("torch.nn.")}
        copied = {
            id(p): p
            for cls, d in zip(self._classes, self._params.dicts)
            if cls in own
            for p in d.values()
            if p is not None
        }
        copied.update(buffers)
        self._copied = copied
        self._copies = _Copies(list(copied.values()))

    @property
    def training(self) -> list[bool]:
        """Every module's ``training`` flag at the snapshot, in ``modules`` order."""
        return self._training

    @property
    def classes(self) -> list[type]:
        """Every module's class at the snapshot."""
        return self._classes

    def tensors(self) -> Iterator[torch.Tensor]:
        """Every parameter and buffer of the model."""
        return iter(self._tensors)

    def restore(self) -> None:
        """Put back everything that changed; raises nothing for what it cannot undo, but records
        it in ``unrestorable`` (and warns)."""
        mods = self._modules
        if list(map(type, mods)) != self._classes or not self._registrations_unchanged():
            saved = (self._attrs.saved(), self._params.saved(), self._buffers.saved(), self._children.saved())
            for i, m in enumerate(mods):
                self._restore_module(m, i, saved)
        tensors = self._tensors
        # a tensor joins a graph only through an in-place op, which bumps its version
        versions_same = _versions(tensors) == self._versions
        if not (versions_same and list(map(_requires_grad_of, tensors)) == self._requires_grad):
            self._restore_flags()
        for t, version, copy in self._copies.changed(versions_same):  # copies in their saved shapes
            try:
                with torch.inference_mode() if t.is_inference() else torch.no_grad():
                    if t.shape != copy.shape:
                        t.resize_(copy.shape)  # resized in place by the forward
                    t.copy_(copy)
            except RuntimeError:  # a storage that cannot be resized, a conjugate view: say so
                names = {id(x): n for n, x in _named_tensors(self.model)}
                self.unrestorable.append(names.get(id(t), "?"))
                continue
            if version is not None and _set_version is not None:
                _set_version((t,), (version,))
        if self.unrestorable:
            warnings.warn(
                "featcheck.capture: the forward pass wrote in place into tensors it could not put "
                "back (torch.nn layers' weights, of which it keeps no copy, or a buffer whose "
                "storage cannot be resized back): " + ", ".join(self.unrestorable[:5])
                + (f" ({len(self.unrestorable)} in all)" if len(self.unrestorable) > 5 else "")
                + ". They were left as the forward made them.",
                RuntimeWarning,
                stacklevel=4,
            )

    def _registrations_unchanged(self) -> bool:
        """Every module holds the same attributes, parameters, buffers and submodules, by
        identity and in the same order (compared at C speed: this runs for every module)."""
        mods = self._modules
        try:
            if list(map(_training_of, mods)) != self._training:
                # train=True flips every flag: put the flags back first, so that the common case
                # stays on this path rather than the per-module repair
                for d, flag in zip(map(_dict_of, mods), self._training):
                    if d["training"] is not flag:
                        d["training"] = flag
        except (AttributeError, KeyError):  # the flag deleted from a module's __dict__
            return False
        # the registries are entries of __dict__: the same __dict__ entries, the same registries
        return (
            self._attrs.unchanged(list(map(_dict_of, mods)))
            and self._params.unchanged(self._params.dicts)
            and self._buffers.unchanged(self._buffers.dicts)
            and self._children.unchanged(self._children.dicts)
        )

    def _restore_module(self, m: nn.Module, i: int, saved: tuple[list[dict[str, Any]], ...]) -> None:
        cls = self._classes[i]
        attrs, params, buffers, modules = (d[i] for d in saved)
        if type(m) is not cls:
            m.__class__ = cls
        d = m.__dict__
        if d is not self._attrs.dicts[i]:  # __dict__ itself replaced: the module's own put back
            object.__setattr__(m, "__dict__", self._attrs.dicts[i])  # (the other may be another module's)
            d = m.__dict__
        _put_back(self._params.dicts[i], params)
        _put_back(self._buffers.dicts[i], buffers)
        _put_back(self._children.dicts[i], modules)
        for key, registry in (("_parameters", self._params), ("_buffers", self._buffers), ("_modules", self._children)):
            if d.get(key) is not registry.dicts[i]:
                d[key] = registry.dicts[i]  # a registry rebound
        if len(d) == len(attrs) and all(map(operator.is_, d.values(), attrs.values())):
            return  # nothing rebound
        d["training"] = attrs["training"]
        for k in [k for k, v in d.items() if isinstance(v, _TensorBase) and k not in attrs]:
            del d[k]  # tensor attributes added in forward
        for k, v in attrs.items():
            if isinstance(v, _TensorBase) or isinstance(d.get(k), _TensorBase):
                d[k] = v  # tensor attributes rebound (or a non-tensor that became one)

    def _restore_flags(self) -> None:
        """Graph membership, ``requires_grad``, and in-place writes to tensors without a copy."""
        for t, version, requires_grad in zip(self._tensors, self._versions, self._requires_grad):
            if not t.is_leaf:
                t.detach_()  # an in-place op with autograd on made it part of a graph
            if t.requires_grad != requires_grad:
                t.requires_grad_(requires_grad)
            if id(t) not in self._copied and version is not None and _version(t) != version:
                names = {id(x): n for n, x in _named_tensors(self.model)}
                self.unrestorable.append(names.get(id(t), "?"))


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
    if not torch.cuda.is_available():
        pass  # no tensor is on a CUDA device: none is looked at
    elif torch.cuda.is_initialized():
        devices = list(range(torch.cuda.device_count()))
    elif any(map(_is_cuda_of, tensors)):  # one attribute read per tensor, not a device object
        devices = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        yield
