"""Baseline files on a hostile file system: temporaries of killed writers, a directory or a file
in the way, a read-only folder. featcheck fails clearly and never deletes what it did not write."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from featcheck._paths import write_atomic

ROOT = Path(__file__).resolve().parents[1]

BLOCKED_WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from featcheck._paths import write_atomic

    def stuck(fd):  # a kill during the durable write: the temporary exists, the target does not
        print("writing", flush=True)
        time.sleep(600)

    os.fsync = stuck
    write_atomic(Path(sys.argv[1]), b"half", durable=True)
    """
)


def blocked_writer(target: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKED_WRITER, str(target)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None and proc.stdout.readline() == "writing\n"
    return proc


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "b.json"
    killed = blocked_writer(target)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (stale,) = temporaries(tmp_path)
    assert stale.startswith(f".b.json.featcheck-{killed.pid}-")
    live = blocked_writer(target)
    try:
        (tmp_path / ".b.json.featcheck-notes.tmp").write_text("mine")  # not featcheck's name pattern
        (tmp_path / ".b.json.abc12345.tmp").write_text("mine too")
        write_atomic(target, b"{}", durable=True)
        assert target.read_bytes() == b"{}"
        left = temporaries(tmp_path)
        assert stale not in left  # the dead writer's temporary is gone
        assert ".b.json.featcheck-notes.tmp" in left and ".b.json.abc12345.tmp" in left
        assert any(n.startswith(f".b.json.featcheck-{live.pid}-") for n in left)  # in flight: kept
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    write_atomic(target, b"{}")
    assert temporaries(tmp_path) == [".b.json.abc12345.tmp", ".b.json.featcheck-notes.tmp"]


SUITE = """
import torch
from torch import nn

def test_backbone(featcheck):
    cap = featcheck.capture(nn.Conv2d(3, 4, 3), featcheck.sample_input((1, 3, 8, 8)))
    featcheck.check_baseline(cap)
"""

BASELINE = Path("__featcheck__/test_suite/test_backbone.json")
COMMAND = "pytest --featcheck-update test_suite.py::test_backbone"


@pytest.mark.parametrize("update", [False, True], ids=["check", "update"])
def test_a_directory_where_the_baseline_goes_is_named_and_kept(pytester: pytest.Pytester, update: bool) -> None:
    pytester.makepyfile(test_suite=SUITE)
    (pytester.path / BASELINE).mkdir(parents=True)
    (pytester.path / BASELINE / "keep.txt").write_text("user data")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *(["--featcheck-update"] if update else []))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"E*featcheck baseline {BASELINE} is a directory, not a baseline file; featcheck never replaces it. Move it away, then run: {COMMAND}"])
    result.stdout.no_fnmatch_line("*OSError*")
    assert (pytester.path / BASELINE / "keep.txt").read_text() == "user data"


def test_a_file_where_the_module_folder_goes_is_named_and_kept(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    (pytester.path / "__featcheck__").mkdir()
    (pytester.path / BASELINE.parent).write_text("user data")
    for args in ([], ["--featcheck-update"]):
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines([f"E*featcheck baseline {BASELINE} cannot be stored: {BASELINE.parent} is a file, not a folder; featcheck never replaces it. Move it away, then run: {COMMAND}"])
    assert (pytester.path / BASELINE.parent).read_text() == "user data"


def test_a_read_only_folder_under_update_fails_with_the_path_and_leaves_the_file(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE.replace("nn.Conv2d(3, 4, 3)", "nn.Conv2d(3, 4, 3, stride=int(__import__('os').environ.get('S', '1')))"))
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "--featcheck-update").assert_outcomes(passed=1)
    before = (pytester.path / BASELINE).read_text()
    folder = pytester.path / BASELINE.parent
    folder.chmod(0o555)
    # Root writes anywhere: run the inner pytest without the capability that allows it.
    prefix = [shutil.which("setpriv") or "setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []
    try:
        os.environ["S"] = "2"
        result = pytester.run(*prefix, sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--featcheck-update")
    finally:
        del os.environ["S"]
        folder.chmod(0o755)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"E*featcheck baseline {BASELINE} could not be written (PermissionError: Permission denied); any existing file was left as it is. Make its folder writable, then run: {COMMAND}"])
    assert (pytester.path / BASELINE).read_text() == before
    assert temporaries(folder) == []


