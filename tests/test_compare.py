"""featcheck.compare and assert_same_activations on real models: where two models part."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
import torchvision
from torch import nn

import featcheck
from fixtures import demo_cnn


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def x18() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_resnet18_against_a_deep_copy_agrees_everywhere(resnet18: nn.Module, x18: torch.Tensor) -> None:
    diff = featcheck.assert_same_activations(resnet18, copy.deepcopy(resnet18), x18)
    assert diff.first is None
    names = [r.reference for r in diff.rows]
    assert "layer1.0.conv2" in names and "layer1.0.add" in names  # modules and operations
    assert all(r.max_abs == 0 and r.channels == [] for r in diff.rows)
    assert diff.only_reference == diff.only_candidate == diff.skipped == []


def test_one_perturbed_output_channel_is_found_where_it_starts(resnet18: nn.Module, x18: torch.Tensor) -> None:
    cand = copy.deepcopy(resnet18)
    with torch.no_grad():
        cand.layer1[0].conv2.weight[3] += 0.05
    diff = featcheck.compare(resnet18, cand, x18)
    first = diff.first
    assert first is not None and first.reference == first.candidate == "layer1.0.conv2"
    assert first.channels == [3] and first.inputs_diverged is False
    assert 0 < first.mismatched <= 1 / 64
    later = diff.rows[diff.rows.index(first) + 1 :]
    assert later and all(r.inputs_diverged for r in later)
    assert all(not r.diverged and r.inputs_diverged is False for r in diff.rows[: diff.rows.index(first)])
    with pytest.raises(AssertionError) as err:
        featcheck.assert_same_activations(resnet18, cand, x18)
    text = str(err.value)
    assert "first diverging: layer1.0.conv2; its inputs agreed: the difference starts inside it" in text
    table = text.splitlines()
    row = next(line for line in table if line.startswith("layer1.0.conv2 "))
    assert row.split()[-2:] == ["no", "[3]"]
    assert [lc.name for lc, _, _ in err.value.flagged] == [r.reference for r in diff.diverged[:3]]


class _TwoConvs(nn.Module):
    def __init__(self, glue: float = 1.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.glue = glue

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.glue != 1.0:
            x = x * self.glue
        return self.conv2(x)


def test_glue_code_between_two_modules_shows_as_diverged_inputs() -> None:
    ref = _TwoConvs()
    cand = copy.deepcopy(ref)
    cand.glue = 1.01
    diff = featcheck.compare(ref, cand, torch.randn(2, 3, 8, 8))
    rows = {r.reference: r for r in diff.rows}
    assert not rows["conv1"].diverged and rows["conv1"].inputs_diverged is False
    assert diff.first is rows["conv2"] and rows["conv2"].inputs_diverged is True
    assert diff.only_candidate == ["mul"]  # the glue is listed, not compared


class _Old(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.bn(self.conv(x))))


class _New(nn.Module):
    """The same block rewritten: other names, the activation as a function."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.proj = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.relu(self.stem(x)))


def test_rewritten_class_with_other_names_passes_with_a_mapping() -> None:
    old = _Old().eval()
    with torch.no_grad():
        old.bn.running_mean.uniform_(-1, 1)
    new = _New().eval()
    renamed = {"conv": "stem.0", "bn": "stem.1", "head": "proj"}
    state = {}
    for k, v in old.state_dict().items():
        layer, _, rest = k.partition(".")
        state[f"{renamed[layer]}.{rest}"] = v
    new.load_state_dict(state)
    mapping = {**renamed, "act": "relu"}
    diff = featcheck.assert_same_activations(old, new, torch.randn(2, 3, 8, 8), mapping=mapping)
    assert [(r.reference, r.candidate) for r in diff.rows] == list(mapping.items())[:2] + [("act", "relu"), ("head", "proj")]
    with torch.no_grad():
        new.proj.weight[1] += 1
    with pytest.raises(AssertionError, match="first diverging: head \\(candidate proj\\)"):
        featcheck.assert_same_activations(old, new, torch.randn(2, 3, 8, 8), mapping=lambda name: mapping[name])


def test_a_mapped_reference_record_is_not_also_taken_by_its_name() -> None:
    # the candidate's "0" runs before its "2": without the rule it would take reference "0" by name
    ref = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 3, padding=1))
    cand = copy.deepcopy(ref)
    diff = featcheck.compare(ref, cand, torch.randn(2, 4, 6, 6), mapping={"0": "2"})
    pairs = [(r.reference, r.candidate) for r in diff.rows]
    assert ("0", "2") in pairs and ("0", "0") not in pairs


def test_an_inserted_identity_is_an_added_record_not_a_cascade_of_renames() -> None:
    ref = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Tanh())
    cand = nn.Sequential(ref[0], nn.Identity(), *copy.deepcopy(list(ref)[1:]))
    diff = featcheck.assert_same_activations(ref, cand, torch.randn(2, 3, 12, 12))
    assert [(r.reference, r.candidate) for r in diff.rows] == [("0", "0"), ("1", "2"), ("2", "3"), ("3", "4")]
    assert diff.only_candidate == ["1"] and diff.only_reference == []


def test_bfloat16_copy_passes_with_bf16_tolerances_and_fails_with_float32_ones() -> None:
    model = demo_cnn.load()
    x, _ = demo_cnn.shapes(8)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    diff = featcheck.assert_same_activations(model, bf16, x)  # inputs cast to bf16 for the candidate
    assert diff.rows[0].rtol == 5e-2 and max(r.max_abs for r in diff.rows) > 1e-3
    with pytest.raises(AssertionError, match="first diverging: features.0;"):
        featcheck.assert_same_activations(model, bf16, x, rtol=1e-4, atol=1e-5)
    # tolerances per layer: loose where asked, float32's elsewhere
    diff = featcheck.compare(model, bf16, x, rtol={"features.0": 0.5, "*": 1e-4}, atol={"features.0": 1.0, "*": 1e-5})
    assert diff.first is not None and diff.first.reference == "features.1"


