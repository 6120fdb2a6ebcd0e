"""bitlm.app.plots: figures and tables built from metrics rows and telemetry arrays."""
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bitlm.app import plots

NAN = math.nan


def rows():
    # Step 10 had no compressed samples and step 30 no raw ones: their sides are NaN in those rows.
    return [
        {"step": 10, "lr": 1e-3, "raw_loss": 1.0, "raw_accuracy": 0.5, "compressed_loss": NAN,
         "compressed_accuracy": NAN, "compression_ratio": NAN, "direct_loss": NAN, "extra": "x"},
        {"step": 20, "lr": 1e-3, "raw_loss": 0.9, "raw_accuracy": 0.6, "compressed_loss": 0.95,
         "compressed_accuracy": 0.55, "compression_ratio": 1.2, "direct_loss": NAN, "val_loss": 0.97},
        {"step": 30, "lr": 1e-3, "raw_loss": None, "raw_accuracy": None, "compressed_loss": 0.8,
         "compressed_accuracy": 0.65, "compression_ratio": 1.3, "direct_loss": NAN},
    ]


def trace(fig, name):
    matches = [t for t in fig.data if t.name == name]
    assert len(matches) == 1, [t.name for t in fig.data]
    return matches[0]


def test_metrics_frame_orders_known_columns_and_keeps_nan():
    df = plots.metrics_frame(rows())
    assert list(df.columns[:3]) == ["step", "lr", "raw_loss"]
    assert df.columns[-1] == "extra"  # unknown columns follow the known ones
    assert df["step"].tolist() == [10, 20, 30]
    assert math.isnan(df["raw_loss"][2]) and math.isnan(df["compressed_loss"][0])
    assert df["extra"][0] == "x"


def test_metrics_frame_empty_has_standard_columns():
    df = plots.metrics_frame([])
    assert df.empty and "raw_loss" in df.columns and "compression_ratio" in df.columns


def test_loss_figure_has_one_line_per_side_with_data_and_skips_gaps():
    fig = plots.loss_figure(plots.metrics_frame(rows()))
    assert {t.name for t in fig.data} == {"raw", "compressed", "validation"}  # direct: all NaN → no line
    raw, comp = trace(fig, "raw"), trace(fig, "compressed")
    assert list(raw.x) == [10, 20] and list(raw.y) == [1.0, 0.9]
    assert list(comp.x) == [20, 30] and list(comp.y) == [0.95, 0.8]
    assert "markers" in raw.mode


def test_accuracy_and_ratio_figures():
    df = plots.metrics_frame(rows())
    acc = plots.accuracy_figure(df)
    assert list(trace(acc, "raw").y) == [0.5, 0.6]
    ratio = plots.ratio_figure(df)
    assert list(trace(ratio, "compression ratio").y) == [1.2, 1.3]


def test_figures_of_an_empty_log_say_so():
    fig = plots.loss_figure(plots.metrics_frame([]))
    assert not fig.data
    assert fig.layout.annotations[0].text == "no data yet"


def test_telemetry_table_explains_every_number():
    table = plots.telemetry_table({"K": 0.25, "C": 0.987654321, "S": 0.5})
    assert list(table["name"]) == list(plots.TELEMETRY_EXPLAINED)
    by_name = table.set_index("name")
    assert by_name.loc["K", "value"] == 0.25 and by_name.loc["C", "value"] == 0.9877
    assert by_name.loc["K_pred", "value"] is None  # missing: null in JSON, never NaN
    assert by_name.loc["S", "value"] == 0.5
    assert plots.telemetry_table({"K": math.nan, "C": math.inf}).set_index("name")["value"].isna().all()
    assert all(len(m) > 20 for m in table["meaning"])


def test_json_safe_makes_strict_json_of_any_table():
    df = pd.DataFrame({"step": pd.array([1, None], dtype="Int64"), "loss": [math.nan, 0.5],
                       "ratio": [math.inf, -math.inf], "phase": ["a", None]})
    safe = plots.json_safe(df)
    assert json.loads(json.dumps(safe.values.tolist(), allow_nan=False)) == [[1, None, None, "a"], [None, 0.5, None, None]]
    assert df["loss"].isna().iloc[0]  # the input is unchanged


def test_probability_figure_draws_p_entropy_bits_and_frames():
    p = np.linspace(0.1, 0.9, 27)
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    fig = plots.probability_figure(p, h, np.arange(27) % 2, frame=9)
    assert [t.name for t in fig.data] == ["P(bit = 1)", "entropy H(p), bits", "actual bit", "frame boundary"]
    assert np.allclose(fig.data[0].y, p)
    boundaries = fig.data[3]
    assert boundaries.name == "frame boundary" and not fig.layout.shapes
    assert [x for x in boundaries.x if x is not None and not math.isnan(x)] == [8.5, 8.5, 17.5, 17.5]


