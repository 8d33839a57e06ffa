"""Visual baselines: check_baseline(cap, pictures=True) keeps one small picture per layer beside
the JSON, with the JSON's rules, and the report shows baseline | current | difference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from featcheck._render import _diff

ROOT = Path(__file__).resolve().parents[1]

SUITE = """
import os, torch
from torch import nn

def test_visual(featcheck):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)).eval()
    if os.environ.get("PERTURB"):
        with torch.no_grad():
            model[2].weight[1] *= -3
    cap = featcheck.capture(model, featcheck.sample_input((2, 3, 16, 16)))
    featcheck.check_baseline(cap, pictures=True)
"""

JSON = Path("__featcheck__/test_suite/test_visual.json")
PNG = JSON.with_suffix(".png")


def test_visual_baseline_round_trip_and_the_changed_layer_in_the_report(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.delenv("PERTURB", raising=False)
    pytester.makepyfile(test_suite=SUITE)
    run = pytester.runpytest_subprocess
    result = run("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    assert not (pytester.path / JSON).exists() and not (pytester.path / PNG).exists()
    run("-p", "no:cacheprovider", "--featcheck-update").assert_outcomes(passed=1)
    stored = (pytester.path / PNG).read_bytes()
    assert set(_diff.decode_pictures(stored)) == {"0", "1", "2"}
    run("-p", "no:cacheprovider").assert_outcomes(passed=1)

    monkeypatch.setenv("PERTURB", "1")
    result = run("-p", "no:cacheprovider", "--featcheck", "--featcheck-dir=gallery", "--html=report.html", "--self-contained-html")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E*numeric drift*", "E*2: mean*"])
    summary = json.loads((pytester.path / "gallery" / "summary.json").read_text())
    pictures = summary["tests"][0]["pictures"]
    assert [(p["name"], p["kind"]) for p in pictures] == [("2", "flagged: baseline")]
    assert "baseline | current (one scale" in pictures[0]["caption"]
    assert (pytester.path / PNG).read_bytes() == stored  # a failing check writes nothing
    monkeypatch.delenv("PERTURB")

    (pytester.path / PNG).write_bytes(b"\x89PNG not really")
    result = run("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E*featcheck baseline pictures *test_visual.png is not a featcheck pictures file*left as it is*"])
    assert (pytester.path / PNG).read_bytes() == b"\x89PNG not really"
    run("-p", "no:cacheprovider", "--featcheck-update").assert_outcomes(passed=1)
    assert (pytester.path / PNG).read_bytes() == stored
    (pytester.path / PNG).unlink()
    run("-p", "no:cacheprovider").stdout.fnmatch_lines(["E*baseline pictures *test_visual.png does not exist; nothing was written*"])


def test_pictures_round_trip_on_an_8_bit_grid_per_layer() -> None:
    sample = torch.randn(12, 70, 50, generator=torch.Generator().manual_seed(0))
    maps = _diff.layer_maps(sample)
    assert maps.shape == (8, 24, 25)  # 8 channels, strided to at most 32 per side
    tiny = _diff.layer_maps(torch.linspace(-1, 1, 5))  # a vector: 1 x 1 maps
    back = _diff.decode_pictures(_diff.encode_pictures([("conv", maps), ("fc", tiny)]))
    step = (maps.max() - maps.min()) / 255
    assert np.abs(back["conv"] - maps).max() <= step / 2 + 1e-9
    assert back["fc"].shape == (5, 1, 1) and np.allclose(back["fc"].ravel(), np.linspace(-1, 1, 5), atol=1 / 255)


def test_a_picture_drawn_against_itself_shows_no_difference() -> None:
    maps = _diff.layer_maps(torch.randn(4, 16, 16))
    stored = _diff.decode_pictures(_diff.encode_pictures([("x", maps)]))["x"]
    image, _ = _diff.BaselinePicture("x", stored, maps, "drift").draw()
    assert "|difference| (0 to 0)" in image.info["caption"]


def test_truncated_or_foreign_files_are_refused_saying_so() -> None:
    data = _diff.encode_pictures([("x", _diff.layer_maps(torch.randn(4, 8, 8)))])
    with pytest.raises(ValueError, match="not a featcheck pictures file"):
        _diff.decode_pictures(data[: len(data) // 2])
    from PIL import Image
    import io

    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, format="png")
    with pytest.raises(ValueError, match="not a featcheck pictures file"):
        _diff.decode_pictures(buf.getvalue())


def test_update_writes_through_linked_pictures_and_keeps_the_link(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pictures file was replaced by a regular file on update, leaving the shared one stale,
    while the JSON beside it was written through its link."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.delenv("PERTURB", raising=False)
    pytester.makepyfile(test_suite=SUITE)
    run = pytester.runpytest_subprocess
    run("-p", "no:cacheprovider", "--featcheck-update").assert_outcomes(passed=1)
    png = pytester.path / PNG
    shared = pytester.path / "shared" / "visual.png"
    shared.parent.mkdir()
    shared.write_bytes(png.read_bytes())
    png.unlink()
    png.symlink_to(Path("../../shared/visual.png"))
    before = shared.read_bytes()
    run("-p", "no:cacheprovider").assert_outcomes(passed=1)
    monkeypatch.setenv("PERTURB", "1")
    run("-p", "no:cacheprovider", "--featcheck-update").assert_outcomes(passed=1)
    assert png.is_symlink() and shared.read_bytes() != before  # the target written, the link kept
    run("-p", "no:cacheprovider").assert_outcomes(passed=1)
