"""Shared helpers: an offline environment, a tiny untrained model for handler tests, the app launched on
127.0.0.1 for the API, MCP and browser tests, and the check of a friendly failure message."""
import os

# Before gradio / huggingface_hub are imported anywhere: no telemetry calls, no hub look-ups.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import socket  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

import pytest  # noqa: E402


FAILED = "⚠️"  # how every friendly failure message starts


def assert_friendly(status: str, *fragments: str) -> None:
    """`status` is the app's own failure message (no traceback) and holds every fragment."""
    assert status.startswith(FAILED), status
    assert "Traceback" not in status
    for fragment in fragments:
        assert fragment in status, status


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll `predicate()` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def serving(url: str) -> bool:
    """Whether `url` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The app's model with no shipped model: the untrained `tiny` fallback (an `AppModel`)."""
    from bitlm.app.visitors import load_app_model
    return load_app_model(tmp_path_factory.mktemp("no-model"), fallback_preset="tiny")


def launch_app(model_dir, run_root, fallback_preset: str = "tiny", run_minutes: float = 10):
    """Launch the app in this process on a free loopback port; returns (blocks, url)."""
    import app
    blocks = app.build_demo(model_dir=model_dir, fallback_preset=fallback_preset, run_root=run_root,
                            run_minutes=run_minutes)
    port = free_port()
    blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                  **app.LAUNCH_KWARGS)
    url = f"http://127.0.0.1:{port}/"
    wait_until(lambda: serving(url), 30, what="the app to serve")
    return blocks, url


def make_gated_model(folder, preset: str = "small"):
    """Save an untrained v2 `preset` model (seed 0) in `folder` with a gate.json calibrated for it by the CLI
    (`python -m bitlm.cli.gate calibrate`, 16- and 32-byte windows) on held-out tails of four Shakespeare plays:
    an app model with floors, whatever `assets/` holds. Greedy, it falls into a loop at once."""
    import torch

    from bitlm.cli import gate
    from bitlm.train.data import load_corpus
    from bitlm.model.transformer import BitTransformerLM
    from bitlm.train.trainer import PRESETS
    with torch.random.fork_rng():
        torch.manual_seed(0)
        BitTransformerLM(PRESETS[preset][0]).save_pretrained(str(folder))
    texts = folder.parent / f"{folder.name}-corpus"
    texts.mkdir()
    for i, doc in enumerate(load_corpus("shakespeare").documents[:4]):
        (texts / f"{i}.txt").write_text(doc[:20_000], encoding="utf-8")
    gate.main(["calibrate", "--model", str(folder), "--corpus", str(texts), "--windows", "16", "32"])
    return folder


@pytest.fixture(scope="session")
def gated_model_dir(tmp_path_factory):
    """A model folder with calibrated gate floors (see `make_gated_model`)."""
    return make_gated_model(tmp_path_factory.mktemp("gated") / "model")
