"""Pure logic of the hook path, in process: the channel-axis rule decided once per module class,
and the first sample copied in C rather than cut out with torch."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from featcheck import _layout, _recorder
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
        ((2, 64, 40, 40), 1, False), ((2, 8, 6), 2, False), ((3,), None, False),  # subsampled, not channels first
    ],
)
def test_the_first_sample_copied_in_c_equals_the_torch_cut(shape: tuple[int, ...], cdim: int | None, copied: bool) -> None:
    assert _recorder._BYTES is not None, "the C kernel was not built"
    t = torch.randn(shape)
    values, steps = _recorder._first_sample(t, t.data_ptr(), t.shape, cdim, t.numel())
    want, want_steps = _recorder._sample(t, cdim)
    rec = LayerCapture("x", nn.ReLU(), "x", 1, "", cdim, 1, None)
    rec._sample = values  # as the hook keeps it: read through the record's sample
    got = rec.sample
    assert isinstance(got, torch.Tensor) and rec.sample is got
    assert steps == want_steps and got.dtype == torch.float32 and torch.equal(got, want)
    t.zero_()  # a copy, not a view: an in-place write after the hook leaves it as it was
    assert torch.equal(got, want)
    assert isinstance(values, tuple) is copied  # the C copy where it keeps the whole first sample


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
