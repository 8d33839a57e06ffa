"""The visual report: pictures per test for pytest-html, a standalone gallery, a terminal summary.

One :class:`ReportSession` per pytest run owns the run's state (syrupy-style). Per test it turns
what the test asked to show (``featcheck.show``, ``featcheck.show_kernels``) and what a failed
featcheck check flagged into pictures, attaches them to the pytest-html report (as extras, in
the report hook at the call phase, so failing tests have them too) and keeps a record for the
gallery. Under pytest-xdist, workers hand their records to the controller
(``config.workeroutput``), which alone writes the gallery, once.

Everything that reaches HTML is escaped; file names derived from test ids and layer names are
sanitised and length-capped (``_paths.safe_filename``). featcheck deletes only files it wrote
itself (listed in the gallery's manifest) and refuses to overwrite an ``index.html`` or
``summary.json`` it did not write.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import pytest

from ._errors import FeatcheckAssertionError
from ._paths import safe_filename, write_atomic

ATTACH_MODES = ("all", "failed", "none")
MANIFEST = ".featcheck-manifest.json"
SUMMARY_VERSION = 1
_OWN_FILES = ("index.html", "summary.json")


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


def _picture(name: str, kind: str, image: Any, table: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "png": _png(image),
        "caption": image.info.get("caption", name),
        "table": table,
    }


def render_requests(requests: list[tuple[str, Any, dict[str, Any]]], limit: int) -> tuple[list[dict[str, Any]], int]:
    """Turn queued show requests into pictures, at most ``limit``; returns (pictures, dropped)."""
    from PIL import Image

    from . import _render
    from ._capture import Capture, LayerCapture

    pictures: list[dict[str, Any]] = []
    dropped = 0

    def room() -> bool:
        nonlocal dropped
        if len(pictures) >= limit:
            dropped += 1
            return False
        return True

    for kind, obj, opts in requests:
        opts = dict(opts)
        if kind == "flagged":
            lc, channels, check = obj
            if room():
                img = _render.channel_grid(lc, flagged=channels, select="energy")
                pictures.append(_picture(lc.name, f"flagged: {check}", img, _health(lc)))
        elif kind == "show":
            layers = opts.pop("layers", None)
            if isinstance(obj, Capture):
                targets = obj.select(layers)
            elif isinstance(obj, LayerCapture):
                targets = [obj]
            else:
                targets = [obj]
            for t in targets:
                if not room():
                    continue
                if isinstance(t, Image.Image):
                    title = opts.get("title") or t.info.get("caption", "picture").split("\n")[0]
                    pictures.append(_picture(title, "picture", t, []))
                elif isinstance(t, LayerCapture):
                    if t.sample is None:
                        continue
                    pictures.append(_picture(t.name, "grid", _render.channel_grid(t, **opts), _health(t)))
                else:
                    title = opts.get("title") or "tensor"
                    pictures.append(_picture(title, "grid", _render.channel_grid(t, **opts), []))
        elif kind == "kernels":
            layers = opts.pop("layers", None)
            title = opts.pop("title", None)
            modules = _kernel_modules(obj, layers)
            for name, module in modules:
                if room():
                    label = (title if len(modules) == 1 else None) or name or type(module).__name__
                    img = _render.kernel_grid(module, title=label, **opts)
                    pictures.append(_picture(label, "kernels", img, []))
    return pictures, dropped


def _kernel_modules(module: Any, layers: Any) -> list[tuple[str, Any]]:
    import torch

    from ._selection import select

    if isinstance(module, torch.Tensor):
        return [("weight", module)]
    convs = [
        (n, m) for n, m in module.named_modules()
        if isinstance(m, torch.nn.modules.conv._ConvNd)
    ]
    if layers is not None:
        names = set(select(convs, layers, f"{type(module).__name__} convolutions"))
        convs = [(n, m) for n, m in convs if n in names]
    return convs


# -- HTML ----------------------------------------------------------------------------------------


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _channels(idx: list[int]) -> str:
    return "[" + ", ".join(map(str, idx[:8])) + (f", ... {len(idx)} in all" if len(idx) > 8 else "") + "]"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _table_html(rows: list[tuple[str, str]] | list[list[str]]) -> str:
    if not rows:
        return ""
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="featcheck-health">{body}</table>'


def _layers_table(pictures: list[dict[str, Any]]) -> str:
    """One compact table, a row per pictured layer: its shape, stride and health figures."""
    rows = [p for p in pictures if p["table"]]
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for p in rows for k, _ in p["table"]))
    head = "".join(f"<th>{_e(k)}</th>" for k in ["layer", "picture", *keys])
    body = ""
    for p in rows:
        values = dict(p["table"])
        cells = [p["name"], p["kind"], *(values.get(k, "") for k in keys)]
        body += "<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>"
    return f'<table class="featcheck-health"><tr>{head}</tr>{body}</table>'


def extras_for(record: dict[str, Any]) -> list[dict[str, Any]]:
    """pytest-html extras: one image per layer plus one table of the layers' figures."""
    from pytest_html import extras

    out = []
    for pic in record["pictures"]:
        # pytest-html shows an image's name with innerText: plain text, not escaped here
        out.append(extras.png(base64.b64encode(pic["png"]).decode("ascii"), name=f"{pic['kind']}: {pic['name']}"))
    table = _layers_table(record["pictures"])
    if table:
        out.append(extras.html(table))
    if record["dropped"]:
        out.append(extras.html(f"<div>featcheck: {record['dropped']} more pictures not attached (--featcheck-max-pictures)</div>"))
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
"""


def gallery_html(records: list[dict[str, Any]]) -> str:
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<title>featcheck gallery</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>featcheck gallery: {len(records)} tests</h1>",
    ]
    for rec in records:
        parts.append(f'<section id="{_e(rec["anchor"])}">')
        parts.append(f'<h2><span class="outcome {_e(rec["outcome"])}">{_e(rec["outcome"])}</span> {_e(rec["nodeid"])}</h2>')
        if rec["layers"]:
            shown = ", ".join(rec["layers"][:30]) + (f", ... ({len(rec['layers'])} in all)" if len(rec["layers"]) > 30 else "")
            parts.append(f"<p>layers inspected: {_e(shown)}</p>")
        for f in rec["flagged"]:
            chans = f" channels {_channels(f['channels'])}" if f["channels"] else ""
            parts.append(f'<p class="flagged">flagged ({_e(f["check"])}): {_e(f["layer"])}{_e(chans)}</p>')
        for pic in rec["pictures"]:
            parts.append(
                f'<figure><img src="{_e(pic["file"])}" alt="{_e(pic["caption"])}" loading="lazy">'
                f'<figcaption>{_e(pic["kind"])}: {_e(pic["name"])}</figcaption>{_table_html(pic["table"])}</figure>'
            )
        if rec["dropped"]:
            parts.append(f"<p>{rec['dropped']} more pictures not attached (--featcheck-max-pictures)</p>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


# -- the session ---------------------------------------------------------------------------------------


def _outcome(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    return report.outcome


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
        self.records: list[dict[str, Any]] = []
        self.html = config.pluginmanager.hasplugin("html") and bool(getattr(config.option, "htmlpath", None))
        self.is_worker = hasattr(config, "workerinput")
        self.written: Path | None = None

    def wants_pictures(self, outcome: str) -> bool:
        return self.attach == "all" or (self.attach == "failed" and outcome in ("failed", "xfailed"))

    def on_report(self, item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        from ._fixture import FIXTURE_KEY

        fixture = item.stash.get(FIXTURE_KEY, None)
        requests = list(fixture.requests) if fixture is not None else []
        captures = list(fixture.captures) if fixture is not None else []
        exc = call.excinfo.value if call.excinfo is not None else None
        flagged = exc.flagged if isinstance(exc, FeatcheckAssertionError) else []
        if not (requests or captures or flagged):
            return
        outcome = _outcome(report)
        layers = list(dict.fromkeys(n for cap in captures for n in cap.names))
        pictures: list[dict[str, Any]] = []
        dropped = 0
        if self.wants_pictures(outcome):
            todo: list[tuple[str, Any, dict[str, Any]]] = [("flagged", f, {}) for f in flagged] + requests
            pictures, dropped = render_requests(todo, self.max_pictures)
        record = {
            "nodeid": report.nodeid,
            "outcome": outcome,
            "layers": layers,
            "flagged": [{"layer": lc.name, "channels": list(ch), "check": check} for lc, ch, check in flagged],
            "pictures": pictures,
            "dropped": dropped,
        }
        self.records.append(record)
        if self.html and pictures:
            setattr(report, "extras", [*getattr(report, "extras", []), *extras_for(record)])  # pytest-html reads it

    # xdist ---------------------------------------------------------------------------------------
    def to_workeroutput(self) -> str:
        for rec in self.records:
            for pic in rec["pictures"]:
                pic["png"] = base64.b64encode(pic["png"]).decode("ascii")
        return json.dumps(self.records)

    def add_from_worker(self, payload: str) -> None:
        for rec in json.loads(payload):
            for pic in rec["pictures"]:
                pic["png"] = base64.b64decode(pic["png"])
            self.records.append(rec)

    # output ----------------------------------------------------------------------------------------
    def _previous_files(self) -> list[Path]:
        manifest = self.dir / MANIFEST
        if not manifest.is_file():
            for name in _OWN_FILES:
                if (self.dir / name).exists():
                    raise pytest.UsageError(
                        f"{self.dir / name} exists and was not written by featcheck; featcheck will "
                        "not overwrite it. Point --featcheck-dir at another folder."
                    )
            return []
        try:
            listed = json.loads(manifest.read_text())["files"]
        except (ValueError, KeyError, TypeError):
            raise pytest.UsageError(f"{manifest} is not a featcheck manifest; remove it or use another --featcheck-dir") from None
        root = self.dir.resolve()
        out = []
        for rel in listed:
            p = (self.dir / rel).resolve()
            if root in p.parents:
                out.append(p)
        return out

    def write_gallery(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        old = self._previous_files()
        self.records.sort(key=lambda r: r["nodeid"])
        written: list[str] = []
        for i, rec in enumerate(self.records):
            folder = f"img/{i:04d}-{safe_filename(rec['nodeid'], 60)}"
            rec["anchor"] = f"t{i:04d}"
            for k, pic in enumerate(rec["pictures"]):
                rel = f"{folder}/{k:02d}-{safe_filename(pic['name'], 60)}.png"
                write_atomic(self.dir / rel, pic["png"])
                pic["file"] = rel
                written.append(rel)
        summary = {
            "version": SUMMARY_VERSION,
            "tests": [
                {
                    "nodeid": r["nodeid"],
                    "outcome": r["outcome"],
                    "layers": r["layers"],
                    "flagged": r["flagged"],
                    "pictures": [{k: p[k] for k in ("name", "kind", "file", "caption", "table")} for p in r["pictures"]],
                    "dropped": r["dropped"],
                }
                for r in self.records
            ],
        }
        write_atomic(self.dir / "summary.json", json.dumps(summary, indent=1, sort_keys=True).encode())
        write_atomic(self.dir / "index.html", gallery_html(self.records).encode())
        keep = {(self.dir / p).resolve() for p in [*written, *_OWN_FILES]}
        for p in old:
            if p not in keep and p.is_file():
                p.unlink()
        write_atomic(self.dir / MANIFEST, json.dumps({"files": [*written, *_OWN_FILES]}).encode())
        for d in sorted({p.parent for p in old}, key=lambda d: len(d.parts), reverse=True):
            if d != self.dir.resolve() and d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        self.written = self.dir / "index.html"
        return self.written

    def summary_lines(self) -> list[str]:
        lines = []
        for rec in self.records:
            flag = "; ".join(
                f"{f['layer']} ({f['check']}" + (f", channels {_channels(f['channels'])})" if f["channels"] else ")")
                for f in rec["flagged"]
            )
            lines.append(
                f"{rec['nodeid']} [{rec['outcome']}]: {_n(len(rec['layers']), 'layer')} inspected, "
                f"{_n(len(rec['pictures']), 'picture')}" + (f"; flagged: {flag}" if flag else "")
            )
        if self.written is not None:
            lines.append(f"gallery: {self.written}")
        return lines
