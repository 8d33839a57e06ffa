"""The demonstration suite (examples/) with and without ``--featcheck --html``, in one run.

Each variant runs in a fresh pytest process; variants alternate (in both orders) after one
warm-up run and the best of ``--repeat`` wall times is kept. Reports the ratio and the size of what the report and the gallery take on disk.

``--memory N`` measures instead how the resident memory of one pytest process grows over N
tests that each build a 64 MiB model, capture it and show it, with and without ``--featcheck``:
growth from after the first test to after the last, against the model's size.

    python benchmarks/bench_report.py [--repeat 3]
    python benchmarks/bench_report.py --memory 200
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "examples", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - t


MODEL_MIB = 64
MEMORY_SUITE = """
import pytest, torch

RSS = []

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

@pytest.mark.parametrize("i", range({n}))
def test_model(featcheck, i):
    model = torch.nn.Sequential(torch.nn.Linear(4096, 4096), torch.nn.ReLU())  # 64 MiB of weights
    cap = featcheck.capture(model, torch.randn(4, 4096))
    featcheck.show(cap)
    RSS.append(rss())

def test_report():
    print("\\nRSS", RSS[0], RSS[-1])
"""


def memory(n: int) -> None:
    print(f"{'variant':<14} {'tests':>5} {'RSS growth':>11} {'x model size':>13} {'keeping every model':>20}")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "test_memory.py").write_text(MEMORY_SUITE.format(n=n))
        for name, extra in (("plain", []), ("--featcheck", ["--featcheck"])):
            out = subprocess.run(
                [sys.executable, "-m", "pytest", "test_memory.py", "-q", "-s", "-p", "no:cacheprovider", *extra],
                cwd=tmp, check=True, capture_output=True, text=True,
            ).stdout
            first, last = (int(v) for v in next(line for line in out.splitlines() if line.startswith("RSS")).split()[1:])
            growth = (last - first) / 2**20
            print(f"{name:<14} {n:>5} {growth:>7.0f} MiB {growth / MODEL_MIB:>13.2f} {(n - 1) * MODEL_MIB:>16} MiB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--memory", type=int, metavar="N", help="measure RSS growth over N model tests instead")
    args = ap.parse_args()
    if args.memory:
        memory(args.memory)
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        variants = {
            "plain": [],
            "--featcheck --html": ["--featcheck", f"--featcheck-dir={out / 'gallery'}", f"--html={out / 'report' / 'report.html'}"],
        }
        best = {k: float("inf") for k in variants}
        run([])  # warm the file cache once, so that the first variant is not penalised
        for i in range(args.repeat):
            order = list(variants.items())
            for name, extra in order if i % 2 == 0 else reversed(order):
                best[name] = min(best[name], run(extra))
        size = {d: sum(p.stat().st_size for p in (out / d).rglob("*") if p.is_file()) for d in ("gallery", "report")}
    print(f"{'variant':<20} {'seconds':>8} {'x plain':>8}")
    for name, t in best.items():
        print(f"{name:<20} {t:8.2f} {t / best['plain']:8.2f}")
    print(f"pytest-html report with assets: {size['report'] / 2**20:.2f} MiB, gallery: {size['gallery'] / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
