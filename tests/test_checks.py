"""Health and geometry checks: each catches its defect, names the right layer and channels, and
passes the healthy twin; no false alarms on calibrated real models."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import featcheck
from fixtures import defects

ZOO_STRIDES = {"conv1": 2, "conv2": 4, "relu2": 4, "extra": 4, "log": 4, "conv3": 4, "gate": 4}
ZOO_SHAPES = {"conv2": (None, 8, 8, 8), "log": (None, 8, 8, 8), "gate": (None, 6, 8, 8)}


def run_all_checks(cap: featcheck.Capture) -> None:
    featcheck.assert_no_dead_channels(cap)
    featcheck.assert_not_saturated(cap)
    featcheck.assert_finite(cap)
    featcheck.assert_shapes(cap, ZOO_SHAPES)
    featcheck.assert_strides(cap, ZOO_STRIDES)


def rows(message: str) -> dict[str, str]:
    """The failure table's rows by layer name."""
    lines = message.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("layer "))
    return {line.split()[0]: line for line in lines[start + 1 :] if line and not line.startswith(("Warning", " "))}


@pytest.mark.parametrize("name", sorted(defects.DEFECTS))
def test_healthy_twin_passes_every_check(name: str) -> None:
    cap = featcheck.capture(defects.make(name, defective=False), defects.batch())
    assert not cap.default_batchnorm
    run_all_checks(cap)


def test_zeroed_filters_are_dead_channels_of_that_conv() -> None:
    cap = featcheck.capture(defects.make("zeroed_filters", True), defects.batch())
    assert cap["conv2"].dead_channels() == [2, 5]
    with pytest.raises(AssertionError) as info:
        featcheck.assert_no_dead_channels(cap, layers=nn.Conv2d)
    table = rows(str(info.value))
    assert list(table) == ["conv2"]
    assert "2/8 dead (25.0%)" in table["conv2"] and "[2, 5]" in table["conv2"]
    assert table["conv2"].split()[-1] == "8"  # samples behind the verdict
    featcheck.assert_no_dead_channels(cap, layers="conv2", max_fraction=0.25)


def test_relu_killed_by_a_negative_bias_is_dead_but_its_conv_is_not() -> None:
    cap = featcheck.capture(defects.make("dead_relu", True), defects.batch())
    assert cap["conv2"].dead_channels() == []
    with pytest.raises(AssertionError) as info:
        featcheck.assert_no_dead_channels(cap, layers=[nn.ReLU, nn.Conv2d])
    table = rows(str(info.value))
    assert list(table) == ["relu2"] and "[1, 3, 6]" in table["relu2"]
    assert "dead channels in 1 of 5 layers" in str(info.value)


def test_saturated_sigmoid_names_layer_channels_and_fraction() -> None:
    cap = featcheck.capture(defects.make("saturated_sigmoid", True), defects.batch())
    assert cap["gate"].saturated_channels() == [0, 4]
    with pytest.raises(AssertionError) as info:
        featcheck.assert_not_saturated(cap)
    table = rows(str(info.value))
    assert list(table) == ["gate"]
    assert "2/6 saturated (worst 100.0% at a bound)" in table["gate"] and "[0, 4]" in table["gate"]


def test_nan_is_reported_at_the_first_layer_that_produced_it() -> None:
    cap = featcheck.capture(defects.make("nan_mid_network", True), defects.batch())
    with pytest.raises(AssertionError, match="the first in call order is 'log'") as info:
        featcheck.assert_finite(cap)
    assert list(rows(str(info.value)))[:2] == ["log", "conv3"]
    featcheck.assert_finite(cap, layers=["conv1", "conv2"])


def test_stride_changed_from_two_to_one_is_caught_with_the_measured_reduction() -> None:
    cap = featcheck.capture(defects.make("stride_1", True), defects.batch())
    with pytest.raises(AssertionError) as info:
        featcheck.assert_strides(cap, ZOO_STRIDES)
    table = rows(str(info.value))
    assert list(table)[0] == "conv2" and "conv1" not in table
    assert "2x2 (32x32 -> 16x16)" in table["conv2"]


def test_extra_pooling_step_is_caught_by_strides_and_shapes() -> None:
    cap = featcheck.capture(defects.make("extra_pooling", True), defects.batch())
    with pytest.raises(AssertionError) as info:
        featcheck.assert_strides(cap, ZOO_STRIDES)
    assert list(rows(str(info.value))) == ["extra", "log", "conv3", "gate"]
    with pytest.raises(AssertionError) as info:
        featcheck.assert_shapes(cap, ZOO_SHAPES)
    assert "(*, 8, 8, 8)  (8, 8, 4, 4)" in rows(str(info.value))["log"]


