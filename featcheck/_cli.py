"""The ``featcheck`` command (also ``python -m featcheck``): a report on any model without a test.

``featcheck inspect SPEC --input 2x3x224x224`` builds the model (see :mod:`._cli_load` for SPEC
and the inputs), captures one forward pass, runs every check that needs no expectation (finite
values, dead channels, saturation where bounds are known) with its defaults, draws the flagged
layers and then the others up to a cap, and writes the same standalone gallery and
``summary.json`` that ``pytest --featcheck`` writes (:func:`featcheck._report.write_gallery`).
``featcheck diff A.json B.json`` (or ``A.json SPEC``) prints the architecture diff of two
baselines, or of a baseline and a model, as ``check_baseline`` does.

Exit status: 0 when every check passes (``diff``: no difference), 1 when one fails (``diff``: a
difference), 2 on bad usage (one line on stderr, never a traceback), 3 when featcheck itself
fails (with its traceback, like pytest's internal errors).

Subcommands live in one table, :data:`_COMMANDS`: each has a help line, a function that adds its
arguments and a function that runs it. Options shared by every command that builds a model are
added by :func:`_model_options`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import sys
import traceback
import warnings
import webbrowser
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ._cli_load import CLIError, _first_line

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
DEFAULT_OUT = "featcheck-report"
DEFAULT_MAX_PICTURES = 64
DEFAULT_COMPARE_PICTURES = 8


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (through :class:`CLIError`), like every other."""

    def error(self, message: str) -> Any:  # argparse's signature says NoReturn
        raise CLIError(f"{message} (see {self.prog} --help)")


class _Progress:
    """One self-overwriting status line on stderr, only when stderr is a terminal: CI logs and
    pipes get none of it."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.on = stream.isatty()
        self.shown = False

    def __call__(self, text: str) -> None:
        if self.on:
            self.stream.write(f"\r\033[K{text}")
            self.stream.flush()
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


# -- arguments ------------------------------------------------------------------------------------


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 such as 1e-4, got {text!r}") from None
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0 such as 1e-4, got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _model_options(parser: argparse.ArgumentParser, backward: bool = False) -> None:
    """Options of every command that builds and runs a model (inspect, compare, diff against a
    SPEC); ``backward`` adds ``--backward``, for the commands that can run a backward pass."""
    model = parser.add_argument_group("model")
    model.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                       help="keyword argument for the SPEC's callable (a Python literal or a string); repeatable")
    model.add_argument("--weights", metavar="FILE",
                       help="state dict loaded into the model with torch.load(weights_only=True)")
    model.add_argument("--trust-pickle", action="store_true",
                       help="allow SPEC to be a pickled whole model (.pt): unpickling runs code from the file")
    inputs = parser.add_argument_group("input (exactly one)")
    inputs.add_argument("--input", metavar="SHAPE|FILE.pt",
                        help="a random batch of this shape (2x3x224x224; normal, seed 0) or a tensor saved with torch.save")
    inputs.add_argument("--image", nargs="+", action="extend", default=[], metavar="FILE",
                        help="one or several images, resized and centre-cropped, ImageNet-normalised")
    inputs.add_argument("--image-size", type=_positive, default=224, metavar="PX",
                        help="side of the square the images are cropped to (default 224)")
    inputs.add_argument("--tokens", metavar="[BATCHx]LENGTH",
                        help="random token ids in the range of the model's first nn.Embedding (batch 2 unless given)")
    run = parser.add_argument_group("capture")
    run.add_argument("--layers", nargs="+", action="extend", metavar="PATTERN",
                     help="layer names or fnmatch patterns, as capture's layers= (default every leaf module and operation)")
    run.add_argument("--ops", action=argparse.BooleanOptionalAction, default=True,
                     help="record the torch operations module code calls (default on)")
    run.add_argument("--calibrate", type=_positive, metavar="N",
                     help="set BatchNorm running statistics from N random batches of the input's shape first")
    if backward:
        run.add_argument("--backward", action="store_true",
                         help="also run a backward pass of a default loss and check the gradients: "
                              "out.logsumexp(-1).mean() for a [batch, classes] output, out.float().pow(2).mean() otherwise")


_SPEC_HELP = "torchvision:NAME, timm:NAME, package.module:callable, path/to/file.py:callable, or model.pt"


def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC", help=_SPEC_HELP)
    _model_options(parser, backward=True)
    _report_options(parser)


def _compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec_a", metavar="SPEC_A", help=f"the reference model: {_SPEC_HELP}")
    parser.add_argument("spec_b", metavar="SPEC_B", help="the candidate model, which should compute the same")
    _model_options(parser)
    pairs = parser.add_argument_group("comparison")
    pairs.add_argument("--mapping", action="append", default=[], metavar="OLD=NEW",
                       help="SPEC_A's record OLD is SPEC_B's record NEW (for names that differ); repeatable")
    pairs.add_argument("--rtol", type=_tolerance, metavar="X",
                       help="relative tolerance (default by dtype: float32 1e-4, bfloat16 5e-2)")
    pairs.add_argument("--atol", type=_tolerance, metavar="X",
                       help="absolute tolerance (default by dtype: float32 1e-5, bfloat16 1e-2, times a layer's largest |value| above 1)")
    # the first diverging records say where; the later ones mostly carry the same difference on
    _report_options(parser, "reference | candidate | difference pictures of the first diverging records", DEFAULT_COMPARE_PICTURES)


def _report_options(parser: argparse.ArgumentParser, pictures: str = "layer pictures, flagged layers first",
                    max_pictures: int = DEFAULT_MAX_PICTURES) -> None:
    report = parser.add_argument_group("report")
    report.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"gallery folder (default {DEFAULT_OUT})")
    report.add_argument("--max-pictures", type=_positive, default=max_pictures, metavar="N",
                        help=f"at most N {pictures} (default {max_pictures})")
    report.add_argument("--open", action="store_true", help="open the gallery in a web browser")


def _diff_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("baseline", metavar="BASELINE.json", help="a baseline written by check_baseline")
    parser.add_argument("other", metavar="BASELINE2.json|SPEC", help="another baseline, or a model SPEC to capture")
    _model_options(parser)


# -- inspect --------------------------------------------------------------------------------------


@dataclass
class _Check:
    """One check's verdict: ``passed``, ``failed`` or ``skipped`` (nothing it applies to)."""

    title: str
    outcome: str
    message: str
    flagged: list[tuple[Any, list[int], str]] = field(default_factory=list)


