"""The app in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium, never a downloaded one).

Generate with "Enable Compression" (streamed, and stopped mid-way), train and watch the loss chart draw,
draw the attention heatmap; a file through the Codec tab and back (upload, compress, download, upload, decompress,
download: the same bytes); two visitors in two browser contexts sharing the one trainer; every refusal
of Start staying on screen; and a fresh clone launched as the README says training on Shakespeare.
The safety gate on: its live chart while the text streams, and a greedy loop named in the status (on a model
with floors calibrated by the fixture, or with BITLM_GATE_MODEL=assets the shipped model and its gate.json).
Screenshots go to test-output/; with BITLM_SCREENSHOT=1 the app loads the shipped model from assets/ and
the Generate tab's screenshot is also saved as assets/screenshot.png (the README's picture).
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bitlm.compress import container
from bitlm.model.transformer import BitTransformerLM
from bitlm.train.trainer import PRESETS
from conftest import free_port, launch_app, serving, wait_until

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
def app_url(tmp_path_factory):
    """The app with the untrained `small` fallback (slow enough to watch a generation stream), or with
    BITLM_SCREENSHOT=1 the shipped model as `python app.py` runs it."""
    model_dir = os.path.relpath(ROOT / "assets") if os.environ.get("BITLM_SCREENSHOT") == "1" \
        else tmp_path_factory.mktemp("no-model")
    blocks, url = launch_app(model_dir, tmp_path_factory.mktemp("runs"), "small")
    yield url
    blocks.close()


@pytest.fixture(scope="module")
def gated_url(tmp_path_factory, gated_model_dir):
    """The app on a model with gate floors: an untrained small model calibrated by the fixture (greedy, it
    loops at once), or the folder BITLM_GATE_MODEL names (e.g. assets, to try the shipped model by hand)."""
    model_dir = os.environ.get("BITLM_GATE_MODEL") or gated_model_dir
    blocks, url = launch_app(model_dir, tmp_path_factory.mktemp("runs"), "small")
    yield url
    blocks.close()


@pytest.fixture(scope="module")
def browser():
    OUT.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True)
        yield browser
        browser.close()


def visit(browser, url: str):
    """A new visitor: a browser context of its own (its own Gradio session) with the app open."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(url)
    page.locator("#model-info").wait_for()
    return page


@pytest.fixture
def page(browser, app_url):
    page = visit(browser, app_url)
    yield page
    page.context.close()


def number(page, elem_id: str) -> float:
    return float(page.locator(f"#{elem_id} input").input_value())


def text_of(page, elem_id: str) -> str:
    """The text a Markdown component shows (without the progress timer drawn over it while an event runs)."""
    prose = page.locator(f"#{elem_id} .prose")
    return prose.first.inner_text() if prose.count() else ""


def generate(page, n_bytes: int = 24, seed: int = 5) -> str:
    """Generate on this page and return the output bits."""
    page.get_by_role("tab", name="Generate").click()
    page.get_by_label("Bytes to generate").first.fill(str(n_bytes))
    page.get_by_label("Seed").fill(str(seed))
    page.locator("#generate-btn").click()
    wait_done(page, "gen-status")
    assert "Generated" in text_of(page, "gen-status")
    return page.locator("#out-bits textarea").input_value()


def wait_done(page, elem_id: str, timeout: float = 60) -> None:
    """Wait for the event just triggered to finish updating `elem_id` (its progress tracker shows, then hides)."""
    tracker = f"#{elem_id} [data-testid=status-tracker]"
    try:  # a fast event may be over before the tracker is seen
        page.wait_for_selector(f"{tracker}:not(.hide)", timeout=2_000)
    except sync_api.TimeoutError:
        pass
    page.wait_for_selector(f"{tracker}.hide", state="attached", timeout=timeout * 1000)


