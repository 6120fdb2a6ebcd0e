"""The K/C/S safety gate: metric definitions, calibration and its file, and what generation does with
a gate in each mode (a greedy loop caught within two windows; warn changes no bit); M, the long-loop
signal (a loop whose period is longer than the window is caught; ordinary held-out text is not)."""
import json
import math

import numpy as np
import pytest
import torch

from bitlm.bits.frames import text_to_bits
from bitlm.cli.gate import main
from bitlm.generate.gate import (
    Gate, GateConfig, GateEvent, GateFloors, MatchLength, describe, false_alarm_rates, floors_from, load_floors,
    match_lengths, save_floors, window_metrics,
)
from bitlm.model.config import BitLMConfig
from bitlm.model.telemetry import lz_complexity, negentropy, symbiosis
from bitlm.model.transformer import BitTransformerLM
from bitlm.train.evaluate import gate_windows

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
    for m in "KCS":
        assert floors.floors[m] == pytest.approx(float(np.quantile(cal.values[m], 0.01)))
    assert floors.floors["M"] == pytest.approx(max(WINDOW, float(np.quantile(cal.values["M"], 0.99))))
    assert floors.floors["M"] > WINDOW                   # TEXT repeats a 164-byte passage: a high limit
    rates = false_alarm_rates(cal, floors)
    assert set(rates) == {"K", "C", "S", "M"} and all(rate <= 0.02 for rate in rates.values())
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
    assert set(out["false_alarms"]) == {"K", "C", "S", "M"} and len(out["detection"]) == 4
    assert out["detection"]["greedy (temperature 0: loops)"][0] == 1.0       # the untrained model loops
    assert out["detection"]["greedy, K/C/S floors only (the gate before M)"][0] == 1.0
    assert "M limit" in text and "| K | C | S | M |" in text
    assert out["loops"]["greedy (temperature 0: loops)"] == {"loops": 0, "marked": 0, "long": 0, "long marked": 0}
    loop = b"Once upon a time. " + PASSAGE * 5
    assert gate_bench.tail_period(loop) == len(PASSAGE) == 71
    assert gate_bench.tail_period(loop[:300]) is None                    # 256 + 71 bytes needed
    assert gate_bench.tail_period(b"ab" * 200) == 2 and gate_bench.tail_period(bytes(range(256)) * 2) is None
    assert out["m_alarms"][1] > 0 and "generations of 60 bytes" in text
    assert "| gate warn, 16-byte window |" in text and "false-alarm rate" in text
    with pytest.raises(SystemExit):
        gate_bench.main(["--model", str(folder), "--corpus", str(corpus), "--window", "99"])


def test_the_bench_counts_m_alarms_as_the_gate_does():
    """bench.gate.m_alarms (M alone over held-out pieces, fast) agrees with the Gate itself, piece by piece."""
    from bench.gate import m_alarms
    config = GateConfig("warn", GateFloors(16, {"K": -1.0, "C": -1.0, "S": -1.0, "M": 16.0}, 0.01, 1))
    text = heldout_bytes()[:40_000]
    fired = [bool(feed(Gate(config, 9), text[lo:lo + 400])) for lo in range(0, len(text), 400)]
    assert 0 < sum(fired) < len(fired)                                 # both kinds of piece, at this low limit
    assert m_alarms(text, config, 400) == (sum(fired), len(fired))


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


# ---------------------------------------------------------------------------- M: loops longer than the window

def shipped_floors(window: int = 64) -> GateFloors:
    floors = load_floors("assets")[window]
    assert "M" in floors.floors, "assets/gate.json predates M: python -m bitlm.cli.gate calibrate --model assets"
    return floors


def heldout_bytes() -> bytes:
    """The odd-numbered plays' held-out tails: text the shipped floors were not fitted on."""
    from bitlm.train.data import load_corpus, split_corpus
    return "".join(split_corpus(load_corpus("shakespeare"))[1][1::2]).encode("utf-8")


def feed(gate: Gate, data: bytes, sure: float = 0.99) -> list[tuple[int, str, float]]:
    """Run a gate over `data` as if it were generated byte by byte, the model giving each written bit
    probability `sure`: the (byte, metric, value) of every check that triggered."""
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8)).reshape(-1, 8)
    bits = np.concatenate([bits, bits.sum(1, keepdims=True) & 1], axis=1).ravel().tolist()   # 9-bit frames
    probs = [sure if b else 1 - sure for b in bits]
    return [(n, *hit) for n in range(1, len(data) + 1) if gate.due(n) and (hit := gate.check(bits, probs, n))]


