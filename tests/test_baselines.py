"""Regression baselines: the whole create / pass / change / update cycle through pytester."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

SUITE = """
import os, torch, pytest
from torch import nn

def make():
    torch.manual_seed(int(os.environ.get("SEED", "0")))
    ch = int(os.environ.get("CH", "16"))
    layers = [nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU()]
    if os.environ.get("INSERT"):
        layers += [nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()]
    layers += [nn.Conv2d(8, ch, 3, stride=int(os.environ.get("STRIDE", "2")), padding=1), nn.ReLU(),
               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, 4)]
    return nn.Sequential(*layers)

def test_backbone(featcheck):
    cap = featcheck.capture(make(), featcheck.sample_input((2, 3, 32, 32)))
    featcheck.check_baseline(cap, stats=not os.environ.get("NOSTATS"))
"""

BASELINE = Path("__featcheck__/test_suite/test_backbone.json")


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def run(pt: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str, **env: str) -> pytest.RunResult:
    for k in ("SEED", "CH", "INSERT", "STRIDE", "NOSTATS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return pt.runpytest_subprocess("-p", "no:cacheprovider", *args)


def test_full_cycle_missing_update_pass(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    first = run(suite, monkeypatch)
    first.assert_outcomes(failed=1)
    first.stdout.fnmatch_lines(
        [
            f"E*featcheck baseline {BASELINE} does not exist; nothing was written.",
            "E*Create it with: pytest --featcheck-update test_suite.py::test_backbone",
        ]
    )
    assert not (suite.path / "__featcheck__").exists()
    update = run(suite, monkeypatch, "--featcheck-update")
    update.assert_outcomes(passed=1)
    update.stdout.fnmatch_lines(["*= featcheck =*", f"baseline written {BASELINE}"])
    doc = json.loads((suite.path / BASELINE).read_text())
    assert doc["featcheck_baseline"] == 1 and doc["test"] == "test_suite.py::test_backbone"
    assert [layer["name"] for layer in doc["layers"]] == [str(i) for i in range(7)]
    conv = doc["layers"][0]
    assert conv["shape"] == [None, 8, 16, 16] and conv["stride"] == [2.0, 2.0] and conv["params"] == 224
    assert len(conv["stats"]["mean"]) == 8 and "dead_fraction" in conv["stats"]
    text = (suite.path / BASELINE).read_text()
    assert '"mean": [' in text and text.count("\n") < 200  # number lists on one line, small diffs
    run(suite, monkeypatch).assert_outcomes(passed=1)
    again = run(suite, monkeypatch, "--featcheck-update")
    again.assert_outcomes(passed=1)
    again.stdout.no_fnmatch_line("baseline *")  # unchanged: nothing rewritten


@pytest.fixture
def accepted(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    run(suite, monkeypatch, "--featcheck-update").assert_outcomes(passed=1)
    return suite


def test_stride_change_is_a_structure_diff(accepted: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    before = (accepted.path / BASELINE).read_text()
    result = run(accepted, monkeypatch, STRIDE="1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E*structure: 2 differences (0 added, 0 removed, 2 changed, 0 renamed)",
            "E*~ changed  2 (Conv2d): shape 16x8x8 -> 16x16x16, stride 4 -> 2",
            "E*~ changed  3 (ReLU): shape 16x8x8 -> 16x16x16, stride 4 -> 2",
            "E*If the change is intended, update the baseline: pytest --featcheck-update test_suite.py::test_backbone",
        ]
    )
    assert (accepted.path / BASELINE).read_text() == before  # never touched without --featcheck-update


def test_inserted_block_does_not_cascade(accepted: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(accepted, monkeypatch, INSERT="1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E*structure: 8 differences (2 added, 0 removed, 0 changed, 6 renamed)",
            "E*+ added    2  Conv2d  8x16x16  stride 2  params 584",
            "E*> renamed  2 -> 4 (Conv2d, otherwise unchanged)",
            "E*> renamed  6 -> 8 (Linear, otherwise unchanged)",
        ]
    )
    result.stdout.no_fnmatch_line("E*~ changed*")


def test_channel_count_change(accepted: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(accepted, monkeypatch, CH="32")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E*~ changed  2 (Conv2d): shape 16x8x8 -> 32x8x8, params 1.17k -> 2.34k",
            "E*~ changed  6 (Linear): params 68 -> 132",
        ]
    )


def test_init_change_is_drift_only_and_stats_false_passes(accepted: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(accepted, monkeypatch, SEED="1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E*numeric drift beyond rtol=0.01, atol=0.0001 in 7 layers*", "E*  0: mean: 8/8 channels, worst ch *"])
    result.stdout.no_fnmatch_line("E*structure:*")
    run(accepted, monkeypatch, SEED="1", NOSTATS="1").assert_outcomes(passed=1)
    update = run(accepted, monkeypatch, "--featcheck-update", SEED="1")
    update.assert_outcomes(passed=1)
    update.stdout.fnmatch_lines([f"baseline updated {BASELINE}"])
    run(accepted, monkeypatch, SEED="1").assert_outcomes(passed=1)


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "cannot be read as JSON"),
        ('{"featcheck_baseline": 0, "layers": []}', "has format version 0; this featcheck reads version 1"),
        ('{"layers": []}', "is not a featcheck baseline"),
    ],
)
def test_corrupt_or_foreign_files_fail_clearly_and_are_left_alone(
    accepted: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, content: str, message: str
) -> None:
    (accepted.path / BASELINE).write_text(content)
    result = run(accepted, monkeypatch)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"E*featcheck baseline {BASELINE} {message}*It was left as it is.", "E*Rewrite it from this capture with: pytest --featcheck-update test_suite.py::test_backbone"])
    assert (accepted.path / BASELINE).read_text() == content
    run(accepted, monkeypatch, "--featcheck-update").assert_outcomes(passed=1)
    assert json.loads((accepted.path / BASELINE).read_text())["featcheck_baseline"] == 1


HOSTILE = """
import pytest, torch
from torch import nn

