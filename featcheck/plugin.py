"""pytest plugin: options, the ``featcheck`` fixture and the report hooks.

Loaded by every pytest run in an environment where featcheck is installed, so it imports nothing
heavy at module level: torch loads when a test first uses the fixture, and the report machinery
only with ``--featcheck``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._fixture import FeatcheckFixture
    from ._report import ReportSession

_THRESHOLDS_BEFORE = pytest.StashKey[dict[str, float]]()
_SESSION = pytest.StashKey["ReportSession"]()

_OPTIONS: tuple[tuple[Any, ...], ...] = (
    # (name, ini type, default, metavar, help)
    ("featcheck", "bool", False, None, "render pictures of what tests inspect and attach them to reports"),
    ("featcheck_dir", "string", "featcheck-report", "DIR", "where the featcheck gallery is written"),
    ("featcheck_attach", "string", "all", "all|failed|none", "which tests get pictures"),
    ("featcheck_max_pictures", "string", "12", "N", "at most this many pictures per test"),
    ("featcheck_update", "bool", False, None, "write missing and changed featcheck baselines"),
)
_BASELINES = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    from . import _config

    group = parser.getgroup("featcheck", "featcheck: inspect PyTorch models from inside")
    for name, kind, default, metavar, help_ in _OPTIONS:
        flag = "--" + name.replace("_", "-")
        if kind == "bool":
            group.addoption(flag, action="store_true", default=None, dest=name, help=help_)
        else:
            group.addoption(flag, action="store", default=None, dest=name, metavar=metavar, help=f"{help_} (default {default})")
        parser.addini(name, f"{help_} (command line {flag} wins)", type=kind, default=default)
    for key, (value, meaning) in _config.THRESHOLDS.items():
        parser.addini(f"featcheck_{key}", f"{meaning} (default {value:g})", type="string", default="")


def option(config: pytest.Config, name: str) -> Any:
    """The command-line value if given, else the ini value."""
    value = config.getoption(name)
    return config.getini(name) if value is None else value


def pytest_configure(config: pytest.Config) -> None:
    from . import _config

    values = {}
    for key in _config.THRESHOLDS:
        raw = config.getini(f"featcheck_{key}")
        if raw:
            words = _config.RANGES[key][2]
            where = f"fix it in {config.inipath or 'the ini file'} or remove it (default {_config.THRESHOLDS[key][0]:g})"
            try:
                number = float(raw)
            except ValueError:
                raise pytest.UsageError(f"ini key featcheck_{key} must be a number, got {raw!r} ({words}); {where}") from None
            try:
                values[key] = _config.check(key, number)
            except ValueError:
                raise pytest.UsageError(f"ini key featcheck_{key} must be {words}, got {raw!r}; {where}") from None
    config.stash[_THRESHOLDS_BEFORE] = _config.set_from(values)
    if option(config, "featcheck"):
        from ._report import ReportSession

        try:
            max_pictures = int(option(config, "featcheck_max_pictures"))
        except ValueError:
            raise pytest.UsageError("--featcheck-max-pictures must be an integer") from None
        session = ReportSession(
            config, str(option(config, "featcheck_dir")), str(option(config, "featcheck_attach")), max_pictures
        )
        config.stash[_SESSION] = session
        if config.pluginmanager.hasplugin("html"):
            config.pluginmanager.register(_HtmlHooks(), "featcheck-html")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(config), "featcheck-xdist")


def pytest_unconfigure(config: pytest.Config) -> None:
    from . import _config

    before = config.stash.get(_THRESHOLDS_BEFORE, None)
    if before is not None:
        _config.set_from(before)


@pytest.fixture
def featcheck(request: pytest.FixtureRequest) -> Generator[FeatcheckFixture, None, None]:
    """Capture and watch models, and show pictures; what the test captured goes into the report."""
    from ._fixture import FIXTURE_KEY, FeatcheckFixture

    fixture = FeatcheckFixture(
        enabled=bool(option(request.config, "featcheck")),
        report_dir=str(option(request.config, "featcheck_dir")),
        node=request.node,
        update=bool(option(request.config, "featcheck_update")),
    )
    request.node.stash[FIXTURE_KEY] = fixture
    try:
        yield fixture
        written = request.config.stash.setdefault(_BASELINES, [])
        written.extend(f"{what} {path}" for what, path in fixture.written_baselines)
    finally:
        # the report was made at the call phase; from here on nothing may keep the test's
        # captures (and through them its models) alive until the session ends
        del request.node.stash[FIXTURE_KEY]
        fixture._release()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    session = item.config.stash.get(_SESSION, None)
    if session is not None:
        session.on_report(item, call, outcome.get_result())


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    worker = hasattr(config, "workerinput")
    written: list[str] = config.stash.get(_BASELINES, [])
    if worker and written:
        config.workeroutput["featcheck_baselines"] = written  # type: ignore[attr-defined]
    report = config.stash.get(_SESSION, None)
    if report is None:
        return
    if not worker:
        report.write_gallery()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    report = config.stash.get(_SESSION, None)
    baselines: list[str] = config.stash.get(_BASELINES, [])
    written = sorted(baselines)
    if report is None and not written:
        return
    terminalreporter.section("featcheck")
    for line in written:
        terminalreporter.write_line(f"baseline {line}")
    for line in report.summary_lines() if report is not None else []:
        terminalreporter.write_line(line)


class _HtmlHooks:
    """Registered only with pytest-html and ``--featcheck``."""

    def pytest_html_results_table_row(self, report: Any, cells: list[str]) -> None:
        """pytest-html puts the test id into its table unescaped: escape it (parametrize ids can
        hold anything, ``<script>`` included)."""
        import html

        for i, cell in enumerate(cells):
            if cell.startswith('<td class="col-testId">'):
                test_id = report.nodeid if report.when == "call" else f"{report.nodeid}::{report.when}"
                cells[i] = f'<td class="col-testId">{html.escape(test_id)}</td>'


class _XdistHooks:
    """Registered only with pytest-xdist: the controller collects what the workers did."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # workers hand their records over with each test's report, not at the end: a worker
        # that crashes keeps every picture it reported
        session = self.config.stash.get(_SESSION, None)
        if session is not None and not hasattr(self.config, "workerinput"):
            session.take_over(report)

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", {})
        self.config.stash.setdefault(_BASELINES, []).extend(output.get("featcheck_baselines", []))
