"""featcheck never breaks the user's run: bad pictures, memory, crashed workers, report folders and
hostile test ids, each through a real inner pytest run (subprocesses: they import torch)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


@pytest.fixture
def tester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    return pytester


def report_tests(path: Path) -> dict[str, list[dict]]:
    """pytest-html's per-test data, from the JSON it embeds in the report."""
    match = re.search(r'data-jsonblob="([^"]*)"', path.read_text())
    assert match is not None
    return json.loads(html.unescape(match.group(1)))["tests"]


def extras(tests: dict[str, list[dict]], nodeid: str, kind: str) -> list[dict]:
    return [e for row in tests.get(nodeid, []) for e in row["extras"] if e["format_type"] == kind]


BAD_ARGUMENTS = """
import torch
from fixtures import defects

def test_a_string(featcheck):
    featcheck.show("str")

def test_an_empty_tensor(featcheck):
    featcheck.show(torch.empty(0, 4, 4))

def test_an_unknown_colormap(featcheck):
    featcheck.show(torch.rand(3, 4, 4), cmap="nope")

def test_a_misspelt_layer(featcheck):
    cap = featcheck.capture(defects.make("zeroed_filters", False), defects.batch())
    featcheck.show(cap, layers="conv9")

def test_layers_of_one_layer(featcheck):
    cap = featcheck.capture(defects.make("zeroed_filters", False), defects.batch())
    featcheck.show(cap["conv1"], layers="conv1")

def test_kernels_of_a_string(featcheck):
    featcheck.show_kernels("conv1")

def test_kernels_of_a_misspelt_layer(featcheck):
    featcheck.show_kernels(defects.make("zeroed_filters", False), layers="conv9")

def test_kernels_of_no_convolution(featcheck):
    featcheck.show_kernels(torch.nn.Linear(3, 4))

def test_kernels_with_an_unknown_colormap(featcheck):
    featcheck.show_kernels(torch.nn.Conv2d(3, 4, 3), cmap="nope")

def test_later_tests_still_run(featcheck):
    featcheck.show(torch.rand(3, 4, 4))
"""


@pytest.mark.parametrize("args", [[], ["--featcheck", "--html=r.html"]], ids=["plain", "featcheck"])
def test_bad_picture_arguments_fail_at_the_call_with_or_without_featcheck(tester: pytest.Pytester, args: list[str]) -> None:
    tester.makepyfile(test_bad=BAD_ARGUMENTS)
    result = tester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=1, failed=9)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stdout.fnmatch_lines_random(
        [
            "E*TypeError: show expects a Capture, a LayerCapture, a tensor or a PIL image, got str*",
            "E*ValueError: show got an empty tensor of shape (0, 4, 4)*nothing to draw*",
            "E*ValueError: unknown colormap 'nope'*",
            "E*LayerNotFoundError: layer 'conv9' matches nothing in this capture*",
            "E*TypeError: layers= chooses layers of a Capture*got a LayerCapture*",
            "E*TypeError: show_kernels expects a module or a weight tensor, got str*",
            "E*LayerNotFoundError: layer 'conv9' matches nothing in ZooNet convolutions*",
            "E*ValueError: show_kernels found no convolution in Linear*",
        ]
    )
    # every failure points at the test's own line, not into featcheck
    for line in ('featcheck.show("str")', 'featcheck.show_kernels("conv1")', 'featcheck.show(cap, layers="conv9")'):
        result.stdout.fnmatch_lines([f">*{line}"])
    result.stdout.no_fnmatch_line("*_fixture.py:*")


UNLUCKY = """
import torch
from fixtures import defects

def test_check_on_a_capture_without_samples(featcheck):
    cap = featcheck.capture(defects.make("zeroed_filters", True), defects.batch(), keep_samples=False)
    featcheck.show(cap, layers="conv1")
    featcheck.assert_no_dead_channels(cap, layers="conv2")

def test_tensor_emptied_after_show(featcheck):
    t = torch.rand(3, 4, 4)
    featcheck.show(t, title="emptied")
    featcheck.show(torch.rand(3, 4, 4), title="fine")
    t.resize_(0)

def test_later_tests_still_run(featcheck):
    featcheck.show(torch.rand(3, 4, 4), title="later")
"""


