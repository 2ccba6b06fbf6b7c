"""The gallery page in a real headless Chromium: browse, search, open details, upload."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time

import httpx
import pytest
import uvicorn
from dagster import DagsterInstance, materialize
from playwright.sync_api import expect, sync_playwright

from dam_assets.search.assets import search_index
from dam_assets_tests.conftest import free_port, jpeg_bytes, png_bytes
from dam_assets_tests.pipeline_harness import resources, run_pending
from dam_ingest_api.main import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


@contextlib.contextmanager
def serving(app):
    """The app on a real port from a thread (uvicorn), its base URL; stopped on exit."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def served(make_settings, tiny_models, tmp_path):
    """The real app on a real port, with three processed images and a fresh index."""
    settings = make_settings(**tiny_models, DAM_INDEX_POLL_SECONDS="0.5", DAM_TAG_THRESHOLD="0", DAM_TAGS_TOP_K="2")

    with serving(create_app(settings)) as base:
        for i, (w, h, color) in enumerate(
            [(400, 300, (200, 40, 40)), (300, 400, (40, 40, 200)), (350, 350, (40, 180, 60))]
        ):
            r = httpx.post(
                f"{base}/upload", files={"file": (f"photo-{i}.jpg", jpeg_bytes(w, h, color, seed=i + 5), "image/jpeg")}
            )
            assert r.status_code == 202
        with DagsterInstance.ephemeral() as instance:

            def process():
                run_pending(instance)
                materialize([search_index], instance=instance, resources=resources())

            process()
            yield base, process, tmp_path


def test_gallery_search_detail_and_upload(served):
    base, process, tmp_path = served
    upload_file = tmp_path / "dropped.png"
    upload_file.write_bytes(png_bytes(220, 160))
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base + "/")

            # Gallery: three processed cards with captions and loaded thumbnails.
            cards = page.locator('[data-testid="gallery"] [data-testid="card"][data-status="processed"]')
            expect(cards).to_have_count(3, timeout=15_000)
            for i in range(3):
                assert cards.nth(i).locator('[data-testid="caption"]').inner_text().strip()
            page.wait_for_function(
                "() => [...document.querySelectorAll('.card img')].filter(i => i.complete && i.naturalWidth > 0).length === 3",
                timeout=15_000,
            )

            # Search: ranked results with scores, best first.
            page.fill('[data-testid="search-input"]', "a red photo")
            page.press('[data-testid="search-input"]', "Enter")
            scores = page.locator('[data-testid="score"]')
            expect(scores).to_have_count(3, timeout=15_000)
            values = [float(s) for s in scores.all_inner_texts()]
            assert values == sorted(values, reverse=True)

            # Detail view: caption, tags and the other images as similar ones.
            page.locator('[data-testid="gallery"] [data-testid="card"]').first.click()
            detail = page.locator('[data-testid="detail"]')
            expect(detail).to_be_visible()
            expect(page.locator('[data-testid="detail-caption"]')).not_to_be_empty()
            expect(page.locator('[data-testid="detail-tags"] span')).to_have_count(2)
            expect(page.locator('[data-testid="similar"] [data-testid="card"]')).to_have_count(2, timeout=15_000)
            page.screenshot(path=str(tmp_path / "detail.png"))
            page.keyboard.press("Escape")

            # Upload through the page: progress row, then a queued card, then processed without a reload.
            page.click("#clear-search")
            page.set_input_files('[data-testid="file-input"]', str(upload_file))
            expect(page.locator('[data-testid="upload-row"][data-state="done"]')).to_have_count(1, timeout=15_000)
            expect(page.locator('[data-testid="gallery"] [data-testid="card"][data-status="queued"]')).to_have_count(
                1, timeout=15_000
            )
            process()
            expect(page.locator('[data-testid="gallery"] [data-testid="card"][data-status="processed"]')).to_have_count(
                4, timeout=30_000
            )
            expect(page.locator("#more")).to_be_hidden()  # four items fit on one page
            page.screenshot(path=str(tmp_path / "gallery.png"), full_page=True)
            assert (tmp_path / "gallery.png").stat().st_size > 0
            assert not errors, errors
        finally:
            browser.close()


def test_empty_gallery_and_no_results_states(make_settings):
    with serving(create_app(make_settings())) as base, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        page = browser.new_page()
        page.goto(f"{base}/")
        expect(page.locator('[data-testid="empty"]')).to_be_visible(timeout=10_000)
        page.fill('[data-testid="search-input"]', "anything")
        page.press('[data-testid="search-input"]', "Enter")
        expect(page.locator('[data-testid="no-results"]')).to_be_visible(timeout=10_000)
        browser.close()


NARROW_LAYOUT = """() => {
  const box = s => { const r = document.querySelector(s).getBoundingClientRect(); return [r.left, r.right, r.width]; };
  return { scrollWidth: document.documentElement.scrollWidth, bodyWidth: document.body.scrollWidth,
           upload: box('.upload-button'), key: box('#key-button'), search: box('#search-input'),
           clear: box('#clear-search'), keyInput: box('#key-input') };
}"""


def test_a_phone_wide_viewport_has_no_horizontal_overflow(make_settings):
    """At 390 px (a phone) nothing is wider than the screen; the key and upload controls are on it."""
    app = create_app(make_settings(DAM_API_KEY="narrow-key"))  # the page asks for the key at once

    def assert_fits(page, what: str, *controls: str) -> None:
        layout = page.evaluate(NARROW_LAYOUT)
        assert layout["scrollWidth"] <= 390 and layout["bodyWidth"] <= 390, (what, layout)
        for name in controls:
            left, right, width = layout[name]
            assert width > 0 and 0 <= left and right <= 390, (what, name, layout)

    with serving(app) as base, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})
            page.goto(f"{base}/")
            expect(page.locator("#key-dialog")).to_be_visible(timeout=10_000)  # 401: asks for the key
            assert_fits(page, "key dialog", "keyInput", "upload", "key", "search")
            page.fill("#key-input", "narrow-key")
            page.click('#key-form button[value="ok"]')
            expect(page.locator('[data-testid="empty"]')).to_be_visible(timeout=10_000)
            assert_fits(page, "empty gallery", "upload", "key", "search")
            page.fill('[data-testid="search-input"]', "anything")
            page.press('[data-testid="search-input"]', "Enter")
            expect(page.locator('[data-testid="no-results"]')).to_be_visible(timeout=10_000)
            assert_fits(page, "search results, with Show all", "upload", "key", "search", "clear")
        finally:
            browser.close()
