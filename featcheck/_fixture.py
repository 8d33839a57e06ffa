"""The object behind the ``featcheck`` fixture."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import _capture

__all__ = ["FeatcheckFixture"]


class FeatcheckFixture:
    """Capture and watch models in a test; remembers every capture for the report.

    ``capture`` and ``watch`` have the signatures of :func:`featcheck.capture` and
    :func:`featcheck.watch`. Every other public name of the ``featcheck`` package
    (``assert_no_dead_channels``, ``calibrate_batchnorm``, ...) is reachable from the fixture
    too, since a test's ``featcheck`` argument shadows the module.
    """

    def __init__(self, enabled: bool, report_dir: str) -> None:
        self.enabled = enabled
        self.report_dir = report_dir
        self.captures: list[_capture.Capture] = []

    def capture(self, model: Any, *args: Any, **kwargs: Any) -> _capture.Capture:
        __tracebackhide__ = True
        cap = _capture.capture(model, *args, **kwargs)
        self.captures.append(cap)
        return cap

    def __getattr__(self, name: str) -> Any:
        import featcheck

        if name in featcheck.__all__:
            return getattr(featcheck, name)
        raise AttributeError(f"the featcheck fixture has no attribute {name!r}")

    @contextmanager
    def watch(self, model: Any, layers: Any = None, **kwargs: Any) -> Iterator[_capture.Capture]:
        with _capture.watch(model, layers, **kwargs) as cap:
            self.captures.append(cap)
            yield cap
