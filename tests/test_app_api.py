"""The launched app over HTTP: each tab's endpoint through gradio_client, two clients as two visitors (their
models, runs and the shared trainer kept apart), and every parameter of every endpoint sent wrong over the
raw HTTP API (wrong type, NaN, inf, None, ''): the app's own message, strict JSON, no traceback in the log,
and the server still answering."""
import json
import math

import httpx
import pandas as pd
import pytest
from gradio_client import Client, handle_file

from bitlm.app import generate_tab, telemetry_tab, visitors
from conftest import launch_app, wait_until

# gradio's queue trips pandas 3 deprecation warnings of its own; they say nothing about this app.
pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    """An app of its own (tiny fallback model), so that no other test's run keeps its trainer busy."""
    blocks, url = launch_app(tmp_path_factory.mktemp("no-model"), tmp_path_factory.mktemp("runs"))
    yield url
    blocks.close()


def new_client(url, tmp_path_factory) -> Client:
    return Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")),
                  analytics_enabled=False)


@pytest.fixture(scope="module")
def client(url, tmp_path_factory):
    return new_client(url, tmp_path_factory)


def generate(client, prompt="To be", mode="text", n_bytes=8, temperature=0.8, seed=7, compress=True,
             gate_mode="off", gate_window=None):
    """The text, bits, ratios and status of a generation (`generate_gated` also returns the gate's chart and events)."""
    return generate_gated(client, prompt, mode, n_bytes, temperature, seed, compress, gate_mode, gate_window)[:5]


def generate_gated(client, prompt="To be", mode="text", n_bytes=8, temperature=0.8, seed=7, compress=True,
                   gate_mode="off", gate_window=None):
    return client.predict(prompt, mode, n_bytes, temperature, seed, compress, gate_mode, gate_window,
                          api_name="/generate")


def train_start(client, corpus="pydoc", upload=None, preset="tiny", steps=20, prob=0.5, multitask=False):
    return client.predict(corpus, upload, preset, steps, prob, multitask, api_name="/train_start")


def train_status(client):
    return client.predict(api_name="/train_status")


def is_friendly(status: str) -> bool:
    return status.startswith("⚠️") and "Traceback" not in status


def test_api_lists_optional_inputs_and_labelled_outputs(client):
    api = client.view_api(return_format="dict")["named_endpoints"]
    assert set(api) >= {f"/{n}" for n in ("generate", "train_start", "train_stop", "train_status", "use_trained",
                                           "use_shipped", "save_model", "export_csv", "telemetry", "compress",
                                           "decompress", "neural_compress", "compress_file",
                                           "decompress_file")}
    upload = next(p for p in api["/train_start"]["parameters"] if p["parameter_name"] == "upload")
    assert upload["parameter_has_default"] and upload["parameter_default"] is None
    for name, endpoint in api.items():
        for output in endpoint["returns"]:
            assert not output["label"].startswith("value_"), (name, output)


def test_generate_with_and_without_compression(client):
    text_on, bits_on, in_on, out_on, status_on = generate(client, compress=True)
    text_off, bits_off, in_off, out_off, status_off = generate(client, compress=False)
    assert (text_on, bits_on) == (text_off, bits_off)
    assert in_on > 0 and out_on > 0 and in_off is None and out_off is None
    assert "Input:" in status_on and "Input:" not in status_off
    assert len(bits_on.replace(" ", "").replace("\n", "")) == 8 * 9


def test_empty_seed_means_random_and_the_largest_seed_is_accepted(client):
    assert "(seed " in generate(client, seed="")[4] and generate(client, seed="")[1]
    assert f"(seed {generate_tab.SEED_MAX})" in generate(client, seed=generate_tab.SEED_MAX)[4]


@pytest.mark.parametrize("view", telemetry_tab.TELEMETRY_VIEWS)
def test_telemetry_endpoint(client, view):
    summary, table, prob, heat, status = client.predict("text below", "Hello, API", view, 0, 0,
                                                        api_name="/telemetry")
    assert status.startswith("✓") and "**K**" in summary and "**S**" in summary
    assert [row[0] for row in table["data"]] == list(generate_tab.plots.TELEMETRY_EXPLAINED)
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


def test_file_codec_endpoints(client, tmp_path):
    original = tmp_path / "notes.bin"
    original.write_bytes(bytes(range(256)) + b"to be or not to be " * 10)
    blm, table, status = client.predict(handle_file(str(original)), "", api_name="/compress_file")
    assert status.startswith("✓") and blm.endswith("notes.bin.blm"), status
    assert {row[0] for row in table["data"]} == {"neural+cm", "cm", "neural", "lzma", "bz2", "zlib", "stored"}
    restored, status = client.predict(handle_file(blm), api_name="/decompress_file")
    assert status.startswith("✓") and open(restored, "rb").read() == original.read_bytes(), status
    blm, _, status = client.predict(None, "typed text, typed text", api_name="/compress_file")
    assert status.startswith("✓") and blm.endswith("text.blm")
    restored, status = client.predict(handle_file(str(original)), api_name="/decompress_file")  # not a .blm
    assert restored is None and is_friendly(status) and "not a BitLM compressed file" in status


