"""bitlm.app's Generate and Telemetry tabs: the app's work on one model called directly (no server, no browser), on the tiny untrained model."""
import dataclasses
import json
import threading

import pytest
import torch

from bitlm.app import codec_tab, generate_tab, inputs, telemetry_tab
from bitlm.bits.frames import bytes_to_bits, format_bits, text_to_bits
from bitlm.bits.codec import CodecError, compress_bits, compression_ratio
from bitlm.generate.decoder import Generation
from bitlm.model.config import BitLMConfig
from bitlm.model.telemetry import negentropy
from bitlm.model.transformer import BitTransformerLM
from bitlm.app.visitors import AppModel
from conftest import FAILED, assert_friendly


# ------------------------------------------------------------------------------------------ generate


def gen(model, prompt="Hello", mode="text", n_bytes=6, temperature=1.0, seed=3, compress=False, gate_mode="off",
        gate_window=None):
    return generate_tab.generate_all(model, prompt, mode, n_bytes, temperature, seed, compress, gate_mode, gate_window)


def frames_of(bits_text: str) -> list[str]:
    return bits_text.split()


def test_compression_does_not_change_the_generation(tiny_model):
    off, on = gen(tiny_model, compress=False), gen(tiny_model, compress=True)
    assert off.bits and on.bits  # generated (an untrained model's bytes may still be invalid UTF-8)
    assert on.text == off.text and on.bits == off.bits
    assert off.input_ratio is None and off.output_ratio is None
    bits = text_to_bits("Hello")
    assert on.input_ratio == compression_ratio(bits, compress_bits(bits))
    generated = torch.tensor([int(c) for c in on.bits if c in "01"], dtype=torch.uint8)
    assert generated.numel() == 6 * 9
    assert on.output_ratio == compression_ratio(generated, compress_bits(generated))
    assert "Input:" in on.status and "Output:" in on.status


def test_same_seed_same_text_other_seed_other_bits(tiny_model):
    a, b, c = gen(tiny_model, seed=11), gen(tiny_model, seed=11), gen(tiny_model, seed=12, n_bytes=32)
    assert a.bits == b.bits and a.text == b.text
    assert c.bits[: len(a.bits)] != a.bits


def test_bit_and_stream_prompts_match_the_text_prompt(tiny_model):
    bits = text_to_bits("Hi")
    by_text = gen(tiny_model, "Hi")
    by_bits = gen(tiny_model, format_bits(bits), "bits")
    by_stream = gen(tiny_model, format_bits(compress_bits(bits), group=8), "compressed stream")
    assert by_text.bits == by_bits.bits == by_stream.bits
    assert by_stream.input_ratio == compression_ratio(bits, compress_bits(bits))


def test_bit_prompt_ending_mid_frame_is_completed_then_decoded(tiny_model):
    result = gen(tiny_model, "0110100", "bits", n_bytes=3)
    assert "mid-frame" in result.status and "first 2 generated bits" in result.status
    first, *frames = result.bits.split("\n")
    assert len(first) == 2 and set(first) <= {"0", "1"}  # the completing bits, on a line of their own
    groups = " ".join(frames).split()
    assert [len(g) for g in groups] == [9, 9, 9]
    assert all(g.count("1") % 2 == 0 for g in groups)  # true frames: even parity


def test_generation_streams_then_ends_with_the_full_result(tiny_model):
    results = list(generate_tab.generate(tiny_model, "Hello", "text", 40, 0.8, 5, True))
    partial, final = results[:-1], results[-1]
    assert len(partial) >= 2 and all(r.status.startswith("Generating…") for r in partial)
    assert all(r.output_ratio is None and r.last is None for r in partial)
    lengths = [len(frames_of(r.bits)) for r in partial]
    assert lengths == sorted(lengths) and lengths[-1] < 40
    assert final.output_ratio is not None and final.last is not None
    assert final.bits == gen(tiny_model, n_bytes=40, temperature=0.8, seed=5, compress=True).bits
    assert final.bits.startswith(partial[-1].bits)


