"""featcheck.compare of a model against a copy: time against one bare forward, peak memory.

Case: resnet50, batch 8, 224x224, CPU, every leaf module and operation compared (the default),
against ``copy.deepcopy`` of the model. Two forwards are the floor (2.0x one bare forward). In
one process the variants are interleaved, each round timing each once: a bare forward,
``featcheck.compare`` against the copy, the same with the copy's ``layer3.1.conv2`` perturbed on
one output channel (every later record differs: the comparison's slow path), and
pytest-torch's ``localize_divergence`` when it is importable (an optional peer for this
benchmark only: ``pip install --target /tmp/pt pytest-torch``, then ``--pytest-torch /tmp/pt``).
Reported per variant: the best time, its ratio to the best bare forward, and the median over
rounds of the per-round ratio. Peak memory: in a fresh process per variant (VmHWM, reset after
set-up), beside the bare forward's.

    python benchmarks/bench_compare.py [--repeat 5] [--threads N] [--pytest-torch /tmp/pt]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torchvision

import featcheck
from _common import print_peak, print_table  # benchmarks/_common.py (scripts run from their folder)

VARIANTS = ("bare", "compare", "compare_diverging", "pytest_torch")


def setup() -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    same = copy.deepcopy(model)
    diverging = copy.deepcopy(model)
    with torch.no_grad():
        diverging.layer3[1].conv2.weight[3] += 0.05
    return model, same, diverging, torch.randn(8, 3, 224, 224)


def runner(variant: str, pt_path: str | None) -> Callable[[], object]:
    model, same, diverging, x = setup()
    if variant == "bare":
        def bare() -> object:
            with torch.no_grad():
                return model(x)
        return bare
    if variant == "compare":
        return lambda: featcheck.compare(model, same, x)
    if variant == "compare_diverging":
        return lambda: featcheck.compare(model, diverging, x)
    sys.path.append(pt_path or "")  # appended: the venv's pytest stays the one imported
    from pytest_torch.divergence import localize_divergence

    return lambda: localize_divergence(model, same, x)


def child(variant: str, pt_path: str | None) -> None:
    print_peak(runner(variant, pt_path))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--pytest-torch", default=None, help="a --target folder holding pytest-torch")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--child", choices=VARIANTS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args.pytest_torch)
        return
    variants = [v for v in VARIANTS if v != "pytest_torch" or args.pytest_torch]
    runs = {v: runner(v, args.pytest_torch) for v in variants}
    for v in variants:  # warm-up
        runs[v]()
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.repeat):
        for v in variants:
            gc.collect()
            t = time.perf_counter()
            runs[v]()
            times[v].append(time.perf_counter() - t)
    mem = {}
    if not args.no_memory:
        for v in variants:
            cmd = [sys.executable, __file__, "--child", v, "--threads", str(args.threads)]
            if args.pytest_torch:
                cmd += ["--pytest-torch", args.pytest_torch]
            mem[v] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    diff = runs["compare"]()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, resnet50 batch 8 224x224 CPU, {args.repeat} rounds")
    print(f"pairs compared: {len(diff.rows)}")  # type: ignore[attr-defined]
    print_table(variants, times, mem, width=18, memory_over_bare=True)


if __name__ == "__main__":
    main()