# --------------------------------------------------------------------------------------- the safety gate


@pytest.fixture(scope="module")
def gated_client(gated_model_dir, tmp_path_factory):
    """A client of an app whose model has calibrated gate floors (16 and 32 bytes), whatever assets/ holds."""
    blocks, url = launch_app(gated_model_dir, tmp_path_factory.mktemp("runs"))
    yield new_client(url, tmp_path_factory)
    blocks.close()


def test_generate_with_the_gate_returns_its_events_chart_and_words(gated_client):
    api = gated_client.view_api(return_format="dict")["named_endpoints"]["/generate"]
    params = {p["parameter_name"]: p for p in api["parameters"]}
    assert params["gate_mode"]["parameter_default"] == "off" and params["gate_window"]["parameter_has_default"]
    off = generate_gated(gated_client, "KING.\n", n_bytes=96, temperature=0, gate_mode="off")
    text, bits, _, _, status, chart, events = generate_gated(gated_client, "KING.\n", n_bytes=96, temperature=0,
                                                             gate_mode="warn", gate_window=16)
    assert (text, bits) == off[:2] and off[6] is None and off[5] is None  # warn changes no bit
    assert events and events[0]["metric"] == "C" and events[0]["action"] == "warn"
    assert set(events[0]) == {"start", "end", "metric", "value", "floor", "action", "temperature"}
    assert f"a repetition loop from byte {events[0]['start']}: marked 1 span" in status
    assert '"C floor"' in chart["plot"] and '"marked (warn)"' in chart["plot"]
    *_, status, chart, events = generate_gated(gated_client, "KING.\n", n_bytes=96, temperature=0, gate_mode="stop")
    assert events[-1]["action"] == "stop" and "(the gate stopped it)" in status and "stopped." in status


def test_a_model_without_floors_refuses_the_gate(client):
    status = generate(client, gate_mode="warn")[4]
    assert is_friendly(status) and "safety gate is off" in status and "python -m bitlm.cli.gate calibrate" in status


# --------------------------------------------------------------------------------------- two visitors


def test_two_visitors_own_their_models_and_runs(url, tmp_path_factory):
    a, b = new_client(url, tmp_path_factory), new_client(url, tmp_path_factory)
    shipped = generate(b, seed=5)[1]
    assert train_start(a, steps=visitors.TRAIN_MAX_STEPS).startswith("✓")
    try:
        busy = train_start(b)
        assert is_friendly(busy) and "busy with another visitor's run" in busy and "left" in busy
        assert is_friendly(b.predict(api_name="/train_stop"))  # B's Stop is not for A's run
        assert train_status(a)[0].startswith("Training…")
        assert "busy with another visitor's run" in train_status(b)[0]
        assert is_friendly(b.predict(api_name="/use_trained")[0])
        assert generate(b)[1] != ""  # generation keeps serving during training
    finally:
        assert a.predict(api_name="/train_stop").startswith("✓")
    wait_until(lambda: "stopped" in train_status(a)[0], 60, what="A's run to stop")
    status, line = a.predict(api_name="/use_trained")
    assert status.startswith("✓") and "your trained model" in line
    assert generate(a, seed=5)[1] != shipped and generate(b, seed=5)[1] == shipped
    status, line = a.predict(api_name="/use_shipped")
    assert status.startswith("✓") and "your trained model" not in line and generate(a, seed=5)[1] == shipped
    files, status = a.predict(api_name="/export_csv")
    assert status.startswith("✓") and not pd.read_csv(files[0]).empty
    assert is_friendly(b.predict(api_name="/export_csv")[1]) and is_friendly(b.predict(api_name="/save_model")[1])
    files, status = a.predict(api_name="/save_model")
    assert status.startswith("✓") and any(f.endswith("model.safetensors") for f in files)


def test_training_endpoints(client):
    assert train_start(client, steps=20, multitask=True).startswith("✓")
    wait_until(lambda: "finished" in train_status(client)[0], 120, what="the run to finish")
    status, loss, acc, ratio, table, kcs = train_status(client)
    assert "finished at step 20/20" in status and '"S (symbiosis)"' in kcs["plot"]
    df = pd.DataFrame(table["data"], columns=table["headers"])
    assert df["step"].tolist() == [20, 10]  # newest first
    assert '"raw"' in loss["plot"] and '"compressed"' in loss["plot"]


