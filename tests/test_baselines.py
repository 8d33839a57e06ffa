"""Regression baselines: the whole create / pass / change / update cycle through pytester."""

from __future__ import annotations

import json
from pathlib import Path

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
        ('{"featcheck_baseline": 99, "layers": []}', "has format version 99; this featcheck reads version 1"),
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
