"""The launched app through gradio_client: each tab's endpoint with compression on and off, and a
bad-input matrix in which every bad request gets a friendly message and the next valid one succeeds."""
import pandas as pd
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from bitlm import demo
from conftest import wait_until

# gradio's queue trips pandas 3 deprecation warnings of its own; they say nothing about this app.
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")


@pytest.fixture(scope="module")
def client(app_url, tmp_path_factory):
    return Client(app_url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")),
                  analytics_enabled=False)


def generate(client, prompt="To be", mode="text", n_bytes=8, temperature=0.8, seed=7, compress=True):
    return client.predict(prompt, mode, n_bytes, temperature, seed, compress, api_name="/generate")


def train_start(client, corpus="pydoc", upload=None, preset="tiny", steps=20, prob=0.5, multitask=False):
    return client.predict(corpus, upload, preset, steps, prob, multitask, api_name="/train_start")


def train_status(client):
    return client.predict(api_name="/train_status")


def is_friendly(status: str) -> bool:
    return status.startswith("⚠️") and "Traceback" not in status


def test_generate_with_and_without_compression(client):
    text_on, bits_on, in_on, out_on, status_on = generate(client, compress=True)
    text_off, bits_off, in_off, out_off, status_off = generate(client, compress=False)
    assert (text_on, bits_on) == (text_off, bits_off)
    assert in_on > 0 and out_on > 0 and in_off is None and out_off is None
    assert "Input:" in status_on and "Input:" not in status_off
    assert len(bits_on.replace(" ", "").replace("\n", "")) == 8 * 9


@pytest.mark.parametrize("view", demo.TELEMETRY_VIEWS)
def test_telemetry_endpoint(client, view):
    summary, table, prob, heat, status = client.predict("text below", "Hello, API", view, 0, 0,
                                                        api_name="/telemetry")
    assert status.startswith("✓") and "**K**" in summary and "**S**" in summary
    assert [row[0] for row in table["data"]] == list(demo.plots.TELEMETRY_EXPLAINED)
    assert '"heatmap"' in heat["plot"] and "P(bit = 1)" in prob["plot"]


@pytest.mark.parametrize("parity", [True, False])
def test_codec_endpoints(client, parity):
    stream, _, ratio, status = client.predict("aaaaaaaaaaaaaaaaaaaaaaaa!", "text", "auto", parity, api_name="/compress")
    assert status.startswith("✓") and ratio > 1
    bits, text, ratio_back, status = client.predict(stream, parity, api_name="/decompress")
    assert text == "aaaaaaaaaaaaaaaaaaaaaaaa!" and ratio_back == ratio and status.startswith("✓")


def test_neural_codec_endpoint(client):
    table, status = client.predict("To be, or not to be: that is the question.", api_name="/neural_compress")
    assert status.startswith("✓") and "round trip exact" in status
    assert [row[0] for row in table["data"]][:2] == ["model (neural codec)", "model cross-entropy (ideal coder)"]
    for bad in ("", "x" * 1_000_000):
        table, status = client.predict(bad, api_name="/neural_compress")
        assert is_friendly(status), status
    assert client.predict("ok", api_name="/neural_compress")[1].startswith("✓")


def test_training_endpoints(client):
    assert train_start(client, steps=20, multitask=True).startswith("✓")
    wait_until(lambda: "finished" in train_status(client)[0], 120, what="the run to finish")
    status, loss, acc, ratio, table, timer = train_status(client)
    assert "finished at step 20/20" in status
    df = pd.DataFrame(table["data"], columns=table["headers"])
    assert df["step"].tolist() == [20, 10]  # newest first
    assert '"raw"' in loss["plot"] and '"compressed"' in loss["plot"]
    files, status = client.predict(api_name="/export_csv")
    assert status.startswith("✓") and pd.read_csv(files[0])["step"].tolist() == [10, 20]
    files, status = client.predict(api_name="/save_model")
    assert status.startswith("✓") and any(f.endswith("model.safetensors") for f in files)
    assert client.predict(api_name="/use_trained").startswith("✓")
    assert generate(client)[1] != ""


# --------------------------------------------------------------------------------------- bad inputs

HUGE = "x" * 1_000_000
GENERATE_BAD = {
    "prompt empty": dict(prompt=""),
    "prompt whitespace": dict(prompt="  \n "),
    "prompt 1 MB": dict(prompt=HUGE),
    "bits prompt non-binary": dict(prompt="0101 0121", mode="bits"),
    "bits prompt whitespace": dict(prompt="   ", mode="bits"),
    "bits prompt 1 MB": dict(prompt="0" * 1_000_000, mode="bits"),
    "corrupted stream prompt": dict(prompt="1" * 80, mode="compressed stream"),
    "seed negative": dict(seed=-1),
}