def _build(spec: str, args: argparse.Namespace, progress: _Progress) -> tuple[Any, Any]:
    """The model ``spec`` names, built with the model options, and its input."""
    from ._cli_load import load_model, make_input, parse_args_pairs

    progress(f"building {spec}")
    loaded = load_model(spec, parse_args_pairs(args.arg), args.weights, args.trust_pickle)
    model_input = make_input(loaded.model, args.input, args.image, args.tokens, args.image_size)
    if args.calibrate:
        _calibrate(loaded.model, model_input, args.calibrate, progress)
    return loaded, model_input


def _calibrate(model: Any, model_input: Any, n: int, progress: _Progress) -> None:
    from ._calibrate import calibrate_batchnorm

    def batches() -> Any:
        for i, batch in enumerate(model_input.batches(n)):
            progress(f"calibrating BatchNorm: batch {i + 1}/{n}")
            yield batch

    try:
        calibrate_batchnorm(model, batches())
    except Exception as exc:
        raise CLIError(f"--calibrate: the model rejected a batch of shape {_shape(model_input.tensor.shape)}: "
                       f"{type(exc).__name__}: {_first_line(exc)}") from None


class _DefaultLoss:
    """The loss ``--backward`` differentiates, nothing fancier: for a classifier-like output (a
    ``[batch, classes]`` tensor) ``out.logsumexp(-1).mean()``, the log-partition cross-entropy
    differentiates, which needs no labels and gives every logit a gradient; for any other output
    ``out.float().pow(2).mean()``. A structured output (tuple, dict) is reduced through its first
    floating-point tensor. ``used`` says which formula ran."""

    def __init__(self) -> None:
        self.used = ""

    def __call__(self, out: Any) -> Any:
        import torch
        from torch.utils import _pytree

        y = next((t for t in _pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()), None)
        if y is None:
            raise CLIError(f"--backward: the model's output ({type(out).__name__}) holds no floating-point tensor to differentiate")
        if not y.requires_grad:
            raise CLIError("--backward: the model's output depends on no parameter that requires grad (all frozen, "
                           "detached, or computed under torch.no_grad()): there is no backward pass to check")
        of = "" if y is out else " (out: the output's first floating-point tensor)"
        if y.ndim == 2 and y.shape[1] > 1:
            self.used = f"out.logsumexp(-1).mean(){of}"
            return y.logsumexp(-1).mean()
        self.used = f"out.float().pow(2).mean(){of}"
        return y.float().pow(2).mean()


