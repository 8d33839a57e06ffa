"""Health and geometry checks, one recipe each.

Random-weight models keep BatchNorm's default running statistics, and with those many ReLU
channels really are dead on any input. Calibrate first, as these recipes do; featcheck warns
when a verdict rests on uncalibrated BatchNorm layers.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import featcheck
from fixtures import defects


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    model = torchvision.models.resnet18(weights=None)
    featcheck.calibrate_batchnorm(model, [torch.randn(16, 3, 160, 160) for _ in range(2)])
    return model


def test_no_dead_relus_over_several_batches(featcheck, resnet18):
    """A verdict on one small batch is weak: watch a few batches, then check."""
    with featcheck.watch(resnet18, layers=nn.ReLU) as cap, torch.no_grad():
        for _ in range(3):
            resnet18.eval()(torch.randn(8, 3, 160, 160))
    featcheck.assert_no_dead_channels(cap)


def test_no_nan_or_inf_anywhere(featcheck, resnet18):
    cap = featcheck.capture(resnet18, torch.randn(4, 3, 160, 160))
    featcheck.assert_finite(cap)


def test_stage_shapes_and_strides(featcheck, resnet18):
    """Strides hold for input sizes that don't divide evenly (225 -> 57, 29, 15, 8)."""
    cap = featcheck.capture(resnet18, torch.randn(2, 3, 225, 225), layers=["layer?", "fc"])
    featcheck.assert_strides(cap, {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32})
    featcheck.assert_shapes(cap, {"layer1": (None, 64, 57, 57), "layer4": (None, 512, 8, 8), "fc": (None, 1000)})


# The defect zoo: each of these fails on purpose (strict xfail), so that the report shows what a
# caught defect looks like: the failure table, and the flagged layer's grid with its channels
# framed in blue.
caught = pytest.mark.xfail(strict=True, raises=AssertionError, reason="demonstrates a caught defect")


@caught
def test_caught_zeroed_filters(featcheck):
    """Two filters of conv2 were zeroed: the check names the layer and the channels [2, 5]."""
    cap = featcheck.capture(defects.make("zeroed_filters", defective=True), defects.batch())
    featcheck.assert_no_dead_channels(cap, layers=nn.Conv2d)


@caught
def test_caught_saturated_gate(featcheck):
    """A sigmoid driven to 1 on channels 0 and 4: bounds come from the module, counts from the hook."""
    cap = featcheck.capture(defects.make("saturated_sigmoid", defective=True), defects.batch())
    featcheck.assert_not_saturated(cap)


@caught
def test_caught_nan(featcheck):
    cap = featcheck.capture(defects.make("nan_mid_network", defective=True), defects.batch())
    featcheck.assert_finite(cap)


@caught
def test_caught_changed_stride(featcheck):
    cap = featcheck.capture(defects.make("stride_1", defective=True), defects.batch())
    featcheck.assert_strides(cap, {"conv1": 2, "conv2": 4})
