"""A first look inside real torchvision models (random weights: nothing is downloaded).

Run with ``pytest examples``. Each test is a recipe you can copy.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn


def test_shapes_and_strides_of_resnet18(featcheck):
    """One forward pass, every stage: output shape and measured reduction."""
    model = torchvision.models.resnet18(weights=None)
    cap = featcheck.capture(model, torch.randn(2, 3, 224, 224), layers=["layer?", "fc"])
    assert cap.names == ["layer1", "layer2", "layer3", "layer4", "fc"]
    for stage, (channels, stride) in {"layer1": (64, 4), "layer2": (128, 8), "layer3": (256, 16), "layer4": (512, 32)}.items():
        assert cap[stage].channels == channels
        assert cap[stage].stride == (stride, stride)
    assert cap["fc"].shape == (2, 1000) and cap["fc"].stride is None
    featcheck.show(cap, layers=["layer1", "layer4"], max_channels=32)


def test_every_relu_call_of_a_bottleneck_is_its_own_record(featcheck):
    """torchvision's Bottleneck calls one ReLU three times; each call gets a name."""
    model = torchvision.models.resnet50(weights=None)
    cap = featcheck.capture(model, torch.randn(1, 3, 128, 128), layers="layer1.0.relu")
    assert cap.names == ["layer1.0.relu", "layer1.0.relu:2", "layer1.0.relu:3"]
    assert [cap[n].channels for n in cap.names] == [64, 64, 256]


def test_statistics_accumulate_over_a_data_loader(featcheck):
    """watch() keeps the hooks on while you run as many batches as you like."""
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    with featcheck.watch(model, layers=nn.Conv2d) as cap, torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 96, 96))
    first = cap["features.0.0"]
    assert first.samples == 12 and first.forwards == 3
    print(f"{first.name}: {first.channels} channels, std per channel {first.stats['std'][:4]} ...")


def test_vision_transformer_tokens_have_channels_last(featcheck):
    """[N, L, C] token sequences: channels are the last dim, there is no spatial stride."""
    model = torchvision.models.vit_b_16(weights=None)
    cap = featcheck.capture(model, torch.randn(1, 3, 224, 224), layers="encoder.layers.encoder_layer_0.*")
    mlp = cap["encoder.layers.encoder_layer_0.mlp.1"]
    assert mlp.shape == (1, 197, 3072) and mlp.channels == 3072 and mlp.stride is None
    featcheck.show(mlp, max_channels=32, select="variance")  # 196 patch tokens as 14 x 14, class token dropped