def _capture(
    loaded: Any, model_input: Any, layers: Any, ops: bool, progress: _Progress, loss: _DefaultLoss | None = None
) -> tuple[Any, list[str]]:
    """One forward pass under capture (and one backward pass of ``loss``); returns the capture
    and the warnings it gave, each once (the terminal summary shows them as notes)."""
    from ._capture import capture
    from ._errors import LayerNotFoundError

    passes = "forward and backward" if loss is not None else "forward"
    progress(f"capturing {loaded.spec} on {_shape(model_input.tensor.shape)} ({passes})")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cap = capture(loaded.model, model_input.tensor, layers=layers, ops=ops, backward=loss)
    except LayerNotFoundError as exc:
        raise CLIError(f"--layers: {exc}") from None
    except CLIError:
        raise
    except Exception as exc:
        if loss is not None and loss.used:  # the forward ran: the backward pass failed
            raise CLIError(f"{loaded.spec}: the backward pass of {loss.used} failed: {type(exc).__name__}: "
                           f"{_first_line(exc)}") from None
        raise CLIError(
            f"{loaded.spec} failed on input {_shape(model_input.tensor.shape)}: {type(exc).__name__}: "
            f"{_first_line(exc)}; check --input (its shape and dtype) against what the model expects"
        ) from None
    return cap, list(dict.fromkeys(str(w.message) for w in caught))


def _run_checks(cap: Any, backward: bool = False) -> list[_Check]:
    """Every check that needs no expectation, with its defaults (ini-free, as in a plain test);
    with ``backward``, the gradient checks too."""
    from . import _checks, _gradchecks
    from ._errors import FeatcheckAssertionError

    bounded = sum(lc.bounds is not None for lc in cap.values())
    with_grad = sum(lc.grad is not None for lc in cap.values())
    todo: list[tuple[str, Callable[[Any], None] | None, str]] = [
        ("finite values", _checks.assert_finite, _plural(len(cap), "layer")),
        ("dead channels", _checks.assert_no_dead_channels, _plural(len(cap), "layer")),
        ("saturation", _checks.assert_not_saturated, _plural(bounded, "layer")) if bounded else
        ("saturation", None, "no layer with known output bounds (Sigmoid, Tanh, Hardtanh, ReLU6, Hardsigmoid)"),
    ]
    if backward:
        todo += [
            ("gradients finite", _gradchecks.assert_gradients_finite,
             f"{_plural(with_grad, 'layer')} and {_plural(len(cap.param_grads), 'parameter')}"),
            ("gradient flow", _gradchecks.assert_gradients_flow,
             f"{_plural(with_grad, 'layer')} within [1e-4, 1e4] times the gradient at the loss end"),
            ("parameters receive gradients", _gradchecks.assert_params_receive_grad,
             _plural(len(cap.param_grads), "parameter")),
        ]
    out = []
    for title, check, verdict in todo:
        if check is None:
            out.append(_Check(title, "skipped", verdict))
            continue
        try:
            with warnings.catch_warnings():
                # the calibration advice is in the failure message already
                warnings.simplefilter("ignore")
                check(cap)
        except FeatcheckAssertionError as exc:
            out.append(_Check(title, "failed", str(exc), exc.flagged))
        else:
            out.append(_Check(title, "passed", verdict))
    return out


def _forward_name(lc: Any) -> str:
    """The record a flagged record belongs to: a gradient record (``"<name> (grad)"``, see
    :mod:`._grads`) belongs to the record whose output it is the gradient of."""
    return str(lc.name).removesuffix(" (grad)")


def _groups(names: list[str], cap: Any) -> list[tuple[str, list[str]]]:
    """Layers grouped by their top-level module, in call order; neighbouring top-level layers
    that are alone in their group (a ResNet's stem: conv1, bn1, relu, maxpool) share one group,
    named after its first and last layer."""
    runs: list[tuple[str, list[str]]] = []
    for name in names:
        top = cap[name].module_name.split(".")[0] or "(root)"
        if runs and runs[-1][0] == top:
            runs[-1][1].append(name)
        else:
            runs.append((top, [name]))
    out: list[tuple[str, list[str], bool]] = []  # (title, layers, a stretch of lone layers)
    for top, members in runs:
        lone = len(members) == 1 and "." not in cap[members[0]].module_name
        if lone and out and out[-1][2]:
            out[-1][1].extend(members)
        else:
            out.append((top, list(members), lone))
    return [(f"{m[0]} ... {m[-1]}" if lone and len(m) > 1 else title, m) for title, m, lone in out]