def test_match_length_is_the_longest_earlier_suffix():
    rng = np.random.default_rng(1)
    for alphabet in (2, 3, 26):
        data = bytes(rng.integers(0, alphabet, 300).tolist())
        brute = [max((k for k in range(1, n) if data[n - k:n] in data[:n - 1]), default=0) for n in range(1, 301)]
        assert match_lengths(data).tolist() == brute
    loop = b"x" * 5 + b"0123456789" * 4               # period 10 from byte 5: M = n - 15 once it has repeated
    assert match_lengths(loop).tolist()[-1] == len(loop) - 15
    m = MatchLength(loop[:20])
    assert m.value == 5 and [m.add(b) for b in loop[20:]] == list(range(6, 31))


@pytest.mark.parametrize("period", [70, 90, 120])
def test_a_loop_longer_than_the_window_is_caught_by_m_and_not_by_c(period):
    """The issue's miss: greedy output repeating a ~70-byte passage keeps C above its floor (each 64-byte
    window holds a passage that is new within it). With the shipped floors M catches it within its limit
    plus `patience` checks of the second copy; before the loop nothing triggers."""
    floors = shipped_floors(64)
    text = heldout_bytes()
    lead, passage = text[5000:5300], text[9000:9000 + period]
    gate = Gate(GateConfig("warn", floors), frame=9)
    hits = feed(gate, lead + passage * 8)
    second = len(lead) + period                       # the first repeated byte
    assert hits and all(metric == "M" for _n, metric, _v in hits)          # C never: the premise of the issue
    first = hits[0][0]
    assert second < first <= second + floors.floors["M"] + 1 + 4 * gate.stride
    assert gate.span_start("M", first) <= second + gate.stride            # the span is the repeated passage
    assert all(c >= floors.floors["C"] for n, _k, c, _s in gate.trace if n < first)


def test_ordinary_held_out_text_is_not_flagged_by_m():
    """The odd-numbered plays' held-out tails (refrains, repeated speakers' names and stage directions
    included) as 2 000-byte generations, the app's longest: M (the others off) fires in ≤ 2 % of them."""
    floors = shipped_floors(64)
    only_m = GateFloors(64, {"K": -1.0, "C": -1.0, "S": -1.0, "M": floors.floors["M"]}, 0.01, 1)
    text = heldout_bytes()
    windows = np.asarray([m for lo in range(0, len(text) - 2000 + 1, 2000)
                          for m in match_lengths(text[lo:lo + 2000])[63::64]])
    assert np.mean(windows > floors.floors["M"]) <= 0.02          # per window, as bench/gate.py counts
    flagged = sum(bool(feed(Gate(GateConfig("warn", only_m), 9), text[lo:lo + 2000]))
                  for lo in range(0, len(text) - 2000 + 1, 20_000))
    assert flagged == 0                                 # per generation: none of these 13 (~1 % measured over all)


class ScriptedDecoder:
    """Stands in for BitDecoder: the bit of SCRIPT at each position, with probability 0.999."""
    def __init__(self, *args, **kwargs):
        pass

    def next_logprobs(self, seq):
        bit = SCRIPT[len(seq)]
        return (math.log(0.001), math.log(0.999)) if bit else (math.log(0.999), math.log(0.001))


PROMPT = "KING.\n"
LEAD = b"Then let the trumpets sound, for we will meet them at the gates of York, and say so. "
PASSAGE = b"I am a good man in my life, and my life is not a fool.\n\nPARIS.\nO, sir!\n"   # 71 bytes
SCRIPT = text_to_bits(PROMPT + (LEAD + PASSAGE * 12).decode()).tolist()


