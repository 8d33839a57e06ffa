"""The exact statistics kernel alone: ``_fast.chanexact_ptr`` on every leaf output of torchvision
mobilenet_v3_small (batch 2, 64x64, one thread: 141 maps, mostly many channels of few values),
against another build of the kernel in the same run.

The leaf outputs of one forward are kept; then, in each round, every build reduces every map
``--calls`` times, maps and builds interleaved, and each (build, map) gets the median over calls
of that round. Reported: the total per forward (the sum over the 141 maps) of each build in every
round and its median over rounds, and per distinct shape the median time of each build and the
ratio to the reference; then the time of ``chanmerge`` over the blocks of one forward, per
build, and whether the builds' merged blocks agree bit for bit. The reference is another compiled ``_fast`` (``--reference PATH``), for
example main's ``_fast.c`` built into a temporary folder:

    gcc -O3 -Wall -shared -fPIC $(python3-config --includes) OTHER/_fast.c -o /tmp/ref/_fast.so
    python benchmarks/bench_kernel.py --reference /tmp/ref/_fast.so [--rounds 7] [--calls 30]
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import statistics
import time
from types import ModuleType

import numpy as np
import torch
import torchvision

from featcheck import _fast, _stats


def load_build(path: str) -> ModuleType:
    """A compiled ``_fast`` from ``path``, imported beside featcheck's own."""
    spec = importlib.util.spec_from_file_location("_fast", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"--reference: {path!r} is not an importable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "chanexact_ptr"):
        raise ValueError(f"--reference: {path!r} has no chanexact_ptr (a build of an older _fast.c)")
    return module


def leaf_outputs() -> list[torch.Tensor]:
    """Copies of every leaf module's output in one forward of mobilenet_v3_small."""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    outs: list[torch.Tensor] = []
    for module in model.modules():
        if next(module.children(), None) is None:
            module.register_forward_hook(lambda m, a, o: outs.append(o.clone()))
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    return outs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="path of another compiled _fast to compare with")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    builds = {"this": _fast}
    if args.reference:
        builds["reference"] = load_build(args.reference)
    maps = leaf_outputs()
    lo, hi, bounded = _stats._thresholds(None, 0.0)
    per_map: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
    totals: dict[str, list[float]] = {name: [] for name in builds}
    for _ in range(args.rounds):
        total = dict.fromkeys(builds, 0.0)
        for i, x in enumerate(maps):
            out = np.empty((len(_stats.ROWS), x.shape[1]))
            address, shape = x.data_ptr(), x.shape
            for name, build in builds.items():
                kernel = build.chanexact_ptr
                times = []
                for _ in range(args.calls):
                    t = time.perf_counter()
                    kernel(address, shape, 1, out, lo, hi, bounded)
                    times.append(time.perf_counter() - t)
                per_map[(name, i)].append(statistics.median(times))
                total[name] += statistics.median(times)
        for name in builds:
            totals[name].append(total[name])
    values = sum(x.numel() for x in maps)
    print(f"{len(maps)} maps, {values} values, {args.rounds} rounds of {args.calls} calls per map")
    for name in builds:
        rounds = " ".join(f"{t * 1e3:.3f}" for t in totals[name])
        med = statistics.median(totals[name])
        print(f"{name:>10}: total ms per forward {rounds}; median {med * 1e3:.3f} ({med / values * 1e9:.2f} ns/value)")
    shapes: dict[tuple[int, ...], list[int]] = collections.defaultdict(list)
    for i, x in enumerate(maps):
        shapes[tuple(x.shape)].append(i)

    def shape_us(name: str, idx: list[int]) -> float:
        return statistics.median(t for i in idx for t in per_map[(name, i)]) * 1e6

    print(f"{'shape':<18} {'maps':>4} " + " ".join(f"{name + ' us':>13}" for name in builds) + (" ratio" if args.reference else ""))
    for shape, idx in sorted(shapes.items(), key=lambda kv: -shape_us("this", kv[1]) * len(kv[1])):
        line = f"{str(shape):<18} {len(idx):>4} " + " ".join(f"{shape_us(name, idx):13.2f}" for name in builds)
        if args.reference:
            line += f" {shape_us('this', idx) / shape_us('reference', idx):5.2f}"
        print(line)
    merge(builds, maps, lo, hi, bounded, args.rounds)


def merge(builds: dict[str, ModuleType], maps: list[torch.Tensor], lo: float, hi: float, bounded: bool, rounds: int) -> None:
    """``chanmerge`` of every map's block into a total, as ``watch`` merges each forward's blocks
    at commit: the time per forward of each build, interleaved, and whether they agree bitwise."""
    blocks = []
    for x in maps:
        block = np.empty((len(_stats.ROWS), x.shape[1]))
        _fast.chanexact_ptr(x.data_ptr(), x.shape, 1, block, lo, hi, bounded)
        blocks.append(block)
    times: dict[str, list[float]] = {name: [] for name in builds}
    merged: dict[str, list[np.ndarray]] = {}
    for _ in range(rounds):
        for name, build in builds.items():
            totals = [b.copy() for b in blocks]
            t = time.perf_counter()
            for total, block in zip(totals, blocks):
                build.chanmerge(total, block)
            times[name].append(time.perf_counter() - t)
            merged[name] = totals
    channels = sum(b.shape[1] for b in blocks)
    for name in builds:
        print(f"{name:>10}: chanmerge of {channels} channels per forward, ms " + " ".join(f"{t * 1e3:.3f}" for t in times[name]))
    if "reference" in merged:
        same = all(np.array_equal(a, b) for a, b in zip(merged["this"], merged["reference"]))
        print(f"merged blocks bitwise equal to the reference's: {same}")


if __name__ == "__main__":
    main()