def _spread(names: list[str], k: int) -> list[str]:
    """``k`` of ``names``, evenly spaced from first to last, in order."""
    if k >= len(names):
        return list(names)
    if k <= 0:
        return []
    if k == 1:
        return [names[0]]
    picks = sorted({round(i * (len(names) - 1) / (k - 1)) for i in range(k)})
    return [names[i] for i in picks]


def _pictures(cap: Any, checks: list[_Check], limit: int, progress: _Progress) -> tuple[dict[str, Any], list[str]]:
    """Pictures of the flagged layers first (their channels marked), then of the others, evenly
    spread over the network, ``limit`` in all; returns ``{layer: picture}`` and drawing notes."""
    from . import _report

    flagged: dict[str, tuple[Any, list[int], list[str]]] = {}
    for check in checks:
        for lc, channels, what in check.flagged:
            _, chans, whats = flagged.setdefault(lc.name, (lc, [], []))
            chans.extend(c for c in channels if c not in chans)
            whats.append(what)
    requests: list[tuple[str, Any]] = [
        (name, _report._Flagged(lc, sorted(chans), ", ".join(whats))) for name, (lc, chans, whats) in flagged.items()
    ][:limit]
    others = [n for n in cap.names if n not in flagged]
    requests += [(n, _report._Show(cap[n], None, {})) for n in _spread(others, limit - len(requests))]
    pictures: dict[str, Any] = {}
    notes: list[str] = []
    for i, (name, request) in enumerate(requests):
        progress(f"rendering {i + 1}/{len(requests)}: {name}")
        drawn, _, problems = _report.render_requests([request], 1)
        notes += problems
        if drawn:
            pictures[name] = drawn[0]
    return pictures, notes


def _records(
    spec: str, cap: Any, checks: list[_Check], pictures: dict[str, Any], notes: list[str], flow: Any = None
) -> list[Any]:
    """The gallery's sections: the checks (failed first), then the layer groups in call order.
    ``flow``, the gradient-flow picture, goes with the first failed gradient check, or with the
    gradient-flow check when they pass."""
    from ._report import _Flag, _Record

    def flags(entries: list[tuple[Any, list[int], str]]) -> list[Any]:
        return [_Flag(lc.name, list(ch), what) for lc, ch, what in entries]

    order = {"failed": 0, "passed": 1, "skipped": 2}
    # as the pytest report attaches it to a failing gradient check: with the first that failed
    gradient_checks = [c for c in checks if c.title in _GRADIENT_CHECKS]
    failed = [c.title for c in gradient_checks if c.outcome == "failed"]
    flow_goes_to = None if flow is None else (failed or ["gradient flow"])[0]
    records = []
    for check in sorted(checks, key=lambda c: order[c.outcome]):
        shown = list(dict.fromkeys(lc.name for lc, _, _ in check.flagged))
        extra = [] if check.outcome != "skipped" else [f"not checked: {check.message}"]
        if check.outcome == "failed" and not check.flagged:
            # a failure that flags no layer (parameters without a gradient, a gradient-flow
            # table) says in its notes what it names
            extra += [line for line in check.message.splitlines() if line.strip()]
        figures = [pictures[n] for n in shown if n in pictures]
        if check.title == flow_goes_to:
            figures.insert(0, flow)
        # a check's section lists what it flagged; the layer groups below list every layer
        records.append(_Record(
            f"{spec} :: check: {check.title}", check.outcome, [], flags(check.flagged),
            figures, sum(n not in pictures for n in shown),
            extra + (_bn_advice(cap) if check.outcome == "failed" and check.title in _BN_VERDICTS else []),
        ))
    every_flag = [f for check in checks for f in check.flagged]
    for title, members in _groups(cap.names, cap):
        inside = set(members)
        group_flags = [f for f in every_flag if _forward_name(f[0]) in inside]
        layer_notes = [f"{n}: {cap[n].note}" for n in members if cap[n].note]
        records.append(_Record(
            f"{spec} :: {title}", "failed" if group_flags else "passed", members, flags(group_flags),
            [pictures[n] for n in members if n in pictures], sum(n not in pictures for n in members), layer_notes,
        ))
    if notes and records:
        first = records[0]
        records[0] = _Record(first.nodeid, first.outcome, first.layers, first.flagged, first.pictures,
                             first.dropped, [*first.notes, *notes])
    return records


