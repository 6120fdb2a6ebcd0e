"""Figures and tables for the app: pure functions from training metrics and telemetry to plotly / pandas.

Nothing here touches the model, threads or the UI; every function takes plain rows, arrays or
a `Telemetry` and returns a `plotly.graph_objects.Figure` or a `pandas.DataFrame`, so the
Gradio handlers (`bitlm.app.generate_tab`) and the tests build exactly the same objects.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

# The training-log columns (SPEC §5) the app shows first, in this order; others follow as logged.
METRIC_COLUMNS = (
    "step", "elapsed_s", "lr", "bits_per_s", "loss",
    "raw_loss", "compressed_loss", "direct_loss",
    "raw_accuracy", "compressed_accuracy", "direct_accuracy",
    "compression_ratio", "val_loss", "val_accuracy", "val_bits_per_byte",
)
# (column, legend name, colour): raw / compressed / direct share a colour across the charts.
SIDES = (("raw", "raw", "#1f77b4"), ("compressed", "compressed", "#ff7f0e"),
         ("direct", "direct (reads stream)", "#2ca02c"), ("val", "validation", "#7f7f7f"))

# One name per telemetry number, the same on every tab and chart (SPEC §4), and what a low value means.
METRIC_NAMES = {"K": "K (negentropy)", "C": "C (complexity)", "S": "S (symbiosis)", "M": "M (match length)"}
LOW_MEANS = {"C": "low = a loop", "S": "low = letter soup"}
# The safety gate's fourth signal, the only one whose alarm is high (its limit is a ceiling, in bytes).
M_EXPLAINED = ("the longest stretch at the end of the output that repeats earlier output, in bytes (high: a "
               "loop longer than the window)")

# One line per telemetry number, shown next to the value in the UI (SPEC §4).
TELEMETRY_EXPLAINED = {
    "K": "negentropy of the bits: 1 − H(mean bit); 1 = all bits equal, 0 = as many ones as zeros (order)",
    "K_pred": "negentropy of the predictions: 1 − mean H(p); 1 = the model is certain at every step",
    "C": "Lempel–Ziv complexity of the bits: ≈ 1 for random bits, near 0 for repetitive ones (novelty)",
    "C_pred": "Lempel–Ziv complexity of the model's most likely bits",
    "S": "symbiosis: exp(−mean cross-entropy); the geometric-mean probability given to the actual bits (1 perfect, 0.5 chance)",
    "symbiosis_kl": "mean cross-entropy in bits per bit (0 perfect, 1 chance)",
}


def metrics_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Training-log rows as a table.

    Takes: dicts as logged by `bitlm.train.trainer.Trainer` (missing keys and `None` become NaN).
    Returns: a DataFrame with the SPEC §5 columns first (those present), then any others, numbers as floats
    except `step` (int). Empty input gives an empty frame with the standard columns.
    """
    df = pd.DataFrame(list(rows))
    if df.empty:
        return pd.DataFrame(columns=list(METRIC_COLUMNS))
    known = [c for c in METRIC_COLUMNS if c in df.columns]
    df = df[known + [c for c in df.columns if c not in known]]
    for col in df.columns:
        if col != "step":
            converted = pd.to_numeric(df[col], errors="coerce")
            # Keep text columns (e.g. a phase name) rather than turning them into NaN.
            if converted.notna().any() or df[col].isna().all():
                df[col] = converted.astype(float)
    if "step" in df.columns:
        df["step"] = pd.to_numeric(df["step"], errors="coerce").astype("Int64")
    return df


# The live table's columns (the Train tab), in order: what a person watches; the CSV keeps every column.
LIVE_COLUMNS = ("step", "raw_loss", "compressed_loss", "direct_loss", "raw_accuracy", "compressed_accuracy",
                "direct_accuracy", "compression_ratio", "val_loss", "val_bits_per_byte", "val_K", "val_C", "val_S")


