"""File names derived from names users and models choose (test ids, layer names, dict keys)."""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+|\.{2,}")


def safe_filename(name: str, max_len: int = 80) -> str:
    """A file-system-safe, length-capped name: no separators, no leading dots, never empty.

    Different names stay different: whenever characters were replaced or the name was cut, a
    short hash of the original is appended.
    """
    cleaned = _UNSAFE.sub("_", name).lstrip(".") or "_"
    if cleaned == name and len(name) <= max_len:
        return name
    digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned[: max(1, max_len - 9)]}-{digest}"