_GRADIENT_CHECKS = ("gradients finite", "gradient flow", "parameters receive gradients")
# the verdicts that BatchNorm layers holding their default running statistics make wrong
_BN_VERDICTS = ("dead channels", "saturation")


def _bn_advice(cap: Any) -> list[str]:
    names = cap.default_batchnorm
    if not names:
        return []
    return [f"{len(names)} BatchNorm layers hold their default running statistics (mean 0, var 1): random-weight "
            "models really have dead and saturated channels then; run again with --calibrate 8"]


def _gallery_dir(args: argparse.Namespace) -> Path:
    """``--out``, checked before any model is built (the plugin's rules for its gallery folder)."""
    import pytest

    from . import _report

    directory = Path(args.out)
    try:
        _report.check_gallery_dir(directory, option="--out")
    except pytest.UsageError as exc:
        raise CLIError(str(exc)) from None
    return directory


def _write_gallery(directory: Path, records: list[Any], title: str, progress: _Progress) -> Path:
    """The standalone gallery and summary.json, in the order given; returns the index page."""
    import pytest

    from . import _report

    progress(f"writing {directory}")
    try:
        return _report.write_gallery(directory, records, sort=False, title=title, cap_option="--max-pictures")
    except (OSError, pytest.UsageError) as exc:
        raise CLIError(f"--out: the gallery cannot be written: {exc}") from None


def _inspect(args: argparse.Namespace, out: IO[str], progress: _Progress) -> int:
    from . import _report

    directory = _gallery_dir(args)
    loaded, model_input = _build(args.spec, args, progress)
    loss = _DefaultLoss() if args.backward else None
    cap, caught = _capture(loaded, model_input, args.layers, args.ops, progress, loss)
    progress("checking")
    checks = _run_checks(cap, backward=loss is not None)
    pictures, notes = _pictures(cap, checks, args.max_pictures, progress)
    flow = None
    if loss is not None:
        progress("drawing the gradient flow")
        drawn, _, problems = _report.render_requests([_report._GradFlow(cap)], 1)
        flow, notes = (drawn[0] if drawn else None), notes + problems
    records = _records(loaded.spec, cap, checks, pictures, notes, flow)
    index = _write_gallery(directory, records, f"featcheck inspect {loaded.spec}", progress)
    progress.clear()
    _summary(out, loaded, model_input, args, cap, caught, checks, len(pictures) + (flow is not None), index, loss)
    if args.open:
        webbrowser.open(index.resolve().as_uri())
    return EXIT_FAILED if any(c.outcome == "failed" for c in checks) else EXIT_OK


