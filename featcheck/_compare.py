"""``featcheck.compare`` and ``featcheck.assert_same_activations``: where do two models part?

Both models run on the same inputs through :func:`featcheck.capture`'s machinery (hooks, op
records, the model handed back as found); instead of statistics, the recorder hands every
selected output tensor to this module as it is produced:

* The reference runs first. Each selected output is copied at record time (a later in-place
  write such as ``ReLU(inplace=True)`` or ``out += identity`` would otherwise change what is held),
  and so are the tensor arguments of the module or operation, for ``inputs_diverged``; an
  argument that is a tensor already held (the output of an earlier record, not written since) is
  shared, not copied again. The cost: one copy of every selected output, held until the
  candidate's matching record has been compared.
* The candidate runs second. Each of its records is compared element-wise with the reference
  record of the same name (or the ``mapping``'s name) while the candidate's tensor is live, and
  the reference copy is dropped right away. A record without a reference of that name and shape
  is copied and kept for the end, where the records left on both sides are aligned structurally
  by the baseline diff's alignment (:func:`featcheck._baselines._align`): an inserted block is
  added records, not a cascade of renames. Records found in one model only are listed, not
  compared.

Comparisons happen in float32 (float64 when either side is float64) on the reference's device;
inputs are cast to each model's dtype and device first.
"""

from __future__ import annotations

import fnmatch
import math
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from . import _baselines
from ._capture import capture, unwrap
from ._errors import FeatcheckAssertionError
from ._records import LayerCapture

__all__ = ["Diff", "Row", "assert_same_activations", "compare"]

# Default (rtol, atol) by the less precise dtype of a pair. float32's are the contract's
# defaults; bfloat16's were measured: torch.testing's (1.6e-2, 1e-5) fail a healthy bf16 copy of a
# small CNN at its first layer with 9% of elements out, (5e-2, 1e-2) pass. Default atol grows
# with a layer's magnitude (times its largest |value| where that exceeds 1): the rounding error
# of a sum follows the size of its terms, not of the result, so values near zero in a layer of
# large values carry errors of the layer's scale (a bf16 DemoCNN: errors of 0.12 in a layer
# whose values reach 17).
_DEFAULT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (5e-2, 1e-2),
}
_PRECISION = {torch.float64: 3, torch.float32: 2, torch.float16: 1, torch.bfloat16: 0}
# What a row keeps for diff_grid: the sample (batch entry) holding the largest difference, its
# KEEP_CHANNELS most diverging channels, each map subsampled to at most KEEP_SIDE per dimension.
KEEP_CHANNELS = 16
KEEP_SIDE = 64
_SHOW_ROWS = 12
_PICTURES = 3  # diverging pairs drawn in the report when assert_same_activations fails


@dataclass
class Row:
    """One aligned pair of records and how far apart they are.

    Attributes:
        reference: the reference's record name.
        candidate: the candidate's record name.
        max_abs: largest absolute difference (``inf`` where a NaN or Inf appears on one side only,
            ``nan`` when the shapes differ and nothing could be compared).
        max_rel: largest ``|candidate - reference| / |reference|`` over nonzero reference values.
        mismatched: fraction of elements outside ``atol + rtol * |reference|``.
        channels: the channels holding such elements.
        inputs_diverged: whether the record's inputs (the module's tensor arguments, or the
            operation's) already differed beyond tolerance; ``None`` when it had no tensor input.
        rtol, atol: the tolerances applied to this pair (atol after scaling, see compare).
        shape: the reference's output shape.
        note: why the pair could not be compared element-wise ('' when it was).
    """

    reference: str
    candidate: str
    max_abs: float
    max_rel: float
    mismatched: float
    channels: list[int]
    inputs_diverged: bool | None
    rtol: float
    atol: float
    shape: tuple[int, ...]
    note: str = ""
    worst_channels: list[int] = field(default_factory=list, repr=False)
    _order: int = field(default=0, repr=False, compare=False)
    _maps: tuple[torch.Tensor, torch.Tensor, list[int]] | None = field(default=None, repr=False, compare=False)

    @property
    def diverged(self) -> bool:
        """Whether any element is outside tolerance (or the shapes differ)."""
        return self.mismatched > 0 or bool(self.note)