def live_metrics_table(df: pd.DataFrame) -> pd.DataFrame:
    """The Train tab's table: newest row first, only `LIVE_COLUMNS` that hold a value (so it fits the page
    without a hidden right edge; a direct column appears in multi-task runs only), numbers to 4 significant
    digits, missing ones None (strict JSON). Takes a `metrics_frame`; returns a new frame."""
    cols = [c for c in LIVE_COLUMNS if _has_values(df, c)] if len(df) else \
        [c for c in LIVE_COLUMNS if not c.startswith(("direct", "val_"))]   # before a run: its usual columns
    out = df.reindex(columns=cols).iloc[::-1].map(lambda v: float(f"{v:.4g}") if isinstance(v, float) else v)
    return json_safe(out)


def _has_values(df: pd.DataFrame, col: str) -> bool:
    return col in df.columns and bool(pd.to_numeric(df[col], errors="coerce").notna().any())


def _line_figure(df: pd.DataFrame, series: Sequence[tuple[str, str, str]], title: str, yaxis: str) -> go.Figure:
    fig = go.Figure()
    x = df["step"].astype(float) if "step" in df.columns else pd.Series(range(len(df)), dtype=float)
    for col, name, colour in series:
        if not _has_values(df, col):
            continue
        y = pd.to_numeric(df[col], errors="coerce")
        keep = y.notna()
        # Markers as well as lines: a side that was sampled in only one interval still shows.
        fig.add_trace(go.Scatter(x=x[keep], y=y[keep], mode="lines+markers", name=name,
                                 line=dict(color=colour), marker=dict(size=5)))
    if not fig.data:
        fig.add_annotation(text="no data yet", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=yaxis, height=340,
                      margin=dict(l=50, r=20, t=40, b=40), legend=dict(orientation="h", y=-0.3, yanchor="top"))
    return fig


def loss_figure(df: pd.DataFrame) -> go.Figure:
    """Next-bit loss (bits per bit) per step: raw, compressed, direct and validation as separate lines."""
    return _line_figure(df, [(f"{k}_loss", n, c) for k, n, c in SIDES], "Loss", "bits per bit")


def accuracy_figure(df: pd.DataFrame) -> go.Figure:
    """Next-bit accuracy per step: raw, compressed, direct and validation as separate lines."""
    return _line_figure(df, [(f"{k}_accuracy", n, c) for k, n, c in SIDES], "Accuracy", "fraction of bits")


def ratio_figure(df: pd.DataFrame) -> go.Figure:
    """Compression ratio (original / compressed bits) of the compressed samples per step."""
    return _line_figure(df, [("compression_ratio", "compression ratio", SIDES[1][2])],
                        "Compression ratio", "original / compressed")


def telemetry_table(values: Mapping[str, float | None]) -> pd.DataFrame:
    """K, C, S (and their prediction forms) with their one-line meanings.

    Takes: a mapping with any of the keys of `TELEMETRY_EXPLAINED` (e.g. `dataclasses.asdict` of a Telemetry).
    Returns: DataFrame with columns `name`, `value` (rounded to 4 places; None when missing or not finite),
    `meaning`.
    """
    rows = []
    for name, meaning in TELEMETRY_EXPLAINED.items():
        v = values.get(name)
        v = float(v) if v is not None else math.nan
        rows.append({"name": name, "value": round(v, 4) if math.isfinite(v) else None, "meaning": meaning})
    return pd.DataFrame(rows, columns=["name", "value", "meaning"], dtype=object)


def json_safe(df: pd.DataFrame) -> pd.DataFrame:
    """The table with every missing or non-finite number as None (object columns), so that it serialises as
    strict JSON (an API answer holding NaN is not JSON). Takes and returns a DataFrame; the input is unchanged."""
    out = df.astype(object)
    finite = out.map(lambda v: v is not None and v is not pd.NA and not (isinstance(v, float) and not math.isfinite(v)))
    return out.where(finite, None)


def bits_per_byte_table(rows: Mapping[str, float], n_bytes: int) -> pd.DataFrame:
    """Compressors side by side on the same bytes.

    Takes: {method: bits per byte} and the number of bytes. Returns: DataFrame with columns `method`,
    `bits per byte` (3 places), `compressed bytes` (what that rate means for this input), `× best classic`
    (the rate over the best of the rows whose name starts with zlib, bz2 or lzma; NaN without them).
    """
    classic = [v for k, v in rows.items() if k.split()[0] in ("zlib", "bz2", "lzma")]
    best = min(classic) if classic else math.nan
    return pd.DataFrame([{"method": k, "bits per byte": round(v, 3), "compressed bytes": round(v * n_bytes / 8),
                          "× best classic": round(v / best, 3)} for k, v in rows.items()],
                        columns=["method", "bits per byte", "compressed bytes", "× best classic"])


