"""``capture`` hands the model back as it found it: bitwise, and without breaking the user's
autograd graphs (issue 9, items 1 and 2)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torchvision
from torch import nn

import featcheck
from featcheck import _state
from fixtures import models
from fixtures.hooks import no_common_hooks, no_wrappers


def state_of(model: nn.Module) -> dict[str, object]:
    """Everything "left as found" covers, comparable bitwise."""
    out: dict[str, object] = {}
    for name, m in model.named_modules():
        out[f"{name}/class"] = type(m)
        out[f"{name}/training"] = m.training
        out[f"{name}/params"] = {k: id(v) for k, v in m._parameters.items()}
        out[f"{name}/buffers"] = {k: id(v) for k, v in m._buffers.items()}
        out[f"{name}/modules"] = {k: id(v) for k, v in m._modules.items()}
        out[f"{name}/attrs"] = sorted(k for k, v in m.__dict__.items() if isinstance(v, torch.Tensor))
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        out[f"{name}/bits"] = t.detach().reshape(-1).view(torch.uint8).clone() if t.dtype != torch.bool else t.clone()
        out[f"{name}/requires_grad"] = t.requires_grad
        out[f"{name}/leaf"] = t.is_leaf
    return out


def assert_same_state(before: dict[str, object], after: dict[str, object]) -> None:
    assert before.keys() == after.keys()
    for k in before:
        a, b = before[k], after[k]
        same = torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
        assert same, f"{k} changed"


# -- item 1: the user's autograd graph survives a capture -------------------------------------------


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_a_graph_the_user_holds_survives_a_capture(mode: str) -> None:
    model = torchvision.models.resnet18(weights=None).train(mode == "train")
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    featcheck.capture(model, x)
    featcheck.capture(model, x, train=True)
    out.sum().backward()  # raised "modified by an inplace operation" before
    assert model.conv1.weight.grad is not None


@pytest.mark.parametrize("train", [False, True])
def test_a_graph_made_by_capture_itself_can_be_differentiated(train: bool) -> None:
    model = torchvision.models.resnet18(weights=None)
    before = state_of(model)
    cap = featcheck.capture(model, torch.randn(2, 3, 64, 64), grad=True, train=train)
    cap.output.sum().backward()
    assert model.fc.weight.grad is not None
    for p in model.parameters():
        p.grad = None
    assert_same_state(before, state_of(model))


def test_untouched_tensors_are_not_written_version_counters_unchanged() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    versions = [t._version for t in [*model.parameters(), *model.buffers()]]
    featcheck.capture(model, torch.randn(1, 3, 64, 64))
    assert [t._version for t in [*model.parameters(), *model.buffers()]] == versions


def test_train_mode_capture_puts_running_statistics_back_bitwise() -> None:
    model = torchvision.models.resnet18(weights=None)
    featcheck.calibrate_batchnorm(model, torch.randn(4, 3, 64, 64))
    before = state_of(model)
    featcheck.capture(model, torch.randn(4, 3, 64, 64) * 3, train=True)
    assert_same_state(before, state_of(model))


# -- item 2: state that used to stay changed ---------------------------------------------------------


@pytest.fixture(params=["C", "Python"])
def snapshot_loops(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The snapshot's loops over every module's dicts: featcheck/_snap.c's, and the Python ones
    used where no C compiler built it."""
    if request.param == "C":
        assert _state._snap is not None, "featcheck._snap was not built"
    else:
        monkeypatch.setattr(_state, "_snap", None)
    return request.param


