"""The capture engine on real torchvision models and the small models in fixtures/."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import featcheck
from fixtures import models


def leaf_calls(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Every leaf module call, in order, named the way featcheck documents."""
    calls: list[str] = []
    names = {m: n for n, m in model.named_modules()}
    seen: dict[str, int] = {}

    def hook(m: nn.Module, i: object, o: object) -> None:
        n = names[m]
        seen[n] = seen.get(n, 0) + 1
        calls.append(n if seen[n] == 1 else f"{n}:{seen[n]}")

    hs = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    return calls


# -- selection ---------------------------------------------------------------------------


def test_default_is_every_leaf_call_in_call_order() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    cap = featcheck.capture(model, x)
    assert [n for n in cap.names if cap[n].op is None] == leaf_calls(model, x)
    assert "layer1.0.relu:2" in cap.names and "layer1.0.relu:3" not in cap.names


def test_reused_module_gets_one_record_per_call_with_stable_names() -> None:
    model = torchvision.models.resnet50(weights=None).eval()
    cap = featcheck.capture(model, torch.randn(1, 3, 64, 64), layers="layer1.0.*")
    relus = [n for n in cap.names if n.startswith("layer1.0.relu")]
    assert relus == ["layer1.0.relu", "layer1.0.relu:2", "layer1.0.relu:3"]
    # each call is its own record: first after bn1 (64 ch), last after the residual add (256 ch)
    assert cap["layer1.0.relu"].channels == 64 and cap["layer1.0.relu:3"].channels == 256
    assert cap["layer1.0.relu:2"].call == 2 and cap["layer1.0.relu:2"].module_name == "layer1.0.relu"


def test_counters_restart_every_forward() -> None:
    model = models.SharedReLU()
    with featcheck.watch(model, layers="relu") as cap:
        for _ in range(3):
            model(torch.randn(2, 3, 4, 4))
    assert cap.names == ["relu", "relu:2", "relu:3"]
    assert [cap[n].samples for n in cap.names] == [6, 6, 6]


def test_selection_by_name_glob_class_predicate_and_mix() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    assert featcheck.capture(model, x, layers="layer1").names == ["layer1"]
    assert featcheck.capture(model, x, layers="layer*.0.conv2").names == [
        f"layer{i}.0.conv2" for i in range(1, 5)
    ]
    convs = featcheck.capture(model, x, layers=nn.Conv2d).names
    assert len(convs) == 20 and all(n.endswith(("conv1", "conv2", "downsample.0")) for n in convs)
    pred = featcheck.capture(model, x, layers=lambda n, m: n.startswith("layer4") and isinstance(m, nn.BatchNorm2d))
    assert pred.names == ["layer4.0.bn1", "layer4.0.bn2", "layer4.0.downsample.1", "layer4.1.bn1", "layer4.1.bn2"]
    mixed = featcheck.capture(model, x, layers=["fc", "layer2", nn.MaxPool2d]).names
    assert mixed == ["maxpool", "layer2", "fc"]


def test_unknown_name_fails_before_any_forward_with_close_matches() -> None:
    model = torchvision.models.resnet18(weights=None)
    ran = []
    model.register_forward_pre_hook(lambda m, a: ran.append(1))
    with pytest.raises(featcheck.LayerNotFoundError) as info:
        featcheck.capture(model, torch.randn(1, 3, 32, 32), layers=["layer1", "layr2.0.conv1"])
    assert not ran
    msg = str(info.value)
    assert "'layr2.0.conv1'" in msg and "'layer2.0.conv1'" in msg
    with pytest.raises(featcheck.LayerNotFoundError, match="pattern 'head.*'"):
        featcheck.capture(model, torch.randn(1, 3, 32, 32), layers="head.*")
    assert isinstance(info.value, KeyError)


def test_bad_selector_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="layers must be"):
        featcheck.capture(models.TinyCNN(), torch.randn(1, 3, 8, 8), layers=3)


def test_capture_lookup_of_missing_layer_names_close_matches() -> None:
    cap = featcheck.capture(models.TinyCNN(), torch.randn(1, 3, 8, 8))
    with pytest.raises(featcheck.LayerNotFoundError, match="'conv1'"):
        cap["conv_1"]


