"""Backward overhead: a bare forward + backward against ``capture(..., backward=...)``, in one run.

resnet50, batch 8, 224x224, CPU, eval mode, loss ``out.logsumexp(-1).mean()``. Times, in one
process and interleaved (each round times every variant once):

* ``bare``: ``model(x)``, then ``torch.autograd.grad(loss, parameters)``;
* ``modules``: ``featcheck.capture(model, x, backward=loss, ops=False)``: every leaf module
  recorded, forward statistics, gradient statistics of every record, ``param_grads``;
* ``ops``: the same with operation records (the default);
* ``torchlens`` (with ``--torchlens``): TorchLens's trace with every activation and gradient
  saved, then its ``log_backward`` (an optional extra for this benchmark only; e.g.
  ``pip install --target /tmp/tl torchlens safetensors tqdm graphviz`` and
  ``PYTHONPATH=/tmp/tl``); two rounds only. It keeps every activation and gradient (several GiB
  here): where TorchLens refuses for its memory budget, the benchmark says so and goes on.

Reported per variant: the best time, its ratio to the best bare time, and the median over rounds
of the per-round ratio to that round's bare time. Peak memory (VmHWM, reset after set-up) is
measured in a fresh process per variant.

    python benchmarks/bench_backward.py [--repeat 7] [--threads N] [--no-memory] [--torchlens]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torchvision

import featcheck
from _common import print_peak, print_table  # benchmarks/_common.py (scripts run from their folder)

try:  # optional: only for comparison
    import torchlens
    from torchlens.options import CaptureOptions
except ImportError:
    torchlens = None

VARIANTS = ("bare", "modules", "ops")


def loss_fn(out: torch.Tensor) -> torch.Tensor:
    return out.logsumexp(-1).mean()


def setup() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval(), torch.randn(8, 3, 224, 224)


def runner(variant: str, model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    params = [p for p in model.parameters() if p.requires_grad]
    if variant == "bare":
        return lambda: torch.autograd.grad(loss_fn(model(x)), params)
    if variant == "modules":
        return lambda: featcheck.capture(model, x, backward=loss_fn, ops=False)
    if variant == "ops":
        return lambda: featcheck.capture(model, x, backward=loss_fn)

    def trace() -> object:  # every operation's output and gradient saved
        tr = torchlens.trace(model, x, capture=CaptureOptions(save_grads=True))
        tr.log_backward(loss_fn(tr[tr.output_layers[0]].tensor))
        return tr
    return trace


def child(variant: str) -> None:
    model, x = setup()
    print_peak(runner(variant, model, x))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--torchlens", action="store_true", help="add TorchLens with gradients (needs it importable)")
    ap.add_argument("--child", choices=VARIANTS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args.child)
        return
    model, x = setup()
    if args.torchlens and torchlens is None:
        ap.error("--torchlens: TorchLens is not importable")
    variants = list(VARIANTS) + (["torchlens"] if args.torchlens else [])
    runs = {v: runner(v, model, x) for v in variants}
    cap = featcheck.capture(model, x, backward=loss_fn)
    with_grad = sum(1 for n in cap.names if cap[n].grad is not None)
    for v in list(variants):  # warm-up
        try:
            runs[v]()
        except Exception as e:  # TorchLens's save budget: report it, time the others
            if v != "torchlens":
                raise
            print(f"torchlens skipped: {type(e).__name__}: {str(e).splitlines()[0]}")
            variants.remove(v)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.repeat):
        for v in variants:
            if v == "torchlens" and len(times[v]) >= 2:
                continue
            t = time.perf_counter()
            runs[v]()
            times[v].append(time.perf_counter() - t)
    mem = {}
    if not args.no_memory:
        for v in VARIANTS:
            out = subprocess.run(
                [sys.executable, __file__, "--child", v, "--threads", str(args.threads)],
                check=True, capture_output=True, text=True,
            ).stdout
            mem[v] = json.loads(out.strip().splitlines()[-1])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, resnet50 batch 8 224x224 CPU, "
          f"forward + backward, {args.repeat} rounds")
    print(f"records: {len(cap)} ({with_grad} with a gradient), parameters: {len(cap.param_grads)}")
    print_table(variants, times, mem)


if __name__ == "__main__":
    main()
