"""The backward pass (issue 11): gradient statistics against tensor-hook references, parameter
summaries against ``p.grad``, the model left as found, and watch over real optimizer steps."""

from __future__ import annotations

import copy
import gc
import math
import re
import weakref

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import featcheck
from fixtures import models


def loss_fn(out: torch.Tensor) -> torch.Tensor:
    return out.logsumexp(-1).mean()


def per_channel(g: torch.Tensor, cdim: int = 1) -> dict[str, np.ndarray]:
    """numpy per-channel statistics of a gradient (the keys of ``grad_stats``)."""
    a = np.moveaxis(g.double().numpy(), cdim, -1).reshape(-1, g.shape[cdim])
    fin = np.isfinite(a)
    masked = np.where(fin, a, np.nan)
    return {
        "min": np.nanmin(masked, 0), "max": np.nanmax(masked, 0), "mean": np.nanmean(masked, 0),
        "std": np.nanstd(masked, 0), "zero_fraction": (a == 0).mean(0), "nonfinite": (~fin).sum(0),
        "count": np.full(a.shape[1], a.shape[0]),
    }


def assert_stats(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for k, v in want.items():
        scale = float(np.abs(v).max()) or 1.0
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-6 * scale, err_msg=k)


def reference_grads(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """d(loss)/d(output) from tensor hooks registered on each named module's output as it is
    produced (the issue's reference); ``<module>:2`` is the second call's output, and
    ``<module>:2<`` the second call's input, seen by a pre-hook (for ``layer1.0.add``, which
    the second ReLU of a BasicBlock rewrites in place)."""
    got: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}
    handles = []
    modules = dict(model.named_modules())

    def keep(key: str, t: torch.Tensor) -> None:
        if t.requires_grad:  # the model's input does not
            t.register_hook(lambda g: got.__setitem__(key, g.detach().clone()))

    for name in {n.split(":")[0] for n in names}:
        def pre(m: nn.Module, args: tuple, name: str = name) -> None:
            calls[name] = calls.get(name, 0) + 1
            keep(f"{name}:{calls[name]}<", args[0])

        def post(m: nn.Module, args: tuple, out: torch.Tensor, name: str = name) -> None:
            keep(f"{name}:{calls[name]}", out)

        handles += [modules[name].register_forward_pre_hook(pre), modules[name].register_forward_hook(post)]
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        torch.autograd.grad(loss_fn(model(x)), params, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    return got


def test_grad_stats_equal_tensor_hooks_registered_as_outputs_are_produced() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    cap = featcheck.capture(model, x, backward=loss_fn)
    ref = reference_grads(copy.deepcopy(model), x, ["conv1", "layer1.0.bn1", "layer1.0.relu", "layer1.0.bn2", "layer2.0.downsample.1", "fc"])
    # bn1's output is rewritten by ReLU(inplace=True), bn2's by `out += identity` and the second
    # ReLU; their gradients are taken before those rewrites, as the forward statistics are
    pairs = {
        "conv1": "conv1:1", "layer1.0.bn1": "layer1.0.bn1:1", "layer1.0.relu": "layer1.0.relu:1",
        "layer1.0.bn2": "layer1.0.bn2:1", "layer1.0.add": "layer1.0.relu:2<",
        "layer1.0.relu:2": "layer1.0.relu:2", "layer2.0.downsample.1": "layer2.0.downsample.1:1",
    }
    for record, key in pairs.items():
        assert_stats(cap[record].grad_stats, per_channel(ref[key]))
    assert_stats(cap["fc"].grad_stats, per_channel(ref["fc:1"], cdim=-1))
    # the rewrite matters: bn1's gradient is masked by the ReLU after it (zeros where bn1 < 0),
    # the gradient of what the ReLU returned is not
    assert (cap["layer1.0.bn1"].grad_stats["zero_fraction"] > cap["layer1.0.relu"].grad_stats["zero_fraction"]).any()
    assert cap["layer1.0.bn1"].grad.samples == 2 and cap["layer1.0.bn1"].grad.shape == (2, 64, 16, 16)


def test_retain_grad_is_the_wrong_reference_for_an_output_rewritten_in_place() -> None:
    """What ``retain_grad`` on bn1's output gives (the gradient after the in-place ReLU) differs
    from what featcheck records, so the reference above can tell them apart."""
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    cap = featcheck.capture(model, x, layers="layer1.0.bn1", backward=loss_fn)
    kept: list[torch.Tensor] = []
    twin = copy.deepcopy(model)
    twin.layer1[0].bn1.register_forward_hook(lambda m, a, out: (out.retain_grad(), kept.append(out)) and None)
    loss_fn(twin(x)).backward()
    retained = per_channel(kept[0].grad)
    with pytest.raises(AssertionError):
        assert_stats(cap["layer1.0.bn1"].grad_stats, retained)


def test_param_grads_equal_summaries_of_p_grad() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    cap = featcheck.capture(model, x, backward=loss_fn)
    twin = copy.deepcopy(model)
    loss_fn(twin(x)).backward()
    assert list(cap.param_grads) == [n for n, _ in model.named_parameters()]
    for name, p in twin.named_parameters():
        g = p.grad.double()
        s = cap.param_grads[name]
        assert s["received"] and s["requires_grad"] and s["numel"] == p.numel()
        assert s["norm"] == pytest.approx(float(g.norm()), rel=1e-5)
        assert s["max_abs"] == pytest.approx(float(g.abs().max()), rel=1e-6)
        assert s["mean_abs"] == pytest.approx(float(g.abs().mean()), rel=1e-5)
        assert s["zero_fraction"] == float((g == 0).double().mean())
        assert s["nonfinite"] == 0
        assert s["weight_norm"] == pytest.approx(float(p.detach().double().norm()), rel=1e-5)


def grad_state(model: nn.Module) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        out[f"{name}/bits"] = t.detach().clone()
        out[f"{name}/requires_grad"] = t.requires_grad
        out[f"{name}/grad"] = None if t.grad is None else (id(t.grad), t.grad.clone())
    out.update({f"{n}/training": m.training for n, m in model.named_modules()})
    return out


def assert_same(before: dict[str, object], after: dict[str, object]) -> None:
    assert before.keys() == after.keys()
    for k, a in before.items():
        b = after[k]
        if isinstance(a, tuple):
            assert isinstance(b, tuple) and a[0] == b[0] and torch.equal(a[1], b[1]), f"{k} changed"
        elif isinstance(a, torch.Tensor):
            assert torch.equal(a, b), f"{k} changed"
        else:
            assert a == b, f"{k} changed"


@pytest.mark.parametrize("train", [False, True])
def test_model_is_left_as_found(train: bool) -> None:
    model = torchvision.models.resnet18(weights=None)
    model.layer4.requires_grad_(False)  # frozen: stays frozen
    model.fc.weight.grad = torch.full_like(model.fc.weight, 0.5)  # an existing .grad keeps identity and values
    model.train(not train)
    before = grad_state(model)
    cap = featcheck.capture(model, torch.randn(2, 3, 64, 64), backward=loss_fn, train=train)
    assert_same(before, grad_state(model))
    assert cap.param_grads["fc.weight"]["norm"] != pytest.approx(float(model.fc.weight.grad.norm()))  # this loss's, not .grad's
    assert cap.param_grads["layer4.0.conv1.weight"]["requires_grad"] is False
    assert cap.param_grads["layer4.0.conv1.weight"]["received"] is False
    # no graph and no hook survive: the kept output is detached
    assert cap.output.grad_fn is None and not cap.output.requires_grad


def test_no_graph_or_hook_outlives_the_capture() -> None:
    """The outputs that carried gradient hooks are freed with their graph: the capture keeps a
    detached copy of the model's output, not the output itself."""
    model = models.TinyCNN()
    kept: list[weakref.ref[torch.Tensor]] = []
    handle = model.fc.register_forward_hook(lambda m, a, out: kept.append(weakref.ref(out)) and None)
    try:
        cap = featcheck.capture(model, torch.randn(2, 3, 16, 16), backward=loss_fn)
    finally:
        handle.remove()
    gc.collect()
    assert kept and kept[0]() is None
    assert cap["fc"].grad_stats is not None and cap.output.grad_fn is None


def test_records_without_a_gradient_path_say_so_unless_inputs_require_grad() -> None:
    class ActFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.act = nn.Tanh()
            self.fc = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.act(x))

    x = torch.randn(4, 8)
    cap = featcheck.capture(ActFirst(), x, backward=lambda out: out.pow(2).sum())
    assert cap["act"].grad_stats is None
    assert cap["act"].grad_note.startswith("no gradient path")
    assert "input_grad=True" in cap["act"].grad_note
    assert cap["fc"].grad_stats is not None
    cap = featcheck.capture(ActFirst(), x, backward=lambda out: out.pow(2).sum(), input_grad=True)
    assert cap["act"].grad_stats["count"].tolist() == [4] * 8
    assert not x.requires_grad  # the user's input is left alone