def test_closing_a_stream_stops_the_generation(tiny_model, monkeypatch):
    made = []
    real = type(tiny_model.model).generate_stream

    def counting(self, *args, **kwargs):
        for g in real(self, *args, **kwargs):
            made.append(g.bits.numel())
            yield g
    monkeypatch.setattr(type(tiny_model.model), "generate_stream", counting)
    stream = generate_tab.generate(tiny_model, "Hello", "text", generate_tab.GEN_MAX_BYTES, 1.0, 1, False)
    next(stream)
    stream.close()
    assert len(made) == 1 and made[0] < generate_tab.GEN_MAX_BYTES * 9
    assert torch.is_grad_enabled()  # a stopped generation leaves this thread as it found it (training needs grad)


def test_stop_ends_the_generation_with_its_own_final_result(tiny_model):
    """The visitor's Stop (`should_stop` turning True) ends the generation at that chunk: its final result
    keeps every byte streamed so far, with ratios and a "Stopped" status, and matches the unstopped
    generation's opening bytes."""
    asked = []
    stream = generate_tab.generate(tiny_model, "Hello", "text", 400, 0.8, 5, True,
                                   should_stop=lambda: asked.append(1) or len(asked) >= 2)
    results = list(stream)
    partial, final = results[:-1], results[-1]
    assert len(partial) == 2 and len(asked) == 2
    made = len(frames_of(final.bits))
    assert made == len(frames_of(partial[-1].bits)) and 0 < made < 400
    assert final.status.startswith(f"⏹ Stopped: generated {made} of 400 bytes") or \
        final.status.startswith(f"⚠️ Stopped: generated {made} of 400 bytes"), final.status
    assert final.output_ratio is not None and final.last is not None
    full = gen(tiny_model, n_bytes=400, temperature=0.8, seed=5, compress=True)
    assert full.bits.startswith(final.bits) and "Stopped" not in full.status


def test_a_stream_resumed_on_other_threads_still_generates(tiny_model):
    """Gradio may run each step of a streamed generation on another worker thread (grad mode is per thread)."""
    stream = generate_tab.generate(tiny_model, "Hello", "text", 40, 0.8, 5, False)
    results = []
    while True:
        box = []
        worker = threading.Thread(target=lambda: box.append(next(stream, None)))
        worker.start()
        worker.join()
        if box[0] is None:
            break
        results.append(box[0])
    assert len(results) >= 2 and results[-1].status.startswith(("✓", "⚠️ Generated")), results[-1].status
    assert torch.is_grad_enabled()
    assert results[-1].bits == gen(tiny_model, n_bytes=40, temperature=0.8, seed=5).bits


@pytest.mark.parametrize("seed", [0, generate_tab.SEED_MAX, str(generate_tab.SEED_MAX), float(generate_tab.SEED_MAX)])
def test_every_seed_the_message_allows_is_accepted(tiny_model, seed):
    result = gen(tiny_model, seed=seed)
    assert f"(seed {int(seed)})" in result.status and result.bits
    assert_friendly(gen(tiny_model, seed=generate_tab.SEED_MAX + 1).status, f"0 to {generate_tab.SEED_MAX:,}")


@pytest.mark.parametrize("kwargs", [dict(n_bytes=1), dict(n_bytes=generate_tab.GEN_MAX_BYTES), dict(temperature=0),
                                    dict(temperature=generate_tab.TEMPERATURE_MAX), dict(prompt="x" * generate_tab.PROMPT_MAX_CHARS),
                                    dict(prompt="1" * generate_tab.PROMPT_MAX_BITS, mode="bits")])
def test_every_generate_bound_the_ui_states_is_accepted(tiny_model, kwargs):
    result = gen(tiny_model, **kwargs)
    assert "Generated" in result.status and result.bits, result.status


@pytest.mark.parametrize("call", [lambda: codec_tab.compress("x" * codec_tab.CODEC_MAX_CHARS, "text", "auto", True),
                                  lambda: codec_tab.compress("1" * codec_tab.CODEC_MAX_BITS, "bits", "auto", True)])
def test_every_codec_bound_the_ui_states_is_accepted(call):
    assert call().status.startswith("✓")


@pytest.mark.parametrize("seed", [None, "", "  "])
def test_seed_left_empty_picks_and_reports_one(tiny_model, seed):
    result = gen(tiny_model, seed=seed)
    assert "seed " in result.status and result.bits