def test_lookup_in_a_watch_that_saw_no_forward_says_so() -> None:
    """Its hint listed no names ("Its names include ."), and other hints listed the root's ''."""
    model = nn.Sequential(nn.Linear(2, 2))
    with featcheck.watch(model) as cap:
        pass
    with pytest.raises(featcheck.LayerNotFoundError, match=r"has no names at all \(nothing was recorded: did a forward pass run\?\)"):
        cap["0"]
    from featcheck import _selection

    assert "Its names include 'a', 'b'." in str(_selection.not_found("zzz", ["", "a", "b"], "m"))


# -- outputs and layouts -------------------------------------------------------------------


def test_non_tensor_outputs_are_flattened_with_key_paths() -> None:
    cap = featcheck.capture(models.NestedOutputs(), torch.randn(2, 6), layers=["split", "heads", "multi"])
    assert cap.names == [
        "split[low]", "split[high]", "multi[feats][0]", "multi[feats][2]", "heads[logits]",
    ]
    assert cap["heads[logits]"].channels == 3 and cap["multi[feats][2]"].key == "[feats][2]"
    assert isinstance(cap.output, models.Result)


class KeysAlike(nn.Module):
    def forward(self, x: torch.Tensor) -> dict:
        return {1: x * 1, "1": x * 2 + 1}


