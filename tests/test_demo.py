"""bitlm.demo: the app's handlers called directly (no server, no browser), on the tiny untrained model."""
from pathlib import Path

import pandas as pd
import pytest
import torch

from bitlm import demo
from bitlm.bits import bytes_to_bits, format_bits, text_to_bits
from bitlm.codec import CodecError, compress_bits, compression_ratio
from bitlm.model import BitTransformerLM, Generation
from bitlm.train import PRESETS
from conftest import wait_until

FAILED = "⚠️"


def assert_friendly(status: str, *fragments: str) -> None:
    assert status.startswith(FAILED), status
    assert "Traceback" not in status
    for fragment in fragments:
        assert fragment in status, status


# ------------------------------------------------------------------------------------------ model loading


def test_missing_model_falls_back_to_a_fresh_one_with_a_notice(tmp_path):
    slot = demo.load_app_model(tmp_path / "nowhere", fallback_preset="tiny")
    assert_friendly(slot.notice, "No trained model", "untrained")
    assert slot.model.config == PRESETS["tiny"][0] and slot.untrained
    assert slot.notice in slot.describe() and "fallback" in slot.describe()


def test_broken_model_folder_falls_back(tmp_path):
    (tmp_path / "config.json").write_text("{ not json")
    slot = demo.load_app_model(tmp_path, fallback_preset="tiny")
    assert_friendly(slot.notice, str(tmp_path))


def test_saved_model_is_loaded(tmp_path):
    model = BitTransformerLM(PRESETS["tiny"][0])
    model.save_pretrained(tmp_path)
    slot = demo.load_app_model(tmp_path, fallback_preset="tiny")
    assert slot.notice == "" and "shipped" in slot.source
    for a, b in zip(model.state_dict().values(), slot.model.state_dict().values()):
        assert torch.equal(a, b)


def test_fallback_model_is_reproducible(tmp_path):
    a = demo.load_app_model(tmp_path, "tiny").model.state_dict()
    b = demo.load_app_model(tmp_path, "tiny").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ generate


def gen(slot, prompt="Hello", mode="text", n_bytes=6, temperature=1.0, seed=3, compress=False):
    return demo.generate(slot, prompt, mode, n_bytes, temperature, seed, compress)


def test_compression_does_not_change_the_generation(tiny_slot):
    off, on = gen(tiny_slot, compress=False), gen(tiny_slot, compress=True)
    assert off.bits and on.bits  # generated (an untrained model's bytes may still be invalid UTF-8)
    assert on.text == off.text and on.bits == off.bits
    assert off.input_ratio is None and off.output_ratio is None
    bits = text_to_bits("Hello")
    assert on.input_ratio == compression_ratio(bits, compress_bits(bits))
    generated = torch.tensor([int(c) for c in on.bits if c in "01"], dtype=torch.uint8)
    assert generated.numel() == 6 * 9
    assert on.output_ratio == compression_ratio(generated, compress_bits(generated))
    assert "Input:" in on.status and "Output:" in on.status


def test_same_seed_same_text_other_seed_other_bits(tiny_slot):
    a, b, c = gen(tiny_slot, seed=11), gen(tiny_slot, seed=11), gen(tiny_slot, seed=12, n_bytes=32)
    assert a.bits == b.bits and a.text == b.text
    assert c.bits[: len(a.bits)] != a.bits


def test_bit_and_stream_prompts_match_the_text_prompt(tiny_slot):
    bits = text_to_bits("Hi")
    by_text = gen(tiny_slot, "Hi")
    by_bits = gen(tiny_slot, format_bits(bits), "bits")
    by_stream = gen(tiny_slot, format_bits(compress_bits(bits), group=8), "compressed stream")
    assert by_text.bits == by_bits.bits == by_stream.bits
    assert by_stream.input_ratio == compression_ratio(bits, compress_bits(bits))


def test_bit_prompt_ending_mid_frame_is_completed_then_decoded(tiny_slot):
    result = gen(tiny_slot, "0110100", "bits", n_bytes=3)
    assert "mid-frame" in result.status and "first 2 generated bits" in result.status
    assert len([c for c in result.bits if c in "01"]) == 3 * 9 + 2


def test_seed_left_empty_picks_and_reports_one(tiny_slot):
    result = gen(tiny_slot, seed=None)
    assert "seed " in result.status and result.bits


def _fake_generate(data: bytes):
    """A stand-in for `model.generate` that 'samples' the given bytes."""
    def fake(prompt_bits, n_bits, **kwargs):
        bits = bytes_to_bits(data)[:n_bits]
        return Generation(bits=bits, probs=torch.full((bits.numel(),), 0.5), parity_set=len(data), output=None)
    return fake


