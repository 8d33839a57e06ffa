"""Checks of the backward pass.

They read what :func:`featcheck.capture` with ``backward=`` (or :func:`featcheck.watch` over a
training step) recorded: the gradient record of each layer (``LayerCapture.grad``, a
LayerCapture of d(loss)/d(output)) and ``Capture.param_grads``. They fail the way the forward
checks do (one table, every offending layer, ``__tracebackhide__``), and a failure carries the
capture, so that with ``--featcheck`` the report attaches its gradient-flow picture.

``assert_batch_independent`` runs the model itself: a backward pass per chosen sample finds
whether samples mix, and two forward captures find where.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _checks, _grads, _selection, _verdicts
from ._errors import FeatcheckAssertionError

__all__ = [
    "assert_batch_independent",
    "assert_gradients_finite",
    "assert_gradients_flow",
    "assert_no_dead_gradients",
    "assert_params_receive_grad",
]

_CAUSES = (
    "Usual causes: a tensor .detach()ed (or taken through .data, .item() or numpy) between these "
    "parameters and the loss; a torch.no_grad() region in forward; a branch whose output the loss "
    "never uses; requires_grad=False left on by freezing code. Declare parameters that are meant "
    "to be frozen with frozen=['backbone.*']."
)


def _failure(
    message: str, flagged: list[tuple[Any, list[int], str]], capture: Any, zones: tuple[float, float] = (1e-4, 1e4)
) -> FeatcheckAssertionError:
    """A failed gradient check; the report draws its ``capture`` as a gradient-flow picture,
    with the check's vanishing and exploding ``zones``."""
    err = FeatcheckAssertionError(message, flagged)
    err.capture = capture  # type: ignore[attr-defined]
    err.zones = zones  # type: ignore[attr-defined]
    return err


def _capture_with_grads(cap: Any, check: str) -> Any:
    """``cap`` if it is a Capture that recorded a backward pass; otherwise a clear failure."""
    __tracebackhide__ = True
    from ._records import Capture

    if not isinstance(cap, Capture):
        raise TypeError(
            f"{check} expects a featcheck Capture with gradients (featcheck.capture(model, x, "
            f"backward=...) or featcheck.watch over a backward pass), got {type(cap).__name__}"
        )
    grads = cap._rec.grads
    if grads is None or (not grads.backwards and not grads.param_grads):
        how = (
            "no backward pass ran in the watch block"
            if grads is not None and grads.watching
            else "it was captured without backward= (featcheck.capture(model, x, backward=lambda out: loss))"
        )
        _checks._nothing(cap, check, f"the capture holds no gradients: {how}")
    return cap


def _backward_order(cap: Any) -> list[Any]:
    """Records with a gradient, in the order their gradient first arrived (closest to the loss
    first)."""
    records = cap._rec.records
    return [records[n] for n in cap._rec.grads.order if n in records and records[n].grad is not None]


def _selected_with_grads(cap: Any, layers: Any, check: str) -> tuple[list[Any], list[str]]:
    """Selected records that have a gradient record, and notes for those that have none."""
    __tracebackhide__ = True
    records = _checks._records(cap, layers, check)
    with_grad = [lc for lc in records if lc.grad is not None]
    notes = []
    if layers is not None:
        without = [lc for lc in records if lc.grad is None]
        notes = [f"Note: {lc.name or '(root)'} has no gradient: {lc.grad_note}" for lc in without[:5]]
    if not with_grad:
        _checks._nothing(cap, check, "no selected record has a gradient" + (f" ({notes[0][6:]})" if notes else ""))
    return with_grad, notes


def _fail(title: str, offences: _checks._Offences, cap: Any, notes: Sequence[str] = (), zones: tuple[float, float] = (1e-4, 1e4)) -> None:
    __tracebackhide__ = True
    text = f"{title}\n{_checks._table(offences.rows)}"
    for note in notes:
        text += f"\n{note}"
    raise _failure(text, offences.flagged, cap, zones)


