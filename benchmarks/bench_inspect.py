"""``featcheck inspect`` against the work it cannot avoid: the capture it performs plus rendering.

    python benchmarks/bench_inspect.py [--repeat 5] [--model resnet50] [--input 8x3x224x224]

Times, interleaved in one process, round by round:

* ``inspect``: ``featcheck inspect torchvision:MODEL --input SHAPE --out DIR`` through
  :func:`featcheck._cli.main`, everything included: building the model (random initialisation),
  the capture, the checks, drawing the pictures, writing the gallery and summary.json, the terminal
  summary (to /dev/null);
* ``reference``: on a model built beforehand, ``featcheck.capture(model, x)`` and the same
  pictures (the layers and flagged channels that inspect's summary.json lists) drawn with
  ``channel_grid`` and encoded as PNG, in memory.

Reported: each variant's best time and median, and the median over rounds of the per-round ratio
inspect / reference (goal: at most 1.5). Before timing, one untimed inspect run counts the model's
forward passes (goal: exactly one, no hidden second forward). The time of a whole
``python -m featcheck inspect`` process (interpreter and torch import included) is printed once
for information.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

import featcheck
from featcheck import _cli, _render, _report


def inspect_once(model: str, shape: str, out: Path) -> float:
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        status = _cli.main(["inspect", f"torchvision:{model}", "--input", shape, "--out", str(out)])
    elapsed = time.perf_counter() - t0
    if status not in (0, 1):
        raise SystemExit(f"inspect failed with exit status {status}")
    return elapsed


def pictures_of(out: Path) -> list[tuple[str, list[int]]]:
    """The layers inspect drew, each once, with the channels it marked as flagged."""
    drawn: dict[str, list[int]] = {}
    flagged = {}
    for section in json.loads((out / "summary.json").read_text())["tests"]:
        for f in section["flagged"]:
            flagged.setdefault(f["layer"], set()).update(f["channels"])
        for p in section["pictures"]:
            drawn.setdefault(p["name"], [])
    return [(name, sorted(flagged.get(name, ()))) for name in drawn]


def reference_once(net: torch.nn.Module, x: torch.Tensor, pictures: list[tuple[str, list[int]]]) -> float:
    t0 = time.perf_counter()
    cap = featcheck.capture(net, x)
    for name, channels in pictures:
        options = {"flagged": channels, "select": "energy"} if channels else {}
        _report._png(_render.channel_grid(cap[name], **options))
    return time.perf_counter() - t0


def count_forwards(model: str, shape: str, out: Path) -> int:
    """Forward passes of the model during one inspect run (a global hook: untimed run only)."""
    calls = 0
    root = type(torchvision.models.get_model(model, weights=None))

    def hook(module: torch.nn.Module, args: object) -> None:
        nonlocal calls
        calls += type(module) is root

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        inspect_once(model, shape, out)
    finally:
        handle.remove()
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--input", default="8x3x224x224")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.input.split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "gallery"
        forwards = count_forwards(args.model, args.input, out)
        print(f"forward passes of {args.model} during one inspect run: {forwards}")
        pictures = pictures_of(out)
        torch.manual_seed(0)
        net = torchvision.models.get_model(args.model, weights=None)
        x = featcheck.sample_input(shape)
        print(f"{len(pictures)} pictures ({sum(bool(c) for _, c in pictures)} flagged layers), torch threads {torch.get_num_threads()}")
        times: dict[str, list[float]] = {"inspect": [], "reference": []}
        ratios = []
        for r in range(args.repeat):
            a = inspect_once(args.model, args.input, out)
            b = reference_once(net, x, pictures)
            times["inspect"].append(a)
            times["reference"].append(b)
            ratios.append(a / b)
            print(f"round {r + 1}: inspect {a:.2f} s, reference {b:.2f} s, ratio {a / b:.2f}")
        for name, values in times.items():
            print(f"{name:9s} best {min(values):.2f} s, median {statistics.median(values):.2f} s")
        print(f"inspect / (capture + rendering): median of per-round ratios {statistics.median(ratios):.2f}, "
              f"ratio of bests {min(times['inspect']) / min(times['reference']):.2f} (goal <= 1.5)")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "featcheck", "inspect", f"torchvision:{args.model}", "--input", args.input,
                        "--out", str(out)], env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                       stdout=subprocess.DEVNULL, check=False)
        print(f"whole process (python -m featcheck inspect, imports included): {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