class Detached(nn.Module):
    """stem -> .detach() -> head: the stem's parameters never get a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x).detach())


def test_params_before_a_detach_fail_named_exactly() -> None:
    model = Detached()
    cap = featcheck.capture(model, torch.randn(2, 3, 16, 16), backward=loss_fn)
    with pytest.raises(featcheck.FeatcheckAssertionError) as info:
        featcheck.assert_params_receive_grad(cap)
    text = str(info.value)
    assert "4 of 8 parameters got no non-zero gradient (2 modules)" in text
    named = [line.split()[:2] for line in text.splitlines()[2:6]]
    assert named == [["stem.0", "weight"], ["bias", "a"], ["stem.1", "weight"], ["bias", "a"]]
    assert "stem.1" in text and "head" not in text.split("Usual causes")[0]
    assert "detach" in text
    # declared frozen: passes; a frozen declaration of parameters that learn fails
    featcheck.assert_params_receive_grad(cap, frozen=["stem.*"])
    with pytest.raises(featcheck.FeatcheckAssertionError, match=r"1 declared frozen got one"):
        featcheck.assert_params_receive_grad(cap, frozen=["stem.*", "head.4.bias"])
    with pytest.raises(featcheck.LayerNotFoundError, match="stem.9"):
        featcheck.assert_params_receive_grad(cap, frozen="stem.9*")


def test_requires_grad_false_is_reported_as_such() -> None:
    model = models.TinyCNN()
    model.conv2.weight.requires_grad_(False)
    cap = featcheck.capture(model, torch.randn(2, 3, 16, 16), backward=loss_fn)
    with pytest.raises(featcheck.FeatcheckAssertionError, match=r"conv2\s+weight\s+a non-zero gradient\s+requires_grad=False"):
        featcheck.assert_params_receive_grad(cap)
    featcheck.assert_params_receive_grad(cap, frozen="conv2.weight")


class Stack(nn.Module):
    """20 x (Linear + Sigmoid), plain or residual (x + sigmoid(linear(x)))."""

    def __init__(self, residual: bool, act: type[nn.Module] = nn.Sigmoid, scale: float = 1.0, n: int = 20) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.residual = residual
        self.lin = nn.ModuleList(nn.Linear(32, 32) for _ in range(n))
        self.act = nn.ModuleList(act() for _ in range(n))
        with torch.no_grad():
            for lin in self.lin:
                lin.weight.mul_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin, act in zip(self.lin, self.act):
            x = x + act(lin(x)) if self.residual else act(lin(x))
        return x


def test_sigmoid_stack_vanishes_at_the_early_layers_and_its_residual_twin_passes() -> None:
    x = torch.randn(16, 32)
    cap = featcheck.capture(Stack(residual=False), x, backward=lambda o: o.pow(2).mean())
    with pytest.raises(featcheck.FeatcheckAssertionError) as info:
        featcheck.assert_gradients_flow(cap, min_ratio=1e-4, max_ratio=1e4)
    rows = [line.split()[0] for line in str(info.value).splitlines()[2:]]
    assert rows[:4] == ["lin.0", "act.0", "lin.1", "act.1"]
    assert "lin.19" not in rows and "act.19" not in rows
    assert "vanishing" in str(info.value) and "RMS at 'act.19'" in str(info.value)
    assert info.value.flagged == []  # the report attaches the gradient-flow picture instead of 30 grids
    assert info.value.capture is cap
    featcheck.assert_gradients_flow(featcheck.capture(Stack(residual=True), x, backward=lambda o: o.pow(2).mean()))


def test_scaled_linear_stack_explodes() -> None:
    cap = featcheck.capture(Stack(residual=False, act=nn.Identity, scale=5.0), torch.randn(16, 32), backward=lambda o: o.mean())
    with pytest.raises(featcheck.FeatcheckAssertionError) as info:
        featcheck.assert_gradients_flow(cap)
    text = str(info.value)
    assert "explode in" in text and "lin.0 (grad)" in text and "exploding" in text
    ratio = float(re.search(r"lin\.0 \(grad\).*, ratio ([0-9.e+]+): exploding", text).group(1))
    assert ratio > 1e7


class NaNBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @staticmethod
    def backward(ctx: object, g: torch.Tensor) -> torch.Tensor:
        return g * float("nan")


class BadGrad(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return NaNBackward.apply(x)


class WithBadGrad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 8)
        self.act = nn.ReLU()
        self.bad = BadGrad()
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.bad(self.act(self.fc1(x))))


def test_custom_function_with_nan_backward_is_named() -> None:
    cap = featcheck.capture(WithBadGrad(), torch.randn(4, 8), backward=loss_fn)
    with pytest.raises(featcheck.FeatcheckAssertionError) as info:
        featcheck.assert_gradients_finite(cap)
    text = str(info.value)
    assert "the first in backward order (closest to the loss) is 'act (grad)'" in text
    assert "entered between 'bad' and 'act'" in text
    assert "fc1.weight (64 of 64)" in text and "fc2.weight" not in text
    nan = cap.param_grads["fc1.weight"]
    assert nan["nonfinite"] == 64 and nan["mean_abs"] is None and math.isnan(nan["norm"])  # no finite value
    featcheck.assert_gradients_finite(featcheck.capture(models.TinyCNN(), torch.randn(2, 3, 16, 16), backward=loss_fn))


class SwapsBatch(nn.Module):
    """A ``view`` that reads the batch as features: every sample mixes with the others."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 6)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = h.t().reshape(h.shape[0], h.shape[1])
        return self.fc2(self.act(h))


