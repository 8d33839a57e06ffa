"""Gradients through the plugin (pytester, inner runs in a subprocess): the gradient-flow picture
in the report row, attached by failing gradient checks, ``show(cap, grads=True)``, and
baselines with ``grads=True``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SUITE = """
import os, torch
from torch import nn
from fixtures import models

def stack():
    torch.manual_seed(0)
    layers = []
    for _ in range(12):
        layers += [nn.Linear(16, 16), nn.Sigmoid()]
    return nn.Sequential(*layers)

def test_healthy(featcheck):
    cap = featcheck.capture(models.TinyCNN(), torch.randn(2, 3, 16, 16), backward=lambda o: o.logsumexp(-1).mean())
    featcheck.show(cap, layers="conv2", grads=True)
    featcheck.assert_gradients_finite(cap)

def test_vanishing():
    import featcheck  # the module, not the fixture: the failure itself carries the capture
    cap = featcheck.capture(stack(), torch.randn(8, 16), backward=lambda o: o.pow(2).mean())
    featcheck.assert_gradients_flow(cap, min_ratio=1e-3)

def test_baseline(featcheck):
    torch.manual_seed(int(os.environ.get("SEED", "0")))
    cap = featcheck.capture(models.TinyCNN(), featcheck.sample_input((2, 3, 16, 16)), backward=lambda o: o.logsumexp(-1).mean(), ops=False)
    featcheck.check_baseline(cap, grads=True)
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.delenv("SEED", raising=False)
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def test_gradient_flow_in_the_report_and_attached_by_a_failing_check(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess(
        "-p", "no:cacheprovider", "--featcheck", "--featcheck-dir=gallery", "--html=report.html", "-k", "healthy or vanishing"
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["E*gradients vanish in * of 24 (ratio = gradient RMS / RMS at '23'*", "E*0 (grad) *vanishing*"])
    summary = {t["nodeid"].split("::")[1]: t for t in json.loads((suite.path / "gallery" / "summary.json").read_text())["tests"]}
    healthy = summary["test_healthy"]
    assert [(p["kind"], p["name"]) for p in healthy["pictures"]] == [
        ("gradient flow", "TinyCNN"), ("grid", "conv2 (grad)")
    ]
    vanishing = summary["test_vanishing"]
    kinds = [p["kind"] for p in vanishing["pictures"]]
    assert kinds[0] == "gradient flow" and kinds.count("gradient flow") == 1
    assert kinds == ["gradient flow"] and vanishing["flagged"] == []
    assert "17 vanishing" in vanishing["pictures"][0]["caption"]  # the check's zone (1e-3), not the default (15)
    html = (suite.path / "report.html").read_text()
    assert "gradient flow: Sequential" in html and "gradient flow: TinyCNN" in html


def test_baseline_with_gradients(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    suite.runpytest_subprocess("-p", "no:cacheprovider", "--featcheck-update", "-k", "baseline").assert_outcomes(passed=1)
    doc = json.loads((suite.path / "__featcheck__/test_suite/test_baseline.json").read_text())
    names = [layer["name"] for layer in doc["layers"]]
    assert names[:4] == ["conv1", "conv1 (grad)", "bn1", "bn1 (grad)"]
    assert len(names) == 14
    suite.runpytest_subprocess("-p", "no:cacheprovider", "-k", "baseline").assert_outcomes(passed=1)
    monkeypatch.setenv("SEED", "1")
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "-k", "baseline")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E*numeric drift*", "E*conv1 (grad)*"])