def _ratio(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def assert_gradients_flow(cap: Any, min_ratio: float = 1e-4, max_ratio: float = 1e4, *, layers: Any = None) -> None:
    """Fail if a layer's gradient vanishes or explodes relative to the loss end.

    A layer's gradient scale is the RMS of d(loss)/d(output) over every value seen (from its
    ``grad_stats``); its ratio is that scale over the scale of the record closest to the loss
    (the first in backward order). Below ``min_ratio`` is vanishing, above ``max_ratio`` is
    exploding; the table lists every offending layer.

    Args:
        cap: a Capture with gradients.
        min_ratio: the smallest allowed ratio.
        max_ratio: the largest allowed ratio.
        layers: which records to judge (default all with a gradient); the reference is always
            the record closest to the loss.
    """
    __tracebackhide__ = True
    lo, hi = _ratio(min_ratio, "min_ratio"), _ratio(max_ratio, "max_ratio")
    if not lo < hi:
        raise ValueError(f"min_ratio must be below max_ratio, got min_ratio={min_ratio!r}, max_ratio={max_ratio!r}")
    _capture_with_grads(cap, "assert_gradients_flow")
    records, notes = _selected_with_grads(cap, layers, "assert_gradients_flow")
    order = _backward_order(cap)
    ref = order[0]
    ref_scale = _grads.rms(ref.grad.stats)
    if not ref_scale > 0 or not math.isfinite(ref_scale):
        found = _checks._Offences("gradient flow")
        found.add(ref.grad, "a finite, non-zero gradient", f"RMS {ref_scale:.3g}")
        _fail(
            f"the gradient at the loss end ({ref.name!r}, the first record in backward order) is "
            f"{'zero' if ref_scale == 0 else 'not finite'}: no ratio can be judged against it",
            found, cap, notes, (lo, hi),
        )
    found = _checks._Offences("gradient flow")
    vanishing = exploding = 0
    for lc in records:
        scale = _grads.rms(lc.grad.stats)
        if math.isnan(scale):
            continue  # no finite value: assert_gradients_finite's verdict
        r = scale / ref_scale
        if lo <= r <= hi:
            continue
        kind = "vanishing" if r < lo else "exploding"
        vanishing += kind == "vanishing"
        exploding += kind == "exploding"
        found.add(lc.grad, f"ratio in [{lo:g}, {hi:g}]", f"RMS {scale:.3g}, ratio {r:.3g}: {kind}")
    if found:
        found.flagged.clear()  # the gradient-flow picture shows them all; per-layer grids would not help
        _fail(
            f"gradients vanish in {_checks._layers(vanishing)} and explode in {_checks._layers(exploding)} of "
            f"{len(records)} (ratio = gradient RMS / RMS at {ref.name!r}, the record closest to the loss: "
            f"{ref_scale:.3g})",
            found, cap, notes, (lo, hi),
        )


def assert_gradients_finite(cap: Any, layers: Any = None) -> None:
    """Fail if any gradient is NaN or Inf: names the first record in backward order (the one
    closest to the loss, where the bad value entered) and the parameters whose gradients have
    non-finite values."""
    __tracebackhide__ = True
    _capture_with_grads(cap, "assert_gradients_finite")
    selected = {lc.name for lc in _checks._records(cap, layers, "assert_gradients_finite")}
    found = _checks._Offences("non-finite gradient")
    order = _backward_order(cap)
    entered = ""
    for k, lc in enumerate(order):
        if lc.name not in selected:
            continue
        bad = np.flatnonzero(lc.grad.stats["nonfinite"] > 0).tolist()
        if bad:
            if not found and k and not order[k - 1].grad.stats["nonfinite"].any():
                entered = (f"NaN/Inf entered between {order[k - 1].name!r} and {lc.name!r} (its gradient "
                           f"is finite, the next in backward order is not): look at what {order[k - 1].name!r} "
                           "computes from it, custom autograd Functions included")
            found.add(lc.grad, "finite", f"{int(lc.grad.stats['nonfinite'].sum())} NaN/Inf values", bad)
    del found.flagged[1:]  # where the bad values entered; the gradient-flow picture marks the rest
    params = [(n, s) for n, s in cap.param_grads.items() if s["received"] and s["nonfinite"]]
    if found or params:
        lines = [entered] if entered else []
        if params:
            lines.append("parameters with non-finite gradients: " + ", ".join(f"{n} ({s['nonfinite']} of {s['numel']})" for n, s in params[:10])
                         + (f", ... ({len(params)} in all)" if len(params) > 10 else ""))
        first = f"the first in backward order (closest to the loss) is {found.rows[0][0]!r}" if found else "no layer's gradient"
        _fail(
            f"non-finite gradients in {_checks._layers(len(found))} and {len(params)} parameter(s); {first}",
            found, cap, lines,
        )


def assert_no_dead_gradients(cap: Any, layers: Any = None, max_fraction: float | None = None) -> None:
    """Fail if a layer has channels whose gradient is exactly zero for every sample and position:
    the training-time view of a dead ReLU (nothing flows back through those channels).

    Args:
        cap: a Capture with gradients.
        layers: which records (default every record with a gradient).
        max_fraction: share of dead-gradient channels a layer may have (ini
            ``featcheck_max_dead_fraction``, default 0).
    """
    __tracebackhide__ = True
    allowed = _verdicts.fraction(max_fraction, "max_dead_fraction")
    _capture_with_grads(cap, "assert_no_dead_gradients")
    records, notes = _selected_with_grads(cap, layers, "assert_no_dead_gradients")
    found = _checks._Offences("dead gradient")
    for lc in records:
        st = lc.grad.stats
        dead = np.flatnonzero((st["count"] > 0) & (st["zero_fraction"] == 1)).tolist()
        if dead and len(dead) / lc.channels > allowed:
            found.add(lc.grad, f"<= {allowed:.0%} channels with zero gradient",
                      f"{len(dead)}/{lc.channels} with zero gradient everywhere", dead)
    if found:
        _fail(f"dead gradients in {len(found)} of {_checks._layers(len(records))} (a channel whose "
              "gradient is exactly 0 for every sample and position never learns)", found, cap, notes)


def _frozen_patterns(frozen: Any, names: list[str]) -> list[str]:
    if frozen is None:
        return []
    patterns = [frozen] if isinstance(frozen, str) else frozen
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            "frozen must be a parameter name or pattern, or a list of them (e.g. frozen=['backbone.*']); "
            f"got {type(frozen).__name__}: {frozen!r}"
        )
    for p in patterns:
        if not any(fnmatch.fnmatchcase(n, p) for n in names):
            raise _selection.not_found(p, names, "the model's parameters (frozen=)")
    return list(patterns)