def test_batch_mixing_view_fails_and_names_the_first_mixing_record() -> None:
    with pytest.raises(featcheck.FeatcheckAssertionError) as info:
        featcheck.assert_batch_independent(SwapsBatch(), torch.randn(6, 6))
    text = str(info.value)
    assert "samples mix across the batch" in text
    assert "first record where sample 0 mixes with sample" in text and "'act'" in text


def test_resnet18_is_batch_independent_in_eval_and_batchnorm_in_train_mode_is_explained() -> None:
    model = torchvision.models.resnet18(weights=None)
    x = torch.randn(4, 3, 32, 32)
    before = grad_state(model)
    featcheck.assert_batch_independent(model, x)
    with pytest.raises(featcheck.FeatcheckAssertionError) as info:
        featcheck.assert_batch_independent(model, x, train=True)
    text = str(info.value)
    assert "'bn1' (BatchNorm2d): a BatchNorm in train mode" in text
    assert "normalises each channel with the statistics of the whole batch" in text
    assert_same(before, grad_state(model))


def test_dead_gradients_are_channels_with_exactly_zero_gradient() -> None:
    model = models.TinyCNN()
    with torch.no_grad():
        model.conv2.bias[[3, 5]] = -100.0  # ReLU after it: these channels never pass a gradient
    cap = featcheck.capture(model, torch.randn(4, 3, 16, 16), backward=loss_fn)
    with pytest.raises(featcheck.FeatcheckAssertionError) as info:
        featcheck.assert_no_dead_gradients(cap, layers="conv2")
    assert "conv2 (grad)" in str(info.value) and "[3, 5]" in str(info.value)
    assert info.value.flagged[0][1] == [3, 5]
    featcheck.assert_no_dead_gradients(cap, layers="fc")