@dataclass
class Diff:
    """What :func:`compare` found.

    Attributes:
        rows: every compared pair, in the candidate's call order.
        only_reference: records of the reference with no counterpart in the candidate.
        only_candidate: records of the candidate with no counterpart in the reference.
        skipped: reference records not compared because ``max_memory`` was reached.
        reference_name, candidate_name: the models' class names.
        note: what was unwrapped or run (a ``torch.compile`` wrapper), '' if nothing.
    """

    rows: list[Row]
    only_reference: list[str]
    only_candidate: list[str]
    skipped: list[str]
    reference_name: str
    candidate_name: str
    note: str = ""

    @property
    def first(self) -> Row | None:
        """The first diverging pair in call order, or ``None`` when all agree."""
        return next((r for r in self.rows if r.diverged), None)

    @property
    def diverged(self) -> list[Row]:
        """The diverging pairs, in call order."""
        return [r for r in self.rows if r.diverged]

    def row(self, name: str) -> Row:
        """The pair whose reference or candidate record is ``name``."""
        for r in self.rows:
            if name in (r.reference, r.candidate):
                return r
        from . import _selection

        names = list(dict.fromkeys([r.reference for r in self.rows] + [r.candidate for r in self.rows]))
        raise _selection.not_found(name, names, "the compared records")

    def __repr__(self) -> str:
        first = "none" if self.first is None else repr(self.first.candidate)
        return (
            f"<Diff {self.reference_name} vs {self.candidate_name}: {len(self.rows)} pairs, "
            f"{len(self.diverged)} diverging, first {first}>"
        )


# -- the comparison math --------------------------------------------------------------------------


@dataclass
class _Result:
    max_abs: float
    max_rel: float
    mismatched: float
    channels: list[int]
    worst: list[int]
    atol: float = 0.0
    note: str = ""
    maps: tuple[torch.Tensor, torch.Tensor, list[int]] | None = None