def test_the_snapshot_loops_in_c_and_python_give_the_same_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    model = torchvision.models.resnet18()
    conv, layer = model.conv1, model.layer1[0]
    saved = {}
    for loops in ("C", "Python"):
        if loops == "Python":
            monkeypatch.setattr(_state, "_snap", None)
        flat = _state._Flat([m.__dict__ for m in model.modules()])
        saved[loops] = (flat.lens, flat.keys, flat.values)
        answers = []

        def check(expected: bool) -> None:
            answers.append(flat.unchanged([m.__dict__ for m in model.modules()]))
            assert answers[-1] is expected, (loops, len(answers))

        check(True)
        stride = conv.stride
        conv.stride = tuple(list(conv.stride))  # an equal value, another object
        check(False)
        conv.stride = stride
        check(True)
        conv.__dict__["cache"] = 1
        check(False)
        del conv.__dict__["cache"]
        check(True)
        training = layer.__dict__.pop("training")  # the same entries in another order
        layer.__dict__["training"] = training
        check(False)
        del layer.__dict__["_parameters"]
        layer.__dict__["_parameters"] = layer._modules  # another key's value in its place
        check(False)
        saved_layer = flat.saved()[list(model.modules()).index(layer)]
        layer.__dict__.clear()
        layer.__dict__.update(saved_layer)
        check(True)
        d = dict(conv.__dict__)  # an equal dict in its place
        object.__setattr__(conv, "__dict__", d)
        check(False)
        object.__setattr__(conv, "__dict__", flat.dicts[1])
        check(True)
        conv.__dict__[7] = None
        check(False)
        del conv.__dict__[7]
        check(True)
        assert len(saved_layer) > 10
        keyed = _state._Flat([{7: conv, "a": layer}])  # keys that are not str compare by value
        assert keyed.unchanged([{7.0: conv, "a": layer}]) is False  # another dict
        keyed.dicts[0][7.0] = keyed.dicts[0].pop(7)
        assert keyed.unchanged(keyed.dicts) is False  # moved to the end
        keyed = _state._Flat([{7: conv}])
        del keyed.dicts[0][7]
        keyed.dicts[0][7.0] = conv
        assert keyed.unchanged(keyed.dicts) is True, loops  # 7.0 == 7, as in Python
        keyed.dicts[0][7.0] = layer
        assert keyed.unchanged(keyed.dicts) is False
    c, py = saved["C"], saved["Python"]
    assert c[0] == py[0] and c[1] == py[1] and all(a is b for a, b in zip(c[2], py[2])) and len(c[2]) == len(py[2])


class Rebinds(nn.Module):
    """forward rebinds a buffer, registers new state lazily and keeps a plain tensor attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_buffer("n", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.n = self.n + 1
        if not hasattr(self, "lazy_buf"):
            self.register_buffer("lazy_buf", torch.ones(3))
            self.lazy_param = nn.Parameter(torch.ones(2))
            self.extra = nn.ReLU()
        self.cache = x.mean()
        return self.extra(self.conv(x))


class MutatesItsWeight(nn.Module):
    """A custom layer that updates its own parameter and buffer in forward (in place and via .data)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3))
        self.register_buffer("scale", torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.weight.mul_(0.5)
        self.scale.data.add_(1.0)
        return x.flatten(1)[:, :3] @ self.weight.T * self.scale


def test_rebound_and_lazily_registered_state_is_undone(snapshot_loops: str) -> None:
    model = Rebinds()
    before = state_of(model)
    n = model.n
    featcheck.capture(model, torch.randn(2, 3, 8, 8))
    assert_same_state(before, state_of(model))
    assert model.n is n and float(model.n) == 0.0
    assert not hasattr(model, "lazy_buf") and not hasattr(model, "cache") and not hasattr(model, "extra")


def test_a_parameter_and_a_buffer_mutated_in_forward_are_put_back_bitwise(snapshot_loops: str) -> None:
    model = MutatesItsWeight()
    before = state_of(model)
    featcheck.capture(model, torch.randn(2, 3, 2, 2))
    assert_same_state(before, state_of(model))


def test_dropout_in_train_mode_leaves_the_global_rng_alone() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5))
    x = torch.randn(4, 8)
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    featcheck.capture(model, x, train=True)
    assert torch.equal(torch.rand(4), expected)


class InPlaceBufferWithGrad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("acc", torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        self.acc.add_(y.mean(0))  # with autograd on, the buffer joins the graph
        return y


def test_grad_capture_leaves_no_buffer_requiring_grad() -> None:
    model = InPlaceBufferWithGrad()
    before = state_of(model)
    featcheck.capture(model, torch.randn(3, 4), grad=True)
    assert not model.acc.requires_grad and model.acc.is_leaf
    assert_same_state(before, state_of(model))


def test_a_model_built_under_inference_mode_can_be_captured() -> None:
    with torch.inference_mode():
        model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)  # works: reading inference tensors outside inference mode is allowed
    before = state_of(model)
    cap = featcheck.capture(model, x)  # the restore used to write into them and fail
    assert torch.equal(cap.output, plain)
    assert_same_state(before, state_of(model))


def test_requires_grad_flags_and_training_flags_are_restored() -> None:
    model = models.TinyCNN()
    model.conv1.weight.requires_grad_(False)
    model.bn1.eval()
    before = state_of(model)
    featcheck.capture(model, torch.randn(2, 3, 16, 16), train=True, grad=True)
    assert_same_state(before, state_of(model))