def test_arguments_are_checked_before_anything_runs() -> None:
    model = models.TinyCNN()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(TypeError, match="backward must be a function"):
        featcheck.capture(model, x, backward="mean")
    with pytest.raises(ValueError, match="no backward= was given"):
        featcheck.capture(model, x, input_grad=True)
    with pytest.raises(ValueError, match="scalar floating-point loss.*shape \\(2, 10\\)"):
        featcheck.capture(model, x, backward=lambda out: out)
    with pytest.raises(TypeError, match="must return a scalar tensor"):
        featcheck.capture(model, x, backward=lambda out: 1.0)
    frozen = models.TinyCNN().requires_grad_(False)
    with pytest.raises(ValueError, match="does not require grad"):
        featcheck.capture(frozen, x, backward=loss_fn)
    assert all(p.grad is None for p in model.parameters())
    plain = featcheck.capture(model, x)
    with pytest.raises(featcheck.FeatcheckAssertionError, match="holds no gradients.*without backward="):
        featcheck.assert_gradients_flow(plain)
    with pytest.raises(ValueError, match="min_ratio must be a positive"):
        featcheck.assert_gradients_flow(plain, min_ratio=0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        featcheck.assert_batch_independent(model, x[:1])


def test_watch_records_three_optimizer_steps_with_update_ratios_computed_by_hand() -> None:
    torch.manual_seed(0)
    model = models.TinyCNN()
    twin = copy.deepcopy(model)
    batches = [torch.randn(4, 3, 16, 16) for _ in range(3)]
    targets = [torch.randint(0, 10, (4,)) for _ in range(3)]

    def train(net: nn.Module, record: list[dict[str, float]] | None) -> None:
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        for xb, yb in zip(batches, targets):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xb), yb).backward()
            before = {n: p.detach().clone() for n, p in net.named_parameters()}
            opt.step()
            if record is not None:
                record.append({n: float((p.detach() - before[n]).norm() / before[n].norm()) for n, p in net.named_parameters()})

    by_hand: list[dict[str, float]] = []
    train(twin, by_hand)
    model.train()
    with featcheck.watch(model) as cap:
        train(model, None)
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        assert torch.equal(p, q), f"{name}: watch changed the training"  # gradients left alone
    for name, s in cap.param_grads.items():
        assert s["steps"] == 3
        np.testing.assert_allclose(s["update_ratios"], [r[name] for r in by_hand], rtol=1e-5)
        assert s["update_ratio"] == pytest.approx(np.mean([r[name] for r in by_hand]), rel=1e-5)
    assert cap["conv1"].grad.forwards == 3 and cap["conv1"].grad.samples == 12
    assert cap["fc"].grad_stats["count"].tolist() == [12] * 10
    featcheck.assert_params_receive_grad(cap)