def step_of(status: str) -> int:
    """The step a Train status line names ("step 1,234/…" or "step 1,234 of …"), or -1."""
    found = re.search(r"step ([\d,]+)", status)
    return int(found.group(1).replace(",", "")) if found else -1


def train(page, steps: int, preset: str = "tiny", corpus: str | None = None) -> str:
    """Fill in the Train tab, press Start, and return the message Start left."""
    page.get_by_role("tab", name="Train").click()
    if corpus:
        page.get_by_text(corpus, exact=True).click()
    page.get_by_label("Model size (preset)").click()
    page.get_by_role("option", name=preset).click()
    page.get_by_label("Steps", exact=False).fill(str(steps))
    before = text_of(page, "train-message")
    page.locator("#train-start").click()
    wait_until(lambda: text_of(page, "train-message") not in ("", before), 60, what="Start's message")
    return text_of(page, "train-message")


def test_generate_with_compression(page):
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


def streamed_bytes(page) -> int:
    return len(page.locator("#out-bits textarea").input_value().split())


def test_stop_keeps_the_text_at_ten_moments(page):
    """Stop pressed at ten moments of 2 000-byte generations (after the first streamed chunk, then after 1 to
    9 more chunks): each ends with its own "Stopped" result, the text and bits so far on screen, no "Error"
    badge anywhere; a generation after a Stop shows its own result, not the Stop's."""
    page.get_by_role("tab", name="Generate").click()
    page.get_by_label("Bytes to generate").first.fill("2000")
    for moment in range(10):
        page.locator("#generate-btn").click()
        page.locator("#gen-status").get_by_text("Generating…").wait_for()
        first = streamed_bytes(page)
        wait_until(lambda: streamed_bytes(page) > first + 40 * moment, 60, what=f"{moment} more chunks")
        if moment == 1:
            page.screenshot(path=str(OUT / "generate-streaming.png"), full_page=True)
        page.locator("#generate-stop").click()
        page.locator("#gen-status").get_by_text("Stopped: generated").wait_for()
        wait_done(page, "gen-status")
        status = text_of(page, "gen-status")
        made = int(status.split("generated ")[1].split(" of ")[0].replace(",", ""))
        assert 0 < made < 2000, status
        assert streamed_bytes(page) == made, (moment, status)         # the bits of what was made, all of them
        assert page.locator("#out-text textarea").input_value() != ""
        assert page.locator("span.error").count() == 0, moment       # Gradio's red "Error" badge
        assert page.get_by_text("Error", exact=True).count() == 0, moment
    page.get_by_label("Bytes to generate").first.fill("24")
    page.locator("#generate-btn").click()
    page.locator("#gen-status").get_by_text("Generated 24 bytes").wait_for()
    wait_done(page, "gen-status")
    assert "Stopped" not in text_of(page, "gen-status") and streamed_bytes(page) == 24


def test_the_gate_draws_its_live_chart_and_names_a_greedy_loop(browser, gated_url):
    page = visit(browser, gated_url)
    page.get_by_role("tab", name="Generate").click()
    page.locator("#prompt textarea").fill("CLEOPATRA.\n")
    page.get_by_label("Temperature").first.fill("0")
    page.get_by_label("Bytes to generate").first.fill("2000")
    page.locator("#gate-mode").get_by_text("warn", exact=True).click()
    page.locator("#generate-btn").click()
    page.locator("#gen-status").get_by_text("Generating…").wait_for()
    # Live: C, S, their floors (and the marked span) are drawn while the text still streams.
    page.wait_for_function("() => document.querySelectorAll('#gate-plot .scatterlayer .trace').length >= 4",
                           timeout=60_000)
    page.locator("#gate-plot").get_by_text("C floor").wait_for()
    # said while it streams: both on screen at one moment (a fast machine may finish soon after)
    page.wait_for_function("() => { const t = document.querySelector('#gen-status').innerText;"
                           " return t.includes('Generating…') && t.includes('a repetition loop from byte'); }",
                           timeout=60_000)
    page.screenshot(path=str(OUT / "gate-streaming.png"), full_page=True)
    page.locator("#generate-stop").click()
    wait_done(page, "gen-status")
    status = text_of(page, "gen-status")  # a fast machine may have finished before Stop reached it
    assert "Stopped: generated" in status or "Generated 2,000 bytes" in status, status

    page.get_by_label("Bytes to generate").first.fill("200")
    page.locator("#gate-mode").get_by_text("retry", exact=True).click()
    page.locator("#generate-btn").click()
    wait_done(page, "gen-status")
    status = text_of(page, "gen-status")
    assert "Safety gate (retry" in status and "a repetition loop from byte" in status and "retried" in status, status
    page.screenshot(path=str(OUT / "gate-retry.png"), full_page=True)
    page.context.close()


