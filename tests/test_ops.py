"""Operations recorded like modules (issue 10), in process, on real models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.overrides import TorchFunctionMode

import featcheck
from fixtures import functional as fx
from fixtures.hooks import no_common_hooks, no_wrappers


def _no_hooks(model: nn.Module) -> bool:
    return no_common_hooks() and no_wrappers(model) and all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._forward_hooks_always_called
        for m in model.modules()
    )


def _module_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Today's module records, computed independently: every leaf module in call order, repeats
    as ``:2``, ``:3``."""
    names: list[str] = []
    counts: dict[str, int] = {}
    handles = []
    for name, m in model.named_modules():
        if next(m.children(), None) is None:
            def hook(m: nn.Module, a: object, o: object, name: str = name) -> None:
                counts[name] = counts.get(name, 0) + 1
                names.append(name if counts[name] == 1 else f"{name}:{counts[name]}")
            handles.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return names


# -- the functional model of the issue ---------------------------------------------------------


def test_functional_relu_dead_channels_are_named() -> None:
    x = torch.randn(4, 3, 16, 16)
    cap = featcheck.capture(fx.Net(dead=True), x)
    assert cap["relu:2"].op == "relu" and cap["relu:2"].module_type == "relu()"
    with pytest.raises(AssertionError) as e:
        featcheck.assert_no_dead_channels(cap, layers=F.relu)
    assert "relu:2" in str(e.value) and "[1, 4]" in str(e.value)
    assert cap["relu:2"].dead_channels() == [1, 4]
    featcheck.assert_no_dead_channels(featcheck.capture(fx.Net(dead=False), x))


def test_ops_false_is_todays_module_record_list_for_resnet18() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    module_only = featcheck.capture(model, x, ops=False)
    assert module_only.names == _module_order(model, x)
    assert not any(lc.op for lc in module_only.values())
    with_ops = featcheck.capture(model, x)
    assert [n for n in with_ops.names if with_ops[n].op is None] == module_only.names
    for n in module_only.names:  # module records are not changed by recording operations
        a, b = module_only[n], with_ops[n]
        assert (a.shape, a.channel_dim, a.stride) == (b.shape, b.channel_dim, b.stride)
        for k in a.stats:
            np.testing.assert_array_equal(a.stats[k], b.stats[k])
    assert [n for n in with_ops.names if with_ops[n].op] == [
        f"layer{i}.{j}.add" for i in range(1, 5) for j in range(2)
    ]