def test_state_is_restored_when_forward_raises() -> None:
    model = Rebinds()
    before = state_of(model)
    with pytest.raises(RuntimeError):
        featcheck.capture(model, torch.randn(2, 5, 8, 8))  # wrong channel count: conv raises
    assert_same_state(before, state_of(model))
    assert no_common_hooks() and no_wrappers(model) and not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_lazy_modules_are_refused_with_advice() -> None:
    model = nn.Sequential(nn.LazyLinear(4))
    with pytest.raises(ValueError, match="uninitialised lazy parameters.*Run one forward pass first"):
        featcheck.capture(model, torch.randn(2, 3))
    assert isinstance(model[0], nn.LazyLinear)


def test_deepcopy_equivalence_on_a_real_model_in_train_mode() -> None:
    """The strongest statement: after a train-mode capture with grad, the model is
    indistinguishable from a copy taken before it."""
    model = torchvision.models.mobilenet_v3_small(weights=None)
    twin = copy.deepcopy(model)
    featcheck.capture(model, torch.randn(2, 3, 64, 64), train=True, grad=True)
    for (n, a), (_, b) in zip([*model.state_dict().items()], [*twin.state_dict().items()]):
        assert torch.equal(a, b), n
    assert [m.training for m in model.modules()] == [m.training for m in twin.modules()]


