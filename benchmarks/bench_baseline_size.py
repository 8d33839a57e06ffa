"""Size of the default baseline (every leaf layer, stats=True) of common torchvision models.

    python benchmarks/bench_baseline_size.py [--models resnet18,vit_b_32]

Batch 2, 224 x 224, ``featcheck.sample_input``, random weights (weights=None), as a test calling
``featcheck.check_baseline(cap)`` would store it; compared with the default size cap.
"""

from __future__ import annotations

import argparse

import torch
import torchvision

import featcheck
from featcheck import _baselines, _config

MODELS = (
    "resnet18,resnet50,convnext_tiny,vit_b_32,vit_b_16,efficientnet_b0,densenet121,"
    "mobilenet_v3_large,swin_t"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=MODELS)
    args = parser.parse_args()
    cap_kb = _config.get("baseline_max_kb")
    print(f"| model | layers | channels | baseline KiB | within the {cap_kb:g} KiB cap |")
    print("| --- | --- | --- | --- | --- |")
    for arch in args.models.split(","):
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(weights=None)
        cap = featcheck.capture(model, featcheck.sample_input((2, 3, 224, 224)))
        records = cap.select(None)
        doc = _baselines.document([_baselines.layer_entry(lc, True) for lc in records], "t.py::t", None, True)
        kb = len(_baselines.dumps(_baselines.stored(doc)).encode()) / 1024
        channels = sum(lc.channels for lc in records)
        print(f"| {arch} | {len(records)} | {channels} | {kb:.0f} | {'yes' if kb <= cap_kb else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