def test_channels_last_against_contiguous_passes(resnet18: nn.Module, x18: torch.Tensor) -> None:
    cl = copy.deepcopy(resnet18).to(memory_format=torch.channels_last)
    diff = featcheck.assert_same_activations(resnet18, cl, x18)
    assert len(diff.rows) > 60


def test_a_compiled_candidate_is_run_through_its_wrapper() -> None:
    model = demo_cnn.load()
    x, _ = demo_cnn.shapes(4)
    graphs: list[int] = []

    def backend(gm: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> object:
        graphs.append(len(gm.graph.nodes))
        return gm.forward

    compiled = torch.compile(copy.deepcopy(model), backend=backend)
    diff = featcheck.assert_same_activations(model, compiled, x)
    assert graphs, "the compiled wrapper was not run"
    assert "the torch.compile wrapper was run" in diff.note
    assert [r.reference for r in diff.rows] == featcheck.capture(model, x).names
    # what the compiled code does not let run is said: a candidate with fewer records
    compiled_small = torch.compile(nn.Sequential(*list(copy.deepcopy(model).features)[:4]), backend=backend)
    diff = featcheck.compare(nn.Sequential(*list(model.features)[:5]), compiled_small, x)
    assert diff.only_reference == ["4"] and "1 reference record(s) go unseen" in diff.note
    # dynamo caches compiled code per forward: a class of its own, never compiled without fullgraph
    glue = _TwoConvs(glue=1.01)
    fullgraph = torch.compile(copy.deepcopy(glue), backend=backend, fullgraph=True)
    with pytest.raises(RuntimeError, match=r"break its graph, which torch.compile\(fullgraph=True\) forbids"):
        featcheck.compare(glue, fullgraph, x)


def test_in_place_writes_in_the_reference_do_not_change_what_it_holds() -> None:
    # conv -> ReLU(inplace): a held output that was not copied would be rectified by then
    ref = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(inplace=True), nn.Conv2d(8, 4, 1))
    diff = featcheck.assert_same_activations(ref, copy.deepcopy(ref), torch.randn(2, 3, 8, 8))
    assert [r.max_abs for r in diff.rows] == [0.0, 0.0, 0.0]


def test_max_memory_compares_what_fits_and_names_the_rest(resnet18: nn.Module, x18: torch.Tensor) -> None:
    full = featcheck.compare(resnet18, copy.deepcopy(resnet18), x18)
    diff = featcheck.compare(resnet18, copy.deepcopy(resnet18), x18, max_memory=1 << 20)
    assert diff.skipped and len(diff.rows) + len(diff.skipped) == len(full.rows)
    assert set(diff.skipped) == {r.reference for r in full.rows} - {r.reference for r in diff.rows}


def test_models_are_left_as_found(resnet18: nn.Module, x18: torch.Tensor) -> None:
    cand = copy.deepcopy(resnet18).train()
    before = {k: v.clone() for k, v in cand.state_dict().items()}
    featcheck.compare(resnet18, cand, x18)
    assert cand.training and not resnet18.training
    assert all(torch.equal(before[k], v) for k, v in cand.state_dict().items())
    assert not cand._forward_hooks and not cand.layer1[0].conv1._forward_hooks


def test_bad_arguments_fail_before_any_forward(resnet18: nn.Module, x18: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="same model object"):
        featcheck.compare(resnet18, resnet18, x18)
    with pytest.raises(TypeError, match="candidate must be a torch.nn.Module, got Tensor"):
        featcheck.compare(resnet18, x18, x18)
    with pytest.raises(TypeError, match="rtol must be a finite number >= 0"):
        featcheck.compare(resnet18, copy.deepcopy(resnet18), x18, rtol=-1)
    with pytest.raises(TypeError, match="atol given per layer"):
        featcheck.compare(resnet18, copy.deepcopy(resnet18), x18, atol={"conv1": "big"})
    with pytest.raises(TypeError, match="mapping must be a dict"):
        featcheck.compare(resnet18, copy.deepcopy(resnet18), x18, mapping=["conv1"])
    with pytest.raises(TypeError, match="max_memory must be a number of bytes"):
        featcheck.compare(resnet18, copy.deepcopy(resnet18), x18, max_memory=-5)


def _live(shape: tuple[int, ...]) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is torch.Tensor and tuple(o.shape) == shape)


def test_reference_copies_are_shared_and_dropped_once_compared() -> None:
    # Channel counts tell the records' outputs apart: output i is [1, 5 + i, 6, 6].
    widths = [5, 6, 7, 8, 9]
    ref = nn.Sequential(*[nn.Conv2d(c, c + 1, 1) for c in [4, *widths[:-1]]])
    seen: list[list[int]] = []
    cand = copy.deepcopy(ref)
    cand[-1].register_forward_pre_hook(lambda m, a: seen.append([_live((1, c, 6, 6)) for c in widths]))
    x = torch.randn(1, 4, 6, 6)
    # every input is the output of the record before it: one copy each, 5 outputs and x
    size = sum(4 * 36 * c for c in [4, *widths])
    diff = featcheck.compare(ref, cand, x, max_memory=size)
    assert diff.skipped == [] and len(diff.rows) == 5
    # at the last layer: the copies of outputs 0-2 are gone (compared, no longer an input),
    # output 3 is alive twice (the candidate's live one and the copy it is compared with next)
    assert seen == [[0, 0, 0, 2, 1]]