def assert_params_receive_grad(cap: Any, frozen: Any = None) -> None:
    """Fail unless every trainable parameter got a non-zero gradient.

    Every parameter not declared frozen must have received a gradient that is not all zero;
    parameters with ``requires_grad=False`` are listed too (reported as such). Parameters
    declared frozen (names or patterns, ``frozen=["backbone.*"]``) must receive none, and fail if
    they do. The table is grouped by module. In a watch, the parameters are those the
    optimizer steps seen in the block update.
    """
    __tracebackhide__ = True
    _capture_with_grads(cap, "assert_params_receive_grad")
    summaries = cap.param_grads
    if not summaries:
        _checks._nothing(cap, "assert_params_receive_grad", "no parameter gradients were recorded (a watch block without an optimizer step?)")
    patterns = _frozen_patterns(frozen, list(summaries))
    rows: list[tuple[str, str, str]] = []
    for name, s in summaries.items():
        is_frozen = any(fnmatch.fnmatchcase(name, p) for p in patterns)
        got = s["received"] and (not s["numel"] or s["zero_fraction"] < 1 or s["nonfinite"])
        if is_frozen:
            if got:
                rows.append((name, "frozen: no gradient", f"received one (norm {s['norm']:.3g})"))
        elif not s["requires_grad"]:
            rows.append((name, "a non-zero gradient", "requires_grad=False"))
        elif not s["received"]:
            rows.append((name, "a non-zero gradient", "no gradient (None)"))
        elif not got:
            rows.append((name, "a non-zero gradient", "gradient all zero"))
    if rows:
        by_module: dict[str, list[tuple[str, str, str]]] = {}
        for row in rows:
            by_module.setdefault(row[0].rpartition(".")[0] or "(root)", []).append(row)
        header = ("module", "parameter", "expected", "found")
        table = [(m if k == 0 else "", p.rpartition(".")[2], e, f) for m, group in by_module.items() for k, (p, e, f) in enumerate(group)]
        widths = [max(len(r[i]) for r in [header, *table]) for i in range(4)]
        text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *table])
        frozen_fail = sum(1 for r in rows if r[1].startswith("frozen"))
        message = (
            f"{len(rows) - frozen_fail} of {len(summaries)} parameters got no non-zero gradient"
            + (f" and {frozen_fail} declared frozen got one" if frozen_fail else "")
            + f" ({len(by_module)} module{'s' if len(by_module) != 1 else ''})\n{text}\n{_CAUSES}"
        )
        raise _failure(message, [], cap)


