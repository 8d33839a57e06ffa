"""assert_same_activations through the plugin (pytester, inner runs in subprocesses): the failure
table in the terminal, diff pictures of the first diverging records in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SUITE = """
import copy, torch
from torch import nn

def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()

def test_agrees(featcheck):
    m = model()
    featcheck.assert_same_activations(m, copy.deepcopy(m), torch.randn(2, 3, 16, 16))

def test_diverges(featcheck):
    m = model()
    cand = copy.deepcopy(m)
    with torch.no_grad():
        cand[2].weight[5] += 0.5
    featcheck.assert_same_activations(m, cand, torch.randn(2, 3, 16, 16))
"""


def test_failure_table_and_pictures_of_the_first_diverging_records(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--featcheck", "--featcheck-dir=gallery", "--html=report.html", "--self-contained-html"
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "E*Sequential does not compute the same as Sequential: 5 of 7 compared records diverge",
        "E*first diverging: 2; its inputs agreed: the difference starts inside it",
        "E*layer*candidate*max abs*max rel*mismatched*inputs diverged*worst channels",
        "E*2 *=*no*[[]5[]]",
        "E*3 *=*yes*[[]5[]]",
    ])
    summary = json.loads((pytester.path / "gallery" / "summary.json").read_text())
    tests = {t["nodeid"].split("::")[-1]: t for t in summary["tests"]}
    assert "test_agrees" not in tests  # nothing is attached for records that agree
    failed = tests["test_diverges"]
    assert [(f["layer"], f["check"]) for f in failed["flagged"]] == [("2", "same activations"), ("3", "same activations"), ("4", "same activations")]
    assert [(p["name"], p["kind"]) for p in failed["pictures"]] == [(n, "flagged: same activations") for n in ("2", "3", "4")]
    html = (pytester.path / "report.html").read_text()
    assert "flagged: same activations: 2" in html and "inputs diverged" in html