def _summary(out: IO[str], loaded: Any, model_input: Any, args: argparse.Namespace, cap: Any, caught: list[str],
             checks: list[_Check], n_pictures: int, index: Path, loss: _DefaultLoss | None = None) -> None:
    """What the terminal shows: the model, the input, one row per layer, the checks' verdicts
    (a failure's full table) and where the gallery is."""
    ops = sum(1 for lc in cap.values() if lc.op)
    params = sum(p.numel() for p in loaded.model.parameters())
    write = out.write
    write(f"featcheck inspect {loaded.description}, {_count(params)} parameters\n")
    calibrated = f"; BatchNorm calibrated on {args.calibrate} random batches" if args.calibrate else ""
    write(f"input: {model_input.description}{calibrated}\n")
    backward = f", 1 backward pass of {loss.used}" if loss is not None else ""
    write(f"{_plural(len(cap), 'record')} ({_plural(len(cap) - ops, 'module')}, {_plural(ops, 'operation')}), "
          f"{_plural(cap.forwards, 'forward pass', 'forward passes')}{backward}\n")
    marks: dict[str, list[str]] = {}
    for check in checks:
        for lc, channels, what in check.flagged:
            marks.setdefault(_forward_name(lc), []).append(f"{what} {len(channels)}/{lc.channels}" if channels else what)
    rows = [("layer", "type", "shape", "stride", *(["grad rms"] if loss is not None else []), "flagged")]
    rows += [(lc.name or "(root)", lc.module_type, _shape(lc.shape), _stride(lc.stride),
              *([_grad_rms(lc)] if loss is not None else []), ", ".join(marks.get(lc.name, [])))
             for lc in cap.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        write("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")
    for note in [*caught, *([cap.note] if cap.note else [])]:
        write(f"note: {_first_line_text(note)}\n")
    write("checks:\n")
    for check in checks:
        label = {"passed": "passed ", "failed": "FAILED ", "skipped": "skipped"}[check.outcome]
        lines = check.message.splitlines() or [""]
        write(f"  {label} {check.title}: {lines[0]}\n")
        for line in lines[1:]:
            write(f"            {line}\n")
    verdicts = [c for c in checks if c.outcome == "failed" and c.title in _BN_VERDICTS]
    if verdicts and cap.default_batchnorm and not args.calibrate:
        write("hint: the BatchNorm layers hold their default running statistics; run again with --calibrate 8\n")
    write(f"gallery: {index} ({n_pictures} pictures; summary.json beside it)\n")


# -- compare --------------------------------------------------------------------------------------


def _parse_mapping(pairs: Sequence[str]) -> dict[str, str]:
    """``--mapping old=new`` pairs as compare's ``mapping`` (reference name -> candidate name)."""
    out: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new or "=" in new:
            raise CLIError(f"--mapping must be OLD=NEW, a record of SPEC_A and its counterpart in SPEC_B "
                           f"(layer3.conv=blocks.2.conv), got {pair!r}")
        if old in out:
            raise CLIError(f"--mapping {old} is given twice ({old}={out[old]} and {pair})")
        out[old] = new
    return out


def _check_mapping_names(mapping: dict[str, str], a: Any, b: Any, known_a: Any, known_b: Any, among: str = "") -> None:
    """Fail on the first ``--mapping`` name that ``known_a`` (for SPEC_A's side) or ``known_b``
    rejects, naming the closest records in ``among`` (the records compared)."""
    for old, new in mapping.items():
        for name, loaded, known in ((old, a, known_a), (new, b, known_b)):
            ok, names = known(name)
            if not ok:
                close = difflib.get_close_matches(name, sorted(names), n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise CLIError(f"--mapping {old}={new}: {loaded.spec} has no record {name!r}{among}{hint}")


def _could_be_record(model: Any) -> Callable[[str], tuple[bool, set[str]]]:
    """Before the run: a name is a module of ``model``, or an operation record of one of its
    modules (``layer1.0.add``; which operations run is known only after the forward)."""
    modules = {n for n, _ in model.named_modules()}
    return lambda name: (name in modules or name.rpartition(".")[0] in modules, modules)


def _which_failed(exc: BaseException, a: Any, b: Any) -> Any:
    """The model whose code raised ``exc`` (a frame of one of its modules' methods in the
    traceback), or None: compare runs both, and the user needs to know which one the input
    does not suit."""
    owners = {id(m): loaded for loaded in (a, b) for m in loaded.model.modules()}
    found = None
    tb = exc.__traceback__
    while tb is not None:
        owner = owners.get(id(tb.tb_frame.f_locals.get("self")))
        found = owner or found  # the innermost frame decides
        tb = tb.tb_next
    return found


def _run_compare(a: Any, b: Any, model_input: Any, args: argparse.Namespace, mapping: dict[str, str],
                 progress: _Progress) -> tuple[Any, list[str]]:
    from ._compare import compare
    from ._errors import LayerNotFoundError

    progress(f"comparing {a.spec} and {b.spec} on {_shape(model_input.tensor.shape)}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            diff = compare(a.model, b.model, model_input.tensor, layers=args.layers, ops=args.ops,
                           rtol=args.rtol, atol=args.atol, mapping=mapping or None)
    except LayerNotFoundError as exc:
        raise CLIError(f"--layers: {exc}") from None
    except Exception as exc:
        failed = _which_failed(exc, a, b)
        which = failed.spec if failed is not None else f"{a.spec} or {b.spec}"
        raise CLIError(
            f"{which} failed on input {_shape(model_input.tensor.shape)}: {type(exc).__name__}: {_first_line(exc)}; "
            "both models run on the same input: check --input against what each expects"
        ) from None
    return diff, list(dict.fromkeys(str(w.message) for w in caught))


def _compare_pictures(diff: Any, limit: int, progress: _Progress) -> tuple[list[Any], list[str]]:
    """reference | candidate | difference pictures of the first ``limit`` diverging pairs."""
    from . import _report
    from ._compare import _RowPicture

    rows = diff.diverged[:limit]
    pictures: list[Any] = []
    notes: list[str] = []
    for i, row in enumerate(rows):
        progress(f"rendering {i + 1}/{len(rows)}: {row.reference}")
        drawn, _, problems = _report.render_requests([_report._Flagged(_RowPicture(diff, row), row.channels, "diverges")], 1)
        pictures += drawn
        notes += problems
    return pictures, notes


def _compare(args: argparse.Namespace, out: IO[str], progress: _Progress) -> int:
    from ._compare import _side_notes, render
    from ._report import _Flag, _Record

    directory = _gallery_dir(args)
    mapping = _parse_mapping(args.mapping)
    a, input_a = _build(args.spec_a, args, progress)
    b, input_b = _build(args.spec_b, args, progress)
    if not (input_a.tensor.shape == input_b.tensor.shape and bool((input_a.tensor == input_b.tensor).all())):
        # only token ids depend on the model (the range of its embedding)
        raise CLIError(f"the two models take different inputs: {a.spec}: {input_a.description}; {b.spec}: "
                       f"{input_b.description}; give both the same batch with --input ids.pt")
    # typos in a module path fail before the models run; the rest once their records are known
    _check_mapping_names(mapping, a, b, _could_be_record(a.model), _could_be_record(b.model))
    diff, caught = _run_compare(a, b, input_a, args, mapping, progress)
    seen_a = {r.reference for r in diff.rows} | set(diff.only_reference) | set(diff.skipped)
    seen_b = {r.candidate for r in diff.rows} | set(diff.only_candidate)
    _check_mapping_names(mapping, a, b, lambda n: (n in seen_a, seen_a), lambda n: (n in seen_b, seen_b),
                         " among the records compared (--layers and --ops choose them)")
    # the terminal and the gallery name the models as the user did
    diff = dataclasses.replace(diff, reference_name=a.spec, candidate_name=b.spec)
    pictures, notes = _compare_pictures(diff, args.max_pictures, progress)
    title = f"{a.spec} vs {b.spec}"
    if not diff.rows:
        outcome = "failed"
        verdict = [f"no record of {a.spec} has a counterpart in {b.spec}: nothing was compared; give --mapping "
                   "OLD=NEW for records whose names differ", *_side_notes(diff)]
    elif diff.first is not None:
        outcome = "failed"
        verdict = render(diff).splitlines()
    else:
        outcome = "passed"
        first = diff.rows[0]
        verdict = [f"{b.spec} computes the same as {a.spec}: {_plural(len(diff.rows), 'compared record')} agree "
                   f"within |candidate - reference| <= atol + rtol * |reference| (first: rtol={first.rtol:g}, "
                   f"atol={first.atol:g})", *_side_notes(diff)]
    flags = [_Flag(r.reference, list(r.channels), "diverges") for r in diff.diverged]
    table = [line for line in verdict if line.startswith(("first diverging", "tolerances", "only in", "skipped"))]
    record = _Record(f"{title} :: comparison", outcome, [r.reference for r in diff.rows], flags, pictures,
                     len(diff.diverged) - len(pictures), [verdict[0], *table, *notes])
    index = _write_gallery(directory, [record], f"featcheck compare {title}", progress)
    progress.clear()
    write = out.write
    write(f"featcheck compare {a.description} -> {b.description}\n")
    calibrated = f"; BatchNorm calibrated on {args.calibrate} random batches" if args.calibrate else ""
    write(f"input: {input_a.description}{calibrated}\n")
    write(f"{_plural(len(diff.rows), 'pair')} of records compared, {len(diff.diverged)} diverging; "
          f"{len(diff.only_reference)} only in {a.spec}, {len(diff.only_candidate)} only in {b.spec}\n")
    for line in verdict:
        write(f"{line}\n")
    for note in caught:
        write(f"note: {_first_line_text(note)}\n")
    write(f"gallery: {index} ({_plural(len(pictures), 'picture')}; summary.json beside it)\n")
    if args.open:
        webbrowser.open(index.resolve().as_uri())
    return EXIT_OK if outcome == "passed" else EXIT_FAILED


# -- diff -----------------------------------------------------------------------------------------


def _load_baseline(file: str) -> dict[str, Any]:
    from ._baselines import BaselineError, load

    path = Path(file)
    if not path.is_file():
        raise CLIError(f"no baseline file at {file}")
    try:
        return load(path)
    except BaselineError as exc:
        raise CLIError(f"baseline {file} {exc}") from None


def _modules_only(doc: dict[str, Any]) -> dict[str, Any]:
    """A baseline without its operation records (their type ends in ``()``)."""
    return {**doc, "layers": [e for e in doc["layers"] if not e["module_type"].endswith("()")], "ops": False}


def _diff(args: argparse.Namespace, out: IO[str], progress: _Progress) -> int:
    from . import _baselines

    old = _load_baseline(args.baseline)
    other = args.other
    if other.endswith(".json"):  # a SPEC ends with a callable's name, or .pt
        new = _load_baseline(other)
    else:
        loaded, model_input = _build(other, args, progress)
        cap, _ = _capture(loaded, model_input, args.layers, bool(old.get("ops", False)), progress)
        layers = [_baselines.layer_entry(lc, stats=False) for lc in cap.values()]
        new = _baselines.document(layers, other, None, stats=False, ops=bool(old.get("ops", False)))
        progress.clear()
    if bool(old.get("ops", False)) != bool(new.get("ops", False)):
        old, new = _modules_only(old), _modules_only(new)
        out.write("note: one side has operation records and the other not: comparing module records only\n")
    diff = _baselines.compare(old, new, 0.0, 0.0, stats=False)
    if not diff.structural:
        out.write(f"featcheck diff: {args.baseline} and {other}: same architecture ({len(new['layers'])} layers)\n")
        return EXIT_OK
    header = f"featcheck diff: {args.baseline} ({len(old['layers'])} layers) -> {other} ({len(new['layers'])} layers)"
    out.write(_baselines.render_diff(diff, args.baseline, 0.0, 0.0, None, header=header) + "\n")
    return EXIT_FAILED


# -- the command ----------------------------------------------------------------------------------

_Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace, IO[str], _Progress], int]]

