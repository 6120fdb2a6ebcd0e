"""The app in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium, never a downloaded one).

Generate with "Enable Compression" and see the ratios, start a tiny training run and watch the loss chart
draw, stop it, and draw the attention heatmap. Screenshots go to test-output/; with BITLM_SCREENSHOT=1 the
app loads the shipped model from assets/ and the Generate tab's screenshot is also saved as
assets/screenshot.png (the README's picture).
"""
import os
import shutil
from pathlib import Path

import pytest

from conftest import launch_app

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--disable-sync"]
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "test-output"

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")]

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")


@pytest.fixture(scope="module")
def app_page(app_url, tmp_path_factory):
    url = app_url
    blocks = None
    if os.environ.get("BITLM_SCREENSHOT") == "1":
        # As `python app.py` runs it: the shipped model, else the small fallback (the path as the README shows it).
        blocks, url = launch_app(os.path.relpath(ROOT / "assets"), tmp_path_factory.mktemp("runs"), "small")
    OUT.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(url)
        yield page
        browser.close()
    if blocks is not None:
        blocks.close()


def number(page, elem_id: str) -> float:
    return float(page.locator(f"#{elem_id} input").input_value())


def test_generate_with_compression(app_page):
    page = app_page
    page.get_by_role("tab", name="Generate").click()
    box = page.locator("#enable-compression input[type=checkbox]")
    box.check()
    assert box.is_checked()
    page.locator("#generate-btn").click()
    page.locator("#gen-status").get_by_text("Input:").wait_for()
    assert number(page, "in-ratio") > 0 and number(page, "out-ratio") > 0
    assert page.locator("#out-text textarea").input_value() != ""
    page.screenshot(path=str(OUT / "generate.png"), full_page=True)
    if os.environ.get("BITLM_SCREENSHOT") == "1":
        shutil.copyfile(OUT / "generate.png", ROOT / "assets" / "screenshot.png")


def test_training_draws_the_loss_chart_and_stops(app_page):
    page = app_page
    page.get_by_role("tab", name="Train").click()
    page.get_by_label("Model size (preset)").click()
    page.get_by_role("option", name="tiny").click()
    page.get_by_label("Steps", exact=False).fill("5000")
    page.locator("#train-start").click()
    page.locator("#train-status").get_by_text("Training…").wait_for()
    points = page.locator("#loss-plot .scatterlayer .point")
    page.wait_for_function(
        "() => document.querySelectorAll('#loss-plot .scatterlayer .trace:first-child .point').length >= 2",
        timeout=90_000)
    assert points.count() >= 2
    page.screenshot(path=str(OUT / "train-running.png"), full_page=True)
    page.locator("#train-stop").click()
    page.locator("#train-status").get_by_text("Training stopped").wait_for(timeout=60_000)
    page.screenshot(path=str(OUT / "train-stopped.png"), full_page=True)


def test_telemetry_heatmap(app_page):
    page = app_page
    page.get_by_role("tab", name="Telemetry").click()
    page.locator("#telemetry-btn").click()
    page.locator("#tel-status").get_by_text("Telemetry with").wait_for()
    page.locator("#heatmap .heatmaplayer").wait_for()
    page.screenshot(path=str(OUT / "telemetry.png"), full_page=True)
