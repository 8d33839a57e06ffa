"""Baseline logic in-process, on plain dict entries: schema validation, alignment, drift, the diff
text and compact storage. No torch, no inner pytest run."""

from __future__ import annotations

import json
from typing import Any

import pytest

from featcheck import _baselines as B


def entry(name: str, module_type: str = "Conv2d", channels: int = 2, shape: tuple[int, ...] = (2, 8, 8), **stats: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "name": name,
        "module_type": module_type,
        "shape": [None, *shape],
        "dtype": "torch.float32",
        "stride": [2.0, 2.0],
        "channels": channels,
        "params": 10,
    }
    e["stats"] = {
        "mean": stats.get("mean", [0.5] * channels),
        "std": stats.get("std", [1.0] * channels),
        "dead_fraction": stats.get("dead_fraction", 0.0),
        "saturated_fraction": stats.get("saturated_fraction"),
    }
    return e


def doc(*layers: dict[str, Any], stats: bool = True) -> dict[str, Any]:
    return {"featcheck_baseline": 1, "test": "t.py::t", "name": None, "stats": stats, "torch": "2.14.1", "layers": list(layers)}


# -- validation ------------------------------------------------------------------------------------


def test_a_valid_file_loads() -> None:
    good = doc(entry("a"), entry("b", "ReLU"))
    assert B.parse(json.dumps(good)) == good


def damaged(path: str, value: Any) -> dict[str, Any]:
    """A valid document with the field at ``path`` (dotted; ints index lists) set or deleted."""
    d = doc(entry("a"), entry("b", "ReLU"))
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target: Any = d
    for p in parents:
        target = target[p]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return d


DELETE = object()

DAMAGE = [
    ("featcheck_baseline", True, "has 'featcheck_baseline': true, which is not a format version number"),
    ("featcheck_baseline", "1", "has 'featcheck_baseline': \"1\", which is not a format version number"),
    ("featcheck_baseline", 2, "has format version 2; this featcheck reads version 1"),
    ("layers", {"a": 1}, "'layers' must be a list of layers, found {\"a\": 1}"),
    ("stats", "yes", "'stats' must be true or false"),
    ("test", 5, "'test' must be a string, found 5"),
    ("layers.1", [1, 2], "layer 1 must be an object, found [1, 2]"),
    ("layers.1.name", DELETE, "layer 1: 'name' must be a string, found nothing"),
    ("layers.0.module_type", None, "layer 0 ('a'): 'module_type' must be a string, found null"),
    ("layers.0.shape", "2x8x8", "layer 0 ('a'): 'shape' must be a list of non-negative ints and nulls, found \"2x8x8\""),
    ("layers.0.shape", [None, 2.5], "'shape' must be a list of non-negative ints"),
    ("layers.0.shape", [None, True], "'shape' must be a list of non-negative ints"),
    ("layers.0.stride", ["2"], "'stride' must be null or a list of numbers, found [\"2\"]"),
    ("layers.0.channels", "2", "'channels' must be a non-negative int, found \"2\""),
    ("layers.0.channels", -1, "'channels' must be a non-negative int"),
    ("layers.0.params", 1.5, "'params' must be null or a non-negative int, found 1.5"),
    ("layers.1.name", "a", "layer 1 ('a'): the name appears twice"),
    ("layers.0.stats", DELETE, "layer 0 ('a'): 'stats' must be an object, found null"),
    ("layers.0.stats.mean", [0.5], "'stats.mean' must be a list of 2 numbers or nulls (one per channel), found [0.5]"),
    ("layers.0.stats.mean", [0.5, "0.5"], "'stats.mean' must be a list of 2 numbers"),
    ("layers.0.stats.std", DELETE, "'stats.std' must be a list of 2 numbers or nulls (one per channel), found null"),
    ("layers.0.stats.dead_fraction", DELETE, "'stats.dead_fraction' must be null or a number from 0 to 1, found null"),
    ("layers.0.stats.dead_fraction", 3, "'stats.dead_fraction' must be null or a number from 0 to 1, found 3"),
    ("layers.0.stats.saturated_fraction", False, "'stats.saturated_fraction' must be null or a number from 0 to 1, found false"),
    ("layers.1.stats", {"same_as": "zz"}, "'stats.same_as' must name an earlier layer with its own statistics, found \"zz\""),
    ("layers.0.stats", {"same_as": "b"}, "'stats.same_as' must name an earlier layer"),
    ("layers.1.stats", {"same_as": "a", "mean": []}, "'stats' with 'same_as' must hold only a layer name"),
    ("layers.0.stride", [], "layer 0 ('a'): 'stride' must be null or a list of 2 numbers or nulls (one per spatial dimension of shape [null, 2, 8, 8]), found []"),
    ("layers.0.stride", [2.0, 2.0, 2.0, 2.0], "'stride' must be null or a list of 2 numbers or nulls (one per spatial dimension"),
    ("layers.0.stride", [10**400, 2.0], "'stride' must be null or a list of numbers, found 100000000000...(401 digits) at index 0 (numbers must be finite"),
    ("layers.0.shape", [None], "'stride' must be null for shape [null] (no spatial dimensions), found [2.0, 2.0]"),
    ("layers.0.stats.mean", [0.5, 10**400], "'stats.mean' must be a list of 2 numbers or nulls (one per channel), found 100000000000...(401 digits) at index 1 (numbers must be finite and within float range; NaN and infinity are stored as null)"),
    ("layers.0.stats.std", [-(10**309), 1.0], "'stats.std' must be a list of 2 numbers or nulls (one per channel), found -100000000000...(310 digits) at index 0"),
    ("layers.0.params", 10**400, "layer 0 ('a'): 'params' must be null or a non-negative int, found 100000000000...(401 digits)"),
    ("layers.0.channels", 10**400, "'channels' must be a non-negative int, found 100000000000...(401 digits)"),
]


