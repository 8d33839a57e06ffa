"""Rendering costs against input size: time and extra peak memory of one picture of a huge input.

Each case runs in a fresh process: the input is built, the peak resident set is reset
(``/proc/self/clear_refs``), the picture is rendered once, and the process reports the wall time
and how far the peak rose above the resident set just before the call (the input itself is not
counted). A case that runs past ``--timeout`` seconds is killed and reported as such.

    python benchmarks/bench_render_scale.py [--timeout 120] [--repeat 3] [CASE ...]

Cases: pca4096 (a [4096, 8, 8] map), pca4096big ([4096, 64, 64]), pca20000 ([20000, 8, 8]),
pca100000 ([100000, 4, 4]), grid20000 (channel_grid of [1, 1, 20000, 20000]), heatmap10000
(heatmap of [10000, 10000]).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CASES = {
    "pca4096": ("pca_rgb", "torch.randn(4096, 8, 8, generator=g)"),
    "pca4096big": ("pca_rgb", "torch.randn(4096, 64, 64, generator=g)"),
    "pca20000": ("pca_rgb", "torch.randn(20000, 8, 8, generator=g)"),
    "pca100000": ("pca_rgb", "torch.randn(100000, 4, 4, generator=g)"),
    "grid20000": ("channel_grid", "torch.randn(1, 1, 20000, 20000, generator=g)"),
    "heatmap10000": ("heatmap", "torch.randn(10000, 10000, generator=g)"),
}

CHILD = """
import json, time, torch, featcheck
g = torch.Generator().manual_seed(0)
x = {make}
featcheck.{fn}(torch.randn(4, 8, 8))  # imports, fonts and colormaps loaded outside the measurement

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current resident set
before = status("VmRSS:")
t = time.perf_counter()
img = featcheck.{fn}(x)
elapsed = time.perf_counter() - t
print(json.dumps({{"s": elapsed, "extra": status("VmHWM:") - before, "size": list(img.size)}}))
"""


def run(case: str, timeout: float) -> dict[str, object]:
    fn, make = CASES[case]
    try:
        out = subprocess.run(
            [sys.executable, "-c", CHILD.format(fn=fn, make=make)], capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"killed": timeout}
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cases", nargs="*", default=list(CASES))
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"{'case':<14} {'run':>3} {'seconds':>9} {'extra MiB':>10} {'image':>12}")
    for case in args.cases:
        for i in range(args.repeat):
            t = time.perf_counter()
            r = run(case, args.timeout)
            if "killed" in r:
                print(f"{case:<14} {i + 1:>3} {'> %g' % args.timeout:>9} {'killed':>10}")
                break  # the next runs would only be killed too
            if "error" in r:
                print(f"{case:<14} {i + 1:>3} error: {r['error']} ({time.perf_counter() - t:.1f} s)")
                break
            w, h = r["size"]
            print(f"{case:<14} {i + 1:>3} {r['s']:9.3f} {r['extra'] / 2**20:10.0f} {f'{w}x{h}':>12}")


if __name__ == "__main__":
    main()