class WritesOddBuffers(nn.Module):
    """forward writes, without bumping a version, buffers of every kind the snapshot copies: a
    0-d counter, a bool mask, a non-contiguous buffer, and one whose data is rebound."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.tensor(3))
        self.register_buffer("mask", torch.tensor([True, False, True]))
        self.register_buffer("table", torch.arange(12.0).reshape(3, 4).t())  # not contiguous
        self.register_buffer("scale", torch.ones(4))
        self.register_buffer("untouched", torch.randn(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count.data.add_(1)
        self.mask.data.logical_not_()
        self.table.data.mul_(-1)
        self.scale.data = torch.full((4,), 7.0)  # another storage, the same size
        return x * self.scale


def test_buffers_written_without_a_version_bump_are_put_back_bitwise(snapshot_loops: str) -> None:
    model = WritesOddBuffers()
    before = state_of(model)
    untouched = model.untouched._version
    featcheck.capture(model, torch.randn(2, 4))
    assert_same_state(before, state_of(model))
    assert int(model.count) == 3 and model.mask.tolist() == [True, False, True] and float(model.scale[0]) == 1.0
    assert not model.table.is_contiguous() and model.untouched._version == untouched


class ResizesABuffer(nn.Module):
    """forward resizes the middle one of three buffers in place; the last one it also writes."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("a", torch.zeros(3))
        self.register_buffer("b", torch.arange(12.0).reshape(3, 4))
        self.register_buffer("c", torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.b.resize_(2)
        self.c.data.add_(1.0)
        return x


def test_a_buffer_resized_in_place_is_put_back_and_the_others_are_not_shifted(snapshot_loops: str) -> None:
    model = ResizesABuffer()
    before = state_of(model)
    versions = model.a._version
    featcheck.capture(model, torch.randn(2, 3))
    assert model.b.shape == (3, 4) and torch.equal(model.b, torch.arange(12.0).reshape(3, 4))
    assert torch.equal(model.c, torch.zeros(3)) and torch.equal(model.a, torch.zeros(3))
    assert model.a._version == versions  # never written: it did not change
    assert_same_state(before, state_of(model))


def test_ctrl_c_is_the_users_again_after_a_restore_that_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    handler = signal.getsignal(signal.SIGINT)

    def broken(self: object) -> None:
        raise RuntimeError("restore failed")

    monkeypatch.setattr(_state.ModelState, "restore", broken)
    with pytest.raises(RuntimeError, match="restore failed"):
        featcheck.capture(nn.Linear(3, 2), torch.randn(2, 3))
    assert signal.getsignal(signal.SIGINT) is handler


class SwapsItsParts(nn.Module):
    """forward swaps a child for another, drops a registered buffer, changes its class and
    replaces its registry of parameters: every kind of registration the snapshot covers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU()
        self.register_buffer("scale", torch.full((4,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x)) * self.scale
        self.act = nn.Sigmoid()
        del self._buffers["scale"]
        self.conv._parameters = {"weight": nn.Parameter(torch.zeros(4, 3, 3, 3)), "bias": None}
        self.__class__ = _Swapped
        return y


class _Swapped(SwapsItsParts):
    pass


def test_swapped_children_dropped_buffers_replaced_registries_and_class_are_put_back(snapshot_loops: str) -> None:
    model = SwapsItsParts()
    before = state_of(model)
    act, weight, registry = model.act, model.conv.weight, model.conv._parameters
    featcheck.capture(model, torch.randn(1, 3, 6, 6))
    assert type(model) is SwapsItsParts and model.act is act
    assert model.conv._parameters is registry and model.conv.weight is weight
    assert_same_state(before, state_of(model))


class SharesADict(nn.Module):
    """forward makes one child's ``__dict__`` its sibling's."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        self.conv.__dict__ = self.bn.__dict__
        return y


def test_a_replaced_module_dict_is_put_back_and_the_other_module_left_whole(snapshot_loops: str) -> None:
    model = SharesADict().eval()
    before = state_of(model)
    conv_dict, bn_dict = model.conv.__dict__, model.bn.__dict__
    x = torch.randn(2, 3, 8, 8)
    twin = copy.deepcopy(model)  # taken before: the forward itself breaks the model it runs on
    featcheck.capture(model, x)
    assert model.conv.__dict__ is conv_dict and model.bn.__dict__ is bn_dict
    assert_same_state(before, state_of(model))
    assert model.bn.eps == 1e-5 and not hasattr(model.bn, "in_channels")
    with torch.no_grad():
        assert torch.equal(model.conv(x), twin.conv(x))


def test_an_ordered_registry_reordered_keeps_each_value_with_its_key(snapshot_loops: str) -> None:
    """Registries unpickled from old torch are OrderedDicts, whose own order move_to_end changes:
    the snapshot pairs every key with its own value, whichever order it reads them in."""
    from collections import OrderedDict

    model = nn.Module()
    model._buffers = OrderedDict(a=torch.zeros(2), b=torch.ones(2))
    model._buffers.move_to_end("a")
    a, b = model._buffers["a"], model._buffers["b"]
    flat = _state._Flat([model._buffers])
    assert flat.unchanged([model._buffers])
    (saved,) = flat.saved()
    assert saved["a"] is a and saved["b"] is b


# -- tensors whose bytes are not their values, layouts changed in forward, storages resized ----------


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """A tensor's values, bitwise, as they read (a conjugate or negative view resolved)."""
    t = t.detach().resolve_conj().resolve_neg().reshape(-1)
    return t.clone() if t.dtype == torch.bool else t.view(torch.uint8).clone()


def layout_of(t: torch.Tensor) -> tuple[object, ...]:
    """Everything a capture must give back about one tensor, the same Python object."""
    return (tuple(t.shape), t.stride(), t.dtype, t.device, t.is_conj(), t.is_neg(), t._version, bits_of(t))


def assert_same_tensors(before: dict[str, tuple[object, ...]], model: nn.Module) -> None:
    after = {n: layout_of(t) for n, t in [*model.named_parameters(), *model.named_buffers()]}
    assert before.keys() == after.keys()
    for name, (a, b) in ((n, (before[n], after[n])) for n in before):
        assert a[:7] == b[:7], f"{name}: (shape, stride, dtype, device, conj, neg, version) {a[:7]} != {b[:7]}"
        assert torch.equal(a[7], b[7]), f"{name}: values changed"


class WritesViewBuffers(nn.Module):
    """Buffers that are conjugate or negative views (their bytes are not their values), each its
    own memory, written in place by forward: with a version bump and through ``.data``."""

    def __init__(self) -> None:
        super().__init__()
        z = torch.tensor([[1 + 2j, -3 + 0.5j], [0.25 - 4j, 5 + 0j]])
        self.register_buffer("conj", z.clone().conj())  # contiguous 2-d conjugate view
        self.register_buffer("conj_row", z[0].clone().conj())  # contiguous 1-d
        self.register_buffer("conj_data", z[1].clone().conj())  # written through .data: no version bump
        self.register_buffer("neg", torch.tensor([1.5, -2.0, 0.0])._neg_view())  # negative bit, contiguous
        self.register_buffer("imag", z.clone().conj().imag)  # negative view, not contiguous
        self.register_buffer("plain", torch.arange(3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.conj.mul_(2)
        self.conj_row.add_(1j)
        self.conj_data.data.mul_(-1)
        self.neg.add_(1)
        self.imag.mul_(-3)
        return x


def test_conjugate_and_negative_buffers_written_in_place_are_put_back_bitwise(snapshot_loops: str) -> None:
    model = WritesViewBuffers()
    assert model.conj.is_conj() and model.neg.is_neg() and model.imag.is_neg()
    before = {n: layout_of(t) for n, t in model.named_buffers()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is left unrestored
        cap = featcheck.capture(model, torch.randn(2, 3))  # raised, or wrote their bytes as values
    assert cap.note == ""
    assert_same_tensors(before, model)
    assert model.conj[0, 0].item() == 1 - 2j and model.neg.tolist() == [-1.5, 2.0, -0.0]


class RebindsBuffers(nn.Module):
    """forward changes buffers' shapes, strides and dtypes through ``.data =`` (no version bump) and
    ``as_strided_``; one buffer's data it rebinds to another's (which restore must not write into),
    and a parameter of its own it casts."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("grow", torch.arange(4.0))
        self.register_buffer("restride", torch.arange(6.0).reshape(2, 3))
        self.register_buffer("transposed", torch.arange(6.0).reshape(2, 3).t())  # not contiguous
        self.register_buffer("cast", torch.arange(4.0))
        self.register_buffer("retyped", torch.zeros(4))  # as int32 at the same address: the same bytes
        self.register_buffer("square", torch.arange(9.0).reshape(3, 3))
        self.register_buffer("strided", torch.arange(6.0))
        self.register_buffer("a", torch.zeros(3))
        self.register_buffer("b", torch.ones(3))
        self.register_buffer("untouched", torch.randn(5))
        self.weight = nn.Parameter(torch.randn(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grow.data = torch.zeros(7)
        self.restride.data = torch.ones(3, 2).t()  # the same shape, other strides
        self.transposed.data = torch.zeros(3, 2)  # contiguous now
        self.cast.data = self.cast.data.double()
        self.retyped.data = self.retyped.data.view(torch.int32)
        self.square.data = self.square.data.t()  # a view of itself: the same address and shape
        self.strided.as_strided_((2, 2), (1, 2), 1)
        self.a.data = self.b  # a now shares b's storage
        self.weight.data = self.weight.data.double()
        return x


def test_shapes_strides_and_dtypes_changed_through_data_or_as_strided_are_put_back(snapshot_loops: str) -> None:
    model = RebindsBuffers()
    before = {n: layout_of(t) for n, t in [*model.named_parameters(), *model.named_buffers()]}
    tensors = {n: t for n, t in [*model.named_parameters(), *model.named_buffers()]}
    square = model.square.data_ptr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cap = featcheck.capture(model, torch.randn(2, 3))
    assert cap.note == ""
    assert all(t is tensors[n] for n, t in [*model.named_parameters(), *model.named_buffers()])
    assert_same_tensors(before, model)  # shapes, strides, dtypes, values bitwise; versions as they were
    assert model.b.tolist() == [1.0, 1.0, 1.0]  # restoring a did not write its zeros into b's storage
    assert model.a.data_ptr() != model.b.data_ptr()
    assert model.square.data_ptr() == square  # its own storage, given its own layout back


class InferenceRebinds(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("buf", torch.arange(4.0))
        self.lin = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.buf.data = torch.zeros(7)  # an inference tensor given a normal tensor's data
        return self.lin(x)


def test_an_inference_buffer_whose_data_is_rebound_is_put_back_as_an_inference_tensor(snapshot_loops: str) -> None:
    with torch.inference_mode():
        model = InferenceRebinds()
    buf = model.buf
    cap = featcheck.capture(model, torch.randn(3, 2))  # raised: the rebound tensor had no version counter
    assert cap.note == "" and model.buf is buf and buf.is_inference()
    assert buf.shape == (4,) and buf.tolist() == [0.0, 1.0, 2.0, 3.0]


class ResizesStorages(nn.Module):
    """forward resizes its buffers' storages (``untyped_storage().resize_``, no version bump):
    freed, shrunk below what the tensor needs, grown; one buffer not contiguous."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("freed", torch.arange(4.0))
        self.register_buffer("shrunk", torch.arange(4.0))
        self.register_buffer("grown", torch.arange(4.0))
        self.register_buffer("freed_t", torch.arange(6.0).reshape(2, 3).t())
        self.register_buffer("untouched", torch.arange(3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.freed.untyped_storage().resize_(0)
        self.shrunk.untyped_storage().resize_(8)
        self.grown.untyped_storage().resize_(64)
        self.freed_t.untyped_storage().resize_(0)
        return x


def test_buffers_whose_storage_is_resized_in_forward_are_put_back(snapshot_loops: str) -> None:
    model = ResizesStorages()
    before = {n: layout_of(t) for n, t in model.named_buffers()}
    storage = model.freed.untyped_storage()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cap = featcheck.capture(model, torch.randn(2, 3))  # raised (C loops) or crashed reading address 0
    assert cap.note == ""
    assert_same_tensors(before, model)
    for name in ("freed", "shrunk", "freed_t"):  # their storages hold them again
        t = getattr(model, name)
        assert t.untyped_storage().nbytes() >= (t.storage_offset() + 6 if name == "freed_t" else 4) * 4, name
    assert model.freed.untyped_storage()._cdata == storage._cdata and storage.nbytes() == 16  # grown back


class RebindsLayerWeights(nn.Module):
    """forward rebinds the data of torch.nn layers' parameters, of which featcheck keeps no copy."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.other = nn.Linear(3, 5)
        self.kept = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.kept(self.other(self.lin(x))[:, :3])
        self.lin.weight.data = self.lin.weight.data.double()
        self.other.bias.data = torch.zeros(7)
        self.kept.weight.untyped_storage().resize_(0)
        return y


def test_a_torch_nn_parameter_whose_data_is_rebound_or_storage_freed_is_reported(snapshot_loops: str) -> None:
    model = RebindsLayerWeights()
    weight, untouched = model.lin.weight, model.other.weight._version
    with pytest.warns(RuntimeWarning, match=r"lin\.weight \(its \.data was rebound.*dtype torch\.float64") as record:
        cap = featcheck.capture(model, torch.randn(2, 3))
    message = str(record[0].message)
    assert "other.bias (its .data was rebound" in message and "found shape (7,)" in message
    assert "kept.weight (its storage was resized to 0 bytes" in message and "state_dict" in message
    assert "lin.weight" in cap.note and "other.bias" in cap.note and "kept.weight" in cap.note
    assert "other.weight" not in cap.note and "lin.bias" not in cap.note and model.other.weight._version == untouched
    assert model.lin.weight is weight  # the Parameter object kept (its registration restored nothing)



class StridedBuffers(nn.Module):
    """Two 1-D buffers with a stride of 2 beside a BatchNorm: their bytes cannot be viewed."""

    def __init__(self, through_data: bool) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.register_buffer("a", torch.arange(8.0)[::2])
        self.register_buffer("b", torch.arange(8.0)[::2])
        self.through_data = through_data

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (self.a.data if self.through_data else self.a).add_(1)
        return self.bn(x)


@pytest.mark.parametrize("through_data", [False, True])
def test_a_strided_buffer_is_compared_and_keeps_no_other_buffer_from_being_put_back(snapshot_loops: str, through_data: bool) -> None:
    """Comparing a 1-D buffer of stride 2 raised ("stride(-1) must be 1 to view Float as Byte"),
    and that one error cancelled the restore of every buffer: BatchNorm's running statistics after
    a train=True capture were left as the forward made them."""
    model = StridedBuffers(through_data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    strides = {k: v.stride() for k, v in model.state_dict().items()}  # (a clone of a[::2] is contiguous)
    versions = {k: v._version for k, v in model.named_buffers()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "could not be compared" warning either
        featcheck.capture(model, torch.randn(8, 4), train=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.stride() == strides[k], k
    assert model.b._version == versions["b"]  # untouched: never written


class BufferViewsAWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("row", self.lin.weight.detach()[0])  # a view of the weight's first row

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.row.add_(1)  # writes the weight through the buffer
        return self.lin(x)


def test_a_weight_put_back_through_a_buffer_that_views_it_is_not_reported(snapshot_loops: str) -> None:
    """The weight's version was read (and reported: "not restored: lin.weight", with a warning to
    reload a state_dict) before the buffer's copy put it back, values and shared version."""
    model = BufferViewsAWeight()
    weight, version = model.lin.weight.detach().clone(), model.lin.weight._version
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cap = featcheck.capture(model, torch.randn(2, 4))
    assert torch.equal(model.lin.weight, weight) and model.lin.weight._version == version
    assert cap.note == ""