def test_watch_without_backward_says_why_records_have_no_gradient() -> None:
    model = models.TinyCNN()
    with featcheck.watch(model) as cap:
        model(torch.randn(2, 3, 16, 16))
    assert cap["conv1"].grad_stats is None and cap["conv1"].grad_note == "no backward pass ran over this output inside the watch block"
    with torch.no_grad(), featcheck.watch(model) as cap:
        model(torch.randn(2, 3, 16, 16))
    assert "torch.no_grad()" in cap["conv1"].grad_note
    with pytest.raises(featcheck.FeatcheckAssertionError, match="no backward pass ran in the watch block"):
        featcheck.assert_gradients_finite(cap)


def test_gradient_flow_picture() -> None:
    cap = featcheck.capture(Stack(residual=False), torch.randn(16, 32), backward=lambda o: o.pow(2).mean())
    image = featcheck.gradient_flow(cap)
    assert image.mode == "RGB" and image.width >= 800
    assert "40 records in forward order" in image.info["caption"]
    assert "30 vanishing, 0 exploding, 0 with NaN/Inf" in image.info["caption"]
    pixels = np.asarray(image)
    assert (np.abs(pixels.astype(int) - [13, 71, 161]).sum(-1) < 30).sum() > 1000  # the RMS bars are drawn
    with pytest.raises(ValueError, match="needs a capture with gradients"):
        featcheck.gradient_flow(featcheck.capture(models.TinyCNN(), torch.randn(2, 3, 16, 16)))
    with pytest.raises(TypeError, match="expects a featcheck Capture"):
        featcheck.gradient_flow(cap["lin.0"])
    assert math.isfinite(float(pixels.mean()))