@pytest.mark.parametrize("path,value,message", DAMAGE, ids=[f"{p}={'deleted' if v is DELETE else json.dumps(v)[:20]}" for p, v, _ in DAMAGE])
def test_every_field_is_validated(path: str, value: Any, message: str) -> None:
    with pytest.raises(B.BaselineError) as info:
        B.parse(json.dumps(damaged(path, value)))
    assert message in str(info.value)


def test_nan_literals_are_not_numbers() -> None:
    with pytest.raises(B.BaselineError, match="'stats.mean' must be a list of 2 numbers"):
        B.parse(json.dumps(damaged("layers.0.stats.mean", [0.5, 0.5])).replace("[0.5, 0.5]", "[0.5, NaN]", 1))


def test_same_as_references_are_resolved_and_checked_for_channels() -> None:
    d = doc(entry("a", mean=[0.25, 0.5]), entry("b", "Dropout"))
    d["layers"][1]["stats"] = {"same_as": "a"}
    loaded = B.parse(json.dumps(d))
    assert loaded["layers"][1]["stats"] == entry("a", mean=[0.25, 0.5])["stats"]
    d["layers"][1]["channels"] = 3
    with pytest.raises(B.BaselineError, match="names 'a', which has 2 channels, not 3"):
        B.parse(json.dumps(d))


def test_stored_refers_to_repeated_statistics_and_round_trips() -> None:
    full = doc(entry("a", mean=[0.25, 0.5]), entry("b", "Dropout", mean=[0.25, 0.5]), entry("c", "ReLU"),
               entry("d", "Identity", channels=3, mean=[0.5] * 3, std=[1.0] * 3))
    out = B.stored(full)
    assert [layer["stats"] for layer in out["layers"]][1] == {"same_as": "a"}
    assert "same_as" not in json.dumps(out["layers"][3])  # same values, different channel count
    assert full["layers"][1]["stats"]["mean"] == [0.25, 0.5]  # the input is not changed
    assert B.parse(B.dumps(out)) == full


