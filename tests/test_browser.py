"""The report and the gallery opened in a real browser: every picture must actually render.

Needs Debian's ``chromium`` (``.ci/run`` installs it when missing); playwright drives it and never
downloads a browser of its own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed here (apt-get install chromium); .ci/run installs it",
)


@pytest.fixture
def built(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(
        test_demo="""
        from fixtures import defects

        def test_pictures(featcheck):
            model = defects.make("zeroed_filters", False)
            cap = featcheck.capture(model, defects.batch())
            featcheck.show(cap, layers=["conv1", "conv2", "gate"])
            featcheck.show_kernels(model, layers="conv1")

        def test_caught(featcheck):
            cap = featcheck.capture(defects.make("zeroed_filters", True), defects.batch())
            featcheck.assert_no_dead_channels(cap, layers="conv2")
        """
    )
    pytester.runpytest_subprocess("--featcheck", "--html=report/report.html").assert_outcomes(passed=1, failed=1)
    return pytester.path


def open_and_check(url: str, screenshot: Path, expect_images: int) -> list[list]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url)
            page.wait_for_load_state("load")
            # the gallery loads its pictures lazily: scroll through it once
            page.evaluate("async () => { for (let y = 0; y < document.body.scrollHeight; y += 600) { window.scrollTo(0, y); await new Promise(r => setTimeout(r, 50)); } window.scrollTo(0, 0); }")
            page.wait_for_function(
                f"document.images.length >= {expect_images} && [...document.images].every(i => i.complete)",
                timeout=15000,
            )
            page.screenshot(path=str(screenshot), full_page=True)
            return page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.naturalWidth, e.naturalHeight])")
        finally:
            browser.close()


def test_gallery_images_render_in_chromium(built: Path, tmp_path: Path) -> None:
    imgs = open_and_check((built / "featcheck-report" / "index.html").as_uri(), tmp_path / "gallery.png", 5)
    assert len(imgs) == 5
    assert all(w > 0 and h > 0 for _, w, h in imgs), imgs
    assert (tmp_path / "gallery.png").stat().st_size > 10_000


def test_pytest_html_report_images_render_in_chromium(built: Path, tmp_path: Path) -> None:
    # ?collapsed=none expands every row, so each test's media viewer loads its first picture
    url = (built / "report" / "report.html").as_uri() + "?collapsed=none"
    imgs = open_and_check(url, tmp_path / "report.png", 2)
    pictures = [i for i in imgs if i[0] and "assets/" in i[0]]
    assert len(pictures) == 2 and all(w > 0 and h > 0 for _, w, h in pictures), imgs