def test_what_goes_wrong_while_rendering_becomes_a_note_not_an_internal_error(tester: pytest.Pytester) -> None:
    tester.makepyfile(test_unlucky=UNLUCKY)
    result = tester.runpytest_subprocess("--featcheck", "--html=r.html")
    result.assert_outcomes(passed=2, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stdout.fnmatch_lines(
        [
            "*= featcheck =*",
            "test_unlucky.py::test_check_on_a_capture_without_samples [[]failed[]]: *0 pictures*",
            "  note: no picture of conv2: captured with keep_samples=False",
            "  note: no picture of conv1: captured with keep_samples=False",
            "test_unlucky.py::test_later_tests_still_run [[]passed[]]: 0 layers inspected, 1 picture",
            "test_unlucky.py::test_tensor_emptied_after_show [[]passed[]]: 0 layers inspected, 1 picture",
            "  note: could not draw emptied: ValueError: channel_grid got an empty tensor*",
        ]
    )
    tests = report_tests(tester.path / "r.html")
    emptied = "test_unlucky.py::test_tensor_emptied_after_show"
    assert [e["name"] for e in extras(tests, emptied, "image")] == ["grid: fine"]
    notes = [e["content"] for e in extras(tests, emptied, "html") if "featcheck-note" in e["content"]]
    assert len(notes) == 1 and "could not draw emptied: ValueError: channel_grid got an empty tensor" in notes[0]
    no_samples = [e["content"] for e in extras(tests, "test_unlucky.py::test_check_on_a_capture_without_samples", "html")]
    assert any("no picture of conv2: captured with keep_samples=False" in n for n in no_samples)
    summary = json.loads((tester.path / "featcheck-report" / "summary.json").read_text())
    by_id = {t["nodeid"]: t for t in summary["tests"]}
    assert by_id[emptied]["notes"] == [
        "could not draw emptied: ValueError: " + by_id[emptied]["notes"][0].split("ValueError: ", 1)[1]
    ]
    assert [p["name"] for p in by_id[emptied]["pictures"]] == ["fine"]
    index = (tester.path / "featcheck-report" / "index.html").read_text()
    assert index.count('class="note"') == 3


FREED = """
import gc, weakref
import pytest, torch

MODELS = []

def test_uses_a_model(featcheck):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
    cap = featcheck.capture(model, torch.randn(2, 3, 12, 12))
    with featcheck.watch(model) as watched:
        model(torch.randn(1, 3, 12, 12))
    featcheck.show(cap)
    featcheck.show(watched["0"])
    featcheck.show_kernels(model)
    MODELS.append(weakref.ref(model))

def test_the_model_of_the_previous_test_is_gone():
    gc.collect()
    assert MODELS[0]() is None, "the model of the previous test is still alive"
"""


@pytest.mark.parametrize("args", [[], ["--featcheck", "--html=r.html"]], ids=["plain", "featcheck"])
def test_a_tests_model_is_freed_after_it(tester: pytest.Pytester, args: list[str]) -> None:
    tester.makepyfile(test_freed=FREED)
    tester.runpytest_subprocess(*args).assert_outcomes(passed=2)


MANY_MODELS = """
import pytest, torch

RSS = []

def rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

@pytest.mark.parametrize("i", range(20))
def test_model(featcheck, i):
    model = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.ReLU())  # 16 MiB
    cap = featcheck.capture(model, torch.randn(4, 2048))
    featcheck.show(cap)
    RSS.append(rss())

def test_growth():
    print(f"\\nfeatcheck-growth {RSS[-1] - RSS[1]}")
"""


@pytest.mark.parametrize("args", [[], ["--featcheck"]], ids=["plain", "featcheck"])
def test_memory_stays_flat_across_model_tests(
    tester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    # glibc serves freed 16 MiB blocks again from its heap, whose top it may not trim: RSS would
    # then keep memory nothing holds. A fixed mmap threshold returns every large block to the
    # system when freed, so RSS follows what is alive.
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
    tester.makepyfile(test_many=MANY_MODELS)
    result = tester.runpytest_subprocess("-s", *args)
    result.assert_outcomes(passed=21)
    growth = int(next(line.split()[1] for line in result.outlines if line.startswith("featcheck-growth")))
    # keeping every model would grow by 18 x 16 MiB; allow the allocator a few models' worth
    assert growth < 4 * 16 * MiB, f"RSS grew by {growth / MiB:.0f} MiB over 18 tests of 16 MiB models"


CRASHING_WORKER = """
import os, torch

def test_first(featcheck):
    featcheck.show(torch.rand(4, 8, 8), title="first")

def test_second(featcheck):
    featcheck.show(torch.rand(4, 8, 8), title="second")
    featcheck.show(torch.rand(4, 8, 8), title="second again")

def test_crash():
    os._exit(1)
"""

STEADY_WORKER = """
import torch

def test_steady(featcheck):
    featcheck.show(torch.rand(4, 8, 8), title="steady")
"""


def test_a_crashed_worker_keeps_its_pictures_in_the_gallery(tester: pytest.Pytester) -> None:
    # xdist hands out contiguous chunks: gw0 runs test_steady and test_first, gw1 test_second and
    # test_crash, so the crashed worker made two pictures before it died
    tester.makepyfile(test_crashing=CRASHING_WORKER, test_a_steady=STEADY_WORKER)
    result = tester.runpytest_subprocess("-n", "2", "--featcheck", "--html=r.html")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*worker*crashed*test_crashing.py::test_crash*"])
    tests = report_tests(tester.path / "r.html")
    in_html = sorted(e["name"] for rows in tests.values() for row in rows for e in row["extras"] if e["format_type"] == "image")
    summary = json.loads((tester.path / "featcheck-report" / "summary.json").read_text())
    in_gallery = sorted(f"{p['kind']}: {p['name']}" for t in summary["tests"] for p in t["pictures"])
    assert in_gallery == in_html == ["grid: first", "grid: second", "grid: second again", "grid: steady"]


RUNS = """
from pathlib import Path

def test_x(featcheck):
    Path("ran").write_text("the test ran")
"""


def test_a_report_folder_that_is_a_file_is_a_usage_error_before_any_test_runs(tester: pytest.Pytester) -> None:
    tester.makepyfile(test_x=RUNS)
    (tester.path / "taken").write_text("a file")
    for folder in ("taken", "taken/sub"):
        result = tester.runpytest_subprocess("--featcheck", f"--featcheck-dir={folder}")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"*--featcheck-dir {tester.path / 'taken'} is a file, not a folder*"])
        assert not (tester.path / "ran").exists()
    assert (tester.path / "taken").read_text() == "a file"