def test_dumps_keeps_number_lists_on_one_line() -> None:
    text = B.dumps(doc(entry("a", channels=3, mean=[0.1235, -1.235e-05, None], std=[1.0, 2.0, 3.0])))
    assert '"mean": [0.1235,-1.235e-05,null]' in text and '"shape": [null,2,8,8]' in text


# -- alignment, drift and the diff text --------------------------------------------------------------


def names(pairs: list[Any]) -> list[tuple[str, str]]:
    return [(x["name"], y["name"]) for x, y, *_ in pairs]


def test_an_inserted_block_is_added_layers_and_renamed_followers() -> None:
    old = [entry("0"), entry("1", "ReLU"), entry("2", channels=4), entry("3", "ReLU", channels=4)]
    new = [entry("0"), entry("1", "ReLU"), entry("2", channels=3), entry("3", "ReLU", channels=3),
           entry("4", channels=4), entry("5", "ReLU", channels=4)]
    diff = B.compare(doc(*old), doc(*new), 1e-2, 1e-4, True)
    assert [e["name"] for e in diff.added] == ["2", "3"]
    assert names(diff.renamed) == [("2", "4"), ("3", "5")]
    assert not diff.removed and not diff.changed and not diff.drift


def test_a_changed_layer_is_paired_by_name_and_a_moved_one_by_type() -> None:
    old = [entry("stem"), entry("old_head", "Linear", shape=(4,))]
    new = [entry("stem", shape=(2, 4, 4)), entry("new_head", "Linear", shape=(8,))]
    diff = B.compare(doc(*old), doc(*new), 1e-2, 1e-4, True)
    assert [(x["name"], y["name"], what) for x, y, what in diff.changed] == [
        ("stem", "stem", ["shape 2x8x8 -> 2x4x4"]),
        ("old_head", "new_head", ["renamed old_head -> new_head", "shape 4 -> 8"]),
    ]


def test_drift_is_beyond_atol_plus_rtol_and_names_the_worst_channels() -> None:
    old = entry("a", channels=4, mean=[1.0, 1.0, 1.0, 1.0], std=[1.0] * 4)
    new = entry("a", channels=4, mean=[1.009, 1.5, 1.02, None], std=[1.0] * 4, dead_fraction=0.25)
    lines = B._drift(old, new, 1e-2, 1e-4)
    assert lines == ["mean: 3/4 channels, worst ch 3 1 -> nan, ch 1 1 -> 1.5, ch 2 1 -> 1.02", "dead channels 0/4 -> 1/4"]


def test_one_unit_in_the_last_stored_digit_is_not_drift_even_at_rtol_zero() -> None:
    old = entry("a", channels=3, mean=[1.234, 0.0, -5.678e-05], std=[1.0] * 3)
    close = entry("a", channels=3, mean=[1.235, 0.0, -5.679e-05], std=[1.0] * 3)
    far = entry("a", channels=3, mean=[1.236, 1e-9, -5.68e-05], std=[1.0] * 3)
    assert B._drift(old, close, 0.0, 0.0) == []
    assert B._drift(old, far, 0.0, 0.0) == ["mean: 3/3 channels, worst ch 0 1.234 -> 1.236, ch 2 -5.678e-05 -> -5.68e-05, ch 1 0 -> 1e-09"]


def test_render_diff_lists_structure_then_drift_then_the_command() -> None:
    old = [entry("0"), entry("1", "ReLU")]
    new = [entry("0", mean=[0.5, 9.0]), entry("1", "ReLU", shape=(2, 4, 4)), entry("2", "Linear", shape=(3,))]
    text = B.render_diff(B.compare(doc(*old), doc(*new), 1e-2, 1e-4, True), "b.json", 1e-2, 1e-4, "pytest --featcheck-update t.py::t")
    assert text.splitlines() == [
        "featcheck baseline b.json differs from this capture",
        "structure: 2 differences (1 added, 0 removed, 1 changed, 0 renamed)",
        "  + added    2  Linear  3  stride 2  params 10",
        "  ~ changed  1 (ReLU): shape 2x8x8 -> 2x4x4",
        "numeric drift beyond rtol=0.01, atol=0.0001 in 1 layers (structure unchanged there):",
        "  0: mean: 1/2 channels, worst ch 1 0.5 -> 9",
        "If the change is intended, update the baseline: pytest --featcheck-update t.py::t",
    ]