def test_training_draws_the_loss_chart_and_stops(page):
    assert train(page, 5000).startswith("✓ Training started")
    page.locator("#train-status").get_by_text("Training…").wait_for()
    page.wait_for_function(
        "() => document.querySelectorAll('#loss-plot .scatterlayer .trace:first-child .point').length >= 2",
        timeout=90_000)
    page.screenshot(path=str(OUT / "train-running.png"), full_page=True)
    page.locator("#train-stop").click()
    page.locator("#train-status").get_by_text("Training stopped").wait_for(timeout=60_000)
    page.screenshot(path=str(OUT / "train-stopped.png"), full_page=True)


def test_telemetry_heatmap(page):
    page.get_by_role("tab", name="Telemetry").click()
    page.get_by_text("text below", exact=True).click()
    text = ("Now is the winter of our discontent made glorious summer by this sun of York; " * 30)[:2000]
    page.get_by_label("Text (≤", exact=False).fill(text)
    page.locator("#telemetry-btn").click()
    page.locator("#tel-status").get_by_text("The model read all 18,000 bits").wait_for()   # every byte, sliding
    page.locator("#heatmap .heatmaplayer").wait_for()
    page.get_by_text("Bits per byte along the decompressed bits (2,000 bytes").wait_for()
    page.screenshot(path=str(OUT / "telemetry.png"), full_page=True)


def upload_to(page, elem_id: str, path: Path) -> None:
    """Put a file in the upload box `elem_id` through the browser's file chooser."""
    with page.expect_file_chooser() as chooser:
        page.locator(f"#{elem_id} button").first.click()
    chooser.value.set_files(str(path))
    page.locator(f'#{elem_id} td[aria-label="{path.name}"]').wait_for(timeout=90_000)  # a loaded machine is slow


def download_from(page, elem_id: str, name: str, folder: Path) -> Path:
    """Click the file link `name` that the file box `elem_id` offers; return where the browser saved it."""
    with page.expect_download() as download:
        page.locator(f'#{elem_id} a[download="{name}"]').click()
    path = folder / download.value.suggested_filename
    download.value.save_as(path)
    return path