def file_codec_table(sizes: Mapping[str, int], n_bytes: int, chosen: str) -> pd.DataFrame:
    """The file compressor's methods side by side on the same bytes (`bitlm.compress.container.CompressResult.sizes`).

    Takes: {method: whole-file size in bytes, header included}, the original's size, the method chosen.
    Returns: DataFrame with columns `method` (in the order given), `file bytes`, `bits per byte` (3 places;
    NaN for an empty original) and `chosen` ("✓" on the chosen method's row, else "").
    """
    return pd.DataFrame([{"method": name, "file bytes": size,
                          "bits per byte": round(8 * size / n_bytes, 3) if n_bytes else math.nan,
                          "chosen": "✓" if name == chosen else ""} for name, size in sizes.items()],
                        columns=["method", "file bytes", "bits per byte", "chosen"])


def probability_figure(p: np.ndarray, entropy: np.ndarray, bits: np.ndarray | None = None,
                       frame: int = 9, title: str = "Per-position prediction") -> go.Figure:
    """P(bit = 1) and its entropy H(p) at every position, with the observed bits as dots.

    Takes: 1-D arrays `p` and `entropy` of equal length T, optional observed 0/1 `bits` (length T),
    and the frame size (9 with parity, 8 without; 0 for a stream without frames) to draw byte boundaries.
    Returns: a figure with x = bit position, y in [0, 1].
    Raises: ValueError if the lengths disagree.
    """
    p, entropy = np.asarray(p, dtype=float).ravel(), np.asarray(entropy, dtype=float).ravel()
    if p.shape != entropy.shape or (bits is not None and np.asarray(bits).size != p.size):
        raise ValueError(f"p, entropy and bits must have the same length (got {p.size}, {entropy.size}"
                         f"{'' if bits is None else ', ' + str(np.asarray(bits).size)})")
    x = np.arange(p.size)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=p, mode="lines", name="P(bit = 1)", line=dict(color="#1f77b4")))
    fig.add_trace(go.Scatter(x=x, y=entropy, mode="lines", name="entropy H(p), bits", line=dict(color="#d62728")))
    if bits is not None:
        fig.add_trace(go.Scatter(x=x, y=np.asarray(bits, dtype=float).ravel(), mode="markers", name="actual bit",
                                 marker=dict(color="#555", size=4, symbol="line-ew-open")))
    # Frame boundaries help read where each byte starts; skip them when they would be a solid wall. One
    # trace of segments broken by gaps (None), so the figure stays linear in its input (a shape per
    # boundary made plotly's layout quadratic: seconds for a few hundred bytes).
    if frame and 0 < p.size // frame <= 120:
        edges = np.arange(frame, p.size, frame) - 0.5
        xs = np.column_stack([edges, edges, np.full(edges.size, np.nan)]).ravel()
        ys = np.tile([-0.05, 1.05, np.nan], edges.size)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="frame boundary", showlegend=False,
                                 hoverinfo="skip", line=dict(color="#ccc", width=1), connectgaps=False))
    fig.update_layout(title=title, xaxis_title="bit position", yaxis=dict(range=[-0.05, 1.05]), height=340,
                      margin=dict(l=50, r=20, t=40, b=40), legend=dict(orientation="h", y=-0.3, yanchor="top"))
    return fig


BIT_DETAIL_BYTES = 64   # up to this many bytes the per-position chart draws every bit; beyond, bits per byte


def _label(byte: int) -> str:
    return repr(chr(byte)) if 32 <= byte < 127 else f"0x{byte:02x}"