def test_resnet18_residual_add_reports_values_before_the_inplace_relu() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    block = model.layer1[0]
    seen: dict[str, torch.Tensor] = {}
    h1 = block.register_forward_pre_hook(lambda m, a: seen.__setitem__("identity", a[0].clone()))
    h2 = block.bn2.register_forward_hook(lambda m, a, o: seen.__setitem__("bn2", o.clone()))
    with torch.no_grad():
        model(x)
    h1.remove(), h2.remove()
    ref = (seen["bn2"] + seen["identity"]).double()
    assert ref.min() < 0  # the in-place ReLU after the add would change these values
    st = featcheck.capture(model, x)["layer1.0.add"].stats
    np.testing.assert_allclose(st["min"], ref.amin((0, 2, 3)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(st["max"], ref.amax((0, 2, 3)).numpy(), rtol=1e-6)
    np.testing.assert_allclose(st["mean"], ref.mean((0, 2, 3)).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(st["std"], ref.std((0, 2, 3), correction=0).numpy(), rtol=1e-4)


def test_inplace_ops_report_what_they_produced() -> None:
    model = fx.Residual().eval()
    x = torch.randn(2, 4, 8, 8)
    cap = featcheck.capture(model, x)
    assert cap.names == ["a.conv", "a.mul", "a.add", "a.relu", "b.conv", "b.mul", "b.add", "b.relu"]
    with torch.no_grad():
        added = model.a.conv(x) * 2 + x
    np.testing.assert_allclose(cap["a.add"].stats["min"], added.amin((0, 2, 3)).numpy(), rtol=1e-6)
    assert (cap["a.add"].stats["min"] < 0).any()
    np.testing.assert_allclose(cap["a.relu"].stats["max"], added.relu().amax((0, 2, 3)).numpy(), rtol=1e-6)
    assert (cap["a.relu"].stats["min"] >= 0).all()


def test_densenet121_concatenations_add_channels() -> None:
    model = torchvision.models.densenet121(weights=None).eval()
    cap = featcheck.capture(model, torch.randn(1, 3, 64, 64), layers=torch.cat)
    block1 = [f"features.denseblock1.denselayer{k}.cat" for k in range(1, 7)]
    assert [cap[n].channels for n in block1] == [64 + 32 * k for k in range(6)]
    assert cap["features.denseblock1.cat"].channels == 256
    assert cap["features.denseblock4.cat"].channels == 1024
    assert all(lc.op == "cat" and lc.channel_dim == 1 for lc in cap.values())
    assert len(cap) == sum(n for n in (6, 12, 24, 16)) + 4


def test_fpn_interpolate_and_add_are_recorded() -> None:
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None)
    backbone = model.backbone.eval()
    cap = featcheck.capture(backbone, torch.randn(1, 3, 224, 224), layers="fpn.*")
    up, add = cap["fpn.interpolate"], cap["fpn.add"]
    assert up.channels == add.channels == 256
    assert up.shape == add.shape == cap["fpn.inner_blocks.0.0"].shape
    assert add.op == "add" and up.op == "interpolate"


def test_functional_nan_is_named_at_the_op() -> None:
    cap = featcheck.capture(fx.LogNet(), torch.randn(2, 3, 8, 8))
    with pytest.raises(AssertionError, match="the first in call order is 'log'"):
        featcheck.assert_finite(cap)


def test_loop_repeats_get_call_counters_that_restart_per_forward() -> None:
    model = fx.LoopNet(steps=3)
    with featcheck.watch(model) as cap:
        with torch.no_grad():
            model(torch.randn(2, 4, 8, 8))
            model(torch.randn(2, 4, 8, 8))
    assert cap.names == ["conv", "tanh", "conv:2", "tanh:2", "conv:3", "tanh:3"]
    assert all(lc.forwards == 2 and lc.samples == 4 for lc in cap.values())
    assert cap["tanh:3"].bounds == (-1.0, 1.0)  # saturation counted for tanh, as for nn.Tanh


# -- leaving nothing behind, changing nothing -------------------------------------------------


class Boom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x)) + 1
        raise RuntimeError("boom")