def _check_samples(samples: Any, n: int) -> list[int]:
    if samples is None:
        return sorted({0, n // 2, n - 1})
    if not isinstance(samples, (list, tuple)) or not samples or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in samples
    ):
        raise TypeError(f"samples must be a non-empty list of batch indices (ints), got {samples!r}")
    bad = [i for i in samples if not -n <= i < n]
    if bad:
        raise ValueError(f"samples {bad} are outside the batch of {n}")
    return sorted({i % n for i in samples})


def _first_tensor(out: Any) -> Any:
    import torch
    from torch.utils import _pytree

    for leaf in _pytree.tree_leaves(out):
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
            return leaf
    raise TypeError(f"the model's output holds no floating-point tensor to differentiate (got {type(out).__name__})")


def _projection(i: int) -> Any:
    """The loss of sample ``i``: a fixed random projection of its output (a plain sum can be
    exactly zero through a softmax and hide the mixing)."""
    import torch

    def loss(out: Any) -> Any:
        y = _first_tensor(out)[i]
        gen = torch.Generator().manual_seed(1234)
        weights = torch.randn(y.shape, generator=gen, dtype=torch.float32).to(y.device, y.dtype)
        return (y * weights).sum()

    return loss


def assert_batch_independent(model: Any, x: Any, *, samples: Sequence[int] | None = None, atol: float = 0.0, train: bool = False) -> None:
    """Fail if sample i's output depends on another sample's input.

    For each chosen sample i (default the first, middle and last) a fixed random projection of
    sample i's output alone is back-propagated to the input; any other sample whose input gets
    a gradient above ``atol`` (exactly zero by default) mixes with i. The failure names the
    samples, then the first record where they mix, found forward: the first record whose output
    for sample i changes when only sample j's input is perturbed (back-propagation can only find
    the last mixing point). Catches a ``view``/``transpose`` across the batch axis, and
    BatchNorm in train mode (it normalises with the batch's own statistics).

    The model runs through :func:`featcheck.capture` and is left as found.

    Args:
        model: the model.
        x: a floating-point input batch ``[N, ...]`` with N >= 2.
        samples: the batch indices i to test.
        atol: the largest |gradient| another sample's input may receive.
        train: run in train mode (default eval, as capture does).
    """
    __tracebackhide__ = True
    import torch

    from ._capture import capture

    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1:
        raise TypeError(
            "x must be a floating-point input batch [N, ...] (gradients flow back to it); got "
            + (f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__)
        )
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"x must hold at least 2 samples to test whether they mix, got a batch of {n}")
    chosen = _check_samples(samples, n)
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not 0 <= atol < math.inf:
        raise ValueError(f"atol must be a finite number >= 0, got {atol!r}")
    rows: list[tuple[str, str, str]] = []
    pairs: list[tuple[int, int]] = []
    for i in chosen:
        cap = capture(model, x, layers=lambda name, module: False, ops=False, keep_samples=False,
                      train=train, backward=_projection(i), input_grad=True)
        g = cap._rec.grads.inputs[0]
        if g is None:
            continue
        per_sample = g.detach().reshape(n, -1).abs().amax(dim=1).double().cpu()
        per_sample[i] = 0.0
        mixed = torch.nonzero(per_sample > atol).flatten().tolist()
        if mixed:
            pairs.append((i, mixed[0]))
            shown = ", ".join(map(str, mixed[:8])) + (f", ... ({len(mixed)} in all)" if len(mixed) > 8 else "")
            rows.append((str(i), f"[{shown}]", f"{float(per_sample.max()):.3g}"))
    if not rows:
        return
    header = ("sample i", "inputs it depends on", "max |d out_i / d x_j|")
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(3)]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])
    where, flagged, why = _locate(model, x, *pairs[0], train)
    raise FeatcheckAssertionError(
        f"samples mix across the batch: the output of {_checks._layers(len(rows)).replace('layer', 'sample')} of "
        f"{len(chosen)} tested depends on other samples' inputs (|gradient| > {atol:g})\n{table}\n{where}"
        + (f"\n{why}" if why else ""),
        flagged,
    )


def _locate(model: Any, x: Any, i: int, j: int, train: bool) -> tuple[str, list[tuple[Any, list[int], str]], str]:
    """The first record whose output for sample i changes when only sample j's input changes."""
    import torch
    from torch import nn

    from ._capture import capture, unwrap

    order = [i, *[k for k in range(x.shape[0]) if k != i]]  # sample i first: records keep sample 0
    base = x[order]
    moved = base.clone()
    jj = order.index(j)
    gen = torch.Generator().manual_seed(4321)
    noise = torch.randn(moved[jj].shape, generator=gen, dtype=torch.float32).to(moved.device, moved.dtype)
    moved[jj] += noise * (float(x.detach().std()) or 1.0)
    a = capture(model, base, train=train)
    b = capture(model, moved, train=train)
    bn_train = train and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in unwrap(model)[0].modules())
    why = (
        "BatchNorm in train mode normalises each channel with the statistics of the whole batch, "
        "so every sample's output depends on every other sample's input; in eval mode it uses its "
        "running statistics. Test with train=False, or use GroupNorm / LayerNorm where samples "
        "must stay independent."
        if bn_train else ""
    )
    for name in a.names:
        la, lb = a[name], b.get(name)
        if lb is None or la.sample is None or lb.sample is None:
            continue
        if la.sample.shape != lb.sample.shape or not torch.equal(la.sample, lb.sample):
            kind = f" ({la.module_type})"
            if isinstance(la.module, nn.modules.batchnorm._BatchNorm) and train:
                kind += ": a BatchNorm in train mode"
            return (
                f"first record where sample {i} mixes with sample {j} (forward, with sample {i} "
                f"moved first in the batch): {name!r}{kind}",
                [(la, [], "batch mixing")],
                why,
            )
    return (f"no recorded layer's output for sample {i} changed when sample {j}'s input did (the mixing "
            "happens in code featcheck does not record, or only in positions its sample leaves out)", [], why)
