"""The pytest side, through pytester (inner runs that touch torch run in a subprocess)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_plugin_and_package_import_without_torch() -> None:
    code = (
        "import sys, featcheck, featcheck.plugin; "
        "assert 'torch' not in sys.modules, 'torch was imported'; "
        "featcheck.LayerNotFoundError; assert 'torch' not in sys.modules; "
        "featcheck.capture; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_test_run_that_touches_no_model_never_imports_torch(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sys
        def test_plain(request):
            assert request.config.pluginmanager.hasplugin("featcheck")
            assert "torch" not in sys.modules
        """
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=1)


def test_registered_through_the_entry_point(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*featcheck*", "*--featcheck *", "*--featcheck-dir=DIR*", "*featcheck_dir*"])


def test_fixture_captures_and_remembers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import torch
        def test_capture(featcheck):
            model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU())
            cap = featcheck.capture(model, torch.randn(2, 3, 9, 9), layers=torch.nn.Conv2d)
            assert cap.names == ["0"] and cap["0"].stride == (9 / 4, 9 / 4)
            with featcheck.watch(model) as w:
                model(torch.randn(1, 3, 9, 9))
            assert featcheck.captures == [cap, w] and w.names == ["0", "1"]
            assert featcheck.enabled is False and featcheck.report_dir == "featcheck-report"

        def test_unknown_layer(featcheck):
            model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
            featcheck.capture(model, torch.randn(1, 3, 5, 5), layers="1")
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*LayerNotFoundError: layer '1' matches nothing*names include '0'*"])


@pytest.mark.parametrize(
    "ini,args,enabled,folder",
    [
        ("", [], False, "featcheck-report"),
        ("featcheck = true\nfeatcheck_dir = from-ini", [], True, "from-ini"),
        ("featcheck = false\nfeatcheck_dir = from-ini", ["--featcheck", "--featcheck-dir=cli"], True, "cli"),
    ],
)
def test_options_are_ini_keys_and_the_command_line_wins(
    pytester: pytest.Pytester, ini: str, args: list[str], enabled: bool, folder: str
) -> None:
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(
        f"""
        def test_options(featcheck):
            assert featcheck.enabled is {enabled}
            assert featcheck.report_dir == {folder!r}
        """
    )
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_failed_check_points_at_the_test_line_and_ini_thresholds_apply(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeini("[pytest]\nfeatcheck_max_dead_fraction = 0.25\n")
    pytester.makepyfile(
        test_dead="""
        import featcheck
        from fixtures import defects

        def test_dead():
            cap = featcheck.capture(defects.make("zeroed_filters", True), defects.batch())
            featcheck.assert_no_dead_channels(cap, layers="conv2")  # 2 of 8: the ini allows 25%
            featcheck.assert_no_dead_channels(cap, layers="conv2", max_fraction=0.1)
        """
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            ">*featcheck.assert_no_dead_channels(cap, layers=\"conv2\", max_fraction=0.1)",
            "E*dead channels in 1 of 1 layer (*",
            "E*layer*expected*measured*channels*samples",
            "E*conv2*<= 10% dead*2/8 dead (25.0%)*[[]2, 5[]]*8",
            "test_dead.py:7: FeatcheckAssertionError",
        ]
    )
    result.stdout.no_fnmatch_line("*_checks.py*")


def test_a_bad_threshold_in_the_ini_file_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nfeatcheck_dead_tolerance = tiny\n")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess()
    result.stderr.fnmatch_lines(["*featcheck_dead_tolerance must be a number, got 'tiny'*"])
    assert result.ret != 0


@pytest.mark.parametrize(
    "key,value,allowed",
    [
        ("max_dead_fraction", "2", "a fraction in [0, 1]"),
        ("max_dead_fraction", "-1", "a fraction in [0, 1]"),
        ("max_saturated_fraction", "nan", "a fraction in [0, 1]"),
        ("saturation_fraction", "inf", "a fraction in [0, 1]"),
        ("dead_tolerance", "-1e-6", "a finite number >= 0"),
        ("dead_tolerance", "inf", "a finite number >= 0"),
        ("saturation_tolerance", "0.5", "a number in [0, 0.5)"),
        ("baseline_max_kb", "nan", "a finite number of KiB > 0"),
        ("baseline_max_kb", "0", "a finite number of KiB > 0"),
    ],
)
def test_an_ini_threshold_out_of_range_is_a_usage_error_before_any_test_runs(
    pytester: pytest.Pytester, key: str, value: str, allowed: str
) -> None:
    pytester.makeini(f"[pytest]\nfeatcheck_{key} = {value}\n")
    pytester.makepyfile(
        """
        from pathlib import Path

        def test_x():
            Path("ran").write_text("the test ran")
        """
    )
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    allowed = allowed.replace("[", "[[]")  # fnmatch: a literal "["
    result.stderr.fnmatch_lines(
        [f"*ini key featcheck_{key} must be {allowed}, got '{value}'; fix it in {pytester.path / 'tox.ini'} or remove it (default *)"]
    )
    assert not (pytester.path / "ran").exists()


def test_thresholds_are_checked_before_any_is_set() -> None:
    from featcheck import _config

    for key, (default, _) in _config.THRESHOLDS.items():
        assert _config.check(key, default) == default  # every default is in its own range
    assert _config.check("max_dead_fraction", 1) == 1.0 and _config.check("baseline_max_kb", 0.5) == 0.5
    before = dict(_config._current)
    for bad in ({"max_dead_fraction": 2.0}, {"dead_tolerance": 0.5, "baseline_max_kb": float("nan")}):
        with pytest.raises(ValueError, match=r"must be a (fraction in \[0, 1\]|finite number of KiB > 0), got"):
            _config.set_from(bad)
        assert _config._current == before  # all or nothing
    with pytest.raises(KeyError, match="unknown featcheck threshold 'dead'"):
        _config.set_from({"dead": 0.1})