class Logger(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.calls.append(getattr(func, "__name__", repr(func)))
        return func(*args, **(kwargs or {}))


def test_no_mode_or_hook_left_after_an_exception() -> None:
    model = Boom()
    before = torch._C._len_torch_function_stack()
    with pytest.raises(RuntimeError, match="boom"):
        featcheck.capture(model, torch.randn(1, 3, 4, 4))
    assert torch._C._len_torch_function_stack() == before and _no_hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        with featcheck.watch(model):
            model(torch.randn(1, 3, 4, 4))
    assert torch._C._len_torch_function_stack() == before and _no_hooks(model)
    with Logger() as user:  # the user's mode stays, alone, where it was
        with featcheck.watch(model) as cap:
            with pytest.raises(RuntimeError, match="boom"):
                model(torch.randn(1, 3, 4, 4))
            assert torch._C._len_torch_function_stack() == 1
            assert torch._C._get_function_stack_at(0) is user
        assert cap.forwards == 0 and len(cap) == 0
    assert torch._C._len_torch_function_stack() == before and _no_hooks(model)


class ModeInForward(nn.Module):
    """A forward that enters torch function modes itself, around layers: ``torch.device(...)``
    (a mode), the user's own, and one around torch's fused attention."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.logger = Logger()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.device("cpu"):
            y = self.conv(x)
            y = y * 2  # an op under the user's mode: recorded too
        with self.logger:
            y = self.block(y) + y
        t = y.flatten(2).transpose(1, 2)
        with torch.device("cpu"):
            t = self.attn(t, t, t, need_weights=False)[0]
        return F.relu(t)


def test_modes_the_forward_enters_itself_stay_the_users_and_leave_with_it() -> None:
    """A mode entered inside forward around a leaf lies above featcheck's: featcheck's stays under
    it (taken out and put back on top, it was what the user's ``__exit__`` popped, and the user's
    mode stayed on the stack after the capture, featcheck's lost for the rest of the forward)."""
    torch.manual_seed(0)
    model = ModeInForward().eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        ref = model(x)
        plain_calls = list(model.logger.calls)
    model.logger.calls.clear()
    cap = featcheck.capture(model, x)
    assert torch._C._len_torch_function_stack() == 0 and _no_hooks(model)
    assert torch.equal(cap.output, ref)  # the fused attention's path as in a plain forward under the mode
    assert model.logger.calls == plain_calls  # the user's mode saw what it sees without featcheck
    assert {"mul", "add", "relu"} <= set(cap.names) and "block.1" in cap.names
    with featcheck.watch(model, layers="relu") as w:
        for _ in range(3):
            model(x)
            assert torch._C._len_torch_function_stack() == 0  # nothing between forwards, the user's modes gone with their blocks
    assert w["relu"].forwards == 3 and torch._C._len_torch_function_stack() == 0


def test_user_modes_see_the_same_calls_and_none_of_featchecks() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        with Logger() as plain:
            model(x)
        with Logger() as inside, featcheck.watch(model) as cap:
            model(x)
    assert cap["layer1.0.add"].forwards == 1
    assert inside.calls == plain.calls


@pytest.mark.parametrize("train", [False, True])
def test_user_modes_see_none_of_captures_snapshot_and_restore(train: bool) -> None:
    """capture's snapshot of the model, its mode switch and its restore (which writes BatchNorm's
    running statistics back after a train=True forward) ran under the user's mode: it saw dozens
    of featcheck's calls (``__get__``, ``is_contiguous``, ``data_ptr``, ``copy_``...)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    twin = copy.deepcopy(model).train(train)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), Logger() as plain:
        twin(x)
    with Logger() as inside:
        cap = featcheck.capture(model, x, train=train)
    assert cap["layer1.0.add"].forwards == 1 and not model.training
    assert inside.calls == plain.calls
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), copy.deepcopy(model).state_dict().values()))


@pytest.mark.parametrize("name", ["resnet18", "convnext_tiny", "vit_b_32", "mobilenet_v3_small", "transformer"])
def test_outputs_are_bitwise_equal_to_a_plain_forward(name: str) -> None:
    torch.manual_seed(0)
    if name == "transformer":  # torch's fused fast path runs only without an active mode
        layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        model: nn.Module = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
        x = torch.randn(2, 10, 32)
    else:
        model = getattr(torchvision.models, name)(weights=None).eval()
        x = torch.randn(1, 3, 64 if name != "vit_b_32" else 224, 64 if name != "vit_b_32" else 224)
    with torch.no_grad():
        ref = model(x)
    assert torch.equal(featcheck.capture(model, x).output, ref)
    with torch.inference_mode():
        with featcheck.watch(model) as cap:
            out = model(x)
    assert torch.equal(out, ref) and cap.forwards == 1
    grad_ref = model(x)  # with autograd on, torch's fused fast path is off anyway
    grad_out = featcheck.capture(model, x, grad=True).output
    assert torch.equal(grad_out.detach(), grad_ref.detach()) and grad_out.requires_grad


def test_fused_module_ops_are_not_recorded_but_ops_around_them_are() -> None:
    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.mha(x, x, x, need_weights=False)[0]

    cap = featcheck.capture(Attn().eval(), torch.randn(2, 5, 8))
    assert cap.names == ["mha[0]", "add"]
    assert cap["add"].channel_dim == 2 and cap["add"].channels == 8


# -- channel axis ---------------------------------------------------------------------------


class Shapes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        last = F.gelu(y.permute(0, 2, 3, 1))         # channels moved to the last dim
        flat = torch.sigmoid(self.pool(y).flatten(1))  # [N, C, 1, 1] -> [N, C] keeps C
        over = torch.exp(y.mean(1))                    # a reduction over channels has none
        cat = torch.cat([y, y], 1) * 1.5               # cat along channels adds them
        return last.sum() + flat.sum() + over.sum() + cat.sum()


def test_channel_axis_follows_permute_flatten_reductions_and_cat() -> None:
    cap = featcheck.capture(Shapes(), torch.randn(2, 3, 5, 7))
    assert (cap["gelu"].channel_dim, cap["gelu"].channels) == (3, 6)
    assert (cap["sigmoid"].channel_dim, cap["sigmoid"].channels) == (1, 6)
    assert cap["exp"].channels == 1 and cap["exp"].channel_dim is None
    assert (cap["cat"].channels, cap["mul"].channels) == (12, 12)
    assert "sum" not in cap  # 0-d results are not recorded
    assert cap["sigmoid"].bounds == (0.0, 1.0)


def test_convnext_layer_scale_mul_keeps_the_block_channels() -> None:
    model = torchvision.models.convnext_tiny(weights=None).eval()
    cap = featcheck.capture(model, torch.randn(1, 3, 64, 64), layers="features.1.0.*")
    assert cap["features.1.0.mul"].channels == 96 and cap["features.1.0.mul"].channel_dim == 1
    assert cap["features.1.0.block.4"].channels == 384


# -- names and selection ----------------------------------------------------------------------


class Collide(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.relu(self.conv(x)) - 0.5)


def test_op_names_that_collide_with_module_names_get_the_marker() -> None:
    cap = featcheck.capture(Collide(), torch.randn(1, 3, 4, 4))
    assert cap.names == ["conv", "relu", "sub", "relu()"]
    assert cap["relu"].op is None and cap["relu()"].op == "relu"
    assert [lc.name for lc in cap.select(nn.ReLU)] == ["relu"]
    assert [lc.name for lc in cap.select(F.relu)] == ["relu()"]
    assert [lc.name for lc in cap.select(lambda n, m: True)] == ["conv", "relu"]  # predicates: modules


def test_function_selectors_are_never_called_and_names_are_checked_after_the_forward() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 32, 32)
    cap = featcheck.capture(model, x, layers=[nn.ReLU, torch.add])
    assert {lc.op or lc.module_type for lc in cap.values()} == {"ReLU", "add"}
    assert featcheck.capture(model, x, layers="layer*.add").names == [
        f"layer{i}.{j}.add" for i in range(1, 5) for j in range(2)
    ]
    assert featcheck.capture(model, x, layers="layer1.1.add", bounds={"layer1.1.add": (0, 9)})["layer1.1.add"].bounds == (0, 9)
    with pytest.raises(featcheck.LayerNotFoundError, match="'layer1.0.mul' matches nothing in the modules and operations"):
        featcheck.capture(model, x, layers="layer1.0.mul")  # could be an op: checked after the forward
    ran = []
    handle = model.register_forward_pre_hook(lambda m, a: ran.append(1))
    with pytest.raises(featcheck.LayerNotFoundError, match="'layer1.0.addd'"):
        featcheck.capture(model, x, layers="layer1.0.addd")  # no op is called addd: a typo, before any forward
    with pytest.raises(featcheck.LayerNotFoundError, match="'layer9.add'"):
        featcheck.capture(model, x, layers="layer9.add")  # no module layer9
    handle.remove()
    assert not ran
    with pytest.raises(featcheck.LayerNotFoundError, match="bounds"):
        featcheck.capture(model, x, bounds={"layer1.0.nope": (0, 1)})
    with pytest.raises(featcheck.LayerNotFoundError):  # module-only: checked before the forward
        featcheck.capture(model, x, layers="layer1.0.add", ops=False)
    with pytest.raises(featcheck.LayerNotFoundError, match="layer9"):
        with featcheck.watch(model, layers=["layer1", "layer9.*"]):
            model(x)
    with pytest.raises(TypeError, match="ops must be True or False"):
        featcheck.capture(model, x, ops="yes")


def test_checks_take_op_selectors() -> None:
    cap = featcheck.capture(fx.Net(dead=True), torch.randn(2, 3, 8, 8))
    featcheck.assert_shapes(cap, {"relu*": (None, 8, 8, 8)})
    featcheck.assert_strides(cap, {"relu:2": 1})
    with pytest.raises(AssertionError, match="relu:2"):
        featcheck.assert_no_dead_channels(cap, layers=[nn.ReLU, F.relu])
    assert [lc.name for lc in cap.select("relu")] == ["relu", "relu:2"]  # every call, as for modules
    featcheck.assert_no_dead_channels(cap, layers=["conv1", "conv2"])


def test_op_name_normalisation() -> None:
    from featcheck._ops import name_and_inplace

    assert name_and_inplace(torch.Tensor.add_) == ("add", True)
    assert name_and_inplace(torch.Tensor.__iadd__) == ("add", True)
    assert name_and_inplace(torch.Tensor.__radd__) == ("add", False)
    assert name_and_inplace(torch.Tensor.__rsub__) == ("sub", False)
    assert name_and_inplace(torch.Tensor.__truediv__) == ("div", False)
    assert name_and_inplace(torch.concat) == ("cat", False)
    assert name_and_inplace(F.relu) == ("relu", False)


class Custom(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def,override]
        return torch.sigmoid(x * 2)

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def,override]
        return g


@torch.compile(backend="eager")
def _compiled_helper(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) * 3


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(_compiled_helper(Custom.apply(self.conv(x))))


def test_custom_functions_and_compiled_helpers_keep_results_and_leave_nothing() -> None:
    model = Mixed().eval()
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        ref = model(x)
    cap = featcheck.capture(model, x)
    assert torch.equal(cap.output, ref)
    assert cap.names[0] == "conv" and cap.names[-1] == "relu"
    assert {"mul", "sigmoid"} <= set(cap.names)  # a custom Function's forward reads as inline code
    assert torch._C._len_torch_function_stack() == 0 and _no_hooks(model)


# -- selectors that are modules or torch functions are never called ------------------------------


class _Gate(nn.Module):
    """Counts its forwards; called as a predicate ``(name, module)`` it would count one more."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor, ctx: object = None) -> torch.Tensor:
        self.calls += 1
        return torch.sigmoid(self.fc(x)) if isinstance(x, torch.Tensor) else False  # type: ignore[return-value]


class _Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.gate = _Gate()
        self.shared = self.stem  # one module under two names: recorded as "stem"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(torch.relu(self.stem(x)))


class _Activations(nn.Module):
    """Calls torch functions that get_overridable_functions() does not list (F.hardswish, F.tanh,
    torch.sigmoid_, torch.clamp_, F.relu_, torch.exp_) and Python operators."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        a = F.hardswish(h)
        b = F.tanh(h)
        c = torch.sigmoid_(h * 1.5)
        d = torch.clamp_(h - 0.5, -1.0, 1.0)
        e = F.relu_(h - 100.0)  # dead: every channel is 0
        out = a + b
        out += c
        return torch.exp_(out + d + e)


def _forwards(model: nn.Module) -> list[int]:
    ran: list[int] = []
    model.register_forward_pre_hook(lambda m, a: ran.append(1))
    return ran


def test_module_instances_select_their_records_and_are_never_called() -> None:
    model = _Gated().eval()
    x = torch.randn(2, 4)
    cap = featcheck.capture(model, x, layers=model.gate)
    assert cap.names == ["gate"] and model.gate.calls == 1  # one forward, no call as a predicate
    assert featcheck.capture(model, x, layers=model.stem).names == ["stem"]  # Linear: was a TypeError
    assert featcheck.capture(model, x, layers=model.shared).names == ["stem"]  # by identity
    assert featcheck.capture(model, x, layers=[model.gate.fc, "stem", F.relu]).names == ["stem", "relu", "gate.fc"]
    assert model.gate.calls == 4
    with featcheck.watch(model, layers=[model.gate, model.gate.fc]) as watched:
        model(x)
        model(x)
    assert watched.names == ["gate.fc", "gate"] and watched["gate"].forwards == 2
    assert model.gate.calls == 6
    full = featcheck.capture(model, x, layers=[nn.Linear, _Gate, F.relu])
    assert [lc.name for lc in full.select(model.gate.fc)] == ["gate.fc"]
    assert [lc.name for lc in full.select([model.gate, F.relu])] == ["relu", "gate"]
    featcheck.assert_finite(full, layers=model.gate)
    featcheck.assert_finite(cap, layers=[model.gate])
    assert model.gate.calls == 7


def test_module_instances_not_in_the_model_raise_before_any_forward() -> None:
    model = _Gated().eval()
    x = torch.randn(2, 4)
    ran = _forwards(model)
    stranger = nn.Linear(4, 4)
    with pytest.raises(featcheck.LayerNotFoundError) as e:
        featcheck.capture(model, x, layers=stranger)
    msg = str(e.value)
    assert "layers= got a Linear instance that matches nothing in _Gated.named_modules()" in msg
    assert "it is not a module of this model" in msg
    assert "Pass a module of the model (model.stem), its name ('stem') or its class (nn.Linear)" in msg
    with pytest.raises(featcheck.LayerNotFoundError, match="Linear instance"):
        with featcheck.watch(model, layers=["gate", stranger]):
            model(x)
    with pytest.raises(featcheck.LayerNotFoundError, match="_Gated instance .*: it is the model itself"):
        featcheck.capture(model, x, layers=model)
    assert not ran and model.gate.calls == 0
    cap = featcheck.capture(model, x, layers="stem")
    with pytest.raises(featcheck.LayerNotFoundError, match="_Gate instance that matches nothing in this capture"):
        cap.select(model.gate)  # part of the model, but not recorded
    with pytest.raises(featcheck.LayerNotFoundError, match="Linear instance"):
        featcheck.assert_finite(cap, layers=stranger)
    assert model.gate.calls == 1


def test_torch_functions_outside_get_overridable_functions_select_their_records() -> None:
    import operator

    model = _Activations().eval()
    x = torch.randn(3, 4)
    ran = _forwards(model)
    full = featcheck.capture(model, x)
    assert full.names == [
        "fc", "hardswish", "tanh", "mul", "sigmoid", "sub", "clamp", "sub:2", "relu",
        "add", "add:2", "add:3", "add:4", "exp",
    ]
    expected = {
        F.hardswish: ["hardswish"], F.tanh: ["tanh"], F.sigmoid: ["sigmoid"], torch.sigmoid_: ["sigmoid"],
        torch.clamp_: ["clamp"], F.relu_: ["relu"], torch.exp_: ["exp"], operator.sub: ["sub", "sub:2"],
        operator.add: ["add", "add:2", "add:3", "add:4"], operator.iadd: ["add", "add:2", "add:3", "add:4"],
        operator.mul: ["mul"],
    }
    for sel, names in expected.items():
        assert featcheck.capture(model, x, layers=sel).names == names, sel
        assert [lc.name for lc in full.select(sel)] == names, sel
        with featcheck.watch(model, layers=[sel, "fc"]) as watched:
            model(x)
        assert watched.names == ["fc", *names], sel
    assert len(ran) == 1 + 2 * len(expected)  # every forward is a capture's or a watch's
    featcheck.assert_finite(full, layers=[F.hardswish, torch.sigmoid_])
    with pytest.raises(AssertionError, match="relu") as e:
        featcheck.assert_no_dead_channels(full, layers=F.relu_)
    assert "tanh" not in str(e.value)
    assert featcheck.capture(model, x, layers=F.hardtanh_).names == []  # recordable, not called: a filter


def test_torch_functions_featcheck_never_records_raise_before_any_forward() -> None:
    import operator

    model = _Activations().eval()
    x = torch.randn(3, 4)
    ran = _forwards(model)
    for sel, why in [
        (torch.flatten, "shape and view operations"),
        (torch.Tensor.view, "shape and view operations"),
        (operator.getitem, "shape and view operations"),
        (torch.zeros, "factories"),
        (torch.Tensor.float, "conversions"),
    ]:
        with pytest.raises(ValueError, match=f"never records, so it could select nothing: {why}"):
            featcheck.capture(model, x, layers=sel)
        with pytest.raises(ValueError, match="never records"):
            with featcheck.watch(model, layers=["fc", sel]):
                model(x)
    with pytest.raises(ValueError, match="layers= got torch.flatten, which featcheck never records"):
        featcheck.capture(model, x, layers=[nn.Linear, torch.flatten])
    assert not ran
    cap = featcheck.capture(model, x)
    with pytest.raises(ValueError, match="layers= got torch.zeros, which featcheck never records"):
        featcheck.assert_finite(cap, layers=torch.zeros)


def test_predicates_are_still_called_beside_module_and_function_selectors() -> None:
    import functools

    model = _Gated().eval()
    x = torch.randn(2, 4)
    seen: list[tuple[str, type]] = []

    def is_linear(name: str, module: nn.Module) -> bool:
        seen.append((name, type(module)))
        return isinstance(module, nn.Linear)

    class NamedLike:
        def __init__(self, stem: str) -> None:
            self.stem = stem

        def __call__(self, name: str, module: nn.Module) -> bool:
            return name.startswith(self.stem)

    def starts(name: str, module: nn.Module, prefix: str) -> bool:
        return name.startswith(prefix)

    assert featcheck.capture(model, x, layers=[is_linear, model.gate]).names == ["stem", "gate.fc", "gate"]
    assert ("stem", nn.Linear) in seen and ("gate", _Gate) in seen
    assert featcheck.capture(model, x, layers=lambda n, m: n == "gate").names == ["gate"]
    assert featcheck.capture(model, x, layers=[NamedLike("gate."), F.relu_]).names == ["relu", "gate.fc"]
    assert featcheck.capture(model, x, layers=functools.partial(starts, prefix="st")).names == ["stem"]
    assert model.gate.calls == 4  # one forward per capture: no selector ever called the gate
    cap = featcheck.capture(model, x, layers=[nn.Linear, _Gate])
    assert [lc.name for lc in cap.select([NamedLike("stem"), model.gate])] == ["stem", "gate"]
    assert model.gate.calls == 5