def _fake_generate(data: bytes):
    """A stand-in for `model.generate_stream` that 'samples' the given bytes."""
    def fake(prompt_bits, n_bits, **kwargs):
        bits = bytes_to_bits(data)[:n_bits]
        yield Generation(bits=bits, probs=torch.full((bits.numel(),), 0.5), parity_set=len(data), output=None)
    return fake


@pytest.mark.parametrize("compress", [False, True])
def test_undecodable_output_falls_back_to_lenient_text(tiny_model, monkeypatch, compress):
    monkeypatch.setattr(tiny_model.model, "generate_stream", _fake_generate(b"ok\xff\xfeok"))
    result = gen(tiny_model, n_bytes=6, compress=compress)
    assert_friendly(result.status, "lower temperature")
    assert ("turn compression off" in result.status) == compress
    assert result.text == "ok\ufffd\ufffdok"


def test_failed_output_decompression_shows_the_raw_bits(tiny_model, monkeypatch):
    def broken(stream):
        raise CodecError("stream truncated")
    monkeypatch.setattr(generate_tab, "model_output_decompress", broken)
    monkeypatch.setattr(tiny_model.model, "generate_stream", _fake_generate(b"hello!"))
    result = gen(tiny_model, compress=True)
    assert result.text == "hello!"
    assert "did not decompress" in result.status and "turn compression off" in result.status


HUGE = "x" * 1_000_000
BAD_GENERATE = [
    ({"prompt": ""}, "empty"),
    ({"prompt": "   \n\t"}, "whitespace"),
    ({"prompt": HUGE}, "limit is 2,000"),
    ({"prompt": "", "mode": "bits"}, "empty"),
    ({"prompt": "  ", "mode": "bits"}, "empty"),
    ({"prompt": "___", "mode": "bits"}, "no bits"),
    ({"prompt": "0101 2", "mode": "bits"}, "invalid character '2' at position 5"),
    ({"prompt": "1" * 1_000_000, "mode": "bits"}, "limit is 18,000 bits"),
    ({"prompt": "0" * 100, "mode": "compressed stream"}, "Not a valid compressed stream"),
    ({"prompt": "hello", "mode": "compressed stream"}, "not a bit string"),
    ({"mode": "poetry"}, "Unknown prompt mode"),
    ({"n_bytes": 0}, "length"),
    ({"n_bytes": 10**9}, "length"),
    ({"n_bytes": "many"}, "must be a number"),
    ({"n_bytes": None}, "length must be a number"),
    ({"n_bytes": float("inf")}, "finite"),
    ({"n_bytes": True}, "must be a number"),
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": float("nan")}, "temperature must be a finite number"),
    ({"temperature": "warm"}, "temperature must be a number"),
    ({"temperature": None}, "temperature must be a number"),
    ({"temperature": generate_tab.TEMPERATURE_MAX + 0.01}, "from 0 to 2"),
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"seed": "abc"}, "seed must be a number"),
    ({"seed": float("nan")}, "seed must be a finite number"),
    ({"seed": [1]}, "seed must be a number"),
    ({"prompt": None}, "empty"),
    ({"prompt": 42}, "must be text"),
    ({"mode": None}, "Unknown prompt mode"),
    ({"compress": None}, "Enable Compression setting must be true or false"),
    ({"compress": "yes"}, "must be true or false"),
]


@pytest.mark.parametrize("kwargs,fragment", BAD_GENERATE, ids=[f"{k}-{i}" for i, (k, _) in enumerate(BAD_GENERATE)])
def test_bad_generate_input_gets_a_friendly_message(tiny_model, kwargs, fragment):
    result = gen(tiny_model, **kwargs)
    assert_friendly(result.status, fragment)
    assert result.text == "" and result.input_ratio is None


def test_corrupted_stream_prompt_is_reported(tiny_model):
    stream = compress_bits(text_to_bits("Hello"))
    stream[3] ^= 1  # inside the magic byte
    result = gen(tiny_model, format_bits(stream, group=8), "compressed stream")
    assert_friendly(result.status, "Not a valid compressed stream")


def test_an_input_error_is_one_log_line_without_traceback(tiny_model, caplog):
    gen(tiny_model, n_bytes="lots")
    lines = [r for r in caplog.records if r.name == "bitlm.app"]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert "generate refused" in lines[0].getMessage() and "\n" not in lines[0].getMessage()