def test_codec_tab_compresses_and_restores_a_file(page, tmp_path):
    original = tmp_path / "notes.bin"
    original.write_bytes(bytes(range(256)) + "to be or not to be — 世界\n".encode() * 8)
    page.get_by_role("tab", name="Codec").click()
    upload_to(page, "codec-file", original)
    page.locator("#file-compress-btn").click()
    page.locator("#file-status").get_by_text("notes.bin.blm").wait_for(timeout=60_000)
    assert text_of(page, "file-status").startswith("✓")
    assert all(page.locator("#file-table").get_by_text(m, exact=True).count()
               for m in ("neural+cm", "cm", "neural", "lzma", "bz2", "zlib"))
    (tmp_path / "got").mkdir()
    blm = download_from(page, "blm-out", "notes.bin.blm", tmp_path / "got")
    assert blm.read_bytes()[0] == 0xB7 and blm.name == "notes.bin.blm"
    upload_to(page, "blm-in", blm)
    page.locator("#file-decompress-btn").click()
    page.locator('#restored a[download="notes.bin"]').wait_for(timeout=60_000)
    assert text_of(page, "file-status").startswith("✓")
    page.locator("#file-table").get_by_text("lzma", exact=True).wait_for(state="detached")   # no stale table
    (tmp_path / "back").mkdir()
    restored = download_from(page, "restored", "notes.bin", tmp_path / "back")
    assert restored.read_bytes() == original.read_bytes()
    page.screenshot(path=str(OUT / "codec-file.png"), full_page=True)
    # a file the model mixed in coded (the app's untrained fallback, rebuilt here the way the app builds it)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        fallback = BitTransformerLM(PRESETS["small"][0]).eval()
    mixed = tmp_path / "mixed.txt"
    mixed.write_bytes("To be, or not to be, that is the question:\n".encode() * 12)
    (tmp_path / "mixed.txt.blm").write_bytes(
        container.compress_file(mixed.read_bytes(), fallback, methods=("neural+cm",)).blob)
    page.locator("#blm-in button[aria-label='Clear']").click()
    upload_to(page, "blm-in", tmp_path / "mixed.txt.blm")
    page.locator("#file-decompress-btn").click()
    page.locator('#restored a[download="mixed.txt"]').wait_for(timeout=60_000)
    assert "neural+cm" in text_of(page, "file-status") and text_of(page, "file-status").startswith("✓")
    (tmp_path / "back2").mkdir()
    assert download_from(page, "restored", "mixed.txt", tmp_path / "back2").read_bytes() == mixed.read_bytes()
    page.locator("#blm-in button[aria-label='Clear']").click()
    upload_to(page, "blm-in", original)  # not a .blm: a message that stays
    page.locator("#file-decompress-btn").click()
    page.locator("#file-status").get_by_text("not a BitLM compressed file").wait_for()
    wait_done(page, "file-status")
    assert text_of(page, "file-status").startswith("⚠️")


def test_two_visitors_share_the_trainer_not_their_models(browser, app_url):
    a, b = visit(browser, app_url), visit(browser, app_url)
    shipped_line = text_of(b, "model-info")
    a_bits, b_bits = generate(a), generate(b)
    assert a_bits == b_bits  # the same shipped model, the same seed

    assert train(a, 20_000).startswith("✓ Training started")
    a.locator("#train-status").get_by_text("Training…").wait_for()
    busy = train(b, 10)
    assert "busy with another visitor's run" in busy and "left" in busy, busy
    # B's status follows A's run (it refreshes itself), and Start's refusal stays on screen meanwhile.
    seen = step_of(text_of(b, "train-status"))
    wait_until(lambda: step_of(text_of(b, "train-status")) > seen, 60, what="B's status to show A's next steps")
    assert text_of(b, "train-message") == busy
    b.screenshot(path=str(OUT / "visitor-b-busy.png"), full_page=True)
    b.locator("#train-stop").click()
    b.locator("#train-message").get_by_text("no training run in progress").wait_for()
    stopped_at = step_of(text_of(a, "train-status"))
    wait_until(lambda: step_of(text_of(a, "train-status")) > stopped_at, 60,
               what="A's run to go on after B's Stop")                       # B's Stop did not stop A's run
    assert "Training…" in text_of(a, "train-status")

    a.locator("#train-stop").click()
    a.locator("#train-status").get_by_text("Training stopped").wait_for(timeout=60_000)
    a.locator("#use-trained").click()
    a.locator("#model-info").get_by_text("your trained model").wait_for()
    assert generate(a) != a_bits  # A's generations now come from A's model
    assert text_of(b, "model-info") == shipped_line and generate(b) == b_bits  # B's do not
    a.screenshot(path=str(OUT / "visitor-a-trained.png"), full_page=True)

    assert train(b, 30).startswith("✓ Training started")  # the trainer is free: B's turn
    b.locator("#train-status").get_by_text("Training finished").wait_for(timeout=120_000)
    for _ in range(2):  # back and forth
        b.get_by_role("tab", name="Train").click()
        b.locator("#use-trained").click()
        b.locator("#model-info").get_by_text("your trained model").wait_for()
        assert generate(b) != b_bits
        b.get_by_role("tab", name="Train").click()
        b.locator("#use-shipped").click()
        wait_until(lambda: text_of(b, "model-info") == shipped_line, 30, what="B's shipped model line")
        assert generate(b) == b_bits

    assert train(a, 20_000).startswith("✓ Training started")
    a.context.close()  # A closes the page: A's run ends
    wait_until(lambda: train(b, 10).startswith("✓ Training started"), 60, interval=2,
               what="the trainer to be free after A left")
    b.locator("#train-stop").click()
    b.context.close()