class NamedLikeARepeat(nn.Module):
    """A child registered as ``relu:2`` beside two F.relu calls of the root."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.add_module("relu:2", nn.Sigmoid())
        self.heads = KeysAlike()

    def forward(self, x: torch.Tensor) -> dict:
        y = nn.functional.relu(nn.functional.relu(self.lin(x)) * 2)
        return self.heads(getattr(self, "relu:2")(y))


def test_outputs_whose_names_would_collide_get_names_of_their_own() -> None:
    """Two tensors under one name were merged into one record (count doubled, a mean halfway
    between them): dict keys that print alike, and an op named like a module called ``relu:2``."""
    torch.manual_seed(0)
    model = NamedLikeARepeat().eval()
    x = torch.randn(2, 4)
    cap = featcheck.capture(model, x)
    assert cap.names == ["lin", "relu()", "mul", "relu():2", "relu:2", "heads[1]", "heads[1~str]"]
    assert cap["relu:2"].module_type == "Sigmoid" and cap["relu():2"].op == "relu"
    assert all(r.stats["count"].tolist() == [2] * 4 for r in cap.values())  # one tensor each
    with torch.no_grad():
        out = model(x)
    np.testing.assert_allclose(cap["heads[1~str]"].stats["mean"], out["1"].mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(cap["heads[1]"].stats["mean"], out[1].mean(0).numpy(), rtol=1e-6)
    assert featcheck.capture(model, x, ops=False).names == ["lin", "relu:2", "heads[1]", "heads[1~str]"]


def test_dict_outputs_of_a_segmentation_model() -> None:
    model = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, aux_loss=True
    ).eval()
    cap = featcheck.capture(model, torch.randn(1, 3, 96, 96), layers=["backbone", "*classifier"])
    assert cap.names == ["backbone[aux]", "backbone[out]", "classifier", "aux_classifier"]
    assert cap["backbone[out]"].channels == 960 and cap["backbone[out]"].stride == (16.0, 16.0)
    assert cap["backbone[aux]"].channels == 40 and cap["backbone[aux]"].stride == (8.0, 8.0)
    assert cap["backbone[out]"].key == "[out]" and cap["backbone[out]"].module_name == "backbone"
    assert set(cap.output) == {"out", "aux"}
    full = featcheck.capture(model, torch.randn(1, 3, 96, 96))
    assert len(full) > 100 and all(isinstance(n, str) for n in full)


def test_token_sequences_of_a_vision_transformer() -> None:
    model = torchvision.models.vit_b_16(weights=None).eval()
    cap = featcheck.capture(model, torch.randn(1, 3, 224, 224))
    assert cap["conv_proj"].channels == 768 and cap["conv_proj"].stride == (16.0, 16.0)
    attn = cap["encoder.layers.encoder_layer_0.self_attention[0]"]
    assert attn.shape == (1, 197, 768) and attn.channel_dim == 2 and attn.stride is None
    gelu = cap["encoder.layers.encoder_layer_0.mlp.1"]
    assert gelu.channels == 3072
    assert cap["heads.head"].channels == 1000
    # the sample is stored channels first: [C, L]
    assert tuple(attn.sample.shape) == (768, 197)


def test_channels_last_blocks_of_convnext_report_true_channels() -> None:
    model = torchvision.models.convnext_tiny(weights=None).eval()
    cap = featcheck.capture(model, torch.randn(1, 3, 224, 224), layers="features.1.0*")
    gelu = cap["features.1.0.block.4"]
    assert gelu.module_type == "GELU" and gelu.shape == (1, 56, 56, 384)
    assert gelu.channels == 384 and gelu.channel_dim == 3 and gelu.stride == (4.0, 4.0)
    assert cap["features.1.0.block.0"].channels == 96 and cap["features.1.0.block.0"].channel_dim == 1
    assert cap["features.1.0"].channels == 96
    down = featcheck.capture(model, torch.randn(1, 3, 64, 64), layers="features.2.0")["features.2.0"]
    assert down.module_type == "LayerNorm2d" and down.channels == 96 and down.channel_dim == 1


def test_conv1d_and_channel_dim_override() -> None:
    model = models.Conv1dNet()
    cap = featcheck.capture(model, torch.randn(3, 2, 40))
    assert cap["act"].channels == 6 and cap["act"].stride == (2.0,)
    over = featcheck.capture(model, torch.randn(3, 2, 40), channel_dim={"act": -1})
    assert over["act"].channels == 20 and over["conv"].channels == 6
    with pytest.raises(ValueError, match="out of range"):
        featcheck.capture(model, torch.randn(3, 2, 40), channel_dim=5)


def test_mobilenet_v3_small_records_every_layer_with_bounds_for_hard_sigmoid() -> None:
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    cap = featcheck.capture(model, torch.randn(2, 3, 96, 96))
    scale = cap["features.1.block.1.scale_activation"]
    assert scale.module_type == "Hardsigmoid" and scale.bounds == (0.0, 1.0)
    assert scale.shape == (2, 16, 1, 1) and "upper_fraction" in scale.stats
    assert "upper_fraction" not in cap["features.0.0"].stats
    assert cap["classifier.3"].channels == 1000


# -- truthfulness ----------------------------------------------------------------------------


def test_conv_output_overwritten_by_inplace_relu_reports_pre_relu_values() -> None:
    model = torchvision.models.vgg11(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    assert model.features[1].inplace
    cap = featcheck.capture(model, x, layers=["features.0", "features.1"])
    with torch.no_grad():
        ref = model.features[0](x)
    conv = cap["features.0"].stats
    np.testing.assert_allclose(conv["min"], ref.amin((0, 2, 3)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(conv["mean"], ref.mean((0, 2, 3)).numpy(), rtol=1e-4, atol=1e-6)
    assert (conv["min"] < 0).all()
    assert (cap["features.1"].stats["min"] >= 0).all()
    assert cap["features.0"].sample.min() < 0


def test_bn_output_before_residual_add_and_relu_is_what_bn_produced() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    seen = {}
    h = model.layer1[0].bn2.register_forward_hook(lambda m, i, o: seen.update(v=o.clone()))
    with torch.no_grad():
        model(x)
    h.remove()
    cap = featcheck.capture(model, x, layers="layer1.0.bn2")
    st = cap["layer1.0.bn2"].stats
    ref = seen["v"]
    np.testing.assert_allclose(st["min"], ref.amin((0, 2, 3)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(st["std"], ref.std((0, 2, 3), correction=0).numpy(), rtol=1e-4)
    np.testing.assert_allclose(st["zero_fraction"], (ref == 0).double().mean((0, 2, 3)).numpy())
    assert (st["min"] < 0).all()


# -- state restoration -------------------------------------------------------------------------


def test_model_is_left_as_found_after_an_exception_in_forward() -> None:
    model = models.FailsInForward()
    model.train()
    model.bn.eval()  # mixed modes must come back exactly
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match="boom"):
        featcheck.capture(model, torch.randn(2, 3, 8, 8), train=True)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert model.training and model.conv.training and not model.bn.training and model.drop.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_batchnorm_in_train_mode_keeps_its_running_statistics() -> None:
    model = torchvision.models.resnet18(weights=None)
    model.train()
    before = copy.deepcopy(model.state_dict())
    cap = featcheck.capture(model, torch.randn(4, 3, 64, 64) * 3 + 1, train=True)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # train mode really was used: batch statistics make bn1's output zero-mean per channel
    np.testing.assert_allclose(cap["bn1"].stats["mean"], model.bn1.bias.detach().numpy(), atol=1e-5)


def test_capture_runs_in_eval_mode_without_grad_and_restores_train_mode() -> None:
    model = models.TinyCNN().train()
    modes = []
    model.bn1.register_forward_pre_hook(lambda m, a: modes.append((m.training, torch.is_grad_enabled())))
    cap = featcheck.capture(model, torch.randn(2, 3, 16, 16))
    assert modes == [(False, False)] and model.training
    assert not cap.output.requires_grad
    cap = featcheck.capture(model, torch.randn(2, 3, 16, 16), grad=True)
    assert cap.output.requires_grad


def test_watch_removes_hooks_and_leaves_training_to_the_user() -> None:
    model = models.TinyCNN().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with featcheck.watch(model, layers=nn.Conv2d) as cap:
        for _ in range(2):
            loss = model(torch.randn(4, 3, 16, 16)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert cap.forwards == 2 and cap.names == ["conv1", "conv2"]
    assert cap["conv1"].samples == 8
    assert int(model.bn1.num_batches_tracked) == 2
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


# -- accumulation -------------------------------------------------------------------------------


def test_watch_over_batches_equals_capture_of_the_concatenated_batch() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    batches = [torch.randn(n, 3, 48, 48) for n in (3, 1, 4)]
    with featcheck.watch(model, layers=["conv1", "layer1.0.relu", "layer3.1.bn2", "fc"]) as cap:
        with torch.no_grad():
            for xb in batches:
                model(xb)
    one = featcheck.capture(model, torch.cat(batches), layers=["conv1", "layer1.0.relu", "layer3.1.bn2", "fc"])
    assert cap.forwards == 3
    for name in ["conv1", "layer1.0.relu:2", "layer3.1.bn2", "fc"]:
        a, b = cap[name], one[name]
        assert a.samples == b.samples == 8 and a.forwards == 3
        for k in ("min", "max", "mean", "std", "zero_fraction", "count"):
            np.testing.assert_allclose(a.stats[k], b.stats[k], rtol=1e-4, atol=1e-6, err_msg=f"{name} {k}")
    # the rendering sample is the first sample of the first forward
    assert torch.equal(cap["conv1"].sample[:, :4, :4], one["conv1"].sample[:, :4, :4])


def test_every_record_of_a_watch_equals_the_capture_of_the_concatenated_batch() -> None:
    """Every record, modules and operations, merged over forwards (small maps: the C kernel's
    blocks, merged into each record's total at every commit and reused) equals one capture."""
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    batches = [torch.randn(n, 3, 40, 40) for n in (2, 3, 1, 2)]
    with featcheck.watch(model) as cap:
        with torch.no_grad():
            for xb in batches:
                model(xb)
    one = featcheck.capture(model, torch.cat(batches))
    assert cap.names == one.names and len(cap.names) > 150 and any(cap[n].op for n in cap.names)
    for name in cap.names:
        a, b = cap[name], one[name]
        assert a.forwards == 4 and a.samples == b.samples
        for k in ("min", "max", "mean", "std", "zero_fraction", "count", "nonfinite"):
            np.testing.assert_allclose(a.stats[k], b.stats[k], rtol=1e-4, atol=1e-5, err_msg=f"{name} {k}")


# -- geometry and samples -----------------------------------------------------------------------


@pytest.mark.parametrize("size,expected", [(224, [4, 8, 16, 32]), (225, [225 / 57, 225 / 29, 225 / 15, 225 / 8])])
def test_measured_strides_of_resnet_stages(size, expected) -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    cap = featcheck.capture(model, torch.randn(1, 3, size, size), layers="layer?")
    assert [cap[f"layer{i}"].stride for i in range(1, 5)] == [(e, e) for e in expected]
    assert cap["layer4"].input_size == (size, size) and cap["layer4"].spatial == (size // 32 + (size % 32 > 0),) * 2


def test_sample_is_first_sample_channels_first_and_downsampled_saying_so() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 224, 224)
    cap = featcheck.capture(model, x, layers=["conv1", "layer4", "fc"])
    conv1 = cap["conv1"]
    assert conv1.shape == (2, 64, 112, 112) and conv1.sample_step == (4, 4)
    assert tuple(conv1.sample.shape) == (64, 28, 28) and conv1.sample.device.type == "cpu"
    with torch.no_grad():
        ref = model.conv1(x)[0, :, ::4, ::4]
    torch.testing.assert_close(conv1.sample, ref)
    assert cap["layer4"].sample_step == (1, 1) and tuple(cap["layer4"].sample.shape) == (512, 7, 7)
    assert tuple(cap["fc"].sample.shape) == (1000,)
    assert featcheck.capture(model, x, layers="fc", keep_samples=False)["fc"].sample is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models(dtype) -> None:
    model = models.TinyCNN().eval().to(dtype)
    cap = featcheck.capture(model, torch.randn(4, 3, 16, 16, dtype=dtype))
    conv = cap["conv1"]
    assert conv.dtype == str(dtype) and conv.stats["mean"].dtype == np.float64
    with torch.no_grad():
        ref = model.conv1(torch.randn(4, 3, 16, 16, dtype=dtype))
    assert np.isfinite(conv.stats["std"]).all() and conv.sample.dtype == torch.float32
    assert conv.channels == ref.shape[1]


def test_batch_of_one_and_a_model_that_is_itself_a_leaf() -> None:
    conv = nn.Conv2d(3, 5, 3)
    cap = featcheck.capture(conv, torch.randn(1, 3, 9, 9))
    assert cap.names == [""] and cap[""].channels == 5 and cap[""].samples == 1


# -- wrappers -------------------------------------------------------------------------------------


def test_torch_compile_wrapper_is_inspected_eagerly() -> None:
    model = models.TinyCNN().eval()
    compiled = torch.compile(model)
    cap = featcheck.capture(compiled, torch.randn(2, 3, 16, 16))
    assert "conv1" in cap and "torch.compile" in cap.note
    with pytest.warns(UserWarning, match="_orig_mod"):
        with featcheck.watch(compiled, layers="conv1") as w:
            model(torch.randn(2, 3, 16, 16))
    assert w["conv1"].samples == 2


def test_data_parallel_wrapper_inspects_the_module() -> None:
    model = models.TinyCNN().eval()
    cap = featcheck.capture(nn.DataParallel(model), torch.randn(2, 3, 16, 16))
    assert cap.names[0] == "conv1" and "DataParallel" in cap.note


def test_distributed_data_parallel_wrapper_inspects_the_module(tmp_path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdv'}", rank=0, world_size=1)
    try:
        model = nn.parallel.DistributedDataParallel(models.TinyCNN())
        cap = featcheck.capture(model, torch.randn(2, 3, 16, 16))
        assert "fc" in cap and "DistributedDataParallel" in cap.note
    finally:
        dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_is_refused_clearly() -> None:
    scripted = torch.jit.script(models.TinyCNN())
    with pytest.raises(TypeError, match="TorchScript"):
        featcheck.capture(scripted, torch.randn(1, 3, 8, 8))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        featcheck.capture(lambda x: x, torch.randn(1))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
def test_a_model_holding_torchscript_modules_is_refused_clearly_and_left_alone() -> None:
    """A traced or scripted submodule crashed capture and watch with an internal TypeError
    (TorchScript's registries are not dicts); now they are named, before anything runs."""
    model = nn.Sequential(
        nn.Linear(4, 4), torch.jit.trace(nn.Linear(4, 4), torch.randn(1, 4)), nn.Sequential(torch.jit.script(nn.ReLU()))
    )
    before = copy.deepcopy(model.state_dict())
    for inspect in (lambda: featcheck.capture(model, torch.randn(2, 4)), lambda: featcheck.watch(model).__enter__()):
        with pytest.raises(TypeError, match=r"holding TorchScript modules \('1', '2.0'\).*Put the eager nn.Module"):
            inspect()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not torch.nn.modules.module._global_forward_hooks and not torch.nn.modules.module._global_forward_pre_hooks
    assert len(featcheck.capture(model[0], torch.randn(2, 4))) == 1  # its eager parts still can be


def test_bad_bounds_and_tolerance_are_rejected() -> None:
    with pytest.raises(ValueError, match="low < high"):
        featcheck.capture(models.TinyCNN(), torch.randn(1, 3, 8, 8), bounds={"relu1": (1, 0)})
    with pytest.raises(ValueError, match="saturation_tol"):
        featcheck.capture(models.TinyCNN(), torch.randn(1, 3, 8, 8), saturation_tol=0.7)