# -- shapes and strides on real models ---------------------------------------------------------


@pytest.mark.parametrize("size", [224, 225, 200])
def test_resnet_stage_strides_hold_for_sizes_that_do_not_divide(size: int) -> None:
    model = torchvision.models.resnet18(weights=None)
    cap = featcheck.capture(model, torch.randn(1, 3, size, size), layers=["layer?", "fc", "conv1"])
    featcheck.assert_strides(cap, {"conv1": 2, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": (32, 32)})
    with pytest.raises(AssertionError) as info:
        featcheck.assert_strides(cap, {"layer3": 8, "fc": 1})
    table = rows(str(info.value))
    assert set(table) == {"layer3", "fc"} and "no spatial dims" in table["fc"]


def test_shapes_with_wildcards_and_wrong_rank_is_a_failure_not_an_exception() -> None:
    model = torchvision.models.resnet18(weights=None)
    cap = featcheck.capture(model, torch.randn(2, 3, 224, 224), layers=["layer1", "fc"])
    featcheck.assert_shapes(cap, {"layer1": (None, 64, 56, 56), "fc": (None, 1000)})
    with pytest.raises(AssertionError) as info:
        featcheck.assert_shapes(cap, {"layer1": (None, 64, 56), "fc": (2, 100)})
    table = rows(str(info.value))
    assert "(*, 64, 56)  (2, 64, 56, 56)" in table["layer1"] and "(2, 100)" in table["fc"]


def test_unknown_names_in_expectations_and_selectors_raise_with_close_matches() -> None:
    cap = featcheck.capture(defects.make("stride_1", False), defects.batch())
    with pytest.raises(featcheck.LayerNotFoundError, match="'conv2'"):
        featcheck.assert_shapes(cap, {"conv_2": (None, 8, 8, 8)})
    with pytest.raises(featcheck.LayerNotFoundError, match="'relu2'"):
        featcheck.assert_strides(cap, {"rleu2": 4})
    with pytest.raises(featcheck.LayerNotFoundError, match="'gate'"):
        featcheck.assert_no_dead_channels(cap, layers="gat")
    with pytest.raises(TypeError, match="Capture"):
        featcheck.assert_finite({"conv1": None})


def test_saturation_needs_bounds_and_user_bounds_work_for_any_layer() -> None:
    model = defects.make("dead_relu", True)
    cap = featcheck.capture(model, defects.batch())
    with pytest.raises(ValueError, match=r"bounds=\{'relu2': \(low, high\)\}"):
        featcheck.assert_not_saturated(cap, layers="relu2")
    cap = featcheck.capture(model, defects.batch(), bounds={"relu2": (0.0, 10.0)})
    assert cap["relu2"].saturated_channels() == [1, 3, 6]
    with pytest.raises(AssertionError, match="relu2"):
        featcheck.assert_not_saturated(cap, layers="relu2")


def test_dead_verdict_tolerance_is_relative_to_the_layer_scale() -> None:
    model = defects.make("zeroed_filters", False)
    with torch.no_grad():
        model.conv2.weight[3] *= 1e-9  # varies, but only at 1e-9 of the layer's scale
        model.conv2.bias[3] = 0.0
    cap = featcheck.capture(model, defects.batch())
    assert cap["conv2"].dead_channels() == [3]
    assert cap["conv2"].dead_channels(tolerance=1e-12) == []
    with pytest.raises(ValueError, match="fraction"):
        featcheck.assert_no_dead_channels(cap, max_fraction=2)


def test_one_value_per_channel_is_not_judged_dead() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    cap = featcheck.capture(model, torch.randn(1, 4))
    assert cap["0"].dead_channels() == []
    cap = featcheck.capture(model, torch.randn(1, 4).repeat(4, 1))
    assert cap["0"].dead_channels() == [0, 1, 2]


# -- real models: no false alarms, and the true alarms explained --------------------------------

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Sigmoid, nn.Hardsigmoid)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "efficientnet_b0", "convnext_tiny"])
def test_calibrated_random_weight_models_raise_no_false_alarm(arch: str) -> None:
    model = getattr(torchvision.models, arch)(weights=None)
    featcheck.calibrate_batchnorm(model, [torch.randn(16, 3, 224, 224) for _ in range(2)])
    cap = featcheck.capture(model, torch.randn(16, 3, 224, 224))
    assert not cap.default_batchnorm
    featcheck.assert_no_dead_channels(cap, layers=list(ACTIVATIONS))
    if arch == "efficientnet_b0":  # its squeeze-excitation gates are Sigmoids: bounds known
        featcheck.assert_not_saturated(cap)
    else:  # nothing has known bounds: a saturation check over no layer fails, saying so
        with pytest.raises(featcheck.FeatcheckAssertionError, match="nothing to check, no layer .* known output bounds"):
            featcheck.assert_not_saturated(cap)
    featcheck.assert_finite(cap)
    if arch.startswith("resnet"):
        stages = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
        featcheck.assert_strides(featcheck.capture(model, torch.randn(2, 3, 224, 224), layers="layer?"), stages)
        odd = featcheck.capture(model, torch.randn(2, 3, 225, 225), layers="layer?")
        featcheck.assert_strides(odd, stages)
        assert [odd[f"layer{i}"].spatial[0] for i in range(1, 5)] == [57, 29, 15, 8]