def test_generation_marks_retries_and_stops_a_long_loop(model, monkeypatch):
    """A generation that repeats a 71-byte passage (a scripted decoder): warn marks the repeat and changes no
    bit; stop ends the text before the repeated passage; retry resamples it (hotter) twice, then stops."""
    from bitlm.generate import decoder
    monkeypatch.setattr(decoder, "BitDecoder", ScriptedDecoder)
    floors = GateFloors(64, {"K": -1.0, "C": -1.0, "S": -1.0, "M": 64.0}, 0.01, 1)
    prompt, n_bits, second = text_to_bits(PROMPT), 9 * 600, len(LEAD) + len(PASSAGE)
    plain = model.generate(prompt, n_bits, temperature=0, seed=3)
    assert plain.bits.tolist() == SCRIPT[len(prompt):len(prompt) + n_bits]          # the premise
    warned = model.generate(prompt, n_bits, temperature=0, seed=3, gate=GateConfig("warn", floors))
    assert torch.equal(warned.bits, plain.bits)
    [event] = warned.gate_events                                                   # one span, growing
    assert (event.metric, event.action, event.start, event.end) == ("M", "warn", second, 600)
    assert event.floor == 64.0 and event.value > 64
    stopped = model.generate(prompt, n_bits, temperature=0, seed=3, gate=GateConfig("stop", floors))
    assert stopped.gate_stopped and len(stopped.bits) == 9 * second          # ends before the repeat
    assert describe(stopped.gate_events, True) == f"a repetition loop from byte {second}: stopped"
    retried = model.generate(prompt, n_bits, temperature=0, seed=3, gate=GateConfig("retry", floors))
    assert [e.action for e in retried.gate_events] == ["retry", "retry", "stop"]
    assert [e.temperature for e in retried.gate_events[:2]] == [pytest.approx(0.4), pytest.approx(0.8)]
    assert all(e.start == second for e in retried.gate_events) and len(retried.bits) == 9 * second
    assert describe(retried.gate_events, True) == f"a repetition loop from byte {second}: retried twice, then stopped"


def test_a_gate_file_from_before_m_still_loads_and_leaves_m_unchecked(tmp_path):
    """The documented fallback: floors of K, C and S only load as they are; the gate then checks no M
    (recalibrating adds it). A metric the gate does not know is refused."""
    old = {"window": 64, "floors": {"K": 0.0007, "C": 0.77, "S": 0.79}, "quantile": 0.01, "n_windows": 4016,
           "source": "shakespeare held-out split, even-numbered documents"}
    (tmp_path / "gate.json").write_text(json.dumps({"windows": [old]}))
    floors = load_floors(tmp_path)[64]
    assert floors.floors == old["floors"]
    gate = Gate(GateConfig("warn", floors), frame=9)
    assert gate.match_limit is None and not feed(gate, LEAD + PASSAGE * 6)    # C alone misses this loop
    (tmp_path / "gate.json").write_text(json.dumps({"windows": [{**old, "floors": {**old["floors"], "Q": 1.0}}]}))
    with pytest.raises(ValueError, match="gate.json"):
        load_floors(tmp_path)
    with_m = GateFloors(64, {**old["floors"], "M": 64.0}, 0.01, 4016, "x")
    save_floors([with_m], tmp_path)
    assert load_floors(tmp_path) == {64: with_m}


def test_describe_counts_one_loop_once_when_c_and_m_both_caught_it():
    """Two loops (bytes 24 and 1,040) are two; C then M triggering on one loop (a retried span, the second
    trigger inside the first's span) is one; warnings of C and M on one loop merge into one span."""
    two = [GateEvent(24, 88, "C", 0.2, 0.6, "retry", 1.0), GateEvent(1040, 1104, "M", 90, 64, "retry", 1.4)]
    assert describe(two, False) == "repetition loops from bytes 24 and 1,040: retried twice"
    one = [GateEvent(24, 88, "C", 0.2, 0.6, "retry", 1.0), GateEvent(40, 130, "M", 90, 64, "retry", 1.4),
           GateEvent(40, 130, "M", 90, 64, "stop")]
    assert describe(one, True) == "a repetition loop from byte 24: retried twice, then stopped"
    floors = GateFloors(16, {"K": -1.0, "C": 0.5, "S": -1.0, "M": 16.0}, 0.01, 1)
    gate = Gate(GateConfig("warn", floors), frame=9)
    gate.record(10, 26, "C", 0.3, "warn")
    gate.record(12, 30, "M", 20.0, "warn")
    gate.record(14, 34, "M", 24.0, "warn")
    assert [(e.start, e.end, e.metric) for e in gate.events] == [(10, 34, "C")]
    assert describe(gate.events, False) == "a repetition loop from byte 10: marked 1 span"
