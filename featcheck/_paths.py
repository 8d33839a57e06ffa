"""File names derived from names users and models choose (test ids, layer names, dict keys)."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

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


def write_atomic(path: Path, data: bytes, durable: bool = False) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place: a crash or a
    kill never leaves a half-written file. ``durable`` also fsyncs before the rename (baselines,
    which users commit; not the gallery, where it would cost a disk flush per picture).
    Permissions follow the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:40]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