class Checkpointed(nn.Module):
    """A segment run under activation checkpointing: backward recomputes it."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.seg = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, 4, 1)
        self.reentrant = reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.utils.checkpoint.checkpoint(self.seg, x, use_reentrant=self.reentrant)
        return self.head(nn.functional.relu(y) * 2)


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_recomputation_is_not_recorded_as_forwards(reentrant: bool) -> None:
    """torch.utils.checkpoint reruns a segment's forward inside backward: those calls are not
    forwards of the model (they counted the segment twice: forwards 2 for one forward, and its
    statistics covered both runs, of which the second saw BatchNorm's updated running stats in
    train mode). The statistics are those of the forwards alone, as a twin without checkpointing
    records them."""
    torch.manual_seed(0)
    model = Checkpointed(reentrant).train()
    twin = copy.deepcopy(model)
    twin.forward = lambda x: twin.head(nn.functional.relu(twin.seg(x)) * 2)  # the same forward, not checkpointed
    xs = [torch.randn(2, 3, 8, 8, requires_grad=True) for _ in range(3)]
    caps = []
    for net in (model, twin):
        with featcheck.watch(net) as cap:
            for x in xs:
                net(x).sum().backward()
        caps.append(cap)
    got, want = caps
    assert got.names == want.names and {"seg.0", "seg.1", "seg.2", "relu", "mul", "head"} <= set(got.names)
    for name in got.names:
        assert (got[name].forwards, got[name].samples) == (3, 6), name
        for k, v in want[name].stats.items():
            np.testing.assert_allclose(got[name].stats[k], v, rtol=1e-5, atol=1e-6, err_msg=f"{name} {k}")
    # the gradients of records outside the segment; inside it, where its forward ran with autograd
    # (the non-reentrant variant): a reentrant segment's forward runs under no_grad, and its
    # recomputation is not recorded, so its records have none
    for name in ["relu", "mul", "head", *(["seg.0", "seg.1", "seg.2"] if not reentrant else [])]:
        assert got[name].grad is not None and got[name].grad.forwards == 3, name
        for k, v in want[name].grad_stats.items():
            np.testing.assert_allclose(got[name].grad_stats[k], v, rtol=1e-5, atol=1e-6, err_msg=f"{name} grad {k}")
    cap = featcheck.capture(model, xs[0], backward=lambda o: o.sum())
    assert all(r.forwards == 1 for r in cap.values()) and torch._C._len_torch_function_stack() == 0


@pytest.mark.parametrize("reentrant", [False, True])
def test_a_model_checkpointed_whole_counts_one_forward_per_call(reentrant: bool) -> None:
    """The user checkpoints the whole model: its recomputation in backward starts no forward
    (non-reentrant checkpointing also stops its recomputation early by raising inside it, which
    the forward's transaction already dropped)."""
    torch.manual_seed(0)
    model = models.TinyCNN().train()
    with featcheck.watch(model) as cap:
        for _ in range(2):
            x = torch.randn(2, 3, 16, 16, requires_grad=True)
            out = torch.utils.checkpoint.checkpoint(model, x, use_reentrant=reentrant)
            out.sum().backward()
    assert cap.forwards == 2 and all(r.forwards == 2 for r in cap.values())


def test_backward_inside_inference_mode_is_refused_naming_inference_mode() -> None:
    """It failed later, blaming frozen parameters or no_grad, never the user's inference_mode."""
    model = models.TinyCNN()
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match=r"inside torch.inference_mode\(\).*call capture outside"):
            featcheck.capture(model, torch.randn(1, 3, 8, 8), backward=loss_fn)
        assert len(featcheck.capture(model, torch.randn(1, 3, 8, 8))) > 0  # without backward: fine


class NormalisesInPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.sub_(x.mean())  # writes its input in place
        return self.conv(x).flatten(1)


def test_input_grad_with_a_forward_that_writes_its_input_in_place() -> None:
    """The inputs were leaves requiring grad, which torch refuses to write in place ("a leaf
    Variable that requires grad is being used in an in-place operation"): the model gets copies,
    the user's input is left as it was, and the input gradient is d(loss)/d(input)."""
    torch.manual_seed(0)
    model = NormalisesInPlace()
    x = torch.randn(2, 3, 8, 8)
    keep = x.clone()
    cap = featcheck.capture(model, x, backward=loss_fn, input_grad=True)
    assert torch.equal(x, keep)
    ref = keep.clone().requires_grad_(True)
    loss_fn(model(ref.clone())).backward()
    torch.testing.assert_close(cap._rec.grads.inputs[0], ref.grad)  # what the batch-independence check reads
    assert cap["conv"].grad is not None