def test_a_foreign_gallery_folder_is_refused_before_any_test_runs(tester: pytest.Pytester) -> None:
    tester.makepyfile(test_x=RUNS)
    theirs = tester.path / "theirs"
    theirs.mkdir()
    (theirs / "summary.json").write_text("{}")
    result = tester.runpytest_subprocess("--featcheck", "--featcheck-dir=theirs")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*summary.json exists and was not written by featcheck*--featcheck-dir*"])
    assert not (tester.path / "ran").exists()
    assert (theirs / "summary.json").read_text() == "{}"


EDGE_IDS = """
import pytest, torch

# pytest-html names assets after the test id with every non-word character replaced by "_" and
# cuts the name to 255 characters, not bytes: x<y and x>y share one name, the long one overflows
@pytest.mark.parametrize("name", ["x<y", "x>y", pytest.param("long", id="\u00e9" * 300)])
def test_edge(featcheck, name):
    featcheck.show(torch.rand(1, {"x<y": 4, "x>y": 5}.get(name, 6), 6), title="map")
"""


def test_each_row_of_pytest_html_shows_its_own_picture(tester: pytest.Pytester) -> None:
    tester.makepyfile(test_ids=EDGE_IDS)
    result = tester.runpytest_subprocess("--featcheck", "--html=out/r.html")
    result.assert_outcomes(passed=3)
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    tests = report_tests(tester.path / "out" / "r.html")
    summary = json.loads((tester.path / "featcheck-report" / "summary.json").read_text())
    assert len(tests) == 3 and len(summary["tests"]) == 3
    gallery = {t["nodeid"]: (tester.path / "featcheck-report" / t["pictures"][0]["file"]).read_bytes() for t in summary["tests"]}
    in_html = {}
    for nodeid in tests:
        (image,) = extras(tests, nodeid, "image")
        asset = tester.path / "out" / image["content"]
        assert len(asset.name.encode()) < 255
        in_html[nodeid] = asset.read_bytes()
    assert in_html == gallery
    assert len(set(in_html.values())) == 3  # three different pictures


def test_pytest_htmls_test_id_cell_is_its_own_without_featcheck(tester: pytest.Pytester) -> None:
    tester.makepyfile(test_ids="import pytest\n@pytest.mark.parametrize('v', ['<b>x</b>'])\ndef test_id(v): pass")
    cells = []
    for args in (["-p", "no:featcheck"], []):
        tester.runpytest_subprocess(*args, "--html=r.html").assert_outcomes(passed=1)
        rows = report_tests(tester.path / "r.html").values()
        cells.append([c for row in rows for r in row for c in r["resultsTableRow"] if 'class="col-testId"' in c])
    assert cells[0] == cells[1] == ['<td class="col-testId">test_ids.py::test_id[<b>x</b>]</td>']