def test_version_1_files_with_six_digits_still_compare_equal() -> None:
    old = entry("a", channels=2, mean=[0.123456, 98.7654], std=[1.23456e-05, 1.0])
    new = entry("a", channels=2, mean=[0.1235, 98.77], std=[1.235e-05, 1.0])
    assert B.compare(doc(old), doc(new), 1e-4, 0.0, True).drift == []


def test_a_newer_format_is_its_own_error_and_an_older_one_is_damage() -> None:
    with pytest.raises(B.NewerBaselineError, match="has format version 2; this featcheck reads version 1: it was written by a newer featcheck"):
        B.parse(json.dumps(damaged("featcheck_baseline", 2)))
    with pytest.raises(B.BaselineError, match="has format version 0; this featcheck reads version 1") as info:
        B.parse(json.dumps(damaged("featcheck_baseline", 0)))
    assert not isinstance(info.value, B.NewerBaselineError)


def test_nesting_too_deep_for_the_json_reader_is_unreadable_json() -> None:
    with pytest.raises(B.BaselineError, match="cannot be read as JSON"):
        B.parse("[" * 100_000)


def test_stride_of_an_empty_dimension_shows_as_infinite() -> None:
    assert B._fmt_stride([None, 1.0]) == "infx1" and B._fmt_stride([None, None]) == "inf"
    assert B._fmt_stride([2.0, 2.0]) == "2" and B._fmt_stride(None) == "-"


def test_drift_at_the_ends_of_the_float_range_raises_no_warning() -> None:
    import warnings

    old = entry("a", channels=2, mean=[1e308, -1e308], std=[1e308, 1.0])
    new = entry("a", channels=2, mean=[-1e308, 1e308], std=[1e308, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lines = B._drift(old, new, 1e-2, 1e-4)
    assert lines == ["mean: 2/2 channels, worst ch 0 1e+308 -> -1e+308, ch 1 -1e+308 -> 1e+308"]


def old_name(nodeid: str) -> str:
    """featcheck 0.1.0's file name of a baseline without name=."""
    from featcheck._paths import safe_filename

    parts = nodeid.split("::")
    return safe_filename(".".join(parts[1:]) if len(parts) > 1 else parts[0], 100) + ".json"


def test_file_names_tell_every_node_id_apart_and_keep_the_old_names_where_those_did() -> None:
    from pathlib import Path

    kept = ["t.py::test_a", "t.py::TestC::test_m", "t.py::test_p[1-x.y]", "t.py::TestC::test_m[a/b]",
            "t.py::TestC::Inner::test_m[a.b]", "t.py::test_p[" + "x" * 300 + "]"]
    new = ["t.py::test_p[a::b]", "t.py::TestC::test_m[a::b]", "t.py::TestC.test_m[a.b]", "t.py::t.x"]
    names = {i: B.baseline_path(Path("t.py"), i, None).name for i in kept + new}
    assert len(set(names.values())) == len(names)
    assert {i: names[i] for i in kept} == {i: old_name(i) for i in kept}  # existing files keep working
    assert all("+" in names[i] and len(names[i]) <= 105 for i in new)
    # the folder stands for the test file: the rootdir pytest picked does not change the name
    assert B.baseline_path(Path("tests/t.py"), "tests/t.py::test_p[a::b]", "stem") == B.baseline_path(Path("tests/t.py"), "t.py::test_p[a::b]", "stem")
    assert B.baseline_path(Path("tests/t.py"), "t.py::test_p[a::b]", "stem").name.endswith(".stem.json")
