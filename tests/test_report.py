"""The visual report, end to end through pytester (inner runs in subprocesses: they import torch)."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"

SUITE = """
import pytest, torch
from fixtures import defects

def test_pass(featcheck):
    model = defects.make("zeroed_filters", False)
    cap = featcheck.capture(model, defects.batch())
    featcheck.show(cap, layers=["conv1", "conv2"])
    featcheck.show_kernels(model, layers="conv1")

def test_fail(featcheck):
    cap = featcheck.capture(defects.make("zeroed_filters", True), defects.batch())
    featcheck.assert_no_dead_channels(cap, layers="conv2")

def test_plain():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def report_tests(path: Path) -> dict[str, list[dict]]:
    """pytest-html's per-test data, from the JSON it embeds in the report."""
    blob = re.search(r'data-jsonblob="([^"]*)"', path.read_text()).group(1)
    return json.loads(html.unescape(blob))["tests"]


def images(tests: dict[str, list[dict]], nodeid: str) -> list[dict]:
    return [e for row in tests.get(nodeid, []) for e in row["extras"] if e["format_type"] == "image"]


def test_pictures_of_passing_and_failing_tests_reach_the_html_report(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess("--featcheck", "--html=out/report.html")
    result.assert_outcomes(passed=2, failed=1)
    tests = report_tests(suite.path / "out" / "report.html")
    passing = images(tests, "test_suite.py::test_pass")
    assert [e["name"] for e in passing] == ["grid: conv1", "grid: conv2", "kernels: conv1"]
    for e in passing:  # linked assets: files next to the report
        assert (suite.path / "out" / e["content"]).read_bytes().startswith(PNG)
    failing = images(tests, "test_suite.py::test_fail")
    assert [e["name"] for e in failing] == ["flagged: dead: conv2"]
    tables = [e["content"] for row in tests["test_suite.py::test_fail"] for e in row["extras"] if e["format_type"] == "html"]
    assert len(tables) == 1 and "<th>dead</th>" in tables[0] and "<td>conv2</td><td>flagged: dead</td><td>Conv2d</td>" in tables[0]
    assert "<td>2/8</td>" in tables[0]
    assert images(tests, "test_suite.py::test_plain") == []


def test_self_contained_report_embeds_the_pictures(suite: pytest.Pytester) -> None:
    suite.runpytest_subprocess("--featcheck", "--html=r.html", "--self-contained-html").assert_outcomes(passed=2, failed=1)
    imgs = images(report_tests(suite.path / "r.html"), "test_suite.py::test_pass")
    assert len(imgs) == 3
    for e in imgs:
        assert e["content"].startswith("data:image/png;base64,")
        assert base64.b64decode(e["content"].split(",", 1)[1]).startswith(PNG)
    assert not list(suite.path.glob("assets/*.png"))


@pytest.mark.parametrize("mode,passing,failing", [("all", 3, 1), ("failed", 0, 1), ("none", 0, 0)])
def test_attach_modes(suite: pytest.Pytester, mode: str, passing: int, failing: int) -> None:
    suite.runpytest_subprocess("--featcheck", f"--featcheck-attach={mode}", "--html=r.html")
    tests = report_tests(suite.path / "r.html")
    assert len(images(tests, "test_suite.py::test_pass")) == passing
    assert len(images(tests, "test_suite.py::test_fail")) == failing
    summary = json.loads((suite.path / "featcheck-report" / "summary.json").read_text())
    assert [len(t["pictures"]) for t in summary["tests"]] == [failing, passing]


def test_picture_cap_per_test(suite: pytest.Pytester) -> None:
    suite.runpytest_subprocess("--featcheck", "--featcheck-max-pictures=1", "--html=r.html")
    tests = report_tests(suite.path / "r.html")
    assert len(images(tests, "test_suite.py::test_pass")) == 1
    notes = [e["content"] for row in tests["test_suite.py::test_pass"] for e in row["extras"] if e["format_type"] == "html"]
    assert any("2 more pictures not attached" in n for n in notes)


def test_without_featcheck_nothing_is_rendered_or_written(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess("--html=r.html")
    result.assert_outcomes(passed=2, failed=1)
    assert not (suite.path / "featcheck-report").exists()
    tests = report_tests(suite.path / "r.html")
    assert all(images(tests, n) == [] for n in tests)
    assert not list(suite.path.rglob("*.png"))
    result.stdout.no_fnmatch_line("*featcheck*gallery*")


def test_gallery_summary_and_terminal_section(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess("--featcheck", "--featcheck-dir=gal")
    result.stdout.fnmatch_lines(
        [
            "*= featcheck =*",
            "test_suite.py::test_fail [[]failed[]]: 10 layers inspected, 1 picture; flagged: conv2 (dead, channels [[]2, 5[]])",
            "test_suite.py::test_pass [[]passed[]]: 10 layers inspected, 3 pictures",
            f"gallery: {suite.path / 'gal' / 'index.html'}",
        ]
    )
    gal = suite.path / "gal"
    summary = json.loads((gal / "summary.json").read_text())
    assert summary["version"] == 1
    by_id = {t["nodeid"]: t for t in summary["tests"]}
    assert set(by_id) == {"test_suite.py::test_pass", "test_suite.py::test_fail"}
    assert by_id["test_suite.py::test_fail"]["flagged"] == [{"layer": "conv2", "channels": [2, 5], "check": "dead"}]
    assert by_id["test_suite.py::test_pass"]["layers"][:3] == ["conv1", "bn1", "relu1"]
    index = (gal / "index.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', index)
    assert len(srcs) == 4 and all((gal / s).read_bytes().startswith(PNG) for s in srcs)
    assert 'class="outcome failed"' in index and "http" not in index  # nothing from the network


def test_bad_option_values_are_usage_errors(suite: pytest.Pytester) -> None:
    result = suite.runpytest_subprocess("--featcheck", "--featcheck-attach=some")
    result.stderr.fnmatch_lines(["*--featcheck-attach must be one of all, failed, none, got 'some'*"])
    result = suite.runpytest_subprocess("--featcheck", "--featcheck-max-pictures=many")
    result.stderr.fnmatch_lines(["*--featcheck-max-pictures must be an integer*"])


def test_finished_pictures_are_shown_as_they_are(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import torch, featcheck as fc
        def test_x(featcheck):
            featcheck.show(fc.heatmap(torch.rand(8, 8)), title="my heatmap")
            featcheck.show(fc.pca_rgb(torch.rand(6, 8, 8)))
        """
    )
    pytester.runpytest_subprocess("--featcheck").assert_outcomes(passed=1)
    summary = json.loads((pytester.path / "featcheck-report" / "summary.json").read_text())
    pics = summary["tests"][0]["pictures"]
    assert [(p["name"], p["kind"]) for p in pics] == [("my heatmap", "picture"), ("PCA of tensor  6 channels -> RGB", "picture")]


def test_misspelt_show_option_fails_at_the_call(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import torch
        def test_x(featcheck):
            featcheck.show(torch.zeros(2, 3, 3), colormap="gray")
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*unknown option(s) 'colormap' for channel_grid*"])


def test_xdist_workers_hand_every_picture_to_the_controller(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_more="""
        import pytest
        from fixtures import defects

        @pytest.mark.parametrize("i", range(6))
        def test_many(featcheck, i):
            cap = featcheck.capture(defects.make("stride_1", False), defects.batch(n=2))
            featcheck.show(cap, layers=["conv1", "conv2"])
        """
    )
    result = suite.runpytest_subprocess("-n", "2", "--featcheck", "--html=r.html")
    result.assert_outcomes(passed=8, failed=1)
    tests = report_tests(suite.path / "r.html")
    for i in range(6):
        assert len(images(tests, f"test_more.py::test_many[{i}]")) == 2
    gal = suite.path / "featcheck-report"
    summary = json.loads((gal / "summary.json").read_text())
    assert len(summary["tests"]) == 8
    files = [p["file"] for t in summary["tests"] for p in t["pictures"]]
    assert len(files) == len(set(files)) == 6 * 2 + 3 + 1
    assert sorted(str(p.relative_to(gal)) for p in gal.rglob("*.png")) == sorted(files)


HOSTILE = """
import pytest, torch

class Dicts(torch.nn.Module):
    def forward(self, x):
        return {"<img src=x onerror=alert(1)>": x * 2, "../../up": x + 1}

@pytest.mark.parametrize("name", ["<script>alert(1)</script>", "../../../etc/passwd", "x" * 300])
def test_hostile(featcheck, name):
    model = torch.nn.Sequential(Dicts())
    cap = featcheck.capture(model, torch.randn(2, 3, 6, 6), layers="0")
    featcheck.show(cap)
"""


def test_hostile_names_are_escaped_and_stay_inside_the_gallery(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_hostile=HOSTILE)
    result = pytester.runpytest_subprocess("--featcheck", "--html=r.html")
    result.assert_outcomes(passed=3)
    gal = pytester.path / "featcheck-report"
    index = (gal / "index.html").read_text()
    assert "<script>" not in index and "<img src=x" not in index
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in index and "0[&lt;img src=x onerror=alert(1)&gt;]" in index
    pngs = list(pytester.path.rglob("*.png"))
    assert len(pngs) == 2 * 3 * 2  # gallery + pytest-html assets
    for p in pngs:
        assert p.resolve().is_relative_to(pytester.path.resolve()) and len(p.name) < 255
    assert all(p.resolve().is_relative_to(gal.resolve()) for p in gal.rglob("*"))
    # pytest-html parses its table cells as HTML (innerHTML): featcheck escapes the test id there
    cells = [c for rows in report_tests(pytester.path / "r.html").values() for row in rows for c in row["resultsTableRow"]]
    id_cells = [c for c in cells if 'class="col-testId"' in c]
    assert len(id_cells) == 3 and not any("<script>" in c for c in id_cells)
    assert any("&lt;script&gt;alert(1)&lt;/script&gt;" in c for c in id_cells)
