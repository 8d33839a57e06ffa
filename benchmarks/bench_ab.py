"""This featcheck against another checkout's, in one process, interleaved: what a change bought.

This VM's speed swings within minutes (a bare forward of resnet50 took 235 to 550 ms on
different days), so two runs of ``bench_capture.py`` made minutes apart compare the machine's
states as much as the code. Here the other checkout's package is imported beside this one, under
another name, and every round times a bare forward, a capture by each version, in alternating
order. Reported: the median over rounds of each version's overhead (capture - bare forward, in ms
per capture and in us per record) and of the per-round difference between the two versions.

``--reference`` is the root of another checkout whose ``featcheck/`` has its C extensions built
(``pip install -e .`` there, or ``gcc`` as the README says). Both versions must record the same
layers.

    python benchmarks/bench_ab.py --reference ../old-checkout [--small] [--rounds 12] [--modules-only]
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

import featcheck


def load_reference(root: Path) -> object:
    """The checkout's featcheck package, imported as ``featcheck_reference`` (a copy of its
    folder under that name: its imports are relative, its C extensions load under any name)."""
    src = root / "featcheck"
    if not (src / "__init__.py").is_file():
        raise SystemExit(f"--reference {root}: expected a checkout holding featcheck/__init__.py, found none")
    if src.resolve() == Path(featcheck.__file__).parent.resolve():
        raise SystemExit(f"--reference {root} is this checkout: give another one")
    tmp = Path(tempfile.mkdtemp(prefix="featcheck-ab-"))
    shutil.copytree(src, tmp / "featcheck_reference", ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(tmp))
    return importlib.import_module("featcheck_reference")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", type=Path, required=True, help="root of the other checkout")
    ap.add_argument("--small", action="store_true", help="mobilenet_v3_small, batch 2, 64x64, one thread")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--modules-only", action="store_true", help="ops=False")
    args = ap.parse_args()
    reference = load_reference(args.reference)
    torch.manual_seed(0)
    if args.small:
        torch.set_num_threads(1)
        model, x = torchvision.models.mobilenet_v3_small(weights=None).eval(), torch.randn(2, 3, 64, 64)
    else:
        model, x = torchvision.models.resnet50(weights=None).eval(), torch.randn(8, 3, 224, 224)
    ops = not args.modules_only

    def bare() -> object:
        with torch.no_grad():
            return model(x)

    runs = {
        "bare": bare,
        "reference": lambda: reference.capture(model, x, ops=ops),  # type: ignore[attr-defined]
        "this": lambda: featcheck.capture(model, x, ops=ops),
    }
    records = len(runs["this"]())
    if len(runs["reference"]()) != records:
        raise SystemExit("the two versions record different layers: nothing to compare")
    for run in runs.values():  # warm-up
        run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        for k in ("bare", "reference", "this") if r % 2 else ("bare", "this", "reference"):
            t = time.perf_counter()
            out = runs[k]()
            times[k].append(time.perf_counter() - t)
            del out
    case = "mobilenet_v3_small batch 2 64x64, one thread" if args.small else "resnet50 batch 8 224x224"
    print(f"torch {torch.__version__}, {case}, {records} records, ops={ops}, {args.rounds} rounds")
    print(f"bare forward: median {statistics.median(times['bare']) * 1e3:.1f} ms")
    for k in ("reference", "this"):
        over = [c - b for c, b in zip(times[k], times["bare"])]
        ratio = statistics.median(c / b for c, b in zip(times[k], times["bare"]))
        print(
            f"{k:9s}  overhead median {statistics.median(over) * 1e3:7.2f} ms  "
            f"{statistics.median(over) / records * 1e6:6.1f} us/record  x bare {ratio:.3f}"
        )
    diff = statistics.median(t - r for t, r in zip(times["this"], times["reference"]))
    print(f"this - reference: median {diff * 1e3:+.2f} ms per capture, {diff / records * 1e6:+.1f} us per record")


if __name__ == "__main__":
    main()
