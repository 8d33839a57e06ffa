"""File names derived from names users and models choose (test ids, layer names, dict keys), and
atomic writes of the files featcheck makes."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
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


_STALE_AFTER_S = 3600.0


def _temporary_prefix(path: Path) -> str:
    """Names of featcheck's temporaries for ``path``: ``.<name>.featcheck-<pid>-<random>.tmp``.
    The marker and the writer's process id tell them apart from anything else in the folder."""
    return f".{path.name[:40]}.featcheck-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` left by a writer that was killed mid-write: those whose
    process is gone, or (process ids are reused) that are older than an hour. Only names that
    :func:`write_atomic` makes are touched, never other files."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return
    prefix = _temporary_prefix(path)
    own = re.compile(re.escape(prefix) + r"(\d+)-[A-Za-z0-9_]+\.tmp")
    try:
        candidates = [p for p in path.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for tmp in candidates:
        match = own.fullmatch(tmp.name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            old = time.time() - tmp.lstat().st_mtime > _STALE_AFTER_S
        except OSError:
            continue
        if old or (pid != os.getpid() and not _alive(pid)):
            tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes, durable: bool = False) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place: a crash or a
    kill never leaves a half-written file, and temporaries that an earlier killed writer left of
    this file are removed first. ``durable`` also fsyncs before the rename (baselines, which users
    commit; not the gallery, where it would cost a disk flush per picture). Permissions follow the
    umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_temporary_prefix(path)}{os.getpid()}-", suffix=".tmp")
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