@pytest.mark.parametrize("compress", [False, True])
def test_undecodable_output_falls_back_to_lenient_text(tiny_slot, monkeypatch, compress):
    monkeypatch.setattr(tiny_slot.model, "generate", _fake_generate(b"ok\xff\xfeok"))
    result = gen(tiny_slot, n_bytes=6, compress=compress)
    assert_friendly(result.status, "lower temperature")
    assert ("turn compression off" in result.status) == compress
    assert result.text == "ok\ufffd\ufffdok"


def test_failed_output_decompression_shows_the_raw_bits(tiny_slot, monkeypatch):
    def broken(stream):
        raise CodecError("stream truncated")
    monkeypatch.setattr(demo, "model_output_decompress", broken)
    monkeypatch.setattr(tiny_slot.model, "generate", _fake_generate(b"hello!"))
    result = gen(tiny_slot, compress=True)
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
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
]


@pytest.mark.parametrize("kwargs,fragment", BAD_GENERATE, ids=[f"{k}-{i}" for i, (k, _) in enumerate(BAD_GENERATE)])
def test_bad_generate_input_gets_a_friendly_message(tiny_slot, kwargs, fragment):
    result = gen(tiny_slot, **kwargs)
    assert_friendly(result.status, fragment)
    assert result.text == "" and result.input_ratio is None


def test_corrupted_stream_prompt_is_reported(tiny_slot):
    stream = compress_bits(text_to_bits("Hello"))
    stream[3] ^= 1  # inside the magic byte
    result = gen(tiny_slot, format_bits(stream, group=8), "compressed stream")
    assert_friendly(result.status, "Not a valid compressed stream")


def test_unexpected_errors_are_reported_and_logged(tiny_slot, monkeypatch, caplog):
    def explode(*args, **kwargs):
        raise RuntimeError("kaboom")
    monkeypatch.setattr(tiny_slot.model, "generate", explode)
    result = gen(tiny_slot)
    assert_friendly(result.status, "Unexpected error", "kaboom", "still running")
    assert "kaboom" in caplog.text


# ------------------------------------------------------------------------------------------ telemetry


@pytest.mark.parametrize("view", demo.TELEMETRY_VIEWS)
def test_telemetry_on_text(tiny_slot, view):
    result = demo.telemetry(tiny_slot, "text below", "Hi there", view, None)  # fits tiny's 144-bit context
    assert not result.status.startswith(FAILED), result.status
    assert list(result.table["name"]) == list(demo.plots.TELEMETRY_EXPLAINED)
    assert result.table["value"].notna().sum() >= 4
    bits = text_to_bits("Hi there")
    n = bits.numel() if view == "decompressed bits" else compress_bits(bits).numel()
    assert len(result.probability.data[0].y) == n
    config = tiny_slot.model.config
    assert len(result.attention) == config.n_layer and result.attention[0].shape[0] == config.n_head
    assert result.heatmap.data[0].type == "heatmap"


def test_telemetry_on_the_last_generation(tiny_slot):
    last = gen(tiny_slot, "Hi", n_bytes=4).last
    result = demo.telemetry(tiny_slot, "last generation", "", "decompressed bits", last)
    assert len(result.probability.data[0].y) == (2 + 4) * 9


def test_telemetry_crops_long_inputs_to_the_context(tiny_slot):
    result = demo.telemetry(tiny_slot, "text below", "abc" * 100, "compressed stream", None)
    assert "fit the model's context" in result.status


@pytest.mark.parametrize("source,text,view,fragment", [
    ("last generation", "", "decompressed bits", "no generation yet"),
    ("text below", "", "decompressed bits", "empty"),
    ("text below", "  ", "decompressed bits", "whitespace"),
    ("text below", HUGE, "decompressed bits", "limit"),
    ("text below", "hi", "sideways", "Unknown view"),
])
def test_bad_telemetry_input(tiny_slot, source, text, view, fragment):
    result = demo.telemetry(tiny_slot, source, text, view, None)
    assert_friendly(result.status, fragment)


def test_telemetry_without_a_generation_falls_back_to_the_text(tiny_slot):
    result = demo.telemetry(tiny_slot, "last generation", "Hello", "decompressed bits", None)
    assert "no generation yet" in result.status and result.status.startswith("✓")
    assert len(result.probability.data[0].y) == 5 * 9


def test_heatmap_clamps_layer_and_head(tiny_slot):
    attention = demo.telemetry(tiny_slot, "text below", "Hello", "decompressed bits", None).attention
    fig = demo.heatmap(attention, 99, -3)
    assert f"layer {len(attention) - 1}, head 0" in fig.layout.title.text
    assert demo.heatmap(None, 0, 0).layout.annotations[0].text == "run telemetry first"


# ------------------------------------------------------------------------------------------ codec