def test_unexpected_errors_are_reported_and_logged(tiny_model, monkeypatch, caplog):
    def explode(*args, **kwargs):
        raise RuntimeError("kaboom")
    monkeypatch.setattr(tiny_model.model, "generate_stream", explode)
    result = gen(tiny_model)
    assert_friendly(result.status, "Unexpected error", "kaboom", "still running")
    assert "kaboom" in caplog.text and any(r.exc_info for r in caplog.records)  # a bug keeps its traceback


# ------------------------------------------------------------------------------------------ the safety gate


@pytest.fixture(scope="module")
def gated(gated_model_dir):
    """An untrained small model with calibrated floors (16- and 32-byte windows): greedy, it loops at once."""
    from bitlm.app.visitors import load_app_model
    return load_app_model(gated_model_dir)


def looping(model, gate_mode, **kwargs):
    return gen(model, "KING.\n", n_bytes=120, temperature=0, gate_mode=gate_mode, gate_window=16, **kwargs)


def test_the_models_gate_windows_and_fields(gated, tiny_model):
    assert generate_tab.gate_windows(gated) == ([16, 32], 16)  # no 64: the smallest is the default
    assert generate_tab.gate_windows(tiny_model) == ([], None)
    assert "warn: mark" in generate_tab.gate_info(gated) and "0.01 quantile" in generate_tab.gate_info(gated)
    assert generate_tab.gate_info(tiny_model).startswith("Off for this model: the untrained fallback")


def test_warn_marks_a_greedy_loop_and_changes_no_bit(gated):
    off, warned = looping(gated, "off"), looping(gated, "warn", compress=True)
    assert (warned.bits, warned.text) == (off.bits, off.text)
    assert off.gate_chart is None and off.gate_events is None and "Safety gate" not in off.status
    event = warned.gate_events[0]
    assert event["metric"] == "C" and event["action"] == "warn" and event["value"] < event["floor"]
    assert event["start"] < 16 and event["end"] > 16  # caught within the first windows
    assert "**Safety gate** (warn, 16-byte window): a repetition loop from byte " in warned.status
    assert "marked 1 span" in warned.status
    names = [t.name for t in warned.gate_chart.data]
    assert "C floor" in names and "marked (warn)" in names
    json.dumps(warned.gate_events, allow_nan=False)  # strict JSON for the API


def test_the_gate_streams_its_chart_and_words(gated):
    results = list(generate_tab.generate(gated, "KING.\n", "text", 400, 0, 3, False, "warn", 16))
    partial = [r for r in results[:-1] if r.gate_events]
    assert partial and all("a repetition loop" in r.status for r in partial)
    assert all(r.gate_chart is not None and r.status.startswith("Generating…") for r in results[:-1])
    s_name = generate_tab.plots.GATE_SERIES[1][1]
    checks = [len(next(t for t in r.gate_chart.data if t.name == s_name).x) for r in results]  # grows with the text
    assert checks == sorted(checks) and checks[-1] > checks[0]


def test_stop_ends_the_text_before_the_loop_and_retry_says_how_often(gated):
    stopped = looping(gated, "stop")
    event = stopped.gate_events[-1]
    assert event["action"] == "stop" and len(stopped.bits.split()) == event["start"]
    assert f"Generated {event['start']} bytes of 120 (the gate stopped it)" in stopped.status
    assert stopped.status.count("stopped") >= 2 and ": stopped." in stopped.status
    retried = looping(gated, "retry")
    assert retried.gate_events[0]["action"] == "retry" and retried.gate_events[0]["temperature"] > 0
    assert "retried " in retried.status


BAD_GATE = [
    ({"gate_mode": "loud"}, "Unknown gate mode"),
    ({"gate_mode": None}, "Unknown gate mode"),
    ({"gate_mode": "warn", "gate_window": 64}, "no floors for a 64-byte window"),
    ({"gate_mode": "warn", "gate_window": "wide"}, "gate window must be a number"),
    ({"gate_mode": "warn", "gate_window": 16.5}, "whole number"),
]


@pytest.mark.parametrize("kwargs,fragment", BAD_GATE, ids=[f"gate-{i}" for i in range(len(BAD_GATE))])
def test_bad_gate_input_gets_a_friendly_message(gated, kwargs, fragment):
    assert_friendly(gen(gated, **kwargs).status, fragment)