def position_figure(p: np.ndarray, entropy: np.ndarray, bits: np.ndarray, frame: int = 9,
                    what: str = "decompressed bits") -> go.Figure:
    """The per-position chart of the Telemetry tab, readable at any length: up to `BIT_DETAIL_BYTES` bytes
    every bit (`probability_figure`); beyond, what each byte cost the model, −log2 of the probability it gave
    the byte's data bits (8 per frame; a parity bit is set, not coded), a dot per byte with its character on
    hover and a smoothed line (the mean over about 2 % of the text, at least 8 bytes), beside the 8 bits a
    byte takes uncompressed. A stream (frame 0) is shown per 8 stream bits.

    Takes: 1-D arrays p = P(bit = 1), entropy and the observed 0/1 bits, all of length T; the frame size (9,
    8, or 0 for a stream); what the model read (for the title). Returns: the figure.
    Raises: ValueError if the lengths disagree."""
    p, bits = np.asarray(p, dtype=float).ravel(), np.asarray(bits).astype(np.int64).ravel()
    group = frame or 8
    n = bits.size // group
    if n <= BIT_DETAIL_BYTES:
        return probability_figure(p, entropy, bits, frame=frame,
                                  title=f"Per-position prediction ({what}, {bits.size:,} bits)")
    if p.size != bits.size or np.asarray(entropy).size != bits.size:
        raise ValueError(f"p, entropy and bits must have the same length (got {p.size}, {np.asarray(entropy).size}, "
                         f"{bits.size})")
    given = np.where(bits == 1, p, 1.0 - p)
    cost = -np.log2(np.clip(given, 1e-12, 1.0))[:n * group].reshape(n, group)[:, :8].sum(1)       # (n,) bits
    data = bits[:n * group].reshape(n, group)[:, :8]
    values = data @ (1 << np.arange(7, -1, -1))                                                   # (n,) bytes
    w = max(8, n // 50)
    sums = np.concatenate([[0.0], np.cumsum(cost)])
    lo, hi = np.maximum(np.arange(n) - w // 2, 0), np.minimum(np.arange(n) + (w + 1) // 2, n)
    smooth = (sums[hi] - sums[lo]) / (hi - lo)                                                    # centred mean
    x = np.arange(n)
    unit = "byte" if frame else "8 stream bits"
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=cost, mode="markers", name=f"bits for each {unit}",
                             marker=dict(color="rgba(31,119,180,0.35)", size=4),
                             text=[_label(int(b)) for b in values] if frame else None,
                             hovertemplate=f"{unit} %{{x}}" + (" %{text}" if frame else "") +
                                           "<br>%{y:.2f} bits<extra></extra>"))
    fig.add_trace(go.Scatter(x=x, y=smooth, mode="lines", name=f"mean over {w} {unit}s",
                             line=dict(color="#d62728", width=2), hoverinfo="skip"))
    fig.add_hline(y=8, line=dict(color="#999", dash="dash"), annotation_text="8 bits: uncompressed",
                  annotation_position="top left")
    fig.update_layout(title=f"Bits per {unit} along the {what} ({n:,} {unit}s, mean {cost.mean():.2f} bits; bit by "
                            f"bit up to {BIT_DETAIL_BYTES})",
                      xaxis_title=f"{unit} position", yaxis_title="bits", height=340,
                      yaxis=dict(rangemode="tozero"), margin=dict(l=50, r=20, t=40, b=40),
                      legend=dict(orientation="h", y=-0.3, yanchor="top"))
    return fig


