"""Capture overhead: a bare forward against module-only and module + op capture, in one run.

Large case (default): resnet50, batch 8, 224x224, CPU, every leaf module hooked. Times, in one
process, a bare forward, ``featcheck.capture(ops=False)`` (module records only),
``featcheck.capture`` (module and op records, the default), a naive hook that keeps a clone of
every output, and TorchLens's full trace when it is importable (an optional extra for this
benchmark only: ``pip install torchlens``). The variants are interleaved; each round times every
variant once. Reported per variant: the best time, its ratio to the best bare forward, and the
median over rounds of the per-round ratio to that round's bare forward. Peak memory is measured
in a fresh process per variant (VmHWM, reset after set-up).

Small case (``--small``): torchvision mobilenet_v3_small, batch 2, 64x64, one thread, where the
fixed cost per record shows, in microseconds, each the median of the per-round differences:

* per capture: for module records ``(module-only capture - bare) / module records``, for op
  records ``(module + op capture - module-only capture) / op records`` (which includes the op
  mode's pass over every module and torch call, spread over the few op records), and for all
  records ``(module + op capture - bare) / records``. A capture also pays, once, for its set-up
  (selection, the model-state snapshot and restore, the rendering samples of the first forward).
* per forward under ``watch`` (``watch_modules``, ``watch_ops``: one forward inside an open
  ``featcheck.watch`` block, on its own copy of the model): what each record costs every forward,
  ``(watch forward - bare) / records``.
* a capture's fixed cost and its cost per record beyond it (``one_layer``: a capture recording
  only the first layer, with everything else a capture does): fixed ``one_layer - bare``, per
  record ``(module + op capture - one_layer) / (records - 1)``.

    python benchmarks/bench_capture.py [--repeat 7] [--threads N] [--small]
"""

from __future__ import annotations

import argparse
import contextlib
import copy as copy_module
import functools
import json
import statistics
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
except ImportError:
    torchlens = None

VARIANTS = ("bare", "modules", "ops", "clone_all")
WATCH = ("watch_modules", "watch_ops")  # timed only: their set-up happens outside the timing
ONE = "one_layer"  # timed only (small case): a capture's fixed cost


def setup(small: bool) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if small:
        return torchvision.models.mobilenet_v3_small(weights=None).eval(), torch.randn(2, 3, 64, 64)
    return torchvision.models.resnet50(weights=None).eval(), torch.randn(8, 3, 224, 224)


def runner(variant: str, model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    if variant == "bare":
        def bare() -> object:
            with torch.no_grad():
                return model(x)
        return bare
    if variant == "modules":
        return lambda: featcheck.capture(model, x, ops=False)
    if variant == "ops":
        return lambda: featcheck.capture(model, x)
    if variant == ONE:
        first = next(n for n, m in model.named_modules() if n and next(m.children(), None) is None)
        return lambda: featcheck.capture(model, x, layers=[first])
    if variant == "torchlens":
        def trace() -> object:  # every operation's output saved (its default), no visualisation
            with torch.no_grad():
                return torchlens.trace(model, x)
        return trace

    def clone_all() -> object:
        kept = []
        leaves = [m for m in model.modules() if next(m.children(), None) is None]
        handles = [m.register_forward_hook(lambda m, i, o: kept.append(o.clone())) for m in leaves]
        try:
            with torch.no_grad():
                return model(x)
        finally:
            for h in handles:
                h.remove()
    return clone_all


def _forward(model: torch.nn.Module, x: torch.Tensor) -> object:
    with torch.no_grad():
        return model(x)


def child(variant: str, small: bool) -> None:
    model, x = setup(small)
    print_peak(runner(variant, model, x))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--small", action="store_true", help="mobilenet_v3_small, batch 2, 64x64, one thread")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--child", choices=VARIANTS)
    args = ap.parse_args()
    threads = 1 if args.small and not args.threads else args.threads
    if threads:
        torch.set_num_threads(threads)
    if args.child:
        child(args.child, args.small)
        return
    model, x = setup(args.small)
    variants = list(VARIANTS) + list(WATCH) + ([ONE] if args.small else [])
    variants += ["torchlens"] if torchlens is not None and not args.small else []
    runs = {v: runner(v, model, x) for v in variants if v not in WATCH}
    records = {"modules": len(featcheck.capture(model, x, ops=False)), "ops": len(featcheck.capture(model, x))}
    blocks = contextlib.ExitStack()
    for v, ops in zip(WATCH, (False, True)):
        copy = copy_module.deepcopy(model)  # one inspection per model at a time: each its own copy
        blocks.enter_context(featcheck.watch(copy, ops=ops))
        runs[v] = functools.partial(_forward, copy, x)
    for v in variants:  # warm-up
        runs[v]()
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.repeat):
        for v in variants:
            if v == "torchlens" and len(times[v]) >= 2:
                continue  # 12-14x a forward: two rounds are enough to show it
            t = time.perf_counter()
            runs[v]()
            times[v].append(time.perf_counter() - t)
    blocks.close()
    mem = {}
    if not args.no_memory:
        for v in VARIANTS:
            out = subprocess.run(
                [sys.executable, __file__, "--child", v, "--threads", str(threads)] + (["--small"] if args.small else []),
                check=True, capture_output=True, text=True,
            ).stdout
            mem[v] = json.loads(out.strip().splitlines()[-1])
    case = "mobilenet_v3_small batch 2 64x64" if args.small else "resnet50 batch 8 224x224"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {case} CPU, {args.repeat} rounds")
    print(f"records: {records['modules']} module, {records['ops'] - records['modules']} op")
    # Fixed cost per record, as the median over rounds of the per-round difference: module
    # records against the bare forward, op records against module-only capture (their marginal
    # cost, including the mode's pass over every torch call).
    def per_record(a: str, b: str, n: int) -> float:
        return statistics.median(p - q for p, q in zip(times[a], times[b])) / max(1, n)

    n_ops = records["ops"] - records["modules"]
    extra = {
        "modules": per_record("modules", "bare", records["modules"]),
        "ops": per_record("ops", "modules", n_ops),
        "watch_modules": per_record("watch_modules", "bare", records["modules"]),
        "watch_ops": per_record("watch_ops", "bare", records["ops"]),
    }
    print(
        f"fixed cost per record: capture {per_record('ops', 'bare', records['ops']) * 1e6:.1f} us "
        f"(all records), per forward under watch {extra['watch_ops'] * 1e6:.1f} us (all records), "
        f"{extra['watch_modules'] * 1e6:.1f} us (module records, ops=False)"
    )
    if args.small:
        fixed = statistics.median(p - q for p, q in zip(times[ONE], times["bare"]))
        print(
            f"a capture's fixed cost {fixed * 1e3:.2f} ms, and {per_record('ops', ONE, records['ops'] - 1) * 1e6:.1f} us "
            "per record beyond it"
        )
    print_table(variants, times, mem, width=14, extra=extra)


if __name__ == "__main__":
    main()
