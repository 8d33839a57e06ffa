"""The hooks' pass over a forward, apart from the records: torchvision mobilenet_v3_small, batch
2, 64x64, one thread.

Times, interleaved in one process, a bare forward; the same with two empty hooks common to all
modules (what any common hook costs through torch's slower module call path); and forwards inside
open ``featcheck.watch`` blocks, each on its own copy of the model: recording one layer (the
hooks' pass over every module call, with and without the op mode) and recording every layer.
Variants run in a shuffled order each round. Reported per variant: the median time and its
difference from the bare forward's median.

    python benchmarks/bench_hooks.py [--rounds 40]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import random
import statistics
import time

import torch
import torchvision
from torch.nn.modules import module as module_hooks

import featcheck


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    first = next(n for n, m in model.named_modules() if n and next(m.children(), None) is None)
    watched = {
        "watch, one layer": dict(layers=[first]),
        "watch, one layer, ops=False": dict(layers=[first], ops=False),
        "watch, every layer": {},
    }
    copies = {name: copy.deepcopy(model) for name in watched}

    def forward(m: torch.nn.Module) -> None:
        with torch.no_grad():
            m(x)

    @contextlib.contextmanager
    def empty_hooks():
        pre = module_hooks.register_module_forward_pre_hook(lambda m, a: None)
        post = module_hooks.register_module_forward_hook(lambda m, a, k, o: None, with_kwargs=True, always_call=True)
        try:
            yield
        finally:
            pre.remove()
            post.remove()

    times: dict[str, list[float]] = {"bare": [], "empty common hooks": [], **{name: [] for name in watched}}
    with contextlib.ExitStack() as blocks:
        for name, kwargs in watched.items():
            blocks.enter_context(featcheck.watch(copies[name], **kwargs))
        runs = {"bare": lambda: forward(model), **{name: (lambda m=copies[name]: forward(m)) for name in watched}}
        runs["empty common hooks"] = lambda: forward(model)
        for run in runs.values():  # warm-up
            run()
        order = list(runs)
        rng = random.Random(0)
        for _ in range(args.rounds):
            rng.shuffle(order)  # no variant always follows the same one (whose caches it would inherit)
            for name in order:
                with empty_hooks() if name == "empty common hooks" else contextlib.nullcontext():
                    t = time.perf_counter()
                    runs[name]()
                    times[name].append(time.perf_counter() - t)
    bare = statistics.median(times["bare"])
    print(f"torch {torch.__version__}, 1 thread, mobilenet_v3_small batch 2 64x64 CPU, {args.rounds} rounds")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:<30} {med * 1e3:7.2f} ms  {(med - bare) * 1e3:+6.2f} ms")


if __name__ == "__main__":
    main()
