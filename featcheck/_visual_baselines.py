"""Visual baselines: one small picture per layer beside a JSON baseline.

``check_baseline(cap, pictures=True)`` keeps ``<test>[.<name>].png`` next to the JSON. The
pictures follow the JSON's rules (``featcheck._baselines``): written only with
``--featcheck-update`` and atomically; a missing file fails and writes nothing; a corrupt one
fails and is left as it is. They are no check of their own: when the JSON check fails (structure
or drift), the report shows baseline | current | difference for the changed layers. The picture
format (8-bit, size-capped, one PNG) is in ``featcheck._render._diff``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._baselines import BaselineError, Diff, _check_place, _target
from ._errors import FeatcheckAssertionError
from ._paths import write_atomic

__all__ = ["Pictures"]


class Pictures:
    """The visual baseline beside one JSON baseline (``<name>.png``): one small picture per layer,
    quantised (see ``featcheck._render._diff``). The same rules as the JSON: written only with
    ``--featcheck-update``, atomically; a missing one fails, a corrupt one fails and is left as it
    is. It is not a check of its own: when the JSON check fails, the report shows baseline |
    current | difference for the changed layers."""

    def __init__(self, records: list[Any], path: Path, display_path: str, command: str) -> None:
        __tracebackhide__ = True
        from ._render import _diff

        self._diff = _diff
        missing = [lc.name for lc in records if lc.sample is None]
        if missing:
            raise ValueError(
                f"check_baseline(pictures=True) draws each layer's sample, but {', '.join(missing[:3])} "
                "kept none: capture with keep_samples=True (the default)"
            )
        self.current = {lc.name: _diff.layer_maps(lc.sample) for lc in records}
        self.path = path.with_suffix(".png")
        self.display = str(Path(display_path).with_suffix(".png"))
        self.command = command
        self.data = _diff.encode_pictures(list(self.current.items()))
        if len(self.data) > _diff.PICTURE_MAX_KB * 1024:
            raise FeatcheckAssertionError(
                f"featcheck baseline pictures {self.display} would be {len(self.data) / 1024:.0f} KiB, above "
                f"the cap of {_diff.PICTURE_MAX_KB} KiB. Check fewer layers (layers=...)."
            )

    def write(self) -> None:
        __tracebackhide__ = True
        _check_place(self.path, self.display, self.command)
        target = _target(self.path, self.display, self.command)  # a symbolic link is written through, as the JSON's
        try:
            write_atomic(target, self.data, durable=True)
        except OSError as e:
            raise FeatcheckAssertionError(
                f"featcheck baseline pictures {self.display} could not be written ({e.__class__.__name__}: "
                f"{e.strerror or e}); any existing file was left as it is. Make its folder writable, "
                f"then run: {self.command}"
            ) from None

    def _stored(self) -> dict[str, np.ndarray]:
        """The stored pictures; BaselineError when missing or unreadable."""
        if not self.path.is_file():
            raise BaselineError("does not exist")
        try:
            return self._diff.decode_pictures(self.path.read_bytes())
        except (OSError, ValueError) as e:
            raise BaselineError(str(e)) from None

    def check(self, update: bool) -> str | None:
        """The JSON agreed: the pictures must be there and readable (written with update)."""
        __tracebackhide__ = True
        try:
            self._stored()
        except BaselineError as e:
            if update:
                self.write()
                return "written (pictures)"
            raise FeatcheckAssertionError(
                f"featcheck baseline pictures {self.display} {e}; nothing was written and it was left "
                f"as it is.\nWrite them from this capture with: {self.command}"
            ) from None
        return None

    def flagged(self, flagged: list[tuple[Any, list[int], str]], diff: Diff) -> list[tuple[Any, list[int], str]]:
        """Changed layers that have a stored picture of the same size are drawn against it."""
        try:
            stored = self._stored()
        except BaselineError:
            return flagged
        why = {y["name"]: ", ".join(w) or "changed" for _, y, w in diff.changed}
        why.update({n: "; ".join(lines) for n, lines in diff.drift})
        out = []
        for lc, channels, check in flagged:
            old = stored.get(lc.name)
            now = self.current.get(lc.name)
            if old is not None and now is not None and old.shape == now.shape:
                out.append((self._diff.BaselinePicture(lc.name, old, now, why.get(lc.name, "changed")), channels, check))
            else:
                out.append((lc, channels, check))
        return out