def test_every_start_refusal_stays_on_screen(page, tmp_path, monkeypatch):
    from bitlm.train import data
    monkeypatch.setattr(data, "SHAKESPEARE_ARCHIVE", tmp_path / "missing.tar.xz")
    monkeypatch.setitem(sys.modules, "shksprdata", None)  # the corpus is missing
    binary, short = tmp_path / "binary.txt", tmp_path / "short.txt"
    binary.write_bytes(bytes(range(256)) * 8)
    short.write_bytes(b"abcdef")
    refusals = [  # (corpus, upload, steps, what the message says)
        ("shakespeare", None, 10, "shakespeare corpus needs"),
        ("pydoc", None, 0, "number of steps"),
        ("pydoc", None, -5, "number of steps"),
        ("pydoc", None, "1e9", "number of steps"),
        ("pydoc", None, "", "number of steps must be a number"),
        ("uploaded .txt", None, 10, "No file uploaded"),
        ("uploaded .txt", binary, 10, "binary"),
        ("uploaded .txt", short, 10, "too short for the tiny model"),
    ]
    page.get_by_role("tab", name="Train").click()
    previous = ""
    for i, (corpus, upload, steps, fragment) in enumerate(refusals):
        if upload is not None:
            upload_to(page, "upload", upload)
        message = train(page, steps, corpus=corpus)
        assert message.startswith("⚠️") and fragment in message and message != previous, message
        wait_done(page, "train-status")  # Start's chained refresh is over: nothing else is left to write
        assert text_of(page, "train-message") == message, f"the refusal did not stay: {message}"
        page.screenshot(path=str(OUT / f"start-refusal-{i}.png"), full_page=True)
        if upload is not None:
            page.locator("#upload button[aria-label='Clear']").click()
        previous = message
    page.locator("#train-stop").click()  # the next action replaces it
    page.locator("#train-message").get_by_text("no training run in progress").wait_for()


def test_fresh_clone_trains_on_shakespeare(browser, tmp_path):
    """`git clone`, then the README's launch command's last step (`python app.py`) with the packages that
    requirements.txt installs, and so without the `shksprdata` package: Shakespeare still trains."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    no_package = tmp_path / "no-shksprdata"
    (no_package / "shksprdata").mkdir(parents=True)
    (no_package / "shksprdata" / "__init__.py").write_text("raise ImportError('not installed by requirements.txt')\n")
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "PYTHONPATH": str(no_package)}
    log = (tmp_path / "app.log").open("w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until(lambda: proc.poll() is not None or serving(url), 120, what="the clone's app to serve")
        assert proc.poll() is None, (tmp_path / "app.log").read_text()
        page = visit(browser, url)
        message = train(page, 50, preset="small", corpus="shakespeare")
        assert message.startswith("✓ Training started: small model on shakespeare"), message
        page.locator("#train-status").get_by_text("Training…").wait_for()
        page.screenshot(path=str(OUT / "fresh-clone-shakespeare.png"), full_page=True)
        page.locator("#train-stop").click()
        page.context.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