_COMMANDS: dict[str, _Command] = {
    "inspect": ("capture a model, run the checks, write the gallery and summary.json", _inspect_arguments, _inspect),
    "compare": ("run two models on the same input and show where they stop computing the same",
                _compare_arguments, _compare),
    "diff": ("architecture diff of two baselines, or of a baseline and a model", _diff_arguments, _diff),
}


_EXIT_STATUS = ("exit status: 0 passed (compare, diff: same), 1 a check failed (compare, diff: different), "
                "2 bad usage, 3 internal error")


def _parser() -> _Parser:
    parser = _Parser(prog="featcheck", description="Inspect PyTorch models from inside, without writing a test.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_, add_arguments, _) in _COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_, description=help_, epilog=_EXIT_STATUS))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``featcheck`` command line; returns the exit status (0 passed, 1 a check failed or
    a difference was found, 2 bad usage, 3 an internal error)."""
    progress = _Progress(sys.stderr)
    try:
        args = _parser().parse_args(argv)
        return _COMMANDS[args.command][2](args, sys.stdout, progress)
    except CLIError as exc:
        progress.clear()
        sys.stderr.write(f"featcheck: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        progress.clear()
        sys.stderr.write("featcheck: interrupted\n")
        return 130
    except Exception:
        progress.clear()
        traceback.print_exc()
        sys.stderr.write("featcheck: internal error (the traceback above is featcheck's own): please report it\n")
        return EXIT_INTERNAL


def _grad_rms(lc: Any) -> str:
    """The RMS of a record's gradient, as ``assert_gradients_flow`` judges it; ``none`` where no
    gradient reached it."""
    from ._grads import rms

    return "none" if lc.grad is None else f"{rms(lc.grad.stats):.2e}"


def _shape(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def _stride(stride: Sequence[float] | None) -> str:
    if stride is None:
        return "-"
    return f"{stride[0]:g}" if len(set(stride)) == 1 else "x".join(f"{s:g}" for s in stride)


def _plural(n: int, noun: str, nouns: str | None = None) -> str:
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def _count(n: int) -> str:
    return f"{n / 1e6:.3g}M" if n >= 1_000_000 else f"{n / 1e3:.3g}k" if n >= 1000 else str(n)


def _first_line_text(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""