def test_uncalibrated_resnet50_really_has_dead_relus_and_the_verdict_says_why() -> None:
    model = torchvision.models.resnet50(weights=None).eval()
    cap = featcheck.capture(model, torch.randn(8, 3, 160, 160), layers=nn.ReLU)
    assert len(cap.default_batchnorm) == 53
    with pytest.warns(UserWarning, match="calibrate_batchnorm"):
        with pytest.raises(AssertionError) as info:
            featcheck.assert_no_dead_channels(cap)
    assert "default running statistics" in str(info.value)
    assert len(rows(str(info.value))) > 30


def test_squeeze_excitation_relus_of_mobilenet_stay_dead_after_calibration() -> None:
    """MobileNetV3's SE blocks squeeze with a 1x1 conv + ReLU and no normalisation: with random
    weights some of those units get a negative input for every image, so they are really dead,
    calibration or not. featcheck reports them; raising the threshold would hide real defects."""
    model = torchvision.models.mobilenet_v3_small(weights=None)
    featcheck.calibrate_batchnorm(model, torch.randn(16, 3, 224, 224))
    cap = featcheck.capture(model, torch.randn(16, 3, 224, 224), layers=nn.ReLU)
    se = [lc.name for lc in cap.values() if lc.dead_channels()]
    assert se and all(re.fullmatch(r"features\.\d+\.block\.\d\.activation", n) for n in se)
    assert all(type(model.get_submodule(n.rsplit(".", 1)[0])).__name__ == "SqueezeExcitation" for n in se)
    featcheck.assert_no_dead_channels(cap, layers=lambda n, m: n not in se)


def test_calibrate_batchnorm_changes_only_running_statistics() -> None:
    model = torchvision.models.resnet18(weights=None).train()
    model.layer1.eval()
    model.bn1.momentum = 0.3
    before = copy.deepcopy(model.state_dict())
    out = featcheck.calibrate_batchnorm(model, (torch.randn(4, 3, 64, 64) for _ in range(2)))
    assert out is model and model.training and not model.layer1.training and model.bn1.momentum == 0.3
    after = model.state_dict()
    for k, v in before.items():
        changed = not torch.equal(v, after[k])
        assert changed == k.endswith(("running_mean", "running_var", "num_batches_tracked")), k
    assert int(model.bn1.num_batches_tracked) == 2
    with pytest.raises(ValueError, match="no batches"):
        featcheck.calibrate_batchnorm(model, [])
    with pytest.raises(TypeError, match="batch"):
        featcheck.calibrate_batchnorm(model, 3)


def test_calibration_is_the_cumulative_average_of_the_batches() -> None:
    model = nn.Sequential(nn.BatchNorm1d(3))
    xs = [torch.randn(5, 3) * 2 + 1, torch.randn(7, 3) - 1]
    featcheck.calibrate_batchnorm(model, xs)
    np.testing.assert_allclose(
        model[0].running_mean.numpy(), torch.stack([x.mean(0) for x in xs]).mean(0).numpy(), rtol=1e-5
    )


def test_an_out_of_range_project_setting_is_named_with_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """The message quoted the per-call argument ("got None") instead of the value it checked."""
    from featcheck import _config, _verdicts

    monkeypatch.setitem(_config._current, "max_dead_fraction", 2.0)
    with pytest.raises(ValueError, match=r"got 2\.0 \(the project-wide setting featcheck_max_dead_fraction\)"):
        _verdicts.fraction(None, "max_dead_fraction")
    with pytest.raises(ValueError, match=r"got 3\.0$"):
        _verdicts.fraction(3, "max_dead_fraction")
