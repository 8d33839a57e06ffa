"""The report's pure logic in process: records, gallery HTML, summary.json, the gallery folder and
names. No torch, no inner pytest run."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from featcheck import _report
from featcheck._report import _Flag, _Picture, _Record


def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), colour).save(buf, format="png")
    return buf.getvalue()


def record(nodeid: str = "t.py::test_a", pictures: int = 2, notes: tuple[str, ...] = ()) -> _Record:
    return _Record(
        nodeid=nodeid,
        outcome="failed",
        layers=["conv1", "conv2"],
        flagged=[_Flag("conv2", [2, 5], "dead")],
        pictures=[_Picture(f"conv{k}", "grid", png((k * 40, 0, 0)), f"conv{k} caption", [("dead", "2/8")]) for k in range(pictures)],
        dropped=1,
        notes=list(notes),
    )


def test_records_survive_the_xdist_round_trip_unchanged() -> None:
    rec = record(notes=("could not draw x: ValueError: bad",))
    before = copy.deepcopy(rec)
    data = json.loads(json.dumps(rec.to_json()))  # what crosses the wire
    assert _Record.from_json(data) == rec
    assert rec == before  # serialising does not mutate the record
    assert isinstance(data["pictures"][0]["png"], str)


def test_gallery_html_escapes_everything_and_shows_notes() -> None:
    rec = record(nodeid="t.py::test[<script>alert(1)</script>]", notes=("could not draw <b>: x",))
    files = _report.gallery_files([rec])
    page = _report.gallery_html([rec], files)
    assert "<script>" not in page and "<b>" not in page
    assert "t.py::test[&lt;script&gt;alert(1)&lt;/script&gt;]" in page
    assert '<p class="note">could not draw &lt;b&gt;: x</p>' in page
    assert page.count("<img ") == 2 and all(f'src="{f}"' in page for f in files[0])
    assert '<p class="flagged">flagged (dead): conv2 channels [2, 5]</p>' in page


def test_summary_json_lists_pictures_with_their_files_and_notes() -> None:
    recs = [record("t.py::b", 1), record("t.py::a", 2, ("n",))]
    files = _report.gallery_files(recs)
    summary = _report.summary_json(recs, files)
    assert summary["version"] == 1
    assert [t["nodeid"] for t in summary["tests"]] == ["t.py::b", "t.py::a"]
    assert summary["tests"][1]["notes"] == ["n"]
    assert summary["tests"][1]["flagged"] == [{"layer": "conv2", "channels": [2, 5], "check": "dead"}]
    assert [p["file"] for p in summary["tests"][1]["pictures"]] == files[1]
    assert summary["tests"][0]["pictures"][0]["table"] == [["dead", "2/8"]]


def test_summary_lines_put_notes_under_their_test() -> None:
    lines = _report.summary_lines([record("t.py::a", 2, ("could not draw conv9: ValueError: x",))])
    assert lines == [
        "t.py::a [failed]: 2 layers inspected, 2 pictures; flagged: conv2 (dead, channels [2, 5])",
        "  note: could not draw conv9: ValueError: x",
    ]


@pytest.mark.parametrize("ids", [("t.py::t[x<y]", "t.py::t[x>y]"), ("t.py::t[a/b]", "t.py::t[a_b]")])
def test_asset_names_of_different_tests_differ(ids: tuple[str, str]) -> None:
    names = {_report.asset_name(nodeid, "call", 0, 0) for nodeid in ids}
    assert len(names) == 2


def test_asset_names_are_safe_and_short_in_bytes() -> None:
    name = _report.asset_name("t.py::t[" + "\u00e9" * 300 + "]", "call", 0, 3)
    assert name.startswith("featcheck/") and name.endswith("-03.png")
    assert len(name.encode()) <= 100 and name.isascii() and ".." not in name
    assert _report.asset_name("t.py::t", "call", 0, 0) != _report.asset_name("t.py::t", "call", 1, 0)  # reruns


def test_the_gallery_replaces_only_its_own_files(tmp_path: Path) -> None:
    gal = tmp_path / "gal"
    _report.write_gallery(gal, [record("t.py::a"), record("t.py::b")])
    first = set(gal.rglob("*.png"))
    assert len(first) == 4
    (gal / "notes.txt").write_text("the user's file")
    index = _report.write_gallery(gal, [record("t.py::c", 1)])
    assert index == gal / "index.html"
    assert [p.relative_to(gal).as_posix() for p in gal.rglob("*.png")] == [_report.gallery_files([record("t.py::c", 1)])[0][0]]
    assert (gal / "notes.txt").read_text() == "the user's file"
    assert len(list((gal / "img").iterdir())) == 1  # emptied folders of the first run are gone
    manifest = json.loads((gal / _report.MANIFEST).read_text())
    assert sorted(manifest["files"]) == sorted([*(p.relative_to(gal).as_posix() for p in gal.rglob("*.png")), "index.html", "summary.json"])


@pytest.mark.parametrize("foreign", ["index.html", "summary.json"])
def test_a_foreign_gallery_is_refused_and_left_alone(tmp_path: Path, foreign: str) -> None:
    (tmp_path / foreign).write_text("theirs")
    with pytest.raises(pytest.UsageError, match=f"{foreign} exists and was not written by featcheck"):
        _report.check_gallery_dir(tmp_path)
    with pytest.raises(pytest.UsageError):
        _report.write_gallery(tmp_path, [record()])
    assert (tmp_path / foreign).read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == [foreign]


def test_a_gallery_folder_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    for folder in (tmp_path / "f", tmp_path / "f" / "sub"):
        with pytest.raises(pytest.UsageError, match=r"--featcheck-dir .*f is a file, not a folder"):
            _report.check_gallery_dir(folder)


@pytest.mark.parametrize("manifest", ["not json", '{"files": 3}', '{"files": [1]}', "[]"])
def test_a_damaged_manifest_is_a_usage_error(tmp_path: Path, manifest: str) -> None:
    (tmp_path / _report.MANIFEST).write_text(manifest)
    with pytest.raises(pytest.UsageError, match="is not a featcheck manifest"):
        _report.check_gallery_dir(tmp_path)


def test_a_manifest_never_reaches_outside_the_gallery(tmp_path: Path) -> None:
    gal = tmp_path / "gal"
    gal.mkdir()
    outside = tmp_path / "precious.png"
    outside.write_bytes(b"keep")
    (gal / _report.MANIFEST).write_text(json.dumps({"files": ["../precious.png", "index.html"]}))
    _report.write_gallery(gal, [record()])
    assert outside.read_bytes() == b"keep"