class TestCls:
    @pytest.mark.parametrize("tag", ["a", "b", "../../../escape", "<script>", "x" * 300])
    def test_p(self, featcheck, tag):
        torch.manual_seed(0)
        cap = featcheck.capture(nn.Conv2d(3, 4, 3), featcheck.sample_input((1, 3, 8, 8)))
        featcheck.check_baseline(cap)
        featcheck.check_baseline(cap, name="again", stats=False)

def test_twice_without_name(featcheck):
    cap = featcheck.capture(nn.Conv2d(3, 4, 3), featcheck.sample_input((1, 3, 8, 8)))
    featcheck.check_baseline(cap)
    featcheck.check_baseline(cap)
"""


def test_parametrized_and_hostile_ids_get_separate_files_inside_featcheck_dir(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_hostile=HOSTILE)
    result = run(pytester, monkeypatch, "--featcheck-update")
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(["*already called for test_twice_without_name.json in this test; give each call its own name=*"])
    root = (pytester.path / "__featcheck__").resolve()
    files = sorted(p for p in root.rglob("*.json"))
    assert len(files) == 5 * 2 + 1
    assert all(p.parent == root / "test_hostile" and len(p.name) < 140 for p in files)
    names = {p.name for p in files}
    assert any(n.startswith("TestCls.test_p_a_-") for n in names) and any(".again.json" in n for n in names)
    assert not any("[" in n or "<" in n for n in names)
    assert not list(pytester.path.parent.glob("escape*")) and not (pytester.path / "escape").exists()
    run(pytester, monkeypatch, "-k", "test_p").assert_outcomes(passed=5)


def test_size_cap(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    suite.makeini("[pytest]\nfeatcheck_baseline_max_kb = 1\n")
    result = run(suite, monkeypatch, "--featcheck-update")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E*would be * KiB, above the cap of 1 KiB (ini featcheck_baseline_max_kb)*"])
    assert not (suite.path / "__featcheck__").exists()


def test_failed_baseline_attaches_grids_of_changed_layers(accepted: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    run(accepted, monkeypatch, "--featcheck", STRIDE="1").assert_outcomes(failed=1)
    summary = json.loads((accepted.path / "featcheck-report" / "summary.json").read_text())
    (test,) = summary["tests"]
    assert [f["layer"] for f in test["flagged"]] == ["2", "3", "4", "5", "6"][: len(test["flagged"])]
    assert [p["kind"] for p in test["pictures"]][:2] == ["flagged: baseline", "flagged: baseline"]


def test_xdist_workers_write_their_own_files_and_the_summary_lists_them(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        test_many="""
        import pytest, torch
        from torch import nn

        @pytest.mark.parametrize("i", range(6))
        def test_m(featcheck, i):
            torch.manual_seed(i)
            cap = featcheck.capture(nn.Conv2d(3, 2 + i, 3), featcheck.sample_input((1, 3, 8, 8), seed=i))
            featcheck.check_baseline(cap)
        """
    )
    result = run(pytester, monkeypatch, "-n", "2", "--featcheck-update")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines([f"baseline written __featcheck__/test_many/test_m_{i}_-*.json" for i in range(6)])
    assert len(list((pytester.path / "__featcheck__").rglob("*.json"))) == 6
    run(pytester, monkeypatch, "-n", "2").assert_outcomes(passed=6)


def test_sample_input_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    import torch

    import featcheck

    state = torch.get_rng_state()
    a = featcheck.sample_input((2, 3, 4, 4), seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, featcheck.sample_input((2, 3, 4, 4), seed=3))
    assert not torch.equal(a, featcheck.sample_input((2, 3, 4, 4), seed=4))
    assert featcheck.sample_input((2, 2), distribution="uniform", dtype=torch.float16).dtype == torch.float16
    g = torch.Generator().manual_seed(3)
    assert torch.equal(a, torch.randn(2, 3, 4, 4, generator=g))
    with pytest.raises(ValueError, match="positive ints"):
        featcheck.sample_input((2, 0))


# -- file names: one per test ---------------------------------------------------------------------

COLLIDING = """
import torch, pytest
from torch import nn