def attention_heatmap(att: np.ndarray, layer: int, head: int) -> go.Figure:
    """One head's attention matrix as a heatmap (rows: query patch, columns: key patch).

    Takes: a 2-D array (N, N) of attention weights, and the layer / head numbers for the title.
    Returns: the heatmap figure.
    Raises: ValueError if `att` is not square 2-D.
    """
    att = np.asarray(att, dtype=float)
    if att.ndim != 2 or att.shape[0] != att.shape[1]:
        raise ValueError(f"attention must be a square (N, N) matrix, got shape {tuple(att.shape)}")
    fig = go.Figure(go.Heatmap(z=att, colorscale="Viridis", zmin=0.0, colorbar=dict(title="weight"),
                               hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.3f}<extra></extra>"))
    fig.update_layout(title=f"Attention, layer {layer}, head {head}", xaxis_title="key patch (byte)",
                      yaxis_title="query patch (byte)", yaxis=dict(autorange="reversed"), height=420,
                      margin=dict(l=60, r=20, t=40, b=50))
    return fig


def empty_figure(message: str) -> go.Figure:
    """A blank figure carrying a short message, for charts that have nothing to show yet."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(height=300, xaxis=dict(visible=False), yaxis=dict(visible=False),
                      margin=dict(l=20, r=20, t=20, b=20))
    return fig


# The gate's chart: C and S over the output, their floors, and the spans where the gate acted.
GATE_SERIES = (("C", f"{METRIC_NAMES['C']}: {LOW_MEANS['C']}", "#1f77b4"),
               ("S", f"{METRIC_NAMES['S']}: {LOW_MEANS['S']}", "#2ca02c"))
GATE_ACTIONS = {"warn": ("marked (warn)", "#ff7f0e"), "retry": ("resampled (retry)", "#9467bd"),
                "stop": ("stopped", "#d62728")}


def gate_figure(trace: Sequence[Sequence[float]], floors: Mapping[str, float], events: Iterable[Any] = (),
                n_bytes: int = 0, window: int | None = None) -> go.Figure:
    """The safety gate's view of a generation: C and S of the window ending at each checked byte, each
    metric's floor as a dashed line, and the spans where the gate acted as shaded bands.

    Takes: the gate's trace, rows of (output bytes, K, C, S) (`Generation.gate_trace`); the floors
    ({metric: value}, `GateFloors.floors`); the `GateEvent`s (anything with start, end and action); the
    output length in bytes so far (the x range); the window size, for the title. Linear in its input:
    one trace per metric, per floor and per kind of action (spans are rectangles of one trace, broken by
    gaps). Returns: the figure, x = output byte.
    """
    rows = np.asarray(list(trace), dtype=float).reshape(-1, 4)
    x_max = max(float(n_bytes), rows[:, 0].max() if rows.size else 0.0, 1.0)
    spans: dict[str, list[tuple[int, int]]] = {}
    for e in events:
        spans.setdefault(e.action, []).append((e.start, e.end))
        x_max = max(x_max, float(e.end))
    top = max(1.2, float(np.nanmax(rows[:, 2:4])) + 0.05 if rows.size else 1.2)
    fig = go.Figure()
    for action, pairs in spans.items():
        name, colour = GATE_ACTIONS.get(action, (action, "#7f7f7f"))
        xs = [v for s, e in pairs for v in (s, e, e, s, s, None)]
        ys = [v for _ in pairs for v in (0, 0, top, top, 0, None)]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", fill="toself", name=name, fillcolor=colour,
                                 opacity=0.25, line=dict(width=0, color=colour), hoverinfo="skip"))
    for col, (metric, name, colour) in zip((2, 3), GATE_SERIES):
        fig.add_trace(go.Scatter(x=rows[:, 0], y=rows[:, col], mode="lines", name=name, line=dict(color=colour)))
        if metric in floors:
            fig.add_trace(go.Scatter(x=[0, x_max], y=[floors[metric]] * 2, mode="lines", name=f"{metric} floor",
                                     line=dict(color=colour, dash="dash", width=1), hoverinfo="skip"))
    if not rows.size:
        fig.add_annotation(text=f"the first check comes after {window or 'one window of'} bytes", showarrow=False,
                           x=0.5, y=0.5, xref="paper", yref="paper")
    title = "Safety gate: C and S over the output" + (f" ({window}-byte window)" if window else "")
    fig.update_layout(title=title, xaxis=dict(title="output byte", range=[0, x_max]), yaxis=dict(range=[0, top]),
                      height=300, margin=dict(l=50, r=20, t=40, b=40),
                      legend=dict(orientation="h", y=-0.3, yanchor="top"))
    return fig


def telemetry_figure(df: pd.DataFrame) -> go.Figure:
    """K, C and S of the validation batch at each validation (`val_K`, `val_C`, `val_S`): a jump between two
    validations is what the training log's telemetry alert reports."""
    return _line_figure(df, [("val_K", METRIC_NAMES["K"], "#d62728"), ("val_C", METRIC_NAMES["C"], "#1f77b4"),
                             ("val_S", METRIC_NAMES["S"], "#2ca02c")], "Validation telemetry", "K, C, S")