@pytest.mark.parametrize(
    "args",
    [
        ["--featcheck-dir=reports", "--html=reports/index.html"],
        ["--featcheck-dir=reports/", "--html=./reports/../reports/summary.json"],
        ["--html=featcheck-report/index.html"],  # the default gallery folder
    ],
    ids=["index", "summary", "default-dir"],
)
def test_an_html_report_in_place_of_a_gallery_file_is_a_usage_error_before_any_test_runs(
    tester: pytest.Pytester, args: list[str]
) -> None:
    tester.makepyfile(test_x=RUNS)
    result = tester.runpytest_subprocess("--featcheck", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    html_arg = args[-1]
    gallery = "reports" if len(args) == 2 else "featcheck-report"
    name = Path(html_arg).name
    result.stderr.fnmatch_lines(
        [f"*{html_arg} is the file {tester.path / gallery / name}, which the featcheck gallery (--featcheck-dir=*) writes: "
         "one report would overwrite the other. Give --html another file name (such as --html=*report.html) or "
         "--featcheck-dir another folder."]
    )
    assert not (tester.path / "ran").exists()
    assert not (tester.path / gallery / name).exists()


ZERO_BATCH = """
import torch

def test_zero_batch(featcheck):
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.ReLU())
    featcheck.show(featcheck.capture(m, torch.randn(0, 3, 8, 8)))
"""


def test_a_capture_of_a_batch_of_zero_says_why_it_has_no_pictures(tester: pytest.Pytester) -> None:
    tester.makepyfile(test_zero=ZERO_BATCH)
    result = tester.runpytest_subprocess("--featcheck", "--html=r.html")
    result.assert_outcomes(passed=1)
    note = "no picture of 0, 1: the output held no values (a batch of 0)"
    result.stdout.fnmatch_lines(["test_zero.py::test_zero_batch [[]passed[]]: 2 layers inspected, 0 pictures", f"  note: {note}"])
    result.stdout.no_fnmatch_line("*keep_samples*")
    summary = json.loads((tester.path / "featcheck-report" / "summary.json").read_text())
    assert summary["tests"][0]["notes"] == [note]
    assert f'<p class="note">{note}</p>' in (tester.path / "featcheck-report" / "index.html").read_text()
    row = extras(report_tests(tester.path / "r.html"), "test_zero.py::test_zero_batch", "html")
    assert [e["content"] for e in row if "featcheck-note" in e["content"]] == [
        f'<div class="featcheck-note" style="color:#c62828">featcheck: {note}</div>'
    ]


NO_VALUES = """
import warnings
import torch

def quantized(*shape):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates quantized tensors
        return torch.quantize_per_tensor(torch.rand(*shape), 0.1, 0, torch.quint8)

def test_a_meta_tensor(featcheck):
    featcheck.show(torch.empty(2, 3, 4, 4, device="meta"))

def test_a_quantized_tensor(featcheck):
    featcheck.show(quantized(2, 3, 4, 4))

def test_a_nested_tensor(featcheck):
    featcheck.show(torch.nested.nested_tensor([torch.rand(3, 4, 4), torch.rand(3, 4, 4)]))

def test_a_float8_tensor(featcheck):
    featcheck.show(torch.rand(3, 4, 4).to(torch.float8_e4m3fn))

def test_kernels_of_a_meta_module(featcheck):
    featcheck.show_kernels(torch.nn.Conv2d(3, 4, 3, device="meta"))

def test_kernels_of_a_quantized_weight(featcheck):
    featcheck.show_kernels(quantized(4, 3, 3, 3))

def test_later_tests_still_run(featcheck):
    featcheck.show(torch.rand(3, 4, 4))
    featcheck.show_kernels(torch.rand(4, 3, 3, 3).to(torch.float8_e4m3fn))  # kernel grids take float8
"""


@pytest.mark.parametrize("args", [[], ["--featcheck", "--html=r.html"]], ids=["plain", "featcheck"])
def test_tensors_without_drawable_values_fail_at_the_call(tester: pytest.Pytester, args: list[str]) -> None:
    tester.makepyfile(test_values=NO_VALUES)
    result = tester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=1, failed=6)
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stdout.fnmatch_lines_random(
        [
            "E*ValueError: show got a tensor on the meta device (shape 2x3x4x4): it has a shape but no values to draw; *",
            "E*TypeError: show got a quantized tensor (torch.quint8): pass its values as floats, x.dequantize()",
            "E*TypeError: show got a nested tensor: draw one of its tensors (x.unbind()[[]0[]]) or a padded copy*",
            "E*TypeError: show got a tensor of torch.float8_e4m3fn, which cannot be drawn as it is: pass x.float()",
            "E*ValueError: show_kernels got a weight of Conv2d on the meta device (shape 4x3x3x3)*",
            "E*TypeError: show_kernels got a quantized weight (torch.quint8): pass its values as floats, x.dequantize()",
        ]
    )
    for line in ('featcheck.show(torch.empty(2, 3, 4, 4, device="meta"))', "featcheck.show(quantized(2, 3, 4, 4))"):
        result.stdout.fnmatch_lines([f">*{line}"])
    result.stdout.no_fnmatch_line("*_fixture.py:*")
    result.stdout.no_fnmatch_line("*note: could not draw*")
    if args:
        summary = json.loads((tester.path / "featcheck-report" / "summary.json").read_text())
        assert [(t["nodeid"], len(t["pictures"]), t["notes"]) for t in summary["tests"]] == [
            ("test_values.py::test_later_tests_still_run", 2, [])
        ]
