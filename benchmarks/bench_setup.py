"""A capture's set-up and tear-down, piece by piece, on torchvision mobilenet_v3_small.

The per-capture work around the hooks (issue 10's fixed cost per record): the argument checks,
the default layer selection, the model-state snapshot and its restore, saving and restoring the
random generators, switching the model to eval mode, the search for BatchNorms at their initial
statistics, and the parameter counts of the records at the end. Each piece is timed once per
round, the pieces interleaved; reported per piece: the median over rounds, in microseconds, and
the sum of the medians. The last rows time a bare forward and a whole ``featcheck.capture``
(batch 2, 64x64, one thread) and their difference, everything included.

The same script runs against an older featcheck (``PYTHONPATH=old-checkout``): pieces are
reached through what capture calls, whichever version is imported.

    python benchmarks/bench_setup.py [--rounds 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

import featcheck
from featcheck import _capture, _recorder, _state

try:
    from featcheck import _walk
except ImportError:  # an older featcheck: every piece walks the model itself
    _walk = None  # type: ignore[assignment]


def pieces(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    cap = featcheck.capture(model, x)
    records = [cap[n] for n in cap.names if cap[n].op is None]
    recorder = cap._rec
    state = _state.ModelState(model)

    def check_args() -> object:
        return _capture._check_args(model, None, None, None, None, True, [], ops=True, train=False, grad=False)

    def train_false() -> object:
        if _walk is None:
            return model.train(False)
        return _walk.set_mode(model, _walk.Modules(model), False)

    def rng() -> None:
        with _state.preserved_rng(list(state.tensors())):
            pass

    def finalize() -> object:
        for rec in records:
            rec._params = None
        return recorder.finalize()

    out: dict[str, Callable[[], object]] = {
        "check_args": check_args,
        "select_modules(None)": lambda: _capture.select_modules(model, None),
        "ModelState": lambda: _state.ModelState(model),
        "restore": state.restore,
        "preserved_rng": rng,
        "train(False)": train_false,
        "default_batchnorm": lambda: _recorder.default_batchnorm(model),  # before _walk
        "finalize (params)": finalize,
    }
    if _walk is not None:
        # in capture, one walk serves the checks, the selection, the snapshot and the mode
        walk = _walk.Modules(model)
        out["walk (shared)"] = lambda: _walk.Modules(model)
        out["check_args"] = lambda: _capture._check_args(
            model, None, None, None, None, True, [], walk, ops=True, train=False, grad=False
        )
        out["select_modules(None)"] = lambda: _capture.select_modules(model, None, None, walk)
        out["ModelState"] = lambda: _state.ModelState(model, walk.modules)
        out["train(False)"] = lambda: _walk.set_mode(model, walk, False)
        out["default_batchnorm"] = lambda: _walk.default_batchnorm(model, walk)
    return out


def run(rounds: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    todo = pieces(model, x)
    with torch.no_grad():
        todo["bare forward"] = lambda: model(x)
    todo["capture"] = lambda: featcheck.capture(model, x)
    times: dict[str, list[float]] = {k: [] for k in todo}
    for k, f in todo.items():  # warm-up
        f()
    for _ in range(rounds):
        for k, f in todo.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    total = 0.0
    for k, us in med.items():
        if k in ("bare forward", "capture"):
            continue
        total += us
        print(f"  {k:24s} {us:8.1f} us")
    print(f"  {'sum of the pieces':24s} {total:8.1f} us")
    print(f"  {'bare forward':24s} {med['bare forward']:8.1f} us")
    print(f"  {'capture':24s} {med['capture']:8.1f} us  (over the bare forward: {med['capture'] - med['bare forward']:.1f} us)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for i in range(args.runs):
        print(f"run {i + 1} (featcheck from {featcheck.__file__})")
        run(args.rounds)


if __name__ == "__main__":
    main()
