"""Memory held across many captures: RSS growth over N captures, against the size of one model.

Two ways a test suite uses featcheck: (a) the same model captured again and again with the
captures dropped (anything growing here is a leak); (b) a new model per capture with the
captures kept (what a session's report keeps): the models must be freed, only the records stay.

    python benchmarks/bench_memory.py [--captures 1000]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import featcheck  # noqa: E402


def rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--captures", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    x = torch.randn(2, 3, 64, 64)
    model = torchvision.models.resnet18(weights=None).eval()
    model_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    for _ in range(20):  # warm up allocators and caches
        featcheck.capture(model, x)
    gc.collect()
    start = rss_mib()
    for _ in range(args.captures):
        featcheck.capture(model, x)
    gc.collect()
    same = rss_mib() - start
    print(f"(a) {args.captures} captures of one resnet18, captures dropped: RSS {start:.0f} -> {start + same:.0f} MiB (+{same:.1f} MiB)")

    del model
    gc.collect()
    kept = []
    start = rss_mib()
    n = args.captures // 10
    for _ in range(n):
        m = torchvision.models.resnet18(weights=None).eval()
        kept.append(featcheck.capture(m, x))
        del m
    gc.collect()
    grew = rss_mib() - start
    print(
        f"(b) {n} new resnet18s ({model_mib:.0f} MiB of weights each), captures kept: +{grew:.0f} MiB "
        f"({grew / n:.2f} MiB per capture: its records and samples; keeping the models would be "
        f"+{model_mib * n:.0f} MiB)"
    )


if __name__ == "__main__":
    main()
