"""Exceptions that are part of featcheck's public API."""

from __future__ import annotations

from typing import Any

__all__ = ["FeatcheckAssertionError", "LayerNotFoundError"]


class LayerNotFoundError(KeyError):
    """A layer name or glob pattern matched nothing.

    Subclasses :class:`KeyError` so that ``cap["missing"]`` behaves like any mapping,
    but prints its message plainly instead of quoting it.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class FeatcheckAssertionError(AssertionError):
    """A failed featcheck check. ``flagged`` lists ``(LayerCapture, channel indices, check)`` for
    every offending layer, so that the report can draw them with those channels marked."""

    def __init__(self, message: str, flagged: list[tuple[Any, list[int], str]] | None = None) -> None:
        super().__init__(message)
        self.flagged = list(flagged or [])


# Tracebacks and reprs name the public module, not this private one.
LayerNotFoundError.__module__ = "featcheck"
FeatcheckAssertionError.__module__ = "featcheck"