_TORCH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two CPU tensors of one dtype and layout hold the same bytes (False also when that
    cannot be told this way). A copy compares equal like this at 3-4x the speed of
    ``torch.equal`` (measured on a 24.5 MiB output: 3.4 ms against 12.8 ms)."""
    if a.device.type != "cpu" or b.device.type != "cpu" or a.dtype != b.dtype or a.stride() != b.stride():
        return False
    size = a.element_size()
    if size not in _TORCH_INT or a.is_complex() or a.is_quantized:
        return False
    if a.is_contiguous() and b.is_contiguous():
        order: tuple[int, ...] = tuple(range(a.dim()))
    elif a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last) and b.is_contiguous(memory_format=torch.channels_last):
        order = (0, 2, 3, 1)  # the order in memory: the permuted tensor is contiguous
    else:
        return False
    flat_a = a.detach().permute(order).reshape(-1).view(_TORCH_INT[size]).numpy()
    flat_b = b.detach().permute(order).reshape(-1).view(_TORCH_INT[size]).numpy()
    return bool(np.array_equal(flat_a, flat_b))


def _work_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    return torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32


def _peak(ref: torch.Tensor) -> float:
    """The largest finite |value| (0 when there is none)."""
    if not ref.numel():
        return 0.0
    peak = max(abs(float(ref.max())), abs(float(ref.min())))  # two passes, no temporary
    if math.isfinite(peak):
        return peak
    return float(torch.nan_to_num(ref, nan=0.0, posinf=0.0, neginf=0.0).abs().max())


def compare_tensors(
    ref: torch.Tensor,
    cand: torch.Tensor,
    channel_dim: int | None,
    rtol: float,
    atol: float,
    *,
    scale_atol: bool = False,
    keep: bool = False,
) -> _Result:
    """Element-wise comparison of two outputs (pure logic, no model).

    ``atol`` is multiplied by the reference's largest finite ``|value|`` where that exceeds 1
    when ``scale_atol`` (default tolerances); the atol applied is in the result. NaN against NaN and equal infinities agree. ``keep`` keeps the maps
    :func:`featcheck.diff_grid` draws.
    """
    if tuple(ref.shape) != tuple(cand.shape):
        return _Result(math.nan, math.nan, 1.0, [], [], atol, f"shapes differ: {tuple(ref.shape)} vs {tuple(cand.shape)}")
    if ref.numel() == 0:  # an empty output (a detector's boxes when none is found): agrees, no maps
        return _Result(0.0, 0.0, 0.0, [], [], atol)
    if _same_bits(ref, cand):  # the common case (a copy): one pass
        return _Result(0.0, 0.0, 0.0, [], [], atol, maps=_maps(ref, None, None, channel_dim) if keep else None)
    dtype = _work_dtype(ref, cand)
    r = ref.to(dtype)
    c = cand.to(ref.device, dtype)
    n = r.numel()
    if torch.equal(r, c):
        return _Result(0.0, 0.0, 0.0, [], [], atol, maps=_maps(r, None, None, channel_dim) if keep else None)
    diff = (c - r).abs_()
    max_abs = float(diff.max())  # NaN or inf when any difference is: then the slow way
    nonfinite = not math.isfinite(max_abs)
    if nonfinite:
        agree = (r == c) | (r.isnan() & c.isnan())
        finite = torch.isfinite(diff)
        diff = torch.where(agree, torch.zeros((), dtype=dtype), torch.where(finite, diff, torch.full((), math.inf, dtype=dtype)))
        max_abs = float(diff.max())
    if scale_atol:
        atol = atol * max(1.0, _peak(r))
    magnitude = r.abs()
    tol = magnitude.mul(rtol).add_(atol)
    if nonfinite:  # a NaN or Inf reference allows nothing but itself (agreeing: 0)
        tol = torch.nan_to_num(tol, nan=0.0, posinf=0.0)
    out = diff > tol
    del tol
    rel = diff.div(magnitude).nan_to_num_(nan=0.0, posinf=math.inf)  # 0/0 agrees; x/0 is inf
    max_rel = float(rel.max())
    del rel, magnitude
    count = int(out.sum())
    channels: list[int] = []
    worst: list[int] = []
    if count and channel_dim is not None and r.ndim >= 1:
        others = [d for d in range(r.ndim) if d != channel_dim]  # reduced in place, no copy
        hit = out.any(dim=others) if others else out
        peak = diff.amax(dim=others) if others else diff
        channels = hit.nonzero().flatten().tolist()
        worst = [i for i in torch.argsort(peak, descending=True, stable=True).tolist() if bool(hit[i])]
    return _Result(max_abs, max_rel, count / n, channels, worst, atol, maps=_maps(r, c, diff, channel_dim) if keep else None)


def _maps(
    r: torch.Tensor, c: torch.Tensor | None, diff: torch.Tensor | None, channel_dim: int | None
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The batch entry with the largest difference, its most diverging channels (first channels
    when nothing differs), as ``[k, *spatial]`` float32 CPU maps of reference and candidate
    (``c`` None: the candidate is the same, and so are its maps)."""
    if c is None:
        same = _maps(r, r, None, channel_dim)
        return same[0], same[0], same[2]
    if r.ndim == 0:
        return r.reshape(1, 1).float().cpu(), c.reshape(1, 1).float().cpu(), [0]
    b = 0
    if diff is not None and r.ndim >= 2 and channel_dim != 0:
        b = int(diff.reshape(r.shape[0], -1).amax(1).argmax())
    rs, cs = (r[b], c[b]) if r.ndim >= 2 and channel_dim != 0 else (r, c)
    cdim = None if channel_dim is None else (channel_dim - 1 if r.ndim >= 2 and channel_dim != 0 else channel_dim)
    if cdim is None:
        rs, cs = rs.unsqueeze(0), cs.unsqueeze(0)
    else:
        rs, cs = rs.movedim(cdim, 0), cs.movedim(cdim, 0)
    k = rs.shape[0]
    if diff is not None:
        peak = (cs - rs).abs().reshape(k, -1).nan_to_num(nan=math.inf).amax(1)
        chosen = sorted(torch.argsort(peak, descending=True, stable=True)[:KEEP_CHANNELS].tolist())
        idx = torch.tensor(chosen, device=rs.device)
        rs, cs = rs.index_select(0, idx), cs.index_select(0, idx)
    else:
        chosen = list(range(min(k, KEEP_CHANNELS)))
        rs, cs = rs[: len(chosen)], cs[: len(chosen)]
    if rs.ndim > 3:  # volumes: the middle slice of each extra dimension
        for _ in range(rs.ndim - 3):
            rs, cs = rs.select(1, rs.shape[1] // 2), cs.select(1, cs.shape[1] // 2)
    steps = tuple(slice(None, None, max(1, math.ceil(s / KEEP_SIDE))) for s in rs.shape[1:])
    rs, cs = rs[(slice(None), *steps)], cs[(slice(None), *steps)]
    return _small_copy(rs), _small_copy(cs), chosen


def _small_copy(t: torch.Tensor) -> torch.Tensor:
    """A float32 CPU copy of a small strided view. numpy copies it in one thread: torch's copy
    of a [16, 56, 56] view is parallel and took 12 ms on a busy 2-core machine, numpy's 0.05 ms."""
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64, torch.float16):
        return torch.from_numpy(np.array(t.detach().numpy(), dtype=np.float32))
    return t.detach().to("cpu", torch.float32, copy=True)


