"""What "left as found" means for ``featcheck.capture``, and how it is kept.

``capture`` runs the user's own model, possibly in train mode or with autograd on, and must hand
it back as it was. :class:`ModelState` snapshots, before the forward, and puts back, after it
(also when it raised or was interrupted):

* every module's ``training`` flag and class;
* the registrations: which parameters, buffers and submodules each module holds, by identity
  (a buffer that forward rebinds, ``self.n = self.n + 1``, or a parameter, buffer or submodule
  registered lazily in forward, is undone), and plain tensor attributes (``self.cache = x``);
* every buffer's value, bitwise, and its shape, strides and dtype (buffers are small: they are
  copied and compared), whatever the forward did to it: written in place (also a conjugate or
  negative view, whose values are compared and written as they read, not as their bytes),
  through ``.data`` (no version bump), resized, ``as_strided_``, its ``.data`` rebound to another
  tensor or dtype, or its storage resized (``untyped_storage().resize_()``);
* every parameter's value, layout and dtype, bitwise, for parameters of modules defined outside
  ``torch.nn`` (copied and compared, like buffers: a custom layer may update its own weights in
  forward), and for all parameters as far as their version counters and data addresses show
  (torch.nn's own layers never write to their parameters in forward, and copying every weight
  would double the model's memory: a parameter of a torch.nn layer written in place by some other
  module's forward, its ``.data`` rebound to another tensor or its storage resized, is detected,
  not undone, and the capture's ``note`` and a warning say so; rebound to a view of its own data
  at the same address, ``w.data = w.data.t()``, it is not detected);
* ``requires_grad`` of parameters and buffers, and buffers made non-leaf by an in-place op with
  autograd on;
* the global random number generators (CPU, and CUDA where initialised), so ``train=True`` with
  dropout does not advance them.

Restoring never writes into a tensor that did not change: an in-place write bumps the version
counter and would invalidate an autograd graph the user still holds (``out = model(x)`` before
the capture, ``out.sum().backward()`` after it). Where a tensor did change and is written back,
its version counter is set back to what it was, since its values are again exactly those that
any earlier graph saved. A changed tensor is written back into its own storage where its data is
still at its address (the layout put back with ``set_`` where it changed; a storage freed in
forward is grown back, so other views of it share it again); where its data moved (``.data``
rebound, possibly to another tensor's memory, or a storage reallocated) it is given a tensor of
its own in its saved layout with ``t.data = ...`` (the same Python object, no version bump), and
nothing is written into the memory it points to. A tensor whose storage no longer holds it is
not read. Inference tensors (a model built under ``torch.inference_mode()``) are written back
inside inference mode, and stay inference tensors. Restore raises nothing: what it cannot put
back it names in ``unrestorable``, with why, and warns.

Both run once per capture over every module and tensor, so they are built for it: the snapshot
is the entries of every module's ``__dict__`` and registries in flat lists (no copy per module)
plus flat lists of the tensors' versions and flags, and restore first checks, by identity and at C speed (``map`` over flat lists, no
Python loop per module), that nothing differs; only when something does, the module-by-module
repair runs. A ``train=True`` capture's flags are put back before that check, so that it, too,
stays on the fast path. The copied values are one flat tensor per device, dtype and rank, made
and compared with a few kernels, or, for contiguous CPU tensors, one bytes object (with their
data addresses, dtypes and shapes, each checked with one map). No guarantee depends on the fast
path: a buffer written through ``.data`` (no version bump) is still found by the bitwise
comparison, and one whose ``.data`` is rebound by its data address, dtype, shape or strides (of a
contiguous CPU buffer: its contiguity). Found by neither: a buffer's ``.data`` rebound to a view
of its own data at the same address that differs only in its conjugate or negative bit, or in the
strides of dimensions of size 1 (which address no other element). A buffer that holds no values
at the snapshot (on the meta device, or its storage already freed) is not copied.
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
    try:
        return t._version
    except RuntimeError:  # an inference tensor's .data rebound to a normal tensor has no counter either
        return None


def _versions(tensors: list[torch.Tensor]) -> list[int | None]:
    try:
        return list(map(_version_of, tensors))
    except RuntimeError:  # an inference tensor among them: it keeps no version counter
        return list(map(_version, tensors))


def _ptr(t: torch.Tensor) -> int | None:
    try:
        return t.data_ptr()
    except Exception:  # a tensor subclass without storage: its values are read through torch ops
        return None


def _ptrs(tensors: list[torch.Tensor]) -> list[int | None]:
    """Every tensor's data address: one that changed means its ``.data`` was rebound, its storage
    resized or reallocated (neither bumps a version), or it was resized or ``set_`` in place."""
    try:
        return list(map(_data_ptr, tensors))
    except Exception:
        return list(map(_ptr, tensors))


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


class _Host:
    """The contiguous CPU tensors copied as one bytes object, and what the snapshot read of them
    (contiguous: their shapes say their strides)."""

    __slots__ = ("tensors", "versions", "sizes", "dtypes", "shapes", "ptrs", "data")

    def __init__(self, tensors: list[torch.Tensor], versions: list[int | None], ptrs: list[int | None], dtypes: list[torch.dtype]) -> None:
        self.tensors = tensors
        self.versions = versions
        self.ptrs = ptrs
        self.dtypes = dtypes
        self.sizes: list[int] = list(map(_nbytes_of, tensors))
        self.shapes: list[torch.Size] = list(map(_shape_of, tensors))
        self.data: bytes = _snap.gather(ptrs, self.sizes)


# A copied tensor that differs from its copy, with what restore needs to put it back: the tensor,
# its version (None: an inference tensor), its copy (its values in its saved shape, dtype and
# device, contiguous), its saved strides (None: it was contiguous) and whether its data is still
# at its address (its own memory, to be written in place).
_Changed = tuple[torch.Tensor, "int | None", torch.Tensor, "tuple[int, ...] | None", bool]


class _Copies:
    """Values of the tensors featcheck keeps a copy of: contiguous CPU tensors as one bytes object
    copied and compared by featcheck._snap (one call each), the others one flat tensor per device,
    dtype and rank, so that snapshot and comparison cost a few kernels, not one per tensor. With
    the values, every tensor's data address, shape, strides and dtype: a tensor whose ``.data`` was
    rebound, or whose storage was resized, is found even where its values read the same."""

    def __init__(self, tensors: list[torch.Tensor], versions: list[int | None] | None = None) -> None:
        """``versions``: the tensors' versions, where the caller read them already."""
        self.host: _Host | None = None
        self.groups: list[tuple[list[torch.Tensor], list[int | None], list[torch.Size], list[tuple[int, ...]], list[int | None], torch.Tensor]] = []
        if not tensors:
            return
        ptrs = _ptrs(tensors)
        if 0 in ptrs:  # empty, meta, or its storage freed (resized to 0 bytes) before the capture
            # meta tensors hold no values, nor does a tensor whose storage was freed: reading it
            # would read address 0
            keep = [not t.is_meta and (p != 0 or t.nbytes == 0) for t, p in zip(tensors, ptrs)]
            tensors, ptrs, versions = list(itertools.compress(tensors, keep)), list(itertools.compress(ptrs, keep)), None
        if _snap is not None and tensors:
            dtypes = list(map(_dtype_of, tensors))
            host = _host(tensors, dtypes)
            if host is tensors:
                self.host = _Host(host, _versions(host) if versions is None else versions, ptrs, dtypes)
                tensors = []
            elif host:
                on_host = list(map(_on_host, tensors))
                self.host = _Host(host, _versions(host), list(itertools.compress(ptrs, on_host)), list(itertools.compress(dtypes, on_host)))
                tensors = [t for t, h in zip(tensors, on_host) if not h]  # the rest keep the torch path
        # torch's own grouping (used by the foreach optimizers): one C++ call, not a device and
        # dtype read per tensor
        by_kind = _group_by_device_and_dtype([tensors], False) if tensors else {}
        with torch.no_grad():
            for [group], _ in by_kind.values():
                ranks = list(map(_dim, group))
                by_rank: dict[int, list[torch.Tensor]] = {}
                for t, rank in zip(group, ranks) if len(set(ranks)) > 1 else ():
                    by_rank.setdefault(min(rank, 2), []).append(t)
                for same in by_rank.values() if by_rank else [group]:
                    flat = _flat(same)  # values as they read: conjugate and negative views resolved
                    self.groups.append(
                        (
                            same,
                            _versions(same),
                            list(map(_shape_of, same)),
                            list(map(_stride, same)),
                            _ptrs(same),
                            flat.clone() if len(same) == 1 else flat,
                        )
                    )

    def changed(self, versions_same: bool) -> list[_Changed]:
        """The copied tensors whose values (bitwise), versions, data address, shape, strides or
        dtype differ now, with what restore needs; ``versions_same``: no tensor of the model has
        a new version. A tensor is read only where it still has its data address and layout, or
        where its storage is checked to hold it (a storage resized in forward may not)."""
        out = []
        with torch.no_grad():
            if self.host is not None:
                out += self._host_changed(versions_same)
            for group, versions, shapes, strides, ptrs, flat in self.groups:
                now = _ptrs(group)
                if (
                    now == ptrs
                    and (versions_same or _versions(group) == versions)
                    and all(map(operator.is_, map(_dtype_of, group), itertools.repeat(flat.dtype)))
                    and list(map(_shape_of, group)) == shapes
                    and list(map(_stride, group)) == strides
                    and _same_bits(_flat(group), flat)
                ):
                    continue
                pos = 0
                for t, version, shape, stride, ptr, ptr_now in zip(group, versions, shapes, strides, ptrs, now):
                    n = shape.numel()  # as it was: a tensor resized since must not shift the others
                    copy = flat[pos : pos + n].view(shape)
                    pos += n
                    if not _still(t, version, copy, stride, ptr == ptr_now):
                        out.append((t, version, copy, stride, ptr == ptr_now))
        return out

    def _host_changed(self, versions_same: bool) -> list[_Changed]:
        h = self.host
        host = h.tensors  # type: ignore[union-attr]
        ptrs = _ptrs(host)
        if (
            (versions_same or _versions(host) == h.versions)  # type: ignore[union-attr]
            # the same data addresses, dtypes and shapes, still contiguous: CPU tensors whose
            # bytes lie where they were, nbytes long (a .data rebound or a storage resized in
            # forward moves the address; one rebound to a view of itself changes the rest)
            and ptrs == h.ptrs  # type: ignore[union-attr]
            and list(map(_dtype_of, host)) == h.dtypes  # type: ignore[union-attr]
            and list(map(_shape_of, host)) == h.shapes  # type: ignore[union-attr]
            and all(map(_is_contiguous, host))
            and _snap.same_bytes(ptrs, h.sizes, h.data)  # type: ignore[union-attr]
        ):
            return []
        out = []
        data = h.data  # type: ignore[union-attr]
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        pos = 0
        for t, version, size, dtype, shape, ptr, ptr_now in zip(
            host, h.versions, h.sizes, h.dtypes, h.shapes, h.ptrs, ptrs  # type: ignore[union-attr]
        ):
            copy = raw[pos : pos + size].clone().view(dtype).view(shape)
            pos += size
            if not _still(t, version, copy, None, ptr == ptr_now):
                out.append((t, version, copy, None, ptr == ptr_now))
        return out