@pytest.mark.parametrize("frame", [9, 8, 0])
def test_probability_figure_is_linear_in_its_input(frame):
    """One trace for all boundaries, never a shape per boundary (that made plotly's layout quadratic: seconds
    per figure): 10× the frames give the same traces and no shapes, and about 10× the JSON. Counted, not
    timed, so a loaded machine cannot fail it."""
    def figure(n: int):
        p = np.random.default_rng(0).random(n)
        fig = plots.probability_figure(p, p, (p > 0.5).astype(int), frame=frame)
        return fig, len(fig.to_json())
    (small, small_json), (large, large_json) = figure(12 * (frame or 9)), figure(120 * (frame or 9))
    assert len(large.data) == len(small.data) and not large.layout.shapes
    assert large_json < 12 * small_json, (small_json, large_json)


def test_probability_figure_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="same length"):
        plots.probability_figure(np.zeros(5), np.zeros(4))
    with pytest.raises(ValueError, match="same length"):
        plots.probability_figure(np.zeros(5), np.zeros(5), np.zeros(3))


def test_attention_heatmap():
    att = np.tril(np.ones((4, 4))) / np.arange(1, 5)[:, None]
    fig = plots.attention_heatmap(att, layer=1, head=2)
    assert np.allclose(np.array(fig.data[0].z), att)
    assert "layer 1, head 2" in fig.layout.title.text
    with pytest.raises(ValueError, match="square"):
        plots.attention_heatmap(np.zeros((2, 3)), 0, 0)


def test_empty_figure_carries_message():
    assert plots.empty_figure("nothing").layout.annotations[0].text == "nothing"


def test_metrics_frame_round_trips_through_csv(tmp_path):
    df = plots.metrics_frame(rows())
    df.to_csv(tmp_path / "m.csv", index=False)
    back = pd.read_csv(tmp_path / "m.csv")
    assert back["compression_ratio"].tolist()[1:] == [1.2, 1.3]


# ------------------------------------------------------------------------------------------ the gate