def test_a_model_without_floors_refuses_the_gate_and_ignores_the_window_when_off(tiny_model):
    assert_friendly(gen(tiny_model, gate_mode="warn").status, "safety gate is off", "python -m bitlm.cli.gate calibrate")
    assert gen(tiny_model, gate_mode="off", gate_window="anything").bits  # off: the window is not read


# ------------------------------------------------------------------------------------------ telemetry


@pytest.mark.parametrize("view", telemetry_tab.TELEMETRY_VIEWS)
def test_telemetry_on_text(tiny_model, view):
    result = telemetry_tab.telemetry(tiny_model, "text below", "Hi there", view, None)  # fits tiny's 144-bit context
    assert not result.status.startswith(FAILED), result.status
    assert list(result.table["name"]) == list(generate_tab.plots.TELEMETRY_EXPLAINED)
    assert result.table["value"].notna().sum() >= 4
    bits = text_to_bits("Hi there")
    n = bits.numel() if view == "decompressed bits" else compress_bits(bits).numel()
    assert len(result.probability.data[0].y) == n
    config = tiny_model.model.config
    assert len(result.attention) == config.n_layer and result.attention[0].shape[0] == config.n_head
    assert result.heatmap.data[0].type == "heatmap"


def test_telemetry_on_the_last_generation(tiny_model):
    last = gen(tiny_model, "Hi", n_bytes=4).last
    result = telemetry_tab.telemetry(tiny_model, "last generation", "", "decompressed bits", last)
    assert len(result.probability.data[0].y) == (2 + 4) * 9


