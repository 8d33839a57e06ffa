"""The visual report: pictures per test for pytest-html, a standalone gallery, a terminal summary.

One :class:`ReportSession` per pytest run owns the run's state (syrupy-style). Per test it turns
what the test asked to show (``featcheck.show``, ``featcheck.show_kernels``, queued by the fixture
as small request objects) and what a failed featcheck check flagged into pictures, in the report
hook at the call phase (so failing tests have them too), and keeps a :class:`_Record` of plain
data: no capture and no model outlives its test. Whatever goes wrong while drawing becomes a note
in the test's report, the gallery and the terminal summary, never an error of the run. Under
pytest-xdist each worker hands every record over with its test report, as it goes, so a worker
that crashes loses nothing it reported; the controller alone writes the gallery, once.

Everything that reaches HTML is escaped; file names derived from test ids and layer names are
sanitised and length-capped (``_paths.safe_filename``), also the names of the pictures featcheck
puts in pytest-html's assets folder. featcheck deletes only files it wrote itself (listed in the
gallery's manifest) and refuses, before any test runs, a gallery folder that is a file or holds an
``index.html`` or ``summary.json`` it did not write.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import html
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import pytest

from ._errors import FeatcheckAssertionError
from ._paths import safe_filename, write_atomic

ATTACH_MODES = ("all", "failed", "none")
MANIFEST = ".featcheck-manifest.json"
SUMMARY_VERSION = 1
_OWN_FILES = ("index.html", "summary.json")


# -- what the fixture queues and what a test leaves -----------------------------------------------


@dataclass(frozen=True)
class _Show:
    """``featcheck.show(x, layers, **options)``, checked at the call, drawn at the report hook."""

    x: Any
    layers: Any
    options: dict[str, Any]
    grads: bool = False  # draw the gradient records (``show(cap, grads=True)``)


@dataclass(frozen=True)
class _Kernels:
    """``featcheck.show_kernels``: the convolutions chosen at the call, as ``(name, module)``."""

    modules: list[tuple[str, Any]]
    title: str | None
    options: dict[str, Any]


@dataclass(frozen=True)
class _Flagged:
    """A layer a failed featcheck check flagged, with the offending channels."""

    lc: Any
    channels: list[int]
    check: str


@dataclass(frozen=True)
class _GradFlow:
    """The gradient-flow picture of a capture with gradients, with the vanishing and exploding
    zones of the check that failed (or the defaults)."""

    capture: Any
    zones: tuple[float, float] = (1e-4, 1e4)


_Request = Union[_Show, _Kernels, _Flagged, _GradFlow]


@dataclass(frozen=True)
class _Picture:
    name: str
    kind: str
    png: bytes
    caption: str
    table: list[tuple[str, str]]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "png": base64.b64encode(self.png).decode("ascii"),
                "caption": self.caption, "table": [list(row) for row in self.table]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Picture:
        return cls(data["name"], data["kind"], base64.b64decode(data["png"]), data["caption"],
                   [(k, v) for k, v in data["table"]])


@dataclass(frozen=True)
class _Flag:
    layer: str
    channels: list[int]
    check: str


@dataclass(frozen=True)
class _Record:
    """What one test leaves for the gallery and the terminal summary: plain data only (no
    captures, no models), so that nothing of the test outlives it but its pictures."""

    nodeid: str
    outcome: str
    layers: list[str]
    flagged: list[_Flag]
    pictures: list[_Picture]
    dropped: int
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"nodeid": self.nodeid, "outcome": self.outcome, "layers": self.layers,
                "flagged": [dataclasses.asdict(f) for f in self.flagged],
                "pictures": [p.to_json() for p in self.pictures], "dropped": self.dropped, "notes": self.notes}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Record:
        return cls(data["nodeid"], data["outcome"], data["layers"], [_Flag(**f) for f in data["flagged"]],
                   [_Picture.from_json(p) for p in data["pictures"]], data["dropped"], data["notes"])


# -- pictures ------------------------------------------------------------------------------------


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="png", compress_level=1)
    return buf.getvalue()


def _health(lc: Any) -> list[tuple[str, str]]:
    st = lc.stats
    rows = [
        ("module", lc.module_type),
        ("shape", "x".join(map(str, lc.shape))),
        ("channels", str(lc.channels)),
        ("stride", "-" if lc.stride is None else "x".join(f"{s:.4g}" for s in lc.stride)),
        ("samples", str(lc.samples)),
        ("dead", f"{len(lc.dead_channels())}/{lc.channels}"),
    ]
    if lc.bounds is not None:
        rows.append(("saturated", f"{len(lc.saturated_channels())}/{lc.channels}"))
    rows += [
        ("NaN/Inf values", str(int(st["nonfinite"].sum()))),
        ("mean (channel avg)", f"{float(_nanmean(st['mean'])):.4g}"),
        ("std (channel avg)", f"{float(_nanmean(st['std'])):.4g}"),
    ]
    return rows


def _nanmean(a: Any) -> float:
    import numpy as np

    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def _picture(name: str, kind: str, image: Any, table: list[tuple[str, str]]) -> _Picture:
    return _Picture(name, kind, _png(image), image.info.get("caption", name), table)


_Drawing = tuple[str, Callable[[], _Picture]]


def _drawings(request: _Request, without_sample: dict[str, list[str]]) -> list[_Drawing]:
    """The pictures one request asks for, each as (label, draw), not drawn yet; records without
    a sample go to ``without_sample`` instead, by why they have none (``keep_samples=False``, an
    output without values)."""
    from PIL import Image

    from . import _render
    from ._capture import Capture, LayerCapture
    from ._render._maps import no_sample

    def skip(lc: Any, keep_samples: bool | None = None) -> None:
        without_sample.setdefault(no_sample(lc, keep_samples)[0], []).append(lc.name)

    if isinstance(request, _Flagged):
        lc, channels, check = request.lc, request.channels, request.check
        if callable(getattr(lc, "draw", None)):  # a compared pair or a changed baseline layer draws itself
            return [(lc.name, lambda: _picture(lc.name, f"flagged: {check}", *lc.draw()))]
        if lc.sample is None:
            skip(lc)
            return []
        return [(lc.name, lambda: _picture(
            lc.name, f"flagged: {check}", _render.channel_grid(lc, flagged=channels, select="energy"), _health(lc)
        ))]
    if isinstance(request, _GradFlow):
        cap, (lo, hi) = request.capture, request.zones
        return [(f"gradient flow of {cap.model_name}", lambda: _picture(
            cap.model_name, "gradient flow", _render.gradient_flow(cap, min_ratio=lo, max_ratio=hi), []
        ))]
    if isinstance(request, _Kernels):
        opts = request.options
        out: list[_Drawing] = []
        for name, module in request.modules:
            label = (request.title if len(request.modules) == 1 else None) or name or type(module).__name__
            out.append((label, functools.partial(
                lambda label, module: _picture(label, "kernels", _render.kernel_grid(module, title=label, **opts), []),
                label, module,
            )))
        return out
    x, opts = request.x, request.options
    if isinstance(x, Image.Image):
        title = opts.get("title") or x.info.get("caption", "picture").split("\n")[0]
        return [(title, lambda: _picture(title, "picture", x, []))]
    if isinstance(x, (Capture, LayerCapture)):
        out = []
        records = x.select(request.layers) if isinstance(x, Capture) else [x]
        # the capture's own setting, where it is known (a LayerCapture does not say)
        keep = getattr(getattr(x, "_rec", None), "_keep_samples", None) if isinstance(x, Capture) else None
        if request.grads:
            records = [lc.grad for lc in records if lc.grad is not None]
            opts = {"normalize": "symmetric", "cmap": "RdBu_r", **opts}  # a gradient's sign matters
        for lc in records:
            if lc.sample is None:
                skip(lc, keep if isinstance(keep, bool) else None)
                continue
            out.append((lc.name, functools.partial(
                lambda lc: _picture(lc.name, "grid", _render.channel_grid(lc, **opts), _health(lc)), lc
            )))
        return out
    title = opts.get("title") or "tensor"
    return [(title, lambda: _picture(title, "grid", _render.channel_grid(x, **opts), []))]


def render_requests(requests: list[_Request], limit: int) -> tuple[list[_Picture], int, list[str]]:
    """Turn queued requests into pictures, at most ``limit``; returns (pictures, dropped, notes).

    Nothing raised while drawing escapes: it becomes a note naming the picture, so that one
    picture that cannot be drawn never costs the test its others, nor the run its report.
    """
    pictures: list[_Picture] = []
    notes: list[str] = []
    dropped = 0
    for request in requests:
        without_sample: dict[str, list[str]] = {}  # why: names
        try:
            drawings = _drawings(request, without_sample)
        except Exception as exc:  # a selection that no longer holds (a watch's layers changed)
            notes.append(f"could not draw {_describe(request)}: {type(exc).__name__}: {exc}")
            drawings = []
        for why, names in without_sample.items():
            shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
            notes.append(f"no picture of {shown}: {why}")
        for label, draw in drawings:
            if len(pictures) >= limit:
                dropped += 1
                continue
            try:
                pictures.append(draw())
            except Exception as exc:
                notes.append(f"could not draw {label}: {type(exc).__name__}: {exc}")
    return pictures, dropped, notes


def _describe(request: _Request) -> str:
    if isinstance(request, _Flagged):
        return str(request.lc.name)
    if isinstance(request, _Kernels):
        return "kernels"
    if isinstance(request, _GradFlow):
        return "the gradient flow"
    return f"{type(request.x).__name__} (layers={request.layers!r})"


# -- HTML ----------------------------------------------------------------------------------------


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _channels(idx: list[int]) -> str:
    return "[" + ", ".join(map(str, idx[:8])) + (f", ... {len(idx)} in all" if len(idx) > 8 else "") + "]"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _table_html(rows: list[tuple[str, str]]) -> str:
    if not rows:
        return ""
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="featcheck-health">{body}</table>'


def _layers_table(pictures: list[_Picture]) -> str:
    """One compact table, a row per pictured layer: its shape, stride and health figures."""
    rows = [p for p in pictures if p.table]
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for p in rows for k, _ in p.table))
    head = "".join(f"<th>{_e(k)}</th>" for k in ["layer", "picture", *keys])
    body = ""
    for p in rows:
        values = dict(p.table)
        cells = [p.name, p.kind, *(values.get(k, "") for k in keys)]
        body += "<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>"
    return f'<table class="featcheck-health"><tr>{head}</tr>{body}</table>'


def _note_html(note: str) -> str:
    return f'<div class="featcheck-note" style="color:#c62828">featcheck: {_e(note)}</div>'


def asset_name(nodeid: str, when: str, rerun: int, index: int) -> str:
    """featcheck's own name for a picture in pytest-html's assets folder: file-system safe, at
    most 100 bytes, and different for different tests (pytest-html's own names replace every
    non-word character by ``_``, so ``x<y`` and ``x>y`` share one, and cap characters, not
    bytes)."""
    return f"featcheck/{safe_filename(f'{nodeid}::{when}::{rerun}', 80)}-{index:02d}.png"


def extras_for(record: _Record, assets: Path | None, names: Callable[[int], str]) -> list[dict[str, Any]]:
    """pytest-html extras: one image per layer, one table of the layers' figures, the notes.

    With ``assets`` (pytest-html's assets folder, linked reports) featcheck writes each picture
    there under its own name (``names(index)``) and gives pytest-html the relative path, which it
    links as it is; without (``--self-contained-html``) the picture is embedded as base64.
    """
    from pytest_html import extras

    out = []
    notes = list(record.notes)
    for k, pic in enumerate(record.pictures):
        # pytest-html shows an image's name with innerText: plain text, not escaped here
        label = f"{pic.kind}: {pic.name}"
        if assets is None:
            out.append(extras.png(base64.b64encode(pic.png).decode("ascii"), name=label))
            continue
        rel = names(k)
        try:
            write_atomic(assets / rel, pic.png)
        except OSError as exc:
            notes.append(f"could not write {label} to {assets / rel}: {exc}")
            continue
        # a path is not base64 ('.' is outside its alphabet): pytest-html links it as it is
        out.append(extras.png(f"{assets.name}/{rel}", name=label))
    table = _layers_table(record.pictures)
    if table:
        out.append(extras.html(table))
    if record.dropped:
        out.append(extras.html(f"<div>featcheck: {record.dropped} more pictures not attached (--featcheck-max-pictures)</div>"))
    out.extend(extras.html(_note_html(n)) for n in notes)
    return out


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em} h2{font-size:1.05em;word-break:break-all;margin:0 0 .4em}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:1em;margin:1em 0}
.outcome{display:inline-block;padding:.1em .6em;border-radius:4px;color:#fff;font-size:.85em}
.passed{background:#2e7d32}.failed{background:#c62828}.xfailed{background:#ef6c00}
.xpassed{background:#6a1b9a}.skipped,.error{background:#555}
figure{display:inline-block;vertical-align:top;margin:.5em;max-width:100%}
figure img{max-width:100%;image-rendering:pixelated;border:1px solid #ccc}
figcaption{font-size:.8em;white-space:pre-wrap;max-width:40em}
table.featcheck-health{border-collapse:collapse;font-size:.8em;margin-top:.3em}
table.featcheck-health th,table.featcheck-health td{border:1px solid #ddd;padding:.1em .5em;text-align:left}
.flagged{color:#c62828}
.note{color:#8d4004;background:#fff3e0;border-left:3px solid #ef6c00;padding:.2em .6em;white-space:pre-wrap}
"""


def gallery_files(records: list[_Record]) -> list[list[str]]:
    """Where each picture of each record (in this order) goes, relative to the gallery folder."""
    return [
        [f"img/{i:04d}-{safe_filename(rec.nodeid, 60)}/{k:02d}-{safe_filename(pic.name, 60)}.png" for k, pic in enumerate(rec.pictures)]
        for i, rec in enumerate(records)
    ]


def gallery_html(
    records: list[_Record], files: list[list[str]], title: str | None = None, cap_option: str = "--featcheck-max-pictures"
) -> str:
    """``title`` replaces the heading's "featcheck gallery: N tests"; ``cap_option`` is the option
    that limits pictures, named where some were left out."""
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<title>featcheck gallery</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(title) if title is not None else f'featcheck gallery: {len(records)} tests'}</h1>",
    ]
    for i, (rec, rec_files) in enumerate(zip(records, files)):
        parts.append(f'<section id="t{i:04d}">')
        parts.append(f'<h2><span class="outcome {_e(rec.outcome)}">{_e(rec.outcome)}</span> {_e(rec.nodeid)}</h2>')
        if rec.layers:
            shown = ", ".join(rec.layers[:30]) + (f", ... ({len(rec.layers)} in all)" if len(rec.layers) > 30 else "")
            parts.append(f"<p>layers inspected: {_e(shown)}</p>")
        for f in rec.flagged:
            chans = f" channels {_channels(f.channels)}" if f.channels else ""
            parts.append(f'<p class="flagged">flagged ({_e(f.check)}): {_e(f.layer)}{_e(chans)}</p>')
        for note in rec.notes:
            parts.append(f'<p class="note">{_e(note)}</p>')
        for pic, file in zip(rec.pictures, rec_files):
            parts.append(
                f'<figure><img src="{_e(file)}" alt="{_e(pic.caption)}" loading="lazy">'
                f"<figcaption>{_e(pic.kind)}: {_e(pic.name)}</figcaption>{_table_html(pic.table)}</figure>"
            )
        if rec.dropped:
            parts.append(f"<p>{rec.dropped} more pictures not attached ({_e(cap_option)})</p>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def summary_json(records: list[_Record], files: list[list[str]]) -> dict[str, Any]:
    return {
        "version": SUMMARY_VERSION,
        "tests": [
            {
                "nodeid": r.nodeid,
                "outcome": r.outcome,
                "layers": r.layers,
                "flagged": [dataclasses.asdict(f) for f in r.flagged],
                "pictures": [
                    {"name": p.name, "kind": p.kind, "file": file, "caption": p.caption, "table": [list(row) for row in p.table]}
                    for p, file in zip(r.pictures, rec_files)
                ],
                "dropped": r.dropped,
                "notes": r.notes,
            }
            for r, rec_files in zip(records, files)
        ],
    }


def summary_lines(records: list[_Record]) -> list[str]:
    lines = []
    for rec in records:
        flag = "; ".join(
            f"{f.layer} ({f.check}" + (f", channels {_channels(f.channels)})" if f.channels else ")")
            for f in rec.flagged
        )
        lines.append(
            f"{rec.nodeid} [{rec.outcome}]: {_n(len(rec.layers), 'layer')} inspected, "
            f"{_n(len(rec.pictures), 'picture')}" + (f"; flagged: {flag}" if flag else "")
        )
        lines.extend(f"  note: {note}" for note in rec.notes)
    return lines


# -- the gallery folder ----------------------------------------------------------------------------


def check_gallery_dir(directory: Path, option: str = "--featcheck-dir") -> list[Path]:
    """The files featcheck wrote into ``directory`` before (listed in its manifest); ``option``
    is how the messages name the folder's option (``featcheck inspect --out``).

    Raises:
        pytest.UsageError: ``directory`` or a parent is a file, or it holds an ``index.html``
            or ``summary.json`` that featcheck did not write, or a damaged manifest. Called at
            the start of a run, so that no test runs for a gallery that cannot be written.
    """
    for p in (directory, *directory.parents):
        if p.exists() and not p.is_dir():
            raise pytest.UsageError(
                f"{option} {p} is a file, not a folder; point {option} at a folder "
                "(it is created if missing)"
            )
    manifest = directory / MANIFEST
    if not manifest.is_file():
        for name in _OWN_FILES:
            if (directory / name).exists():
                raise pytest.UsageError(
                    f"{directory / name} exists and was not written by featcheck; featcheck will "
                    f"not overwrite it. Point {option} at another folder."
                )
        return []
    try:
        listed = json.loads(manifest.read_text())["files"]
        if not all(isinstance(rel, str) for rel in listed):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise pytest.UsageError(f"{manifest} is not a featcheck manifest; remove it or use another {option}") from None
    root = directory.resolve()
    out = []
    for rel in listed:
        p = (directory / rel).resolve()
        if root in p.parents:
            out.append(p)
    return out


def check_html_path(html_file: Path, given: str, directory: Path, given_dir: str) -> None:
    """Refuse a pytest-html report (``--html``, resolved to ``html_file``) that would be written
    over one of the gallery's own files in ``directory``: the last writer would win and the other
    report be lost without a word.

    Raises:
        pytest.UsageError: saying which option to change. Called at the start of a run.
    """
    target = html_file.resolve()
    for name in (*_OWN_FILES, MANIFEST):
        if target == (directory / name).resolve():
            raise pytest.UsageError(
                f"--html={given} is the file {directory / name}, which the featcheck gallery "
                f"(--featcheck-dir={given_dir}) writes: one report would overwrite the other. Give "
                f"--html another file name (such as --html={Path(given).with_name('report.html')}) "
                "or --featcheck-dir another folder."
            )


def write_gallery(
    directory: Path, records: list[_Record], *, sort: bool = True, title: str | None = None,
    cap_option: str = "--featcheck-max-pictures",
) -> Path:
    """Write ``index.html``, ``summary.json`` and the pictures of ``records`` (sorted by test id,
    or in the given order without ``sort``) into ``directory``; delete what featcheck wrote there
    before and no longer needs. ``title`` and ``cap_option`` as for :func:`gallery_html`
    (``featcheck inspect`` writes its sections in its own order, under its own heading)."""
    old = check_gallery_dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if sort:
        records = sorted(records, key=lambda r: r.nodeid)
    files = gallery_files(records)
    for rec, rec_files in zip(records, files):
        for pic, rel in zip(rec.pictures, rec_files):
            write_atomic(directory / rel, pic.png)
    written = [rel for rec_files in files for rel in rec_files]
    write_atomic(directory / "summary.json", json.dumps(summary_json(records, files), indent=1, sort_keys=True).encode())
    write_atomic(directory / "index.html", gallery_html(records, files, title, cap_option).encode())
    keep = {(directory / p).resolve() for p in [*written, *_OWN_FILES]}
    for p in old:
        if p not in keep and p.is_file():
            p.unlink()
    write_atomic(directory / MANIFEST, json.dumps({"files": [*written, *_OWN_FILES]}).encode())
    for d in sorted({p.parent for p in old}, key=lambda d: len(d.parts), reverse=True):
        if d != directory.resolve() and d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    return directory / "index.html"


# -- the session ---------------------------------------------------------------------------------------


def _outcome(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    return report.outcome


def _gradient_flows(captures: list[Any], exc: BaseException | None) -> list[_GradFlow]:
    """Gradient-flow pictures: of the capture a failed gradient check judged (with its zones),
    then of every capture of the test that recorded gradients."""
    out: list[_GradFlow] = []
    failed = getattr(exc, "capture", None) if isinstance(exc, FeatcheckAssertionError) else None
    if failed is not None:
        out.append(_GradFlow(failed, getattr(exc, "zones", (1e-4, 1e4))))
    for cap in captures:
        grads = getattr(cap._rec, "grads", None)
        if cap is not failed and grads is not None and grads.order:
            out.append(_GradFlow(cap))
    return out


# the attribute that carries a worker's record to the controller with its test report (xdist
# serialises every attribute of a report), so that a worker that dies loses nothing it reported
HANDOVER = "_featcheck_record"


class ReportSession:
    """The state of one pytest run with ``--featcheck``."""

    def __init__(self, config: pytest.Config, directory: str, attach: str, max_pictures: int) -> None:
        if attach not in ATTACH_MODES:
            raise pytest.UsageError(f"--featcheck-attach must be one of {', '.join(ATTACH_MODES)}, got {attach!r}")
        if max_pictures < 0:
            raise pytest.UsageError(f"--featcheck-max-pictures must be >= 0, got {max_pictures}")
        self.config = config
        self.dir = Path(config.invocation_params.dir, directory)
        self.attach = attach
        self.max_pictures = max_pictures
        self.records: list[_Record] = []
        self.is_worker = hasattr(config, "workerinput")
        htmlpath = getattr(config.option, "htmlpath", None) if config.pluginmanager.hasplugin("html") else None
        self.html = bool(htmlpath)
        # pytest-html's assets folder, resolved as pytest-html resolves it; None: embed pictures
        self.assets: Path | None = None
        html_file = Path.cwd() / Path(os.path.expandvars(htmlpath)).expanduser() if htmlpath else None
        if html_file is not None and not getattr(config.option, "self_contained_html", False):
            self.assets = html_file.parent / "assets"
        self.written: Path | None = None
        self.problem: str | None = None
        if not self.is_worker:
            if html_file is not None:
                check_html_path(html_file, htmlpath, self.dir, directory)
            check_gallery_dir(self.dir)

    def wants_pictures(self, outcome: str) -> bool:
        return self.attach == "all" or (self.attach == "failed" and outcome in ("failed", "xfailed"))

    def on_report(self, item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
        """Build the test's record at its call phase; never raises into pytest."""
        if report.when != "call":
            return
        try:
            record = self._record(item, call, report)
        except Exception as exc:
            record = _Record(report.nodeid, _outcome(report), [], [], [], 0,
                             [f"featcheck could not report on this test: {type(exc).__name__}: {exc}"])
        if record is None:
            return
        if self.html and (record.pictures or record.notes):
            rerun = int(getattr(report, "rerun", 0) or 0)
            names = functools.partial(asset_name, report.nodeid, report.when, rerun)
            setattr(report, "extras", [*getattr(report, "extras", []), *extras_for(record, self.assets, names)])
        if self.is_worker:
            setattr(report, HANDOVER, record.to_json())
        else:
            self.records.append(record)

    def _record(self, item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> _Record | None:
        from ._fixture import FIXTURE_KEY

        fixture = item.stash.get(FIXTURE_KEY, None)
        requests: list[_Request] = list(fixture.requests) if fixture is not None else []
        captures = list(fixture.captures) if fixture is not None else []
        exc = call.excinfo.value if call.excinfo is not None else None
        flagged = exc.flagged if isinstance(exc, FeatcheckAssertionError) else []
        flows = _gradient_flows(captures, exc)
        if not (requests or captures or flagged or flows):
            return None
        outcome = _outcome(report)
        pictures: list[_Picture] = []
        dropped = 0
        notes: list[str] = []
        if self.wants_pictures(outcome):
            todo: list[_Request] = [*flows, *(_Flagged(lc, list(ch), check) for lc, ch, check in flagged)]
            pictures, dropped, notes = render_requests(todo + requests, self.max_pictures)
        return _Record(
            nodeid=report.nodeid,
            outcome=outcome,
            layers=list(dict.fromkeys(n for cap in captures for n in cap.names)),
            flagged=[_Flag(lc.name, list(ch), check) for lc, ch, check in flagged],
            pictures=pictures,
            dropped=dropped,
            notes=notes,
        )

    def take_over(self, report: pytest.TestReport) -> None:
        """On the xdist controller: keep the record a worker handed over with ``report``."""
        data = report.__dict__.pop(HANDOVER, None)  # the record is kept here, not twice
        if data is not None:
            self.records.append(_Record.from_json(data))

    def write_gallery(self) -> None:
        """Write the gallery; a folder that cannot be written is a line in the summary."""
        try:
            self.written = write_gallery(self.dir, self.records)
        except (OSError, pytest.UsageError) as exc:
            self.problem = f"gallery not written: {exc}"

    def summary_lines(self) -> list[str]:
        lines = summary_lines(sorted(self.records, key=lambda r: r.nodeid))
        if self.written is not None:
            lines.append(f"gallery: {self.written}")
        if self.problem is not None:
            lines.append(self.problem)
        return lines