# -- tolerances ------------------------------------------------------------------------------------

Tolerance = float | Mapping[str, float] | None


def _check_tolerance(value: Any, name: str) -> None:
    def ok(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < math.inf

    if value is None or ok(value):
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str) or not ok(v):
                raise TypeError(
                    f"{name} given per layer must map layer names or patterns (str) to finite numbers >= 0, "
                    f"got {k!r}: {v!r}"
                )
        return
    raise TypeError(
        f"{name} must be a finite number >= 0, a mapping of layer name or pattern to one, or None "
        f"(defaults by dtype); got {type(value).__name__}: {value!r}"
    )


def _lookup(value: Tolerance, names: Iterable[str]) -> float | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        return float(value)
    names = list(names)
    for pat, v in value.items():
        if any(fnmatch.fnmatchcase(n, pat) for n in names):
            return float(v)
    return None


def default_tolerances(*dtypes: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) for the least precise of ``dtypes`` (float32's for non-float dtypes)."""
    floats = [d for d in dtypes if d in _PRECISION]
    worst = min(floats, key=_PRECISION.__getitem__, default=torch.float32)
    return _DEFAULT_TOLERANCES[worst]


# -- running the two models ------------------------------------------------------------------------


def _model_place(model: nn.Module) -> tuple[torch.dtype | None, torch.device | None]:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype, t.device
    return None, None


def _cast(obj: Any, dtype: torch.dtype | None, device: torch.device | None) -> Any:
    """Floating tensors in ``obj`` cast to the model's dtype and device (others only moved)."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and dtype is not None:
            return obj.to(device=device, dtype=dtype)
        return obj if device is None else obj.to(device)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_cast(v, dtype, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast(v, dtype, device) for v in obj)
    if isinstance(obj, Mapping):
        return {k: _cast(v, dtype, device) for k, v in obj.items()}
    return obj


_NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)


def _copy(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` in its layout. CPU tensors are copied by numpy, whose large arrays get
    transparent huge pages: on a 24.5 MiB output 4-6 ms against 17-24 ms for ``clone``, most of
    which is page faults on fresh memory (measured on a busy 2-core machine)."""
    if t.device.type == "cpu" and t.dtype in _NUMPY_DTYPES and t.layout == torch.strided:
        return torch.from_numpy(np.array(t.detach().numpy(), order="K"))
    return t.detach().clone()


class _Held:
    """The tensors of one side, keyed by identity: a tensor seen again unchanged (same object,
    same version) is not copied again."""

    def __init__(self, max_memory: int | None) -> None:
        self._seen: dict[int, tuple[weakref.ref[torch.Tensor], int, torch.Tensor | None]] = {}
        self._max = max_memory
        self.bytes = {"device": 0, "cpu": 0}

    def keep(self, t: torch.Tensor) -> torch.Tensor | None:
        """A copy of ``t`` as it is now (None when over the memory budget)."""
        hit = self._seen.get(id(t))
        if hit is not None and hit[0]() is t and hit[1] == t._version:
            return hit[2]
        kept = self._budgeted_copy(t)
        self._seen[id(t)] = (weakref.ref(t), t._version, kept)
        return kept

    def forget(self) -> None:
        """The forward is over: no tensor can be seen again, and the copies must be held by
        their records only, so that each is freed once its record has been compared."""
        self._seen.clear()

    def _budgeted_copy(self, t: torch.Tensor) -> torch.Tensor | None:
        size = t.numel() * t.element_size()
        on_cpu = t.device.type == "cpu"
        if self._max is None or self.bytes["cpu" if on_cpu else "device"] + size <= self._max:
            self.bytes["cpu" if on_cpu else "device"] += size
            return _copy(t)
        if not on_cpu and self.bytes["cpu"] + size <= self._max:  # past the budget on the device
            self.bytes["cpu"] += size
            return t.to("cpu", copy=True)
        return None


@dataclass
class _Entry:
    rec: LayerCapture
    out: torch.Tensor
    inputs: list[torch.Tensor]
    order: int


def _tensors(args: Sequence[Any]) -> list[torch.Tensor]:
    return [a for a in args if isinstance(a, torch.Tensor)]


class _Comparison:
    """The state of one comparison: held reference records, rows, deferred candidate records."""

    def __init__(self, rtol: Tolerance, atol: Tolerance, max_memory: int | None) -> None:
        self.rtol, self.atol = rtol, atol
        self.inverse: dict[str, str] = {}
        self.mapped_refs: set[str] = set()  # reference names the mapping pairs explicitly
        self.ref: dict[str, _Entry] = {}
        self.ref_held = _Held(max_memory)
        self.skipped: list[str] = []
        self.rows: list[Row] = []
        self.deferred: dict[str, _Entry] = {}
        self.cand_held = _Held(None)  # only records that wait for the alignment are copied
        # the candidate's compared outputs, by identity: their verdict answers inputs_diverged
        self.verdicts: dict[int, tuple[weakref.ref[torch.Tensor], int, bool]] = {}
        self.cand_order = 0
        self.errors: list[Exception] = []

    # reference side
    def on_reference(self, rec: LayerCapture, t: torch.Tensor, args: tuple[Any, ...]) -> None:
        try:
            out = self.ref_held.keep(t)
            inputs = [self.ref_held.keep(a) for a in _tensors(args)]
            if out is None or any(i is None for i in inputs):
                self.skipped.append(rec.name)
                return
            self.ref[rec.name] = _Entry(rec, out, inputs, len(self.ref))  # type: ignore[arg-type]
        except Exception as e:  # raised after the forward: a hook never breaks it
            self.errors.append(e)

    # candidate side
    def on_candidate(self, rec: LayerCapture, t: torch.Tensor, args: tuple[Any, ...]) -> None:
        try:
            self.cand_order += 1
            mapped = self.inverse.get(rec.name)
            # a reference record that the mapping pairs with another candidate record is not
            # taken by name: mapping={"body.0": "body.1"} must not pair candidate body.0 with it
            taken = mapped is None and rec.name in self.mapped_refs
            entry = None if taken else self.ref.get(rec.name if mapped is None else mapped)
            # a name that is the same by chance (Sequential indices after an insertion) is left to
            # the structural alignment at the end: same name, type and shape is a match now
            if entry is not None and tuple(entry.out.shape) == tuple(t.shape) and (
                mapped is not None or entry.rec.module_type == rec.module_type
            ):
                del self.ref[entry.rec.name]
                self._row(entry, rec, t, _tensors(args), self.cand_order)
                return
            out = self.cand_held.keep(t)
            inputs = [self.cand_held.keep(a) for a in _tensors(args)]
            self.deferred[rec.name] = _Entry(rec, out, inputs, self.cand_order)  # type: ignore[arg-type]
        except Exception as e:
            self.errors.append(e)

    def _remember(self, t: torch.Tensor, diverged: bool) -> None:
        self.verdicts[id(t)] = (weakref.ref(t), t._version, diverged)

    def _verdict(self, t: torch.Tensor) -> bool | None:
        hit = self.verdicts.get(id(t))
        if hit is not None and hit[0]() is t and hit[1] == t._version:
            return hit[2]
        return None

    def _tolerances(self, ref: _Entry, cand_rec: LayerCapture, cand: torch.Tensor) -> tuple[float, float, bool]:
        names = (ref.rec.name, ref.rec.module_name, cand_rec.name, cand_rec.module_name)
        d_rtol, d_atol = default_tolerances(ref.out.dtype, cand.dtype)
        rtol, atol = _lookup(self.rtol, names), _lookup(self.atol, names)
        return (d_rtol if rtol is None else rtol), (d_atol if atol is None else atol), atol is None

    def _row(self, ref: _Entry, cand_rec: LayerCapture, cand: torch.Tensor, inputs: list[torch.Tensor], order: int) -> None:
        rtol, atol, scaled = self._tolerances(ref, cand_rec, cand)
        res = compare_tensors(ref.out, cand, ref.rec.channel_dim, rtol, atol, scale_atol=scaled, keep=True)
        # known before the inputs are looked at: a module that wrote its input in place
        # (ReLU(inplace=True)) has it as its output
        self._remember(cand, res.mismatched > 0 or bool(res.note))
        row = Row(
            ref.rec.name, cand_rec.name, res.max_abs, res.max_rel, res.mismatched, res.channels,
            self._inputs_diverged(ref.inputs, inputs, rtol, atol, scaled), rtol, res.atol, tuple(ref.out.shape),
            res.note, res.worst, order, res.maps,
        )
        self.rows.append(row)

    def _inputs_diverged(
        self, ref: list[torch.Tensor], cand: list[torch.Tensor], rtol: float, atol: float, scaled: bool
    ) -> bool | None:
        if not ref and not cand:
            return None
        if len(ref) != len(cand):
            return True
        for r, c in zip(ref, cand):
            known = self._verdict(c)
            if known is None:
                known = compare_tensors(r, c, None, rtol, atol, scale_atol=scaled).mismatched > 0
            if known:
                return True
        return False

    def finish(self) -> tuple[list[str], list[str]]:
        """Align what is left on both sides structurally, compare those pairs; returns the
        records found on one side only."""
        left_ref = sorted(self.ref.values(), key=lambda e: e.order)
        left_cand = sorted(self.deferred.values(), key=lambda e: e.order)
        entries = {}
        for side, items in (("r", left_ref), ("c", left_cand)):
            for e in items:
                entry = _baselines.layer_entry(e.rec, stats=False)
                entry["dtype"] = ""  # fp32 against bf16 is the same layer
                entry["shape"] = [None, *e.out.shape[1:]] if e.out.ndim else []
                entries[(side, e.rec.name)] = entry
        aligned = _baselines._align(
            [entries[("r", e.rec.name)] for e in left_ref], [entries[("c", e.rec.name)] for e in left_cand]
        )
        for x, y in aligned.matched:
            ref, cand = self.ref.pop(x["name"]), self.deferred.pop(y["name"])
            self._row(ref, cand.rec, cand.out, cand.inputs, cand.order)
        self.rows.sort(key=lambda r: r._order)
        return list(self.ref), list(self.deferred)


def _check_mapping(mapping: Any) -> None:
    if mapping is None or callable(mapping):
        return
    if isinstance(mapping, Mapping):
        for k, v in mapping.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"mapping must map reference record names (str) to candidate record names (str), got {k!r}: {v!r}")
        return
    raise TypeError(
        "mapping must be a dict {'reference.name': 'candidate.name'}, a callable taking a reference "
        f"record name and returning the candidate's (or None), or None; got {type(mapping).__name__}"
    )


