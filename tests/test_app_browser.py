"""The Gradio app in a real headless browser: Debian's chromium driven by Playwright."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_app import running_app
from tests.tiny_models import build_tiny_pipeline

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium"),
]


def _wait_for_pictures(page, gallery: str, count: int) -> None:
    """Until ``gallery`` shows ``count`` decoded pictures (not broken links)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            f"() => [...document.querySelectorAll('{gallery} img')]"
            f".filter(img => img.complete && img.naturalWidth > 0).length === {count}",
            timeout=60_000,
        )
    except PlaywrightTimeout:
        images = page.evaluate(
            f"() => [...document.querySelectorAll('{gallery} img')].map(img => "
            "({src: img.src.slice(-60), complete: img.complete, width: img.naturalWidth, loading: img.loading}))"
        )
        raise AssertionError(f"{gallery} did not show {count} decoded pictures in 60 s: {images}") from None


def _wait_for_events(page, events: list, count: int) -> None:
    """Until ``count`` events have been sent, then a second more: none may follow."""
    for _ in range(300):
        if len(events) >= count:
            break
        page.wait_for_timeout(100)
    page.wait_for_timeout(1000)
    assert len(events) == count, f"{len(events)} events sent, {count} expected"


def test_type_a_prompt_click_generate_and_see_the_images(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    model_dir = build_tiny_pipeline(tmp_path / "model")
    with running_app(model_dir, tmp_path) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.locator("#prompt textarea").fill("a small red circle at the top left")
            page.get_by_label("Randomise seed").uncheck()
            page.locator("#generate").click()
            # the default is 4 images; each must be a decoded picture, not a broken link
            expect(page.locator("#status")).to_contain_text("Done: 4 images", timeout=60_000)
            _wait_for_pictures(page, "#gallery", 4)
            expect(page.locator("#seed-used input")).to_have_value("0")
            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            # an invalid request shows an error in the page, and the next one still works
            page.locator("#prompt textarea").fill("   ")
            page.locator("#generate").click()
            expect(page.get_by_text("Enter a prompt")).to_be_visible(timeout=30_000)
            page.locator("#prompt textarea").fill("a large blue square in the center")
            page.get_by_label("Seed", exact=True).fill("7")
            page.locator("#generate").click()
            expect(page.locator("#seed-used input")).to_have_value("7", timeout=60_000)
            expect(page.locator("#gallery")).to_contain_text(re.compile(r"bits \d+ / \d+"), timeout=30_000)
            # Edit tab: take generated image 2, repaint its lower half (rows arriving: tests/test_app.py)
            page.get_by_role("tab", name="Edit").click()
            page.locator("#edit-pick-n input").fill("2")
            page.locator("#edit-pick").click()
            page.wait_for_function(
                "() => [...document.querySelectorAll('#edit-image img')].some(img => img.naturalWidth > 0)",
                timeout=30_000,
            )
            # two clicks on the box view (the 32x32 picture shown 8 times larger) draw the box, in either
            # order of the corners; it is shown outlined
            page.wait_for_function(
                "() => [...document.querySelectorAll('#edit-box img')].some(img => img.naturalWidth === 256)",
                timeout=30_000,
            )
            view = page.locator("#edit-box img").first.bounding_box()
            events = []  # the app's events the clicks start, each one request to join the queue
            page.on("request", lambda r: events.append(r.url) if "/queue/join?" in r.url else None)
            # each click's update lands before the next click: x0 is 24 after the first (a one-pixel box),
            # 8 after the second; a fixed pause alone let the box be read, or clicked, between the two
            for fx, fy, x0 in ((0.77, 0.89, "24"), (0.27, 0.52, "8")):
                page.mouse.click(view["x"] + fx * view["width"], view["y"] + fy * view["height"])
                expect(page.locator("#edit-x0 input")).to_have_value(x0, timeout=30_000)
                page.wait_for_timeout(300)
            expect(page.locator("#edit-y1 input")).to_have_value("29", timeout=30_000)
            box = [page.locator(f"#edit-{n} input").input_value() for n in ("x0", "y0", "x1", "y1")]
            assert box == ["8", "16", "25", "29"]
            # a click sets four corners and the view is redrawn once for them, not once per corner: two events
            # a click; typing a corner redraws it too
            _wait_for_events(page, events, 4)
            page.locator("#edit-x0 input").fill("4")
            _wait_for_events(page, events, 5)
            page.locator("#edit-x0 input").fill("8")
            _wait_for_events(page, events, 6)
            page.locator("#edit-prompt textarea").fill("a small red circle at the bottom")
            page.locator("#edit-run").click()
            expect(page.locator("#edit-status")).to_contain_text("Done: 1 images", timeout=60_000)
            expect(page.locator("#edit-gallery")).to_contain_text(re.compile(r"bits \d+ / \d+"))
            # Variations tab: four of generated image 1
            page.get_by_role("tab", name="Variations").click()
            page.locator("#vary-pick").click()
            page.wait_for_function(
                "() => [...document.querySelectorAll('#vary-image img')].some(img => img.naturalWidth > 0)",
                timeout=30_000,
            )
            page.locator("#vary-run").click()
            expect(page.locator("#vary-status")).to_contain_text("Done: 4 images", timeout=60_000)
            _wait_for_pictures(page, "#vary-gallery", 4)
            page.screenshot(path=str(tmp_path / "app_variations.png"), full_page=True)
        finally:
            browser.close()
