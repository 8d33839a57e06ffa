"""Capture overhead on resnet50 (batch 8, 224x224, CPU, every leaf module hooked).

Times, in one process, a bare forward, ``featcheck.capture`` with full per-channel statistics,
and a naive hook that keeps a clone of every output; the three are interleaved and the best of
``--repeat`` rounds is kept. Peak memory is measured in a fresh process per variant (VmHWM, reset after set-up),
both as the whole process and as the growth over the process after model and input exist.

    python benchmarks/bench_capture.py [--repeat 7] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import gc
import subprocess
import sys
import time

import torch
import torchvision

import featcheck

VARIANTS = ("bare", "featcheck", "clone_all")


def setup() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval(), torch.randn(8, 3, 224, 224)


def run(variant: str, model: torch.nn.Module, x: torch.Tensor) -> None:
    if variant == "bare":
        with torch.no_grad():
            model(x)
    elif variant == "featcheck":
        featcheck.capture(model, x)
    else:
        kept = []
        leaves = [m for m in model.modules() if next(m.children(), None) is None]
        handles = [m.register_forward_hook(lambda m, i, o: kept.append(o.clone())) for m in leaves]
        try:
            with torch.no_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(variant: str) -> None:
    model, x = setup()
    gc.collect()
    # Reset the peak-RSS mark so that model construction does not count (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss_kib("VmRSS")
    run(variant, model, x)
    print(json.dumps({"peak_kib": _rss_kib("VmHWM"), "setup_kib": before}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--child", choices=VARIANTS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args.child)
        return
    model, x = setup()
    for v in VARIANTS:  # warm-up
        run(v, model, x)
    best = {v: float("inf") for v in VARIANTS}
    for _ in range(args.repeat):
        for v in VARIANTS:
            t = time.perf_counter()
            run(v, model, x)
            best[v] = min(best[v], time.perf_counter() - t)
    mem = {}
    for v in VARIANTS:
        out = subprocess.run(
            [sys.executable, __file__, "--child", v, "--threads", str(args.threads)],
            check=True, capture_output=True, text=True,
        ).stdout
        mem[v] = json.loads(out.strip().splitlines()[-1])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, resnet50 batch 8 224x224 CPU")
    print(f"{'variant':<11} {'time ms':>8} {'x bare':>7} {'peak MiB':>9} {'x bare':>7} {'growth MiB':>11} {'x bare':>7}")
    for v in VARIANTS:
        peak, setup_ = mem[v]["peak_kib"] / 1024, mem[v]["setup_kib"] / 1024
        bpeak, bsetup = mem["bare"]["peak_kib"] / 1024, mem["bare"]["setup_kib"] / 1024
        print(
            f"{v:<11} {best[v] * 1e3:8.1f} {best[v] / best['bare']:7.2f} {peak:9.0f} "
            f"{peak / bpeak:7.2f} {peak - setup_:11.0f} {(peak - setup_) / (bpeak - bsetup):7.2f}"
        )


if __name__ == "__main__":
    main()
