"""The demonstration suite (examples/) with and without ``--featcheck --html``, in one run.

Each variant runs in a fresh pytest process; variants alternate (in both orders) after one
warm-up run and the best of ``--repeat`` wall times is kept. Reports the ratio and the size of what the report and the gallery take on disk.

    python benchmarks/bench_report.py [--repeat 3]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
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
