"""The gallery ``featcheck inspect`` writes, opened in a real browser: every picture must render.

Needs Debian's ``chromium``, like ``tests/test_browser.py`` (whose browser driver it reuses).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_browser import CHROMIUM, open_and_check

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed here (apt-get install chromium); .ci/run installs it",
)


def test_inspect_gallery_renders_every_picture_in_chromium(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "featcheck", "inspect", "fixtures.defects:make", "--arg", "name=saturated_sigmoid",
         "--arg", "defective=True", "--input", "8x3x32x32", "--out", "gallery"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 1, result.stdout + result.stderr  # the saturated gate fails its check
    files = [p["file"] for t in json.loads((tmp_path / "gallery" / "summary.json").read_text())["tests"] for p in t["pictures"]]
    # the gate, flagged by the dead and the saturation checks, in both sections and in its layer
    # group (one drawing, three files), and each of the 9 other layers
    assert len(files) == 12
    imgs = open_and_check((tmp_path / "gallery" / "index.html").as_uri(), tmp_path / "shot.png", len(files))
    assert sorted(src for src, _, _ in imgs) == sorted(files)
    assert all(w > 0 and h > 0 for _, w, h in imgs), imgs



def test_compare_gallery_renders_every_picture_in_chromium(tmp_path: Path) -> None:
    (tmp_path / "pair.py").write_text(
        "from fixtures.defects import make\n\n\ndef clean():\n    return make('dead_relu', False)\n\n\n"
        "def dead():\n    return make('dead_relu', True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "featcheck", "compare", "pair.py:clean", "pair.py:dead", "--input", "4x3x32x32",
         "--out", "gallery"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    files = [p["file"] for t in json.loads((tmp_path / "gallery" / "summary.json").read_text())["tests"] for p in t["pictures"]]
    assert files  # reference | candidate | difference of the first diverging records
    imgs = open_and_check((tmp_path / "gallery" / "index.html").as_uri(), tmp_path / "shot.png", len(files))
    assert sorted(src for src, _, _ in imgs) == sorted(files)
    assert all(w > 0 and h > 0 for _, w, h in imgs), imgs