@pytest.mark.parametrize("v", [pytest.param(1, id="a::b"), pytest.param(2, id="a.b")][::ORDER])
def test_p(featcheck, v):
    torch.manual_seed(v)
    m = nn.Sequential(*[nn.Conv2d(3, 3, 1) for _ in range(v)])
    featcheck.check_baseline(featcheck.capture(m, featcheck.sample_input((2, 3, 8, 8))))
"""
SHARED_OLD_NAME = "test_p_a.b_-1831475a.json"  # featcheck 0.1.0's name for both ids; now test_p[a.b]'s


def has_lines(result: pytest.RunResult, *texts: str) -> None:
    """Each text is part of a line of the output, literally (fnmatch_lines reads ``[a.b]`` as a
    set of characters)."""
    for text in texts:
        assert any(text in line for line in result.outlines), f"{text!r} is not in the output:\n{result.stdout.str()}"


def test_ids_that_differ_only_in_colons_and_dots_get_their_own_files(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_x=COLLIDING.replace("ORDER", "1"))
    update = run(pytester, monkeypatch, "--featcheck-update")
    update.assert_outcomes(passed=2)
    folder = pytester.path / "__featcheck__" / "test_x"
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 2 and SHARED_OLD_NAME in files
    update.stdout.fnmatch_lines([f"baseline written __featcheck__/test_x/{name}" for name in files])
    tests = {json.loads((folder / name).read_text())["test"] for name in files}
    assert tests == {"test_x.py::test_p[a::b]", "test_x.py::test_p[a.b]"}
    run(pytester, monkeypatch).assert_outcomes(passed=2)
    run(pytester, monkeypatch, "-n", "2").assert_outcomes(passed=2)


@pytest.mark.parametrize("order", [1, -1], ids=["owner-first", "owner-last"])
def test_a_file_two_ids_shared_under_the_old_names_is_moved_to_its_test_on_update(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, order: int
) -> None:
    pytester.makepyfile(test_x=COLLIDING.replace("ORDER", str(order)))
    run(pytester, monkeypatch, "--featcheck-update").assert_outcomes(passed=2)
    folder = pytester.path / "__featcheck__" / "test_x"
    shared = folder / SHARED_OLD_NAME
    (own,) = [p for p in folder.iterdir() if p != shared]
    # as featcheck 0.1.0 left it: both tests wrote the shared name, test_p[a::b] last
    own.replace(shared)
    content = shared.read_text()
    check = run(pytester, monkeypatch)
    check.assert_outcomes(passed=1, failed=1)  # test_p[a::b] finds its baseline under the old name
    has_lines(
        check,
        f"FeatcheckAssertionError: featcheck baseline __featcheck__/test_x/{SHARED_OLD_NAME} holds the "
        "baseline of test_p[a::b], not of this test: featcheck 0.1.0 gave both tests this file name. It was left as it is.",
        "Move it to test_p[a::b]'s own file and write this test's with: pytest --featcheck-update 'test_x.py::test_p[a.b]' 'test_x.py::test_p[a::b]'",
    )
    assert shared.read_text() == content and not own.exists()  # a check changes nothing
    update = run(pytester, monkeypatch, "--featcheck-update")
    update.assert_outcomes(passed=2)
    if order == 1:  # test_p[a::b] first: it takes its file along
        has_lines(update, f"baseline moved from {SHARED_OLD_NAME} to __featcheck__/test_x/{own.name}",
                  f"baseline written __featcheck__/test_x/{SHARED_OLD_NAME}")
    else:  # test_p[a.b] first: it moves the other's file out of its way
        has_lines(update, f"baseline written (test_p[a::b]'s baseline, which featcheck 0.1.0 had stored here, was moved "
                          f"to {own.name}) __featcheck__/test_x/{SHARED_OLD_NAME}")
    assert own.read_text() == content  # moved, not lost
    assert json.loads(shared.read_text())["test"] == "test_x.py::test_p[a.b]"
    run(pytester, monkeypatch).assert_outcomes(passed=2)


def test_two_tests_of_a_session_that_map_to_one_file_fail_naming_both(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    # ids cut to one readable prefix whose 8 hex digits of hash agree: one file name for both
    first, second = "x" * 95 + "165984", "x" * 95 + "228684"
    pytester.makepyfile(
        test_c=f"""
        import torch, pytest
        from torch import nn

        @pytest.mark.parametrize("v", [pytest.param(1, id="{first}"), pytest.param(2, id="{second}")])
        def test_p(featcheck, v):
            torch.manual_seed(v)
            featcheck.check_baseline(featcheck.capture(nn.Conv2d(3, v, 1), featcheck.sample_input((2, 3, 8, 8))))
        """
    )
    for args in (["--featcheck-update"], []):
        result = run(pytester, monkeypatch, *args)
        result.assert_outcomes(passed=1, failed=1)
        has_lines(
            result,
            f"featcheck baseline __featcheck__/test_c/test_p_{'x' * 84}-1e5bfe99.json is also the baseline of "
            f"test_c.py::test_p[{first}], checked earlier in this session: two tests cannot share one file (with "
            "--featcheck-update the later would overwrite the earlier's). Nothing was written.",
        )
    (file,) = (pytester.path / "__featcheck__" / "test_c").iterdir()
    assert json.loads(file.read_text())["test"] == f"test_c.py::test_p[{first}]"  # never overwritten by the second


# -- damaged and foreign files --------------------------------------------------------------------


def _damage_stride(doc: dict) -> None:
    doc["layers"][0]["stride"] = []


def _damage_mean(doc: dict) -> None:
    doc["layers"][0]["stats"]["mean"][3] = 10**400


@pytest.mark.parametrize(
    "damage,message",
    [
        (_damage_stride, "is malformed: layer 0 ('0'): 'stride' must be null or a list of 2 numbers or nulls (one per "
                         "spatial dimension of shape [null, 8, 16, 16]), found []"),
        (_damage_mean, "is malformed: layer 0 ('0'): 'stats.mean' must be a list of 8 numbers or nulls (one per "
                       "channel), found 100000000000...(401 digits) at index 3 (numbers must be finite and within "
                       "float range; NaN and infinity are stored as null)"),
    ],
    ids=["empty-stride", "huge-mean"],
)
def test_a_damaged_field_fails_naming_it_and_update_replaces_the_file(
    accepted: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, damage: Any, message: str
) -> None:
    good = (accepted.path / BASELINE).read_text()
    doc = json.loads(good)
    damage(doc)
    bad = json.dumps(doc)
    (accepted.path / BASELINE).write_text(bad)
    result = run(accepted, monkeypatch)
    result.assert_outcomes(failed=1)
    has_lines(result, f"FeatcheckAssertionError: featcheck baseline {BASELINE} {message}. It was left as it is.")
    for crash in ("IndexError", "OverflowError", "internal error"):
        result.stdout.no_fnmatch_line(f"*{crash}*")
    assert (accepted.path / BASELINE).read_text() == bad
    update = run(accepted, monkeypatch, "--featcheck-update")
    update.assert_outcomes(passed=1)
    has_lines(update, f"baseline rewritten (replaced an invalid file, which {message}) {BASELINE}")
    assert (accepted.path / BASELINE).read_text() == good
    run(accepted, monkeypatch).assert_outcomes(passed=1)


def test_featcheck_diff_of_a_damaged_baseline_is_a_usage_error(
    accepted: pytest.Pytester, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from featcheck import _cli

    doc = json.loads((accepted.path / BASELINE).read_text())
    _damage_mean(doc)
    (accepted.path / "bad.json").write_text(json.dumps(doc))
    monkeypatch.chdir(accepted.path)
    capsys.readouterr()
    status = _cli.main(["diff", "bad.json", str(BASELINE)])
    out, err = capsys.readouterr()
    assert (status, out) == (2, "")
    assert err.startswith("featcheck: error: baseline bad.json is malformed: layer 0 ('0'): 'stats.mean' must be a list of 8 numbers")


def test_a_baseline_of_a_newer_format_is_never_overwritten(accepted: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = json.loads((accepted.path / BASELINE).read_text())
    doc["featcheck_baseline"] = 2
    doc["layers"][0]["a_field_of_version_2"] = [1, 2]
    newer = json.dumps(doc)
    (accepted.path / BASELINE).write_text(newer)
    for args in ([], ["--featcheck-update"]):
        result = run(accepted, monkeypatch, *args)
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines([
            f"E*featcheck baseline {BASELINE} has format version 2; this featcheck reads version 1: it was written by a "
            "newer featcheck. It was left as it is.",
            "E*Upgrade featcheck to check against it, or delete it and write a version 1 baseline with: "
            "pytest --featcheck-update test_suite.py::test_backbone",
        ])
        assert (accepted.path / BASELINE).read_text() == newer


ZERO_SIZE = """
import os, torch
from torch import nn

class Empty(nn.Module):
    def forward(self, x):
        return x[:, :, :0]

def test_z(featcheck):
    layers = [nn.Conv2d(3, 4, 1)] + ([] if os.environ.get("CH") else [Empty()])
    featcheck.check_baseline(featcheck.capture(nn.Sequential(*layers), featcheck.sample_input((1, 3, 8, 8))))
"""


def test_a_layer_of_zero_size_has_an_infinite_stride_in_the_diff(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_zero=ZERO_SIZE)
    run(pytester, monkeypatch, "--featcheck-update").assert_outcomes(passed=1)
    doc = json.loads((pytester.path / "__featcheck__/test_zero/test_z.json").read_text())
    assert doc["layers"][1]["stride"] == [None, 1.0]  # 8 / 0 is stored as null
    result = run(pytester, monkeypatch, CH="1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E*- removed  1  Empty  4x0x8  stride infx1  params 0"])