@pytest.mark.parametrize("method", ["auto", "stored", "rle", "deflate"])
@pytest.mark.parametrize("parity", [True, False])
def test_codec_round_trip(method, parity):
    text = "aaaaaaaaaaaaaaaabbbbbbbb — ünïcode ✓"
    packed = demo.codec_compress(text, "text", method, parity)
    assert packed.status.startswith("✓") and packed.ratio > 0
    assert f"`{method}`" in packed.status or method == "auto"
    unpacked = demo.codec_decompress(packed.bits, parity)
    assert unpacked.text == text and unpacked.ratio == packed.ratio
    assert unpacked.bits == format_bits(text_to_bits(text, parity=parity), group=9 if parity else 8,
                                        groups_per_line=demo.GROUPS_PER_LINE)


def test_codec_typed_bits_round_trip():
    packed = demo.codec_compress("0000 0000 0000 1111 1111 1", "bits", "rle", True)
    unpacked = demo.codec_decompress(packed.bits, False)
    assert unpacked.bits.replace(" ", "").replace("\n", "") == "0" * 12 + "1" * 9
    assert "not clean text" in unpacked.status  # 21 bits are not whole bytes: said, not failed


def test_codec_corrupted_and_truncated_streams():
    good = compress_bits(text_to_bits("Hello, codec"))
    truncated = format_bits(good[:-5], group=8)
    bad_magic = good.clone()
    bad_magic[0] ^= 1
    for stream in (truncated, format_bits(bad_magic, group=8), "0" * 10):
        assert_friendly(demo.codec_decompress(stream, True).status, "Not a valid compressed stream")


@pytest.mark.parametrize("call,fragment", [
    (lambda: demo.codec_compress("", "text", "auto", True), "empty"),
    (lambda: demo.codec_compress(" \n ", "text", "auto", True), "whitespace"),
    (lambda: demo.codec_compress(HUGE, "text", "auto", True), "limit"),
    (lambda: demo.codec_compress("01x", "bits", "auto", True), "invalid character 'x'"),
    (lambda: demo.codec_compress("1" * 1_000_000, "bits", "auto", True), "limit"),
    (lambda: demo.codec_compress("hi", "text", "zip", True), "Unknown method"),
    (lambda: demo.codec_decompress("", True), "empty"),
    (lambda: demo.codec_decompress("   ", True), "empty"),
    (lambda: demo.codec_decompress("0101 01O1", True), "invalid character 'O'"),
    (lambda: demo.codec_decompress("1" * 1_000_000, True), "limit"),
])
def test_bad_codec_input(call, fragment):
    result = call()
    assert_friendly(result.status, fragment)
    assert result.bits == "" and result.ratio is None


# ------------------------------------------------------------------------------------------ training


@pytest.fixture
def session(tmp_path):
    session = demo.TrainingSession(tmp_path / "runs")
    yield session
    if session.running:
        session.stop()
        wait_until(lambda: not session.running, 60, what="the run to stop")


def start(session, steps=20, corpus="pydoc", upload=None, multitask=False):
    return session.start(corpus, upload, "tiny", steps, 0.5, multitask)


def test_training_run_end_to_end(session, tiny_slot, tmp_path):
    assert session.snapshot().status.startswith("No training run yet")
    assert start(session, steps=20, multitask=True).startswith("✓")
    wait_until(lambda: not session.running, 120, what="the run to finish")
    snap = session.snapshot()
    assert snap.status.startswith("✓ Training finished at step 20/20"), snap.status
    assert snap.table["step"].tolist() == [10, 20]
    assert snap.table["direct_loss"].notna().all()  # multi-task: the model read streams directly
    assert {t.name for t in snap.loss.data} >= {"raw", "compressed", "direct (reads stream)"}
    assert len(snap.loss.data[0].x) == 2

    files, status = session.export_csv()
    assert status.startswith("✓")
    assert pd.read_csv(files[0])["step"].tolist() == [10, 20]

    files, status = session.save()
    assert status.startswith("✓") and {Path(f).name for f in files} >= {"config.json", "model.safetensors"}
    assert BitTransformerLM.from_pretrained(str(Path(files[0]).parent)).config == PRESETS["tiny"][0]

    slot = demo.ModelSlot(tiny_slot.model, "test")
    assert session.use_trained(slot).startswith("✓")
    assert "trained in this session" in slot.describe()
    assert slot.model is not session._trainer.model  # a copy: training can never touch it
    assert gen(slot).bits


def test_one_run_at_a_time_and_stop(session):
    assert_friendly(session.stop(), "No training run is in progress")
    assert start(session, steps=demo.TRAIN_MAX_STEPS).startswith("✓")
    assert_friendly(start(session), "already in progress")
    assert_friendly(session.use_trained(demo.ModelSlot(BitTransformerLM(PRESETS["tiny"][0]), "x")), "still running")
    assert session.stop().startswith("✓")
    wait_until(lambda: not session.running, 60, what="the run to stop")
    assert "stopped" in session.snapshot().status
    assert start(session, steps=10).startswith("✓")  # a new run after the stop