@pytest.mark.parametrize("view", telemetry_tab.TELEMETRY_VIEWS)
def test_telemetry_covers_the_whole_text(tiny_model, view):
    """2 000 characters, far past tiny's 144-bit block: the model reads every bit (sliding), K and S describe
    all of them, and the chart is one dot per byte (or per 8 stream bits) with a smoothed line."""
    text = ("Now is the winter of our discontent made glorious summer by this sun of York; " * 30)[:2000]
    result = telemetry_tab.telemetry(tiny_model, "text below", text, view, None)
    assert not result.status.startswith(FAILED), result.status
    bits = text_to_bits(text)
    read = bits if view == "decompressed bits" else compress_bits(bits)
    assert f"read all {read.numel():,} bits" in result.status, result.status
    k = float(result.table.set_index("name").loc["K", "value"])
    assert k == pytest.approx(negentropy(read), abs=1e-4)
    dots, smooth = result.probability.data[:2]
    assert len(dots.y) == (2000 if view == "decompressed bits" else read.numel() // 8)
    assert len(smooth.y) == len(dots.y) and "mean over" in smooth.name
    if view == "decompressed bits":
        assert dots.text[0] == "'N'"


def test_a_model_that_cannot_slide_reads_the_last_block(tiny_model):
    config = dataclasses.replace(tiny_model.model.config, pos="learned", attn_window=0)
    v1 = dataclasses.replace(tiny_model, model=BitTransformerLM(config).eval())
    result = telemetry_tab.telemetry(v1, "text below", "abc" * 100, "compressed stream", None)
    assert "fit this model's context" in result.status, result.status


@pytest.mark.parametrize("source,text,view,fragment", [
    ("last generation", "", "decompressed bits", "no generation yet"),
    ("text below", "", "decompressed bits", "empty"),
    ("text below", "  ", "decompressed bits", "whitespace"),
    ("text below", HUGE, "decompressed bits", "limit"),
    ("text below", "hi", "sideways", "Unknown view"),
    ("text below", 12, "decompressed bits", "must be text"),
    (None, "hi", "decompressed bits", "Unknown source"),
    ("text below", "hi", None, "Unknown view"),
])
def test_bad_telemetry_input(tiny_model, source, text, view, fragment):
    result = telemetry_tab.telemetry(tiny_model, source, text, view, None)
    assert_friendly(result.status, fragment)


def test_telemetry_without_a_generation_falls_back_to_the_text(tiny_model):
    result = telemetry_tab.telemetry(tiny_model, "last generation", "Hello", "decompressed bits", None)
    assert "no generation yet" in result.status and result.status.startswith("✓")
    assert len(result.probability.data[0].y) == 5 * 9


@pytest.mark.parametrize("layer,head,fragment", [("x", 0, "layer must be a number"), (0, float("nan"), "head must be a finite"),
                                                  (-1, 0, "layer must be a whole number from 0")])
def test_bad_layer_or_head(tiny_model, layer, head, fragment):
    result = telemetry_tab.telemetry(tiny_model, "text below", "Hi", "decompressed bits", None, layer, head)
    assert_friendly(result.status, fragment)


def test_failed_telemetry_table_is_strict_json(tiny_model):
    table = telemetry_tab.telemetry(tiny_model, "text below", "", "decompressed bits", None).table
    json.dumps(table.values.tolist(), allow_nan=False)  # raises on NaN


def test_heatmap_clamps_layer_and_head(tiny_model):
    attention = telemetry_tab.telemetry(tiny_model, "text below", "Hello", "decompressed bits", None).attention
    fig = telemetry_tab.heatmap(attention, 99, -3)
    assert f"layer {len(attention) - 1}, head 0" in fig.layout.title.text
    assert telemetry_tab.heatmap(None, 0, 0).layout.annotations[0].text == "run telemetry first"


# ------------------------------------------------------------------------------------------ codec


@pytest.mark.parametrize("method", ["auto", "stored", "rle", "deflate"])
@pytest.mark.parametrize("parity", [True, False])
def test_codec_round_trip(method, parity):
    text = "aaaaaaaaaaaaaaaabbbbbbbb — ünïcode ✓"
    packed = codec_tab.compress(text, "text", method, parity)
    assert packed.status.startswith("✓") and packed.ratio > 0
    assert f"`{method}`" in packed.status or method == "auto"
    unpacked = codec_tab.decompress(packed.bits, parity)
    assert unpacked.text == text and unpacked.ratio == packed.ratio
    assert unpacked.bits == format_bits(text_to_bits(text, parity=parity), group=9 if parity else 8,
                                        groups_per_line=inputs.GROUPS_PER_LINE)


def test_codec_typed_bits_round_trip():
    packed = codec_tab.compress("0000 0000 0000 1111 1111 1", "bits", "rle", True)
    unpacked = codec_tab.decompress(packed.bits, False)
    assert unpacked.bits.replace(" ", "").replace("\n", "") == "0" * 12 + "1" * 9
    assert "not clean text" in unpacked.status  # 21 bits are not whole bytes: said, not failed


def test_codec_corrupted_and_truncated_streams():
    good = compress_bits(text_to_bits("Hello, codec"))
    truncated = format_bits(good[:-5], group=8)
    bad_magic = good.clone()
    bad_magic[0] ^= 1
    for stream in (truncated, format_bits(bad_magic, group=8), "0" * 10):
        assert_friendly(codec_tab.decompress(stream, True).status, "Not a valid compressed stream")


@pytest.mark.parametrize("call,fragment", [
    (lambda: codec_tab.compress("", "text", "auto", True), "empty"),
    (lambda: codec_tab.compress(" \n ", "text", "auto", True), "whitespace"),
    (lambda: codec_tab.compress(HUGE, "text", "auto", True), "limit"),
    (lambda: codec_tab.compress("01x", "bits", "auto", True), "invalid character 'x'"),
    (lambda: codec_tab.compress("1" * 1_000_000, "bits", "auto", True), "limit"),
    (lambda: codec_tab.compress("hi", "text", "zip", True), "Unknown method"),
    (lambda: codec_tab.decompress("", True), "empty"),
    (lambda: codec_tab.decompress("   ", True), "empty"),
    (lambda: codec_tab.decompress("0101 01O1", True), "invalid character 'O'"),
    (lambda: codec_tab.decompress("1" * 1_000_000, True), "limit"),
    (lambda: codec_tab.compress(None, "text", "auto", True), "empty"),
    (lambda: codec_tab.compress(3.5, "text", "auto", True), "must be text"),
    (lambda: codec_tab.compress("hi", None, "auto", True), "Unknown input mode"),
    (lambda: codec_tab.compress("hi", "text", "auto", "no"), "parity setting must be true or false"),
    (lambda: codec_tab.decompress(101, True), "must be text of 0s and 1s"),
    (lambda: codec_tab.decompress("0101", None), "parity setting"),
])
def test_bad_codec_input(call, fragment):
    result = call()
    assert_friendly(result.status, fragment)
    assert result.bits == "" and result.ratio is None


def test_codec_neural_round_trip_and_table(tiny_model):
    calls = []
    result = codec_tab.codec_neural(tiny_model, "héllo → 世界, to be or not to be", lambda f, what: calls.append((f, what)))
    assert result.status.startswith("✓") and "round trip exact" in result.status
    methods = list(result.table["method"])
    assert methods[:2] == ["model (neural codec)", "model cross-entropy (ideal coder)"]
    assert {"zlib -9", "bz2 -9", "lzma -9e"} <= set(methods)
    rates = dict(zip(result.table["method"], result.table["bits per byte"]))
    assert rates["model (neural codec)"] >= rates["model cross-entropy (ideal coder)"]
    assert {what for _, what in calls} == {"encoding", "decoding"}
    assert "no better than chance" in result.status  # the untrained fallback says so
    loaded = AppModel(tiny_model.model, "a model named 'untrained' by its folder")
    assert "no better than chance" not in codec_tab.codec_neural(loaded, "to be or not to be").status


def test_codec_neural_is_the_exact_codec_and_says_why_a_v1_model_cannot_drive_it(tiny_model):
    """The button's stream is the file codec's neural container (it decodes with `decompress_file`); a v1
    model gets the exact path's reason, not a traceback."""
    from bitlm.compress import container
    text = "to be or not to be, that is the question"
    blob = container.compress_file(text.encode(), tiny_model.model, methods=("neural",)).blob
    status = codec_tab.codec_neural(tiny_model, text).status
    assert f"→ {len(blob):,} bytes with the model" in status
    v1 = AppModel(BitTransformerLM(BitLMConfig(n_layer=1, n_head=2, n_embd=16, block_size=144, pos="learned")), "v1")
    assert_friendly(codec_tab.codec_neural(v1, text).status, "neural method could not run", "ALiBi")


@pytest.mark.parametrize("text,fragment", [("", "empty"), ("   ", "whitespace"), ("x" * (codec_tab.NEURAL_MAX_CHARS + 1), "limit"),
                                           (None, "empty"), (float("nan"), "must be text")])
def test_codec_neural_bad_input(tiny_model, text, fragment):
    assert_friendly(codec_tab.codec_neural(tiny_model, text).status, fragment)


def test_empty_states_look_intended(tmp_path):
    """Before any run: every table shows its real column names (Gradio's default is "1 | 2 | 3"), no
    number field shows a 0 (the ratios appear with the first result) and the gate's chart is hidden while
    the gate is off."""
    import gradio as gr

    import app
    blocks = app.build_demo(model_dir=tmp_path / "no-model", run_root=tmp_path / "runs")
    components = list(blocks.blocks.values())
    tables = [c for c in components if isinstance(c, gr.Dataframe)]
    assert len(tables) >= 4
    for table in tables:
        headers = table.value["headers"]
        assert headers and all(isinstance(h, str) and not h.isdigit() for h in headers), (table.label, headers)
    by_id = {c.elem_id: c for c in components if getattr(c, "elem_id", None)}
    assert by_id["gate-plot"].visible is False
    ratios = [c for c in components if isinstance(c, gr.Number) and "ratio" in (c.label or "").lower()]
    assert len(ratios) == 3
    for number in ratios:                      # hidden, or inside a hidden row
        shown, node = number.visible, number.parent
        while shown is not False and node is not None:
            shown, node = node.visible, node.parent
        assert shown is False, number.label


def test_every_slider_says_what_it_does_with_a_value_out_of_range(tmp_path):
    """The browser sets a slider's typed value outside its range to the nearest end: every slider's note
    says so (the rule of docs/app.md), and the API refuses such values (see the generate tests)."""
    import gradio as gr

    import app
    blocks = app.build_demo(model_dir=tmp_path / "no-model", run_root=tmp_path / "runs")
    sliders = [c for c in blocks.blocks.values() if isinstance(c, gr.Slider)]
    assert len(sliders) >= 3
    for slider in sliders:
        assert "set to the nearest end" in (slider.info or ""), slider.label
