"""Pure logic of the hook path, in process: the channel-axis rule decided once per module class,
and the first sample copied in C rather than cut out with torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import featcheck
from featcheck import _layout, _samples, _stats
from featcheck._records import LayerCapture


@pytest.mark.parametrize(
    "module,rule",
    [
        (nn.Conv2d(3, 4, 1), _layout.FIRST),
        (nn.BatchNorm2d(4), _layout.FIRST),
        (nn.Flatten(), _layout.FIRST),
        (torchvision.ops.misc.Conv2dNormActivation(3, 4)[0], _layout.FIRST),
        (torchvision.models.convnext.LayerNorm2d(4), _layout.FIRST),  # a LayerNorm, by its name
        (nn.Linear(4, 4), _layout.LAST),
        (nn.MultiheadAttention(4, 1), _layout.LAST),
        (nn.LayerNorm(4), _layout.NORM),
        (nn.ReLU(), _layout.INHERIT),
        (torchvision.ops.misc.Permute([0, 2, 3, 1]), _layout.INHERIT),
    ],
)
def test_the_rule_is_decided_by_class_and_gives_what_the_undecided_call_gives(module: nn.Module, rule: int | None) -> None:
    assert _layout.module_rule(module) == rule
    tags = _layout.Tags()
    x = torch.randn(2, 4, 5, 4)
    tags.set(x, 1)
    for out in (torch.randn(2, 4, 5, 4), torch.randn(2, 5, 4), torch.randn(2, 4), torch.randn(3)):
        assert _layout.channel_dim(module, (x,), out, tags, rule) == _layout.channel_dim(module, (x,), out, tags)


@pytest.mark.parametrize(
    "shape,cdim,copied",
    [
        ((2, 16, 8, 8), 1, True), ((2, 5), 1, True), ((2, 300, 33), 1, True), ((2, 3, 4, 5, 6), 1, True),
        ((2, 64, 40, 40), 1, True), ((2, 7, 70, 3), 1, True), ((2, 2, 5000), 1, True), ((2, 3, 9, 40, 40), 1, True),  # subsampled
        ((2, 8, 6), 2, False), ((3,), None, False),  # not channels first: torch cuts it
    ],
)
def test_the_first_sample_copied_in_c_equals_the_torch_cut(shape: tuple[int, ...], cdim: int | None, copied: bool) -> None:
    assert _samples._BYTES is not None and _samples._ROWS is not None, "the C kernel was not built"
    t = torch.randn(shape)
    values, steps = _samples.first(t, t.data_ptr(), t.shape, cdim, t.numel())
    want, want_steps = _samples.cut(t, cdim)
    rec = LayerCapture("x", nn.ReLU(), "x", 1, "", cdim, 1, None)
    rec._sample = values  # as the hook keeps it: read through the record's sample
    got = rec.sample
    assert isinstance(got, torch.Tensor) and rec.sample is got
    assert steps == want_steps and got.dtype == torch.float32 and torch.equal(got, want)
    t.zero_()  # a copy, not a view: an in-place write after the hook leaves it as it was
    assert torch.equal(got, want)
    assert isinstance(values, tuple) is copied  # the C copy where it keeps the whole first sample


@pytest.mark.parametrize(
    "shape,fills",
    [
        ((4, 64, 72, 72), True),  # a large map: the statistics kernel's pass copies the sample
        ((2, 24, 96, 16, 18), True),  # 3-D spatial
        ((2, 3000, 400), True),  # 1-D maps keep up to 4096 positions
        ((2, 64, 128, 256), True),  # split across two threads where torch has more than one
        ((2, 1024, 1, 1024), True),
        ((2, 16, 8, 8), False),  # small: the exact kernel, no pass of chanstats; copied by address after
        ((3, 100000, 4), False),  # rows of 4 values: too short for the kernel
    ],
)
@pytest.mark.parametrize("bounds", [None, (0.0, 1.0)])  # the pass of chanfast, or of chanstats (bounds counted by torch)
def test_the_sample_of_a_reduced_map_equals_the_torch_cut(shape: tuple[int, ...], fills: bool, bounds: tuple[float, float] | None) -> None:
    t = torch.randn(shape)
    t[0, 0] = 0.0  # a channel the fast path must recompute exactly: the sample is still the data
    rows = _samples.rows(t, 1)
    assert rows is not None
    block = _stats.reduce(t, 1, bounds, 0.01, _stats.Scratch(), rows)
    assert rows.filled is (fills and not (bounds and t.numel() <= _stats._SMALL))  # bounded maps up to _SMALL: the exact kernel
    values, steps = rows.take()
    want, want_steps = _samples.cut(t, 1)
    got = torch.frombuffer(values[0], dtype=torch.float32).view(values[1])
    assert steps == want_steps and torch.equal(got, want)
    np.testing.assert_array_equal(block, _stats.reduce(t, 1, bounds, 0.01, _stats.Scratch()))  # statistics unchanged by it
    assert _samples.rows(t[:, ::2], 1) is None  # not contiguous: torch cuts it
    assert _samples.rows(t.double(), 1) is None and _samples.rows(t, 2) is None


def test_a_captured_large_map_keeps_its_sample_from_the_statistics_pass() -> None:
    """Through capture: resnet18's conv1 at 224 x 224 takes chanstats, whose pass copies the sample;
    an in-place ReLU after it does not reach the copy."""
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(4, 3, 224, 224)
    cap = featcheck.capture(model, x, layers=["conv1", "bn1"], ops=False)
    with torch.no_grad():
        ref = model.bn1(model.conv1(x))
    assert isinstance(cap["bn1"]._sample, tuple)  # kept as the C copy's bytes until read
    assert cap["bn1"].sample_step == (4, 4)
    torch.testing.assert_close(cap["bn1"].sample, ref[0, :, ::4, ::4], rtol=0, atol=0)
    assert (ref < 0).any() and (cap["bn1"].sample < 0).any()  # before the in-place ReLU wrote it


def test_answers_cached_per_class_keep_no_class_alive_and_follow_each_class() -> None:
    """A test's local classes come and go: the per-class cache neither keeps them alive nor
    hands a new class an answer computed for a dead one."""
    import gc
    import weakref

    calls: list[type] = []

    def rule(cls: type) -> str:
        calls.append(cls)
        return cls.__name__

    def make(name: str) -> type:
        return type(name, (nn.ReLU,), {})

    first = make("First")
    assert _layout.per_class(rule, first) == "First" and _layout.per_class(rule, first) == "First"
    assert calls == [first]
    gone = weakref.ref(first)
    calls.clear()
    del first
    gc.collect()
    assert gone() is None
    for i in range(50):  # new classes, some possibly at the dead one's address
        cls = make(f"C{i}")
        assert _layout.per_class(rule, cls) == f"C{i}"
    assert len(calls) == 50
    assert _layout.module_rule(nn.Conv2d(1, 1, 1)) == _layout.FIRST
    assert _layout.module_rule(nn.LayerNorm(4)) == _layout.NORM


@pytest.mark.parametrize("keep_samples", [True, False])
def test_a_captured_large_maps_statistics_are_those_of_the_general_path(keep_samples: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook's direct path for large contiguous float32 maps (chanfast without the general
    path's layers) gives the bits _stats.reduce gives for the same output."""
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(4, 3, 224, 224)
    calls: list[tuple[int, ...]] = []
    fast_block = _stats.fast_block

    def spy(data: np.ndarray, *args: object) -> np.ndarray:
        calls.append(data.shape)
        return fast_block(data, *args)

    monkeypatch.setattr(_stats, "fast_block", spy)
    cap = featcheck.capture(model, x, layers=["conv1", "bn1", "layer1", "layer2"], ops=False, keep_samples=keep_samples)
    monkeypatch.undo()
    assert len(calls) == 4  # the direct path took all four
    with torch.no_grad():
        c1 = model.conv1(x)
        b1 = model.bn1(c1)
        l1 = model.layer1(model.maxpool(model.relu(b1.clone())))
        l2 = model.layer2(l1)
    for name, ref in (("conv1", c1), ("bn1", b1), ("layer1", l1), ("layer2", l2)):
        assert not _stats.exact_first(ref.numel(), ref.shape, 1, False)  # each takes the direct path
        want = _stats.Accumulator(ref.shape[1])
        want.add(np.asarray(_stats.reduce(ref, 1)))
        got, expected = cap[name].stats, want.stats()
        assert {"mean", "std", "min", "max", "zero_fraction"} <= got.keys()
        for k, v in got.items():
            np.testing.assert_array_equal(v, expected[k], err_msg=f"{name} {k}")
        assert (cap[name].sample is None) is not keep_samples
