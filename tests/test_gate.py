"""The K/C/S safety gate: metric definitions, calibration and its file, and what generation does with
a gate in each mode (a greedy loop caught within two windows; warn changes no bit)."""
import json
import math

import numpy as np
import pytest
import torch

from bitlm.bits.frames import text_to_bits
from bitlm.cli.gate import main
from bitlm.train.evaluate import gate_windows
from bitlm.generate.gate import (
    GateConfig, GateFloors, describe, false_alarm_rates, floors_from, load_floors, save_floors, window_metrics,
)
from bitlm.model.config import BitLMConfig
from bitlm.model.transformer import BitTransformerLM
from bitlm.model.telemetry import lz_complexity, negentropy, symbiosis

TEXT = ("KING. My lord, the night is cold and the watch is set; go, tell the queen the news.\n"
        "QUEEN. Then let the trumpets sound, for we will meet them at the gates of York.\n") * 6
WINDOW = 16


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BitTransformerLM(BitLMConfig(block_size=144, n_layer=1, n_head=2, n_embd=16)).eval()


@pytest.fixture(scope="module")
def floors(model):
    return floors_from(gate_windows(model, [TEXT], [WINDOW], lanes=2)[WINDOW], 0.01, "test text")


def loop_start(data: bytes, max_period: int = 16) -> int:
    """First byte from which `data` repeats with a period of at most max_period bytes."""
    for start in range(len(data)):
        tail = data[start:]
        if any(tail[k:] == tail[:-k] for k in range(1, max_period + 1) if k < len(tail)):
            return start
    return len(data)


def test_window_metrics_are_specs_k_c_s_on_data_bits():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, 256).astype(np.uint8)
    probs = rng.uniform(0.05, 0.95, 256)
    v = window_metrics(bits, probs)
    t = torch.from_numpy(bits)
    assert v["K"] == pytest.approx(negentropy(t))
    assert v["C"] == pytest.approx(lz_complexity(t))
    assert v["S"] == pytest.approx(symbiosis(torch.from_numpy(probs), t))
    assert math.isnan(window_metrics(bits, probs, with_c=False)["C"])