def gate_trace(n_checks: int) -> list[tuple[int, float, float, float]]:
    return [(16 + 2 * i, 0.1, 0.9 - 0.5 * (i > n_checks // 2), 0.7) for i in range(n_checks)]


def test_gate_figure_draws_c_s_their_floors_and_the_trigger_spans():
    from bitlm.generate.gate import GateEvent
    events = [GateEvent(20, 36, "C", 0.3, 0.8, "retry", 0.4), GateEvent(40, 56, "C", 0.3, 0.8, "retry", 0.8),
              GateEvent(60, 76, "C", 0.3, 0.8, "stop")]
    fig = plots.gate_figure(gate_trace(30), {"K": 0.01, "C": 0.8, "S": 0.5}, events, n_bytes=80, window=16)
    c, s = trace(fig, plots.GATE_SERIES[0][1]), trace(fig, plots.GATE_SERIES[1][1])
    assert list(c.x) == [16 + 2 * i for i in range(30)] and c.y[0] == 0.9 and s.y[0] == 0.7
    assert list(trace(fig, "C floor").y) == [0.8, 0.8] and list(trace(fig, "S floor").y) == [0.5, 0.5]
    assert list(trace(fig, "C floor").x) == [0, 80]  # across the whole output
    retries = trace(fig, "resampled (retry)")
    assert retries.fill == "toself" and [x for x in retries.x if x is not None] == [20, 36, 36, 20, 20, 40, 56, 56, 40, 40]
    assert [x for x in trace(fig, "stopped").x if x is not None] == [60, 76, 76, 60, 60]
    assert "16-byte window" in fig.layout.title.text and not fig.layout.shapes
    json.loads(fig.to_json(), parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))


def test_gate_figure_before_the_first_check_says_when_it_comes():
    fig = plots.gate_figure([], {"C": 0.8, "S": 0.5}, [], n_bytes=5, window=32)
    assert "after 32 bytes" in fig.layout.annotations[0].text
    assert list(trace(fig, "C floor").y) == [0.8, 0.8]


def test_gate_figure_is_linear_in_its_input():
    """A trace per series and per kind of action, never a shape per event (it is redrawn at every streamed
    update): 10× the checks and events give the same traces, no shapes, about 10× the JSON. Counted, not timed."""
    from bitlm.generate.gate import GateEvent

    def figure(n: int):
        events = [GateEvent(4 * i, 4 * i + 2, "C", 0.1, 0.5, "warn") for i in range(n // 4)]
        fig = plots.gate_figure(gate_trace(n), {"C": 0.5, "S": 0.5}, events, 2 * n + 16, 16)
        return fig, len(fig.to_json())
    (small, small_json), (large, large_json) = figure(100), figure(1000)
    assert len(large.data) == len(small.data) and len(large.layout.shapes) == len(small.layout.shapes)
    assert large_json < 12 * small_json, (small_json, large_json)


def test_telemetry_figure_draws_validation_k_c_s():
    df = plots.metrics_frame([{"step": 10, "raw_loss": 1.0},
                              {"step": 20, "val_K": 0.2, "val_C": 0.8, "val_S": 0.6, "telemetry_alert": ""},
                              {"step": 40, "val_K": 0.3, "val_C": 0.7, "val_S": 0.7,
                               "telemetry_alert": "telemetry drift since step 20: K 0.200 → 0.300"}])
    fig = plots.telemetry_figure(df)
    assert [t.name for t in fig.data] == ["K (negentropy)", "C (complexity)", "S (symbiosis)"]
    assert list(fig.data[0].x) == [20, 40] and list(fig.data[2].y) == [0.6, 0.7]
    assert plots.telemetry_figure(plots.metrics_frame([])).layout.annotations[0].text == "no data yet"


def test_one_name_per_metric_on_every_tab():
    """K, C and S go by one name each wherever the app writes "K (…)", "C (…)" or "S (…)": the one in
    plots.METRIC_NAMES (the Train chart once said certainty and novelty, the gate chart surprise)."""
    import re
    root = Path(__file__).resolve().parents[1]
    wanted = {name.split(" (")[1].rstrip(")").split()[0] for name in plots.METRIC_NAMES.values()}
    for path in [root / "app.py", *sorted((root / "bitlm" / "app").glob("*.py"))]:
        for letter, word in re.findall(r"\b([KCSM]) \(([A-Za-z]+)", path.read_text(encoding="utf-8")):
            if word not in ("and", "the"):
                assert word in wanted, f"{path.name}: {letter} ({word}"


def test_position_figure_draws_bits_for_short_texts_and_bytes_for_long_ones():
    rng = np.random.default_rng(0)
    short = rng.integers(0, 2, 9 * plots.BIT_DETAIL_BYTES)
    fig = plots.position_figure(np.full(short.size, 0.5), np.ones(short.size), short, frame=9)
    assert fig.data[0].name == "P(bit = 1)" and len(fig.data[0].y) == short.size
    n = 2000
    bits = rng.integers(0, 2, 9 * n)
    p = np.where(bits == 1, 0.75, 0.25)                  # every bit given 0.75: 8 · log2(4/3) bits per byte
    fig = plots.position_figure(p, np.ones(bits.size), bits, frame=9)
    dots, smooth = fig.data[:2]
    assert len(dots.y) == len(smooth.y) == n
    assert np.allclose(dots.y, 8 * np.log2(4 / 3)) and np.allclose(smooth.y, 8 * np.log2(4 / 3))
    assert "2,000 bytes" in fig.layout.title.text
    stream = plots.position_figure(p[:8 * 100], np.ones(800), bits[:800], frame=0, what="compressed stream")
    assert len(stream.data[0].y) == 100 and "8 stream bits" in stream.layout.title.text
    with pytest.raises(ValueError):
        plots.position_figure(p[:-1], np.ones(bits.size), bits, frame=9)


def test_live_metrics_table_fits_the_page():
    """The Train tab's table: newest first, only the watched columns that hold values (no empty direct column
    in a single-task run, no bookkeeping like lr), 4 significant digits; before a run, a run's usual headers."""
    df = plots.metrics_frame([{"step": 10, "elapsed_s": 1.5, "lr": 0.01, "bits_per_s": 1e5, "raw_loss": 0.123456,
                               "compressed_loss": 0.5, "raw_accuracy": 0.8, "compressed_accuracy": 0.7,
                               "compression_ratio": 2.0},
                              {"step": 20, "raw_loss": 0.1, "compressed_loss": 0.4, "val_bits_per_byte": 2.5}])
    table = plots.live_metrics_table(df)
    assert list(table.columns) == ["step", "raw_loss", "compressed_loss", "raw_accuracy", "compressed_accuracy",
                                   "compression_ratio", "val_bits_per_byte"]
    assert table["step"].tolist() == [20, 10] and table["raw_loss"].tolist() == [0.1, 0.1235]
    assert table["compression_ratio"].tolist() == [None, 2.0]
    empty = plots.live_metrics_table(plots.metrics_frame([]))
    assert empty.empty and list(empty.columns) == ["step", "raw_loss", "compressed_loss", "raw_accuracy",
                                                   "compressed_accuracy", "compression_ratio"]