def test_nothing_to_use_save_or_export_before_a_run(session, tiny_slot):
    assert_friendly(session.use_trained(tiny_slot), "no trained model")
    assert_friendly(session.save()[1], "no trained model")
    files, status = session.export_csv()
    assert files is None
    assert_friendly(status, "no metrics")


def test_generation_keeps_working_while_training(session, tiny_slot):
    assert start(session, steps=demo.TRAIN_MAX_STEPS).startswith("✓")
    results = [gen(tiny_slot, seed=5) for _ in range(3)]
    assert session.running
    assert results[0].bits and all(r.bits == results[0].bits for r in results)


@pytest.mark.parametrize("content,fragment", [
    (b"", "empty"),
    (b"caf\xe9 au lait " * 10, "not UTF-8"),
    (bytes(range(256)) * 4, "binary"),
])
def test_bad_uploads(session, tmp_path, content, fragment):
    path = tmp_path / "upload.txt"
    path.write_bytes(content)
    status = start(session, corpus="uploaded .txt", upload=str(path))
    assert_friendly(status, "upload.txt", fragment)
    assert str(tmp_path) not in status  # the server's temp path means nothing to the user
    assert not session.running


def test_upload_size_cap_and_missing_upload(session, tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"a" * (demo.UPLOAD_MAX_BYTES + 1))
    assert_friendly(start(session, corpus="uploaded .txt", upload=str(path)), "limit is 5 MB")
    assert_friendly(start(session, corpus="uploaded .txt", upload=None), "No file uploaded")


def test_uploaded_text_trains(session, tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    assert start(session, steps=10, corpus="uploaded .txt", upload=str(path)).startswith("✓")
    wait_until(lambda: not session.running, 60, what="the run to finish")
    assert session.snapshot().table["step"].tolist() == [10]


@pytest.mark.parametrize("steps,prob,preset,corpus,fragment", [
    (0, 0.5, "tiny", "pydoc", "number of steps"),
    ("lots", 0.5, "tiny", "pydoc", "number of steps"),
    (10, 1.5, "tiny", "pydoc", "compress_prob"),
    (10, 0.5, "huge", "pydoc", "Unknown model size"),
    (10, 0.5, "tiny", "wikipedia", "Unknown corpus"),
])
def test_bad_training_settings(session, steps, prob, preset, corpus, fragment):
    assert_friendly(session.start(corpus, None, preset, steps, prob, False), fragment)
    assert not session.running


def test_refresh_training_drives_the_timer(session):
    idle = demo.refresh_training(session)
    assert len(idle) == 6 and idle[-1].active is False
    start(session, steps=demo.TRAIN_MAX_STEPS)
    assert demo.refresh_training(session)[-1].active is True



def test_a_failing_run_is_reported_and_the_next_one_can_start(session, monkeypatch, caplog):
    def explode(self, on_log=None):
        raise RuntimeError("out of memory (simulated)")
    monkeypatch.setattr(demo.Trainer, "run", explode)
    assert start(session).startswith("✓")
    wait_until(lambda: not session.running, 30, what="the failed run to end")
    assert_friendly(session.snapshot().status, "Training failed", "out of memory (simulated)", "still running")
    assert "out of memory" in caplog.text
    monkeypatch.undo()
    assert start(session, steps=10).startswith("✓")


def test_codec_neural_round_trip_and_table(tiny_slot):
    calls = []
    result = demo.codec_neural(tiny_slot, "héllo → 世界, to be or not to be", lambda f, what: calls.append((f, what)))
    assert result.status.startswith("✓") and "round trip exact" in result.status
    methods = list(result.table["method"])
    assert methods[:2] == ["model (neural codec)", "model cross-entropy (ideal coder)"]
    assert {"zlib -9", "bz2 -9", "lzma -9e"} <= set(methods)
    rates = dict(zip(result.table["method"], result.table["bits per byte"]))
    assert rates["model (neural codec)"] >= rates["model cross-entropy (ideal coder)"]
    assert {what for _, what in calls} == {"encoding", "decoding"}
    assert "no better than chance" in result.status  # the untrained fallback says so
    loaded = demo.ModelSlot(tiny_slot.model, "a model named 'untrained' by its folder")
    assert "no better than chance" not in demo.codec_neural(loaded, "to be or not to be").status


@pytest.mark.parametrize("text,fragment", [("", "empty"), ("   ", "whitespace"), ("x" * (demo.NEURAL_MAX_CHARS + 1), "limit")])
def test_codec_neural_bad_input(tiny_slot, text, fragment):
    assert_friendly(demo.codec_neural(tiny_slot, text).status, fragment)