@pytest.mark.parametrize("content,fragment", [
    (b"\xff\xfe\x00bad utf-8 \xc3\x28" * 50, "UTF-16"),
    (b"caf\xe9 " * 100, "not UTF-8"),
    (bytes(range(256)) * 100, "binary"),
    (b"", "empty"),
    (b"abcdef", "too short"),
])
def test_bad_uploads(client, tmp_path, content, fragment):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    status = train_start(client, corpus="uploaded .txt", upload=handle_file(str(path)))
    assert is_friendly(status) and fragment in status and "corpus.txt" in status, status
    assert "no training run" in client.predict(api_name="/train_stop")  # nothing was started


# --------------------------------------------------------------------------------------- every input wrong


def call(url: str, name: str, args: list) -> tuple[str, list]:
    """One request to /gradio_api/call/<name>; returns (SSE event, data parsed as strict JSON)."""
    with httpx.Client(base_url=url, timeout=120) as http:
        # json.dumps writes NaN and Infinity as a careless client would (and as Python's json reads them)
        event_id = http.post(f"gradio_api/call/{name}", content=json.dumps({"data": args}),
                             headers={"Content-Type": "application/json"}).json()["event_id"]
        body = http.get(f"gradio_api/call/{name}/{event_id}").text
    events = [line.removeprefix("event: ") for line in body.splitlines() if line.startswith("event: ")]
    data = [line.removeprefix("data: ") for line in body.splitlines() if line.startswith("data: ")]

    def no_constants(text):
        raise ValueError(f"not strict JSON: {text}")
    return events[-1], json.loads(data[-1], parse_constant=no_constants)


WRONG = {"a number for text": 12.5, "text for a number": "abc", "NaN": math.nan, "inf": math.inf, "None": None, "''": ""}
# endpoint: (valid arguments, index of the status in the answer, what may legitimately succeed)
ENDPOINTS = {
    # 'abc' is a fine prompt or text; an empty seed means a random one; an empty layer or head means 0
    # with the gate off its window is not read; this app's model has no floors, so any gate on is refused
    "generate": (["To be", "text", 8, 0.8, 1, True, "off", None], 4,
                 {(0, "text for a number"), (4, "None"), (4, "''"), *((7, w) for w in WRONG)}),
    "telemetry": (["text below", "Hello", "decompressed bits", 0, 0], 4,
                  {(1, "text for a number"), (3, "None"), (4, "None")}),
    "train_start": (["uploaded .txt", None, "tiny", 5, 0.5, False], 0, set()),  # the upload is read last
    "compress": (["aaaa", "text", "auto", True], 3, {(0, "text for a number")}),
    "decompress": (["0101", True], 3, set()),
    "neural_compress": (["hello"], 1, {(0, "text for a number")}),
    # no file means: compress the text; 'abc' is fine text
    "compress_file": ([None, "hello"], 2, {(0, "None"), (0, "''"), (1, "text for a number")}),
    "decompress_file": ([None], 1, set()),
}
CASES = [(name, i, wrong) for name, (args, _, _) in ENDPOINTS.items() for i in range(len(args)) for wrong in WRONG]


@pytest.mark.parametrize("name,index,wrong", CASES, ids=[f"{n}-{i}-{w}" for n, i, w in CASES])
def test_every_parameter_sent_wrong(url, capfd, caplog, name, index, wrong):
    args, status_at, allowed = ENDPOINTS[name]
    args = list(args)
    args[index] = WRONG[wrong]
    event, data = call(url, name, args)  # strict JSON, or it raises
    assert event == "complete", (event, data)
    status = data[status_at]
    if (index, wrong) in allowed:  # done (an untrained model's bytes may still not be valid text)
        assert status.startswith("✓") or status.startswith("⚠️ Generated"), status
    else:
        assert is_friendly(status), status
    assert call(url, "compress", ["ok", "text", "auto", True])[1][3].startswith("✓")  # still serving
    assert "Traceback" not in capfd.readouterr().err
    assert not any(r.exc_info for r in caplog.records)
    if (index, wrong) not in allowed:  # one log line, and its message is the one the visitor saw
        refused = [r.getMessage() for r in caplog.records if "refused:" in r.getMessage()]
        assert len(refused) == 1 and "\n" not in refused[0] and status.removeprefix("⚠️ ") in refused[0], refused


def test_no_argument_endpoints_answer_strict_json(url):
    for name in ("train_stop", "train_status", "use_trained", "use_shipped", "save_model", "export_csv"):
        event, data = call(url, name, [])
        assert event == "complete", (name, data)
