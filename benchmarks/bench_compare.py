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
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torchvision

import featcheck

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


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(variant: str, pt_path: str | None) -> None:
    run = runner(variant, pt_path)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:  # the peak from here on (Linux >= 4.0)
        f.write("5")
    before = _rss_kib("VmRSS")
    run()
    print(json.dumps({"peak_kib": _rss_kib("VmHWM"), "setup_kib": before}))


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
    bare = min(times["bare"])
    print(f"{'variant':<18} {'best ms':>8} {'x bare':>7} {'median x':>9} {'peak MiB':>9} {'+ over bare':>11}")
    for v in variants:
        best = min(times[v])
        ratios = [t / b for t, b in zip(times[v], times["bare"])]
        line = f"{v:<18} {best * 1e3:8.1f} {best / bare:7.2f} {statistics.median(ratios):9.2f}"
        if v in mem:
            peak, bpeak = mem[v]["peak_kib"] / 1024, mem["bare"]["peak_kib"] / 1024
            line += f" {peak:9.0f} {peak - bpeak:11.0f}"
        print(line)


if __name__ == "__main__":
    main()