def _still(t: torch.Tensor, version: int | None, copy: torch.Tensor, stride: tuple[int, ...] | None, same_ptr: bool) -> bool:
    """Is ``t`` as the snapshot left it (its version, layout and bits)? One that cannot be compared
    counts as changed: putting it back writes its saved values and version, harmless where they
    are its own, and one tensor must not keep the others from being compared."""
    try:
        return _version(t) == version and _unchanged(t, copy, stride, same_ptr)
    except Exception:
        return False


def _unchanged(t: torch.Tensor, copy: torch.Tensor, stride: tuple[int, ...] | None, same_ptr: bool) -> bool:
    """Has ``t`` (its version unchanged) the layout and (bitwise) values of the snapshot? It is read
    only where its storage holds it: a storage resized in forward leaves it pointing past its end."""
    if not _same_layout(t, copy, stride):
        return False
    if not same_ptr and not _readable(t):
        return False
    return _same_bits(t.detach().reshape(-1), copy.reshape(-1))


def _same_layout(t: torch.Tensor, copy: torch.Tensor, stride: tuple[int, ...] | None) -> bool:
    """Has ``t`` the saved dtype, device, shape and strides (``stride`` None: a contiguous CPU
    tensor, as the host copies are)?"""
    if t.dtype != copy.dtype or t.shape != copy.shape:
        return False
    if stride is None:
        return t.is_cpu and t.is_contiguous()
    return t.device == copy.device and t.stride() == stride


