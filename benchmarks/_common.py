"""What the benchmark scripts share: peak memory of one run in a child process, and the table of
interleaved timings (best time, ratio to the best bare time, median of per-round ratios)."""

from __future__ import annotations

import gc
import json
import statistics
from collections.abc import Callable, Mapping, Sequence


def rss_kib(field: str) -> int:
    """A field of /proc/self/status (VmRSS, VmHWM), in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def print_peak(run: Callable[[], object]) -> None:
    """Run once and print, as JSON, the peak RSS from here on (set-up excluded) and the RSS before."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak-RSS mark (Linux >= 4.0)
        f.write("5")
    before = rss_kib("VmRSS")
    run()
    print(json.dumps({"peak_kib": rss_kib("VmHWM"), "setup_kib": before}))


def print_table(
    variants: Sequence[str],
    times: Mapping[str, Sequence[float]],
    mem: Mapping[str, Mapping[str, int]],
    *,
    width: int = 10,
    extra: Mapping[str, float] | None = None,
    memory_over_bare: bool = False,
) -> None:
    """One line per variant: best ms, x bare (best against best), median of the per-round ratios,
    microseconds per record (``extra``, when given), peak MiB and its ratio to the bare one (or,
    with ``memory_over_bare``, the MiB above it)."""
    bare = min(times["bare"])
    head = f"{'variant':<{width}} {'best ms':>8} {'x bare':>7} {'median x':>9}"
    if extra is not None:
        head += f" {'us/record':>10}"
    print(head + f" {'peak MiB':>9} {'+ over bare' if memory_over_bare else 'x bare':>11}")
    for v in variants:
        best = min(times[v])
        ratios = [t / b for t, b in zip(times[v], times["bare"])]
        line = f"{v:<{width}} {best * 1e3:8.1f} {best / bare:7.2f} {statistics.median(ratios):9.2f}"
        if extra is not None:
            line += f" {extra[v] * 1e6:10.1f}" if v in extra else f" {'':>10}"
        if v in mem:
            peak, bpeak = mem[v]["peak_kib"] / 1024, mem["bare"]["peak_kib"] / 1024
            line += f" {peak:9.0f} {peak - bpeak if memory_over_bare else peak / bpeak:11.2f}"
        print(line)
