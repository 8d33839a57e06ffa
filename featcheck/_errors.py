"""Exceptions that are part of featcheck's public API."""

from __future__ import annotations

__all__ = ["LayerNotFoundError"]


class LayerNotFoundError(KeyError):
    """A layer name or glob pattern matched nothing.

    Subclasses :class:`KeyError` so that ``cap["missing"]`` behaves like any mapping,
    but prints its message plainly instead of quoting it.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