LINKED = """
import json
import os, torch
from torch import nn

def make(var):
    torch.manual_seed(0)
    return nn.Conv2d(3, 4, 3, stride=int(os.environ.get(var, "1")))

def test_a(featcheck):
    featcheck.check_baseline(featcheck.capture(make("SA"), featcheck.sample_input((1, 3, 8, 8))))

def test_b(featcheck):
    featcheck.check_baseline(featcheck.capture(make("SB"), featcheck.sample_input((1, 3, 8, 8))))
"""


def run_linked(pt: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str, **env: str) -> pytest.RunResult:
    for k in ("SA", "SB"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return pt.runpytest_subprocess("-p", "no:cacheprovider", *args)


def link_to_shared(pt: pytest.Pytester, *tests: str) -> Path:
    """The baselines of ``tests`` become links to one file, ``shared/conv.json`` (test_a's)."""
    folder = pt.path / "__featcheck__" / "test_linked"
    shared = pt.path / "shared" / "conv.json"
    shared.parent.mkdir()
    shutil.copy(folder / "test_a.json", shared)
    for test in tests:
        (folder / f"{test}.json").unlink()
        (folder / f"{test}.json").symlink_to(Path("../../shared/conv.json"))
    return shared


def test_update_writes_through_a_linked_baseline_and_keeps_the_link(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_linked=LINKED)
    run_linked(pytester, monkeypatch, "--featcheck-update").assert_outcomes(passed=2)
    shared = link_to_shared(pytester, "test_a")
    link = pytester.path / "__featcheck__" / "test_linked" / "test_a.json"
    run_linked(pytester, monkeypatch).assert_outcomes(passed=2)
    run_linked(pytester, monkeypatch, SA="2").assert_outcomes(passed=1, failed=1)
    update = run_linked(pytester, monkeypatch, "--featcheck-update", SA="2")
    update.assert_outcomes(passed=2)
    update.stdout.fnmatch_lines(["baseline updated __featcheck__/test_linked/test_a.json"])
    assert link.is_symlink() and os.readlink(link) == "../../shared/conv.json"
    assert json.loads(shared.read_text())["layers"][0]["shape"] == [None, 4, 3, 3]  # the target, not a copy
    assert temporaries(shared.parent) == [] and temporaries(link.parent) == []
    run_linked(pytester, monkeypatch, SA="2").assert_outcomes(passed=2)


def test_two_tests_linked_to_one_file_share_it_but_never_overwrite_each_other(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_linked=LINKED)
    run_linked(pytester, monkeypatch, "--featcheck-update").assert_outcomes(passed=2)
    shared = link_to_shared(pytester, "test_a", "test_b")
    before = shared.read_text()
    run_linked(pytester, monkeypatch).assert_outcomes(passed=2)  # one expectation, checked by both
    run_linked(pytester, monkeypatch, "--featcheck-update").assert_outcomes(passed=2)
    update = run_linked(pytester, monkeypatch, "--featcheck-update", SB="2")
    update.assert_outcomes(passed=1, failed=1)
    update.stdout.fnmatch_lines([
        "E*featcheck baseline __featcheck__/test_linked/test_b.json differs from this capture",
        "E*featcheck baseline __featcheck__/test_linked/test_b.json is a link to *shared/conv.json, which "
        "test_linked.py::test_a also checked in this session; writing it would change that test's baseline. It was "
        "left as it is. Give this test a baseline of its own (replace the link with a file), then run: "
        "pytest --featcheck-update test_linked.py::test_b",
    ])
    assert shared.read_text() == before
    for test in ("test_a", "test_b"):
        assert (pytester.path / "__featcheck__" / "test_linked" / f"{test}.json").is_symlink()
