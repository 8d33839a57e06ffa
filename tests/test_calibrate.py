"""calibrate_batchnorm: sets the running statistics from data, and when it fails leaves the model
bitwise as it was, without invalidating an autograd graph the user holds."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

import featcheck

BN_STATE = ("running_mean", "running_var", "num_batches_tracked")


def batches(*shapes: tuple[int, ...]) -> list[torch.Tensor]:
    return [torch.randn(*shape) for shape in shapes]


def trained_resnet18() -> nn.Module:
    """A resnet18 whose running statistics are not the defaults, with mixed flags and momenta,
    so that a reset or a lost flag shows."""
    model = torchvision.models.resnet18(weights=None)
    featcheck.calibrate_batchnorm(model, batches((4, 3, 64, 64)))
    model.train()
    model.layer2.eval()
    model.bn1.momentum = 0.3
    model.layer3[0].bn2.momentum = None
    return model


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Every buffer's object, version and value, every module's flag, every BatchNorm's momentum."""
    return {
        "buffers": {n: (b, b._version, b.clone()) for n, b in model.named_buffers()},
        "params": {n: p.clone() for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "momentum": {n: m.momentum for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)},
    }


def assert_left_as_found(model: nn.Module, before: dict[str, Any]) -> None:
    after = dict(model.named_buffers())
    assert after.keys() == before["buffers"].keys()
    for name, (obj, version, value) in before["buffers"].items():
        assert after[name] is obj, f"{name} was replaced"
        assert after[name]._version == version, f"{name} was written"
        assert torch.equal(after[name], value), f"{name} changed"
    for name, p in model.named_parameters():
        assert torch.equal(p, before["params"][name]), name
    assert {n: m.training for n, m in model.named_modules()} == before["training"]
    assert {n: m.momentum for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)} == before["momentum"]


def good_then_wrong_channels() -> Iterator[torch.Tensor]:
    yield torch.randn(2, 3, 64, 64)
    yield torch.randn(2, 4, 64, 64)


def exhausted() -> Iterator[torch.Tensor]:
    gen = (x for x in batches((2, 3, 64, 64)))
    list(gen)
    return gen


FAILURES: dict[str, tuple[Callable[[], Any], type[Exception], str]] = {
    "empty list": (list, ValueError, "got no batches"),
    "exhausted generator": (exhausted, ValueError, "got no batches .*exhausted generator.*left as it was"),
    "wrong channel count": (lambda: batches((2, 4, 64, 64)), RuntimeError, "channels"),
    "good batch then wrong channel count": (good_then_wrong_channels, RuntimeError, "channels"),
    "a string": (lambda: "batches.pt", TypeError, "batches must be a tensor.*got str"),
    "a string inside a list": (lambda: [torch.randn(2, 3, 64, 64), "x"], TypeError, r"batches\[1\] must be a tensor.*got str"),
    "a string from a generator": (lambda: (b for b in [torch.randn(2, 3, 64, 64), "x"]), TypeError, "batch 1 must be a tensor.*got str"),
    "a number": (lambda: 3, TypeError, "got int"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_a_failed_calibration_leaves_the_model_bitwise_as_it_was(case: str) -> None:
    make, error, message = FAILURES[case]
    model = trained_resnet18()
    before = snapshot(model)
    with pytest.raises(error, match=message):
        featcheck.calibrate_batchnorm(model, make())
    assert_left_as_found(model, before)


def test_a_failed_calibration_keeps_the_users_autograd_graph_valid() -> None:
    model = trained_resnet18().eval()
    out = model(torch.randn(2, 3, 64, 64))  # eval BatchNorm saves its running stats for backward
    with pytest.raises(RuntimeError):
        featcheck.calibrate_batchnorm(model, good_then_wrong_channels())
    out.sum().backward()
    assert model.conv1.weight.grad is not None


def test_recalibrating_on_the_same_data_writes_nothing() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    data = batches((4, 3, 64, 64), (4, 3, 64, 64))
    featcheck.calibrate_batchnorm(model, data)
    before = snapshot(model)
    out = model(torch.randn(2, 3, 64, 64))
    featcheck.calibrate_batchnorm(model, data)
    assert_left_as_found(model, before)
    out.sum().backward()


def test_a_successful_calibration_changes_the_users_own_buffers() -> None:
    """The statistics are copied into the buffers the user holds (same objects), and since they
    really changed, a graph built on the old values is rightly refused by autograd."""
    model = torchvision.models.resnet18(weights=None).eval()
    held = model.bn1.running_mean
    out = model(torch.randn(2, 3, 64, 64))
    featcheck.calibrate_batchnorm(model, batches((4, 3, 64, 64)))
    assert model.bn1.running_mean is held and held.abs().sum() > 0
    assert int(model.bn1.num_batches_tracked) == 1
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_a_model_built_under_inference_mode_can_be_calibrated() -> None:
    with torch.inference_mode():
        model = torchvision.models.resnet18(weights=None)
    featcheck.calibrate_batchnorm(model, batches((4, 3, 64, 64)))
    assert model.bn1.running_var.is_inference() and not torch.equal(model.bn1.running_var, torch.ones(64))


def test_lazy_batchnorm_is_refused_before_anything_runs() -> None:
    model = nn.Sequential(nn.LazyBatchNorm2d())
    x = torch.randn(4, 3, 8, 8) * 2 + 1
    with pytest.raises(ValueError, match="uninitialised lazy BatchNorm.*run one forward"):
        featcheck.calibrate_batchnorm(model, x)
    model(torch.randn(2, 3, 8, 8))
    featcheck.calibrate_batchnorm(model, x)
    torch.testing.assert_close(model[0].running_mean, x.mean((0, 2, 3)))
