"""Op records through the plugin (pytester, inner runs in subprocesses): checks, the gallery's
summary.json, and baselines that say whether they include operations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SUITE = """
import os, torch
import torch.nn.functional as F
from fixtures import functional

def test_dead(featcheck):
    cap = featcheck.capture(functional.Net(dead=True), torch.randn(4, 3, 16, 16))
    featcheck.assert_no_dead_channels(cap)

def test_healthy(featcheck):
    cap = featcheck.capture(functional.Net(dead=False), torch.randn(4, 3, 16, 16))
    featcheck.assert_no_dead_channels(cap)

def test_baseline(featcheck):
    net = functional.Net(dead=False, seed=int(os.environ.get("SEED", "0")))
    cap = featcheck.capture(net, featcheck.sample_input((2, 3, 8, 8)), ops=not os.environ.get("MODULES_ONLY"))
    featcheck.check_baseline(cap)
"""

BASELINE = Path("__featcheck__/test_suite/test_baseline.json")


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    for k in ("SEED", "MODULES_ONLY"):
        monkeypatch.delenv(k, raising=False)
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def test_functional_dead_relu_fails_naming_the_op_record(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "--featcheck", "--featcheck-dir=gallery", "-k", "dead or healthy")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["E*dead channels in 2 of 6 layers*", "E*relu:2 *2/8 dead (25.0%)*[1, 4]*"])
    summary = json.loads((suite.path / "gallery" / "summary.json").read_text())
    dead = next(t for t in summary["tests"] if t["nodeid"].endswith("test_dead"))
    assert dead["layers"] == ["conv1", "relu", "conv2", "relu:2", "mean", "fc"]
    assert {"layer": "relu:2", "check": "dead", "channels": [1, 4]} in dead["flagged"]
    assert [p["name"] for p in dead["pictures"]][0] == "relu:2"


def test_module_only_baseline_keeps_comparing_modules_and_update_says_ops(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODULES_ONLY", "1")
    suite.runpytest_subprocess("-p", "no:cacheprovider", "--featcheck-update", "-k", "baseline").assert_outcomes(passed=1)
    old = json.loads((suite.path / BASELINE).read_text())
    assert "ops" not in old and [x["name"] for x in old["layers"]] == ["conv1", "conv2", "fc"]
    monkeypatch.delenv("MODULES_ONLY")
    # the capture now has op records; the module-only baseline compares its modules and passes
    suite.runpytest_subprocess("-p", "no:cacheprovider", "-k", "baseline").assert_outcomes(passed=1)
    monkeypatch.setenv("SEED", "1")
    changed = suite.runpytest_subprocess("-p", "no:cacheprovider", "-k", "baseline")
    changed.assert_outcomes(failed=1)
    assert "relu" not in changed.stdout.str().split("differs from this capture")[1].split("If the change")[0].replace("ReLU", "")
    update = suite.runpytest_subprocess("-p", "no:cacheprovider", "--featcheck-update", "-k", "baseline")
    update.assert_outcomes(passed=1)
    update.stdout.fnmatch_lines([f"baseline updated (now with op records) {BASELINE}"])
    new = json.loads((suite.path / BASELINE).read_text())
    assert new["ops"] is True
    assert [x["name"] for x in new["layers"]] == ["conv1", "relu", "conv2", "relu:2", "mean", "fc"]
    assert new["layers"][1]["module_type"] == "relu()"
    suite.runpytest_subprocess("-p", "no:cacheprovider", "-k", "baseline").assert_outcomes(passed=1)