def _readable(t: torch.Tensor) -> bool:
    """Does ``t``'s storage hold all its elements? (Not after ``untyped_storage().resize_()`` to
    fewer bytes in forward; a tensor with no storage, a subclass, is read through torch ops.)"""
    if t.numel() == 0:
        return True
    try:
        have = t.untyped_storage().nbytes()
    except Exception:
        return not t.is_meta
    return have >= _extent(t.storage_offset(), t.shape, t.stride()) * t.element_size()


def _extent(offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> int:
    """Elements of storage a view with this offset, shape and strides reaches (one past its last)."""
    return offset + 1 + sum((n - 1) * s for n, s in zip(shape, stride) if n > 1)


def _put_back(t: torch.Tensor, version: int | None, copy: torch.Tensor, stride: tuple[int, ...] | None, same_ptr: bool) -> None:
    """Put a changed tensor back as it was: in its own storage where that is still its own (its
    data where it was, written in place, resized, ``as_strided_``, or ``.data`` rebound to a view
    of itself; or its storage freed in forward: grown back, so that other views of it still share
    it), else as a tensor of its own in its saved layout (``t.data = ...``, which bumps no version
    counter and never writes into memory that may now be another tensor's)."""
    # an inference tensor is put back as one (and written only in inference mode)
    with torch.inference_mode() if version is None else torch.no_grad():
        if same_ptr and _same_layout(t, copy, stride):
            # written in place (a conjugate or negative view through its view): its data where
            # it was, in the same layout, is its own memory, whole (as the fast path reads it)
            t.copy_(copy)
            return
        if stride is None:
            stride = copy.stride()  # it was contiguous: the copy's own
        if (same_ptr or _ptr(t) == 0) and t.dtype == copy.dtype and t.device == copy.device:
            with contextlib.suppress(RuntimeError):  # a storage that cannot grow: a tensor of its own
                storage, offset = t.untyped_storage(), t.storage_offset()
                need = _extent(offset, copy.shape, stride) * t.element_size() if copy.numel() else 0
                if storage.nbytes() < need:
                    storage.resize_(need)
                t.set_(storage, offset, copy.shape, stride)
                t.copy_(copy)
                return
        fresh = torch.empty_strided(copy.shape, stride, dtype=copy.dtype, device=copy.device)
        fresh.copy_(copy)
        t.data = fresh


def _host(tensors: list[torch.Tensor], dtypes: list[torch.dtype]) -> list[torch.Tensor]:
    """The plain (not subclassed), strided, unquantized, contiguous CPU tensors among ``tensors``
    that are no conjugate or negative views (their bytes are not their values), whose bytes lie
    at ``data_ptr()`` for ``nbytes``: usually all of them (the list itself), decided with a few
    maps of C-level reads, each asked only where the ones before said yes."""
    kinds = set(dtypes)
    if (
        all(map(_PLAIN.__contains__, map(type, tensors)))
        and all(map(operator.is_, map(_layout_of, tensors), itertools.repeat(torch.strided)))
        and all(map(_is_cpu_of, tensors))
        and kinds.isdisjoint(_QUANTIZED)
        and all(map(_is_contiguous, tensors))
        and not any(map(_is_neg, tensors))
        and (kinds.isdisjoint(_COMPLEX) or not any(map(_is_conj, tensors)))
    ):
        return tensors
    return [t for t in tensors if _on_host(t)]


def _on_host(t: torch.Tensor) -> bool:
    return (
        type(t) in _PLAIN
        and t.layout is torch.strided
        and t.is_cpu
        and not t.is_quantized
        and t.is_contiguous()
        and not t.is_conj()
        and not t.is_neg()
    )


_PLAIN = frozenset({torch.Tensor, nn.Parameter})
_QUANTIZED = frozenset(getattr(torch, n) for n in ("quint8", "qint8", "qint32", "quint4x2", "quint2x4") if hasattr(torch, n))
_COMPLEX = frozenset(getattr(torch, n) for n in ("complex32", "complex64", "complex128") if hasattr(torch, n))
_layout_of = operator.attrgetter("layout")
_is_cpu_of = operator.attrgetter("is_cpu")
_is_contiguous = torch.Tensor.is_contiguous
_is_conj = torch.Tensor.is_conj
_is_neg = torch.Tensor.is_neg
_data_ptr = torch.Tensor.data_ptr
_nbytes_of = operator.attrgetter("nbytes")
_dtype_of = operator.attrgetter("dtype")
_shape_of = operator.attrgetter("shape")
_stride = torch.Tensor.stride
_group_by_device_and_dtype = torch._C._group_tensors_by_device_and_dtype
_dim = torch.Tensor.dim
_is_meta_of = operator.attrgetter("is_meta")
_is_cuda_of = operator.attrgetter("is_cuda")


def _flat(group: list[torch.Tensor]) -> torch.Tensor:
    """Tensors of one device, dtype and rank as one flat tensor (a view of a lone tensor):
    ``cat`` and ``stack`` take them as they are, saving a view per tensor. Conjugate and negative
    views are resolved: the flat tensor holds their values, not their bytes."""
    rank = group[0].dim()
    if rank == 0 and all(t.dim() == 0 for t in group):
        return torch.stack(group)
    if rank == 1 and all(t.dim() == 1 for t in group):
        return torch.cat(group)
    return torch._utils._flatten_dense_tensors(group).resolve_conj().resolve_neg()


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
        holders = itertools.compress(zip(self._classes, self._params.dicts), self._params.lens)  # most hold none
        copied = {id(p): p for cls, d in holders if cls in own for p in d.values() if p is not None}
        # the others (torch.nn layers' parameters): versions, and data addresses, are compared
        self._loose = [p for p in params.values() if id(p) not in copied] if copied else list(params.values())
        self._loose_ptrs = _ptrs(self._loose)
        copied.update(buffers)
        self._copied = copied
        # the copied tensors are the buffers, last in tensors, unless layers of its own hold parameters
        self._copies = _Copies(list(copied.values()), self._versions[len(params) :] if len(copied) == len(buffers) else None)
        self._reported: set[int] = set()

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
        try:
            changed = self._copies.changed(versions_same)
        except Exception as e:  # nothing expected: but restore raises nothing
            changed = []
            self._report(None, f"the copies of buffers could not be compared ({_first_line(e)})")
        for t, version, copy, stride, same_ptr in changed:
            try:
                _put_back(t, version, copy, stride, same_ptr)
            except Exception as e:  # a storage that cannot be resized, a tensor subclass...
                self._report(t, f"could not be put back: {_first_line(e)}")
                continue
            if version is not None and _set_version is not None:
                _set_version((t,), (version,))
        if not versions_same:
            self._report_written()
        if _ptrs(self._loose) != self._loose_ptrs:
            self._check_loose()
        if self.unrestorable:
            warnings.warn(
                "featcheck.capture: expected the forward pass to leave the model's tensors as it found "
                "them, or featcheck to put them back; these it changed and featcheck could not put back: "
                + "; ".join(self.unrestorable[:5])
                + (f" ({len(self.unrestorable)} in all)" if len(self.unrestorable) > 5 else "")
                + ". They were left as the forward made them. featcheck copies buffers and the "
                "parameters of layers defined outside torch.nn, not those of torch.nn's own layers: "
                "reload a state_dict saved before the capture to undo this, and keep the forward "
                "from writing to (or rebinding .data of) parameters.",
                RuntimeWarning,
                stacklevel=4,
            )

    def _report(self, t: torch.Tensor | None, why: str = "") -> None:
        """Record a tensor that could not be put back (once), by name, with why where it is not
        the plain case of a torch.nn layer's parameter written in place."""
        if t is not None:
            if id(t) in self._reported:
                return
            self._reported.add(id(t))
        names = {id(x): n for n, x in _named_tensors(self.model)}
        name = names.get(id(t), "?") if t is not None else "model"
        self.unrestorable.append(f"{name} ({why})" if why else name)

    def _check_loose(self) -> None:
        """torch.nn layers' parameters whose data address changed: ``.data`` rebound (to another
        tensor, or another dtype, shape or layout) or the storage resized; no copy to put back."""
        for t, ptr, now in zip(self._loose, self._loose_ptrs, _ptrs(self._loose)):
            if now == ptr:
                continue
            if now == 0 and t.numel():
                why = "its storage was resized to 0 bytes in forward; expected its data allocated"
            else:
                why = (
                    "its .data was rebound or its storage reallocated in forward; expected its data "
                    f"where it was, found shape {tuple(t.shape)}, strides {t.stride()}, dtype {t.dtype}"
                    f"{'' if t.device.type == 'cpu' else f', device {t.device}'} elsewhere"
                )
            self._report(t, why)

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
        _put_back_entries(self._params.dicts[i], params)
        _put_back_entries(self._buffers.dicts[i], buffers)
        _put_back_entries(self._children.dicts[i], modules)
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
        """Graph membership and ``requires_grad``."""
        for t, version, requires_grad in zip(self._tensors, self._versions, self._requires_grad):
            if not t.is_leaf:
                t.detach_()  # an in-place op with autograd on made it part of a graph
            if t.requires_grad != requires_grad:
                t.requires_grad_(requires_grad)

    def _report_written(self) -> None:
        """torch.nn layers' parameters written in place (no copy to put them back from), read
        after the copies were put back: a buffer that views a parameter, put back, puts the
        parameter back too, with the version counter they share."""
        for t, version in zip(self._tensors, self._versions):
            if id(t) not in self._copied and version is not None and _version(t) != version:
                self._report(t)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality of two flat tensors of one dtype (a NaN equals the same NaN, -0.0 differs
    from 0.0), as their values read."""
    if a.dtype != torch.bool:
        try:
            a, b = a.view(torch.uint8), b.view(torch.uint8)
        except RuntimeError:  # a conjugate or negative view, whose bytes are not its values, or a
            # strided one (arange(8.)[::2]), whose bytes cannot be viewed: copies of their values
            a, b = (x.resolve_conj().resolve_neg().contiguous().view(torch.uint8) for x in (a, b))
    return bool(torch.equal(a, b))


def _put_back_entries(current: dict[str, Any], saved: dict[str, Any]) -> None:
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