def _inverse(mapping: Any, names: Iterable[str]) -> dict[str, str]:
    """candidate name -> reference name."""
    if mapping is None:
        return {}
    if isinstance(mapping, Mapping):
        return {v: k for k, v in mapping.items()}
    out = {}
    for name in names:
        other = mapping(name)
        if other is not None:
            if not isinstance(other, str):
                raise TypeError(f"mapping({name!r}) must return a candidate record name (str) or None, got {type(other).__name__}: {other!r}")
            out[other] = name
    return out


def compare(
    reference: nn.Module,
    candidate: nn.Module,
    *args: Any,
    layers: Any = None,
    rtol: Tolerance = None,
    atol: Tolerance = None,
    mapping: Mapping[str, str] | Callable[[str], str | None] | None = None,
    ops: bool = True,
    max_memory: int | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Diff:
    """Run both models on the same inputs and compare every aligned record element-wise.

    Args:
        reference: the model that is right (``nn.Module``; wrappers as for :func:`capture`).
        candidate: the model that should compute the same (refactored, ported, compiled,
            quantised, bf16, channels_last, on another device). A ``torch.compile`` wrapper is
            run itself: records that its compiled code does not let run are listed in
            ``Diff.only_reference``.
        *args, **kwargs: the inputs; floating tensors are cast to each model's dtype and device.
        layers: which records to compare (selectors as for :func:`capture`), applied to both
            models; with a ``mapping`` the candidate's names differ, so all its records are
            seen and those without a counterpart listed. Default every leaf module and
            operation.
        rtol, atol: tolerances, a number or ``{layer name or pattern: number}``. By default they
            follow the less precise dtype of each pair (float32: 1e-4 and 1e-5; bfloat16: 5e-2
            and 1e-2; float16: 1e-2 and 1e-3; float64: 1e-7 and 1e-7), and the default atol is
            multiplied by the layer's largest |value| where that exceeds 1. Given numbers apply
            as given.
        mapping: reference record name -> candidate record name, as a dict or a callable
            (returning None for no counterpart), for records whose names differ; names are
            matched as they are otherwise, and what is left is aligned structurally.
        ops: compare operation records too (``F.relu``, ``out += identity``), as in capture.
        max_memory: bytes the held reference copies may take on the reference's device; past it
            copies go to the CPU (for an accelerator), and past the same amount there records
            are not compared and are listed in ``Diff.skipped``. Default: no limit (a full
            comparison holds a copy of every selected output of the reference, see the module
            docstring).
        forward_kwargs: model keyword arguments whose names collide with compare's own.

    Returns:
        A :class:`Diff`: ``rows`` (every pair), ``first`` (the first diverging pair).

    Example:
        >>> diff = featcheck.compare(model, torch.compile(copy.deepcopy(model)), x)
        >>> diff.first  # None: they agree
    """
    for name, value in (("reference", reference), ("candidate", candidate)):
        if not isinstance(value, nn.Module):
            raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    if reference is candidate:
        raise ValueError(
            "reference and candidate are the same model object: comparing it with itself proves "
            "nothing. Compare with a copy (copy.deepcopy(model)) or the other implementation."
        )
    _check_tolerance(rtol, "rtol")
    _check_tolerance(atol, "atol")
    _check_mapping(mapping)
    if max_memory is not None and (isinstance(max_memory, bool) or not isinstance(max_memory, int) or max_memory < 0):
        raise TypeError(f"max_memory must be a number of bytes (int >= 0) or None, got {max_memory!r}")
    ref_eager, ref_note = unwrap(reference)
    cand_eager, cand_note = unwrap(candidate)
    if ref_eager is cand_eager:
        raise ValueError("reference and candidate wrap the same module: compare it with a copy (copy.deepcopy(model)).")
    state = _Comparison(rtol, atol, max_memory)
    with torch.no_grad():
        r_dtype, r_device = _model_place(ref_eager)
        ref_cap = capture(
            reference, *_cast(args, r_dtype, r_device), layers=layers, keep_samples=False, ops=ops,
            forward_kwargs=forward_kwargs, _on_output=torch.compiler.disable(state.on_reference),
            **_cast(kwargs, r_dtype, r_device),
        )
        if state.errors:
            raise state.errors[0]
        state.ref_held.forget()
        state.inverse = _inverse(mapping, ref_cap.names)
        state.mapped_refs = set(state.inverse.values())
        del ref_cap  # it holds the reference's output: only the copies are needed now
        c_dtype, c_device = _model_place(cand_eager)
        # with a mapping the candidate's names differ: all its records are seen and aligned
        try:
            capture(
                candidate, *_cast(args, c_dtype, c_device), layers=layers if mapping is None else None, keep_samples=False, ops=ops,
                forward_kwargs=forward_kwargs, _on_output=torch.compiler.disable(state.on_candidate),
                **_cast(kwargs, c_dtype, c_device),
            )
        except Exception as e:
            if "torch.compile" in cand_note and type(e).__module__.startswith("torch._dynamo"):
                raise RuntimeError(
                    "the candidate's torch.compile wrapper could not run with featcheck's hooks "
                    f"({type(e).__name__}): they break its graph, which torch.compile(fullgraph=True) "
                    "forbids. Compare a torch.compile(...) of the model without fullgraph=True, or its "
                    "eager module (candidate._orig_mod)."
                ) from e
            raise
        if state.errors:
            raise state.errors[0]
        state.cand_held.forget()
        only_ref, only_cand = state.finish()
    notes = []
    if "torch.compile" in cand_note:
        notes.append(
            "candidate: the torch.compile wrapper was run"
            + (f"; its compiled code let {len(only_ref)} reference record(s) go unseen" if only_ref else "")
        )
    if ref_note:
        notes.append(f"reference: {ref_note}")
    return Diff(
        state.rows, only_ref, only_cand, state.skipped,
        type(ref_eager).__name__, type(cand_eager).__name__, "; ".join(notes),
    )


# -- the assertion ---------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.3g}"


def _channels(idx: Sequence[int], n: int = 6) -> str:
    shown = ", ".join(str(i) for i in idx[:n])
    return f"[{shown}{', ...' if len(idx) > n else ''}]" if idx else "-"


def render(diff: Diff) -> str:
    """The failure table: diverging pairs in call order, first diverging pair first."""
    bad = diff.diverged
    header = ("layer", "candidate", "max abs", "max rel", "mismatched", "inputs diverged", "worst channels")
    rows = []
    for r in bad[:_SHOW_ROWS]:
        inputs = "-" if r.inputs_diverged is None else ("yes" if r.inputs_diverged else "no")
        rows.append((
            r.reference or "(root)", r.candidate if r.candidate != r.reference else "=",
            _fmt(r.max_abs), _fmt(r.max_rel), r.note or f"{r.mismatched:.2%}", inputs, _channels(r.worst_channels),
        ))
    widths = [max(len(x[i]) for x in [header, *rows]) for i in range(len(header))]
    lines = [
        f"{diff.candidate_name} does not compute the same as {diff.reference_name}: "
        f"{len(bad)} of {len(diff.rows)} compared records diverge"
    ]
    first = bad[0]
    where = (
        "its inputs already differed: the difference comes from before it (glue code between records, or a record not compared)"
        if first.inputs_diverged
        else "its inputs agreed: the difference starts inside it"
    )
    lines.append(f"first diverging: {first.reference}" + (f" (candidate {first.candidate})" if first.candidate != first.reference else "") + f"; {where}")
    lines += ["  ".join(c.ljust(w) for c, w in zip(x, widths)).rstrip() for x in [header, *rows]]
    if len(bad) > _SHOW_ROWS:
        lines.append(f"... and {len(bad) - _SHOW_ROWS} more diverging records")
    lines.append(f"tolerances: |candidate - reference| <= atol + rtol * |reference| (first: rtol={first.rtol:g}, atol={first.atol:g})")
    lines += _side_notes(diff)
    return "\n".join(lines)


def _side_notes(diff: Diff) -> list[str]:
    out = []
    for what, names in (
        ("only in the reference (not compared)", diff.only_reference),
        ("only in the candidate (not compared)", diff.only_candidate),
        ("skipped, over max_memory", diff.skipped),
    ):
        if names:
            shown = ", ".join(n or "(root)" for n in names[:8])
            out.append(f"{what}: {shown}" + (f", ... ({len(names)} in all)" if len(names) > 8 else ""))
    if diff.note:
        out.append(diff.note)
    return out


def assert_same_activations(
    reference: nn.Module,
    candidate: nn.Module,
    *args: Any,
    rtol: Tolerance = None,
    atol: Tolerance = None,
    mapping: Mapping[str, str] | Callable[[str], str | None] | None = None,
    **kwargs: Any,
) -> Diff:
    """Fail, with one table, where ``candidate`` stops computing what ``reference`` computes.

    Arguments as for :func:`compare` (``layers``, ``ops``, ``max_memory`` and
    ``forward_kwargs`` pass through ``kwargs``). The table lists diverging records in call order,
    the first one first, with whether its inputs had already diverged and the worst channels.
    With ``--featcheck`` the report shows :func:`featcheck.diff_grid` pictures of the first
    diverging records. Returns the :class:`Diff` when they agree.
    """
    __tracebackhide__ = True
    diff = compare(reference, candidate, *args, rtol=rtol, atol=atol, mapping=mapping, **kwargs)
    if not diff.rows:
        raise FeatcheckAssertionError(
            "assert_same_activations: no record of the reference has a counterpart in the candidate, "
            "so nothing was compared; give mapping= for records whose names differ.\n" + "\n".join(_side_notes(diff))
        )
    if diff.first is not None:
        flagged: list[tuple[Any, list[int], str]] = [
            (_RowPicture(diff, row), row.channels, "same activations") for row in diff.diverged[:_PICTURES]
        ]
        raise FeatcheckAssertionError(render(diff), flagged)
    return diff


class _RowPicture:
    """A diverging pair as the report draws it (``diff_grid``), in place of a LayerCapture."""

    def __init__(self, diff: Diff, row: Row) -> None:
        self.name = row.reference
        self._diff = diff
        self._row = row

    def draw(self) -> tuple[Any, list[tuple[str, str]]]:
        """The picture and the figures beside it."""
        from ._render._diff import diff_grid

        r = self._row
        table = [
            ("candidate", r.candidate),
            ("shape", "x".join(map(str, r.shape))),
            ("max abs / rel", f"{_fmt(r.max_abs)} / {_fmt(r.max_rel)}"),
            ("mismatched", r.note or f"{r.mismatched:.2%}"),
            ("inputs diverged", "-" if r.inputs_diverged is None else ("yes" if r.inputs_diverged else "no")),
            ("channels", _channels(r.channels, 8)),
            ("rtol / atol", f"{r.rtol:g} / {r.atol:g}"),
        ]
        return diff_grid(self._diff, r.reference), table