@pytest.mark.parametrize("case", GENERATE_BAD)
def test_generate_bad_inputs(client, case):
    text, bits, in_ratio, out_ratio, status = generate(client, **GENERATE_BAD[case])
    assert is_friendly(status), status
    assert text == "" and in_ratio is None
    assert generate(client)[1] != ""


@pytest.mark.parametrize("kwargs,message", [
    (dict(n_bytes=10**9), "greater than maximum value 2000"),
    (dict(n_bytes=0), "less than minimum value 1"),
    (dict(temperature=-1), "less than minimum value 0"),
])
def test_generate_slider_bounds_are_enforced_by_gradio(client, kwargs, message):
    # Sliders are range-checked by gradio before the handler runs; its message is already clear.
    with pytest.raises(AppError, match=message):
        generate(client, **kwargs)
    assert generate(client)[1] != ""


TELEMETRY_BAD = {
    "text empty": ("text below", "", "decompressed bits"),
    "text whitespace": ("text below", " \t ", "compressed stream"),
    "text 1 MB": ("text below", HUGE, "decompressed bits"),
}


@pytest.mark.parametrize("case", TELEMETRY_BAD)
def test_telemetry_bad_inputs(client, case):
    status = client.predict(*TELEMETRY_BAD[case], 0, 0, api_name="/telemetry")[4]
    assert is_friendly(status), status
    assert client.predict("text below", "fine", "decompressed bits", 0, 0, api_name="/telemetry")[4].startswith("✓")


CODEC_BAD = {
    "compress empty": ("/compress", ("", "text", "auto", True)),
    "compress whitespace": ("/compress", ("   ", "text", "rle", True)),
    "compress 1 MB": ("/compress", (HUGE, "text", "auto", True)),
    "compress non-binary bits": ("/compress", ("01 10 2", "bits", "auto", True)),
    "compress 1 MB bits": ("/compress", ("1" * 1_000_000, "bits", "auto", True)),
    "decompress empty": ("/decompress", ("", True)),
    "decompress whitespace": ("/decompress", ("\n\n", True)),
    "decompress non-binary": ("/decompress", ("0101 abc", True)),
    "decompress corrupted": ("/decompress", ("1011" * 30, True)),
    "decompress 1 MB": ("/decompress", ("0" * 1_000_000, True)),
}


@pytest.mark.parametrize("case", CODEC_BAD)
def test_codec_bad_inputs(client, case):
    endpoint, args = CODEC_BAD[case]
    bits, text, ratio, status = client.predict(*args, api_name=endpoint)
    assert is_friendly(status), status
    assert bits == "" and ratio is None
    assert client.predict("ok", "text", "auto", True, api_name="/compress")[3].startswith("✓")


@pytest.mark.parametrize("content,fragment", [
    (b"\xff\xfe\x00bad utf-8 \xc3\x28" * 50, "binary"),  # NUL bytes: binary
    (b"caf\xe9 " * 100, "not UTF-8"),
    (bytes(range(256)) * 100, "binary"),
    (b"", "empty"),
])
def test_bad_uploads(client, tmp_path, content, fragment):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    status = train_start(client, corpus="uploaded .txt", upload=handle_file(str(path)))
    assert is_friendly(status) and fragment in status and "corpus.txt" in status, status
    assert "No training run" in client.predict(api_name="/train_stop")  # nothing was started


def test_training_run_conflicts_and_stop_without_a_run(client):
    assert is_friendly(client.predict(api_name="/train_stop"))
    assert is_friendly(train_start(client, corpus="uploaded .txt", upload=None))
    assert is_friendly(train_start(client, steps=0))
    assert train_start(client, steps=demo.TRAIN_MAX_STEPS).startswith("✓")
    try:
        second = train_start(client)
        assert is_friendly(second) and "already in progress" in second
        assert is_friendly(client.predict(api_name="/use_trained"))  # still running
        assert generate(client)[1] != ""  # generation keeps serving during training
    finally:
        assert client.predict(api_name="/train_stop").startswith("✓")
    wait_until(lambda: "stopped" in train_status(client)[0], 60, what="the run to stop")
    assert is_friendly(client.predict(api_name="/train_stop"))
