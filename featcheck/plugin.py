"""pytest plugin: options and the ``featcheck`` fixture.

Loaded by every pytest run in an environment where featcheck is installed, so it imports
nothing heavy at module level: torch loads when a test first uses the fixture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ._fixture import FeatcheckFixture

_THRESHOLDS_BEFORE = pytest.StashKey[dict]()

_OPTIONS = (
    # (name, ini type, default, help)
    ("featcheck", "bool", False, "render pictures of captured layers and attach them to reports"),
    ("featcheck_dir", "string", "featcheck-report", "where featcheck writes its artefacts"),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    from . import _config

    group = parser.getgroup("featcheck", "featcheck: inspect PyTorch models from inside")
    for name, kind, default, help_ in _OPTIONS:
        flag = "--" + name.replace("_", "-")
        if kind == "bool":
            group.addoption(flag, action="store_true", default=None, dest=name, help=help_)
        else:
            group.addoption(flag, action="store", default=None, dest=name, metavar="DIR", help=help_)
        parser.addini(name, f"{help_} (command line {flag} wins)", type=kind, default=default)
    for key, (default, help_) in _config.THRESHOLDS.items():
        parser.addini(f"featcheck_{key}", f"{help_} (default {default:g})", type="string", default="")


def pytest_configure(config: pytest.Config) -> None:
    from . import _config

    values = {}
    for key in _config.THRESHOLDS:
        raw = config.getini(f"featcheck_{key}")
        if raw:
            try:
                values[key] = float(raw)
            except ValueError:
                raise pytest.UsageError(
                    f"ini key featcheck_{key} must be a number, got {raw!r}"
                ) from None
    config.stash[_THRESHOLDS_BEFORE] = _config.set_from(values)


def pytest_unconfigure(config: pytest.Config) -> None:
    from . import _config

    before = config.stash.get(_THRESHOLDS_BEFORE, None)
    if before is not None:
        _config.set_from(before)


def option(config: pytest.Config, name: str) -> object:
    """The command-line value if given, else the ini value."""
    value = config.getoption(name)
    return config.getini(name) if value is None else value


@pytest.fixture
def featcheck(request: pytest.FixtureRequest) -> FeatcheckFixture:
    """Capture and watch models; what the test captured goes into the featcheck report."""
    from ._fixture import FeatcheckFixture

    return FeatcheckFixture(
        enabled=bool(option(request.config, "featcheck")),
        report_dir=str(option(request.config, "featcheck_dir")),
    )
