"""A capture's set-up and tear-down (featcheck._walk, featcheck._state): the one walk and the
batched checks give the answers the per-module code gave, and the fast paths keep every
guarantee of "left as found"."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import featcheck
from featcheck import _walk
from featcheck._state import ModelState


def reference_default_layers(model: nn.Module) -> list[str]:
    """The default selection as featcheck defined it with named_modules() (before the walk)."""
    out = []
    for name, m in model.named_modules():
        children = next(m.children(), None) is not None
        own_params = any(p is not None for p in m._parameters.values())
        if not name and children:
            continue
        if not children or own_params:
            out.append(name)
    return out


def reference_default_batchnorm(model: nn.Module) -> list[str]:
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and not m.training
        and m.running_mean is not None
        and m.running_var is not None
        and (m.num_batches_tracked is None or int(m.num_batches_tracked) == 0)
        and not bool(m.running_mean.any())
        and bool((m.running_var == 1).all())
    ]


class Shared(nn.Module):
    """A module reached under two names, a None child, and a leaf holding one parameter twice."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.b = self.a
        self.none = None
        self.tied = nn.Linear(4, 4)
        self.tied.register_parameter("again", self.tied.weight)
        self.attn = nn.MultiheadAttention(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.tied(self.a(x).mean((2, 3)))[None]
        return self.attn(z, z, z)[0]


MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(weights=None),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(weights=None),
    "shared": Shared,
    "leaf": lambda: nn.Conv2d(3, 4, 3),
}


@pytest.mark.parametrize("name", MODELS)
def test_the_walk_names_modules_as_named_modules_does(name: str) -> None:
    model = MODELS[name]()
    walk = _walk.Modules(model)
    expected = list(model.named_modules())
    assert walk.names == [n for n, _ in expected]
    assert all(a is b for a, b in zip(walk.modules, (m for _, m in expected)))
    assert walk.shared == (name == "shared")
    assert _walk.default_layers(walk) == reference_default_layers(model)


def test_default_batchnorm_answers_as_the_per_layer_check() -> None:
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert _walk.default_batchnorm(model) == bns == reference_default_batchnorm(model)
    # one layer off its initial statistics in each way the check knows, the others untouched
    model.features[1].block[0][1].running_mean[3] = 0.5
    model.features[2].block[1][1].running_var[0] = float("nan")
    model.features[3].block[0][1].num_batches_tracked += 1
    model.features[4].block[0][1].train()
    got = _walk.default_batchnorm(model)
    assert got == reference_default_batchnorm(model) and len(got) == len(bns) - 4
    featcheck.calibrate_batchnorm(model, torch.randn(4, 3, 64, 64))
    assert _walk.default_batchnorm(model) == [] == reference_default_batchnorm(model)


def test_default_batchnorm_with_mixed_dtypes_and_no_running_stats() -> None:
    model = nn.Sequential(nn.BatchNorm1d(3), nn.BatchNorm1d(5).half(), nn.BatchNorm1d(4, track_running_stats=False))
    model.eval()
    assert _walk.default_batchnorm(model) == ["0", "1"] == reference_default_batchnorm(model)
    model[1].running_var[4] = 2.0
    assert _walk.default_batchnorm(model) == ["0"] == reference_default_batchnorm(model)


@pytest.mark.parametrize("name", ["resnet18", "shared"])
def test_parameter_counts_are_those_of_module_parameters(name: str) -> None:
    model = MODELS[name]().eval()
    x = torch.randn(2, 3, 16, 16)
    layers = None if name == "resnet18" else ["a", "tied", "attn", "a.0"]
    cap = featcheck.capture(model, x, layers=layers, ops=False)
    modules = dict(model.named_modules())
    assert len(cap.names) > 3
    for rec in (cap[n] for n in cap.names):
        assert rec.params == sum(p.numel() for p in modules[rec.module_name].parameters()), rec.name
    if name == "shared":
        assert cap["tied"].params == 4 * 4 + 4  # the weight registered twice counts once


class Counting(nn.Module):
    """A model whose train() is overridden: the override must run whenever capture sets a mode."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.calls: list[bool] = []

    def train(self, mode: bool = True) -> Counting:
        self.calls.append(mode)
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_train_is_skipped_when_every_flag_already_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[type, bool]] = []
    real = nn.Module.train

    def spy(self: nn.Module, mode: bool = True) -> nn.Module:
        calls.append((type(self), mode))
        return real(self, mode)

    model = torchvision.models.resnet18(weights=None).eval()
    monkeypatch.setattr(nn.Module, "train", spy)
    walk = _walk.Modules(model)
    _walk.set_mode(model, walk, False)
    assert calls == []
    _walk.set_mode(model, walk, True)  # flags differ: train() runs and sets them
    assert calls[0] == (type(model), True) and all(m.training for m in model.modules())
    real(model, False)
    real(model.layer1[0].bn1, True)  # one flag differs
    calls.clear()
    _walk.set_mode(model, walk, False)
    assert calls[0] == (type(model), False) and not any(m.training for m in model.modules())


@pytest.mark.parametrize("start", [False, True])
def test_a_user_override_of_train_is_called_and_the_flags_put_back(start: bool) -> None:
    model = Counting().train(start)
    model.calls.clear()
    featcheck.capture(model, torch.randn(1, 3, 8, 8))
    assert model.calls == [False]
    featcheck.capture(model, torch.randn(1, 3, 8, 8), train=True)
    assert model.calls == [False, True]
    assert model.training is start and model.conv.training is start


class CachesOnChildren(nn.Module):
    """State a forward leaves on modules it does not own: an attribute that was None becomes a
    tensor, an existing tensor attribute of a torch.nn child is rebound, and a buffer is written
    through .data (no version bump)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.last: torch.Tensor | None = None
        self.conv.seen = torch.zeros(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        self.last = y
        self.conv.seen = y.sum().reshape(1)
        self.bn.running_mean.data.add_(1.0)
        return self.bn(y)


def test_attributes_and_buffers_changed_without_a_trace_are_put_back() -> None:
    model = CachesOnChildren().eval()
    seen, mean, version = model.conv.seen, model.bn.running_mean, model.bn.running_mean._version
    featcheck.capture(model, torch.randn(2, 3, 8, 8))
    assert model.last is None and model.conv.seen is seen
    assert model.bn.running_mean is mean and not mean.any() and mean._version == version


def test_a_train_capture_restores_running_statistics_bitwise_and_versions() -> None:
    model = torchvision.models.resnet18(weights=None)
    featcheck.calibrate_batchnorm(model, torch.randn(4, 3, 32, 32))
    model.eval()
    bufs = {n: (b, b.clone(), b._version) for n, b in model.named_buffers()}
    assert any(n.endswith("running_var") for n in bufs)
    featcheck.capture(model, torch.randn(4, 3, 32, 32) * 3 + 1, train=True)
    for n, (b, before, version) in bufs.items():
        assert dict(model.named_buffers())[n] is b
        bits = (b.view(torch.uint8), before.view(torch.uint8)) if b.is_floating_point() else (b, before)
        assert torch.equal(*bits), n
        assert b._version == version, n
    assert not any(m.training for m in model.modules())


def test_restore_after_nothing_changed_writes_nothing() -> None:
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    state = ModelState(model)
    versions = [t._version for t in state.tensors()]
    state.restore()
    assert [t._version for t in state.tensors()] == versions and not state.unrestorable