def test_greedy_loop_is_caught_within_two_windows_and_warn_changes_no_bit(model, floors):
    prompt = text_to_bits("KING.\n")
    plain = model.generate(prompt, 9 * 200, temperature=0, seed=3)
    data = bytes(np.packbits(plain.bits.numpy().reshape(-1, 9)[:, :8], axis=1).ravel())
    start = loop_start(data)
    assert start < 100                                                   # the premise: greedy output loops
    for mode in ("retry", "stop"):
        g = model.generate(prompt, 9 * 200, temperature=0, seed=3, gate=GateConfig(mode, floors))
        first = g.gate_events[0]
        assert first.metric == "C" and first.value < floors.floors["C"]
        assert first.end <= start + 2 * WINDOW                           # caught within 2 windows
        assert first.action == mode
    stopped = model.generate(prompt, 9 * 200, temperature=0, seed=3, gate=GateConfig("stop", floors))
    assert stopped.gate_stopped and len(stopped.bits) == 9 * stopped.gate_events[0].start
    assert torch.equal(stopped.bits, plain.bits[:len(stopped.bits)])    # ends before the failing window
    retried = model.generate(prompt, 9 * 200, temperature=0, seed=3, gate=GateConfig("retry", floors, max_retries=2))
    assert [e.action for e in retried.gate_events][:1] == ["retry"] and retried.gate_events[0].temperature > 0
    assert sum(e.action == "retry" for e in retried.gate_events) <= 2
    assert retried.gate_stopped == (retried.gate_events[-1].action == "stop")
    warned = model.generate(prompt, 9 * 200, temperature=0, seed=3, gate=GateConfig("warn", floors))
    ends = [t[0] for t in warned.gate_trace]
    assert ends == list(range(WINDOW, 201, WINDOW // 8))                 # a check every window/8 bytes
    assert all(c < floors.floors["C"] for n, _k, c, _s in warned.gate_trace if n > start + WINDOW)
    assert torch.equal(warned.bits, plain.bits) and torch.equal(warned.probs, plain.probs)
    assert warned.gate_events and all(e.action == "warn" for e in warned.gate_events)
    sampled = model.generate(prompt, 9 * 120, temperature=1.0, seed=5)
    assert torch.equal(model.generate(prompt, 9 * 120, temperature=1.0, seed=5, gate=GateConfig("warn", floors)).bits,
                       sampled.bits)


def test_gate_off_and_bad_configs(model, floors):
    prompt = text_to_bits("Hi")
    assert model.generate(prompt, 90, temperature=0, seed=1, gate=GateConfig("off", floors)).gate_events == []
    with pytest.raises(ValueError, match="mode"):
        GateConfig("panic", floors)
    with pytest.raises(ValueError, match="max_retries"):
        GateConfig("retry", floors, max_retries=-1)
    with pytest.raises(ValueError, match="patience"):
        GateConfig("retry", floors, patience=0)
    with pytest.raises(ValueError, match="stream_type 0"):
        model.generate(prompt, 90, stream_type=1, gate=GateConfig("warn", floors))
    with pytest.raises(ValueError, match="GateConfig"):
        model.generate(prompt, 90, gate={"mode": "warn"})


def test_describe_says_what_the_gate_did():
    from bitlm.generate.gate import GateEvent
    events = [GateEvent(212, 276, "C", 0.2, 0.6, "retry", 1.0), GateEvent(212, 276, "C", 0.2, 0.6, "retry", 1.4),
              GateEvent(212, 276, "C", 0.2, 0.6, "stop")]
    assert describe(events, True) == "a repetition loop from byte 212: retried twice, then stopped"
    assert describe([GateEvent(5, 40, "S", 0.3, 0.6, "warn")], False) == \
        "text the model finds unlikely (letter soup) from byte 5: marked 1 span"
    assert describe([], False) == ""
    two = [GateEvent(24, 88, "C", 0.2, 0.6, "retry", 1.0), GateEvent(1040, 1104, "C", 0.2, 0.6, "retry", 1.4)]
    assert describe(two, False) == "repetition loops from bytes 24 and 1,040: retried twice"


def test_floors_file_round_trip_and_errors(tmp_path, floors):
    save_floors([floors], tmp_path)
    assert load_floors(tmp_path) == {WINDOW: floors}
    assert load_floors(tmp_path / "nowhere") == {}
    (tmp_path / "gate.json").write_text(json.dumps({"windows": [{"window": 16, "floors": {"K": 0.1}}]}))
    with pytest.raises(ValueError, match="gate.json"):
        load_floors(tmp_path)
    (tmp_path / "gate.json").write_text("{not json")
    with pytest.raises(ValueError, match="gate.json"):
        load_floors(tmp_path)


def test_floors_are_quantiles_and_false_alarms_are_measured_on_other_windows(model, floors):
    cal = gate_windows(model, [TEXT], [WINDOW], lanes=2)[WINDOW]
    for m, floor in floors.floors.items():
        assert floor == pytest.approx(float(np.quantile(cal.values[m], 0.01)))
    assert all(rate <= 0.02 for rate in false_alarm_rates(cal, floors).values())
    assert isinstance(floors, GateFloors) and floors.n_windows == len(cal.values["K"])


def test_calibrate_command_writes_gate_json(tmp_path, model, capsys):
    model.save_pretrained(tmp_path / "m")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"doc{i}.txt").write_text(TEXT * 3)
    main(["calibrate", "--model", str(tmp_path / "m"), "--corpus", str(corpus), "--windows", "16", "32"])
    out = capsys.readouterr().out
    assert set(load_floors(tmp_path / "m")) == {16, 32}
    assert "false alarms" in out and "| 16 |" in out and "| 32 |" in out


def test_gate_bench_end_to_end(tmp_path, model, capsys):
    from bench import gate as gate_bench
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"doc{i}.txt").write_text(TEXT * 3)
    main(["calibrate", "--model", str(folder), "--corpus", str(corpus), "--windows", "16"])
    out = gate_bench.main(["--model", str(folder), "--corpus", str(corpus), "--window", "16", "--prompts", "2",
                           "--bytes", "60"])
    text = capsys.readouterr().out
    assert set(out["false_alarms"]) == {"K", "C", "S"} and len(out["detection"]) == 3
    assert out["detection"]["greedy (temperature 0: loops)"][0] == 1.0       # the untrained model loops
    assert "| gate warn, 16-byte window |" in text and "false-alarm rate" in text
    with pytest.raises(SystemExit):
        gate_bench.main(["--model", str(folder), "--corpus", str(corpus), "--window", "99"])


@pytest.mark.parametrize("patience, fires_at", [(1, 23), (3, 25), (4, None)])
def test_patience_is_how_many_checks_in_a_row_must_fall_below(patience, fires_at):
    """A dip of exactly three checks below the S floor (bytes 16-24 coded at p = 1/2 in otherwise confident
    text; 8-byte windows, one check a byte): patience 1 fires at the first low check, 3 at the third, 4 never
    (ignoring patience would fire at once every time)."""
    from bitlm.generate.gate import Gate, GateConfig, GateFloors
    floors = GateFloors(window=8, floors={"K": -1.0, "C": -1.0, "S": 0.57}, quantile=0.01, n_windows=1)
    gate = Gate(GateConfig("warn", floors, patience=patience), frame=8)
    bits = np.random.default_rng(0).integers(0, 2, 8 * 40)
    byte = np.arange(bits.size) // 8
    sure = np.where((byte >= 16) & (byte < 24), 0.5, 0.99)          # the probability given to the actual bit
    probs = np.where(bits == 1, sure, 1 - sure)
    fired = [n for n in range(1, 41) if gate.due(n) and gate.check(list(bits), list(probs), n)]
    assert (fired[0] if fired else None) == fires_at
