"""The Telemetry tab's work: K, C, S, per-position predictions and attention heatmaps of the last
generation or of a typed text, read raw (through `forward_compressed`) or as the compressed stream itself.

Like `bitlm.app.generate_tab`, every function takes the `AppModel` the calling visitor uses and the raw values
of the UI's fields, checks them with `bitlm.app.inputs`, and turns every failure into a status message.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import pandas as pd
import plotly.graph_objects as go
import torch

from bitlm.app import plots
from bitlm.app.inputs import InputError, friendly, ok, ratio_line, read_choice, read_int, read_text
from bitlm.app.visitors import AppModel
from bitlm.bits.codec import HEADER_BITS, compress_bits
from bitlm.bits.frames import frame_bits, text_to_bits

TEXT_MAX_CHARS = 2_000   # as Generate's prompt: shown beside the field
LAYER_MAX = 1_000  # layer and head numbers are clamped to the model's; this only bounds what is typed
TELEMETRY_SOURCES = ("last generation", "text below")
TELEMETRY_VIEWS = ("decompressed bits", "compressed stream")

class TelemetryResult(NamedTuple):
    """Outputs of `telemetry`, in the order the Telemetry tab shows them."""
    summary: str
    table: pd.DataFrame
    probability: go.Figure
    heatmap: go.Figure
    status: str
    attention: list | None  # per layer (H, N, N) numpy arrays, for re-drawing the heatmap


def _telemetry_failed(status: str) -> TelemetryResult:
    return TelemetryResult("", plots.telemetry_table({}), plots.empty_figure("no telemetry"),
                           plots.empty_figure("no attention"), status, None)


@friendly(lambda status: plots.empty_figure(status))
def heatmap(attention: list | None, layer: Any, head: Any) -> go.Figure:
    """The attention heatmap of one layer and head from the arrays `telemetry` returned (numbers clamped)."""
    if not attention:
        return plots.empty_figure("run telemetry first")
    def clamp(value: Any, what: str, n: int) -> int:
        return min(max(read_int(value if value is not None else 0, what, -LAYER_MAX, LAYER_MAX), 0), n - 1)
    layer = clamp(layer, "layer", len(attention))
    head = clamp(head, "head", attention[layer].shape[0])
    return plots.attention_heatmap(attention[layer][head], layer, head)


@friendly(_telemetry_failed)
def telemetry(app_model: AppModel, source: Any, text: Any, view: Any, last: dict | None,
              layer: Any = 0, head: Any = 0) -> TelemetryResult:
    """K, C, S, per-position predictions and attention for the last generation or a text.

    `view` "decompressed bits": the text's bits are compressed and the model reads them through
    `forward_compressed`, with K/C on the decompressed bits; "compressed stream": the model reads the
    stream itself (stream type 1) and K/C describe the stream. Long inputs keep their last `block_size` bits.
    Returns: a `TelemetryResult`; failures come back as a status message.
    """
    source = read_choice(source, "source", TELEMETRY_SOURCES)
    view = read_choice(view, "view", TELEMETRY_VIEWS)
    layer = read_int(layer if layer is not None else 0, "layer", 0, LAYER_MAX)
    head = read_int(head if head is not None else 0, "head", 0, LAYER_MAX)
    model = app_model.model
    notes = []
    if source == "last generation" and not last:
        if not isinstance(text, str) or not text.strip():
            raise InputError("There is no generation yet", "generate something in the Generate tab, or type a text below")
        notes.append("There is no generation yet, so this is the telemetry of the text below.")
        source = "text below"
    if source == "last generation":
        bits, parity = torch.cat([last["prompt_bits"], last["new_bits"]]), last["parity"]
    else:
        parity = model.config.parity
        bits = text_to_bits(read_text(text, "telemetry text", TEXT_MAX_CHARS), parity=parity)
    frame = frame_bits(parity)
    # The stream view needs room for the codec header; crop whole frames from the front.
    room = model.config.block_size - (HEADER_BITS if view == "compressed stream" else 0)
    if bits.numel() > room:
        keep = room - room % frame
        notes.append(f"Only the last {keep:,} of {bits.numel():,} bits fit the model's context.")
        bits = bits[-keep:]
    stream = compress_bits(bits)
    with torch.no_grad():
        if view == "decompressed bits":
            _, tel = model.forward_compressed([stream], return_attention=True)
            read = bits
        else:
            _, tel = model.forward(stream[None], stream_type=1, return_attention=True)
            read, frame = stream, 0
    notes.append(ratio_line("Stream", bits, stream))
    table = plots.telemetry_table({k: getattr(tel, k) for k in plots.TELEMETRY_EXPLAINED})
    summary = " · ".join(f"**{r.name}** {r.value:.3f}" for r in table.itertuples() if r.value is not None)
    p = tel.p[0, :read.numel()].float().numpy()
    entropy = tel.entropy[0, :read.numel()].float().numpy()
    prob = plots.probability_figure(p, entropy, read.numpy(), frame=frame,
                                    title=f"Per-position prediction ({view}, {read.numel():,} bits)")
    attention = [a[0].float().numpy() for a in tel.attention] if tel.attention else None
    status = "\n\n".join([ok(f"Telemetry with the model reading the {view}; K and C describe the {tel.on} bits."),
                          *notes])
    return TelemetryResult(summary, table, prob, heatmap(attention, layer, head), status, attention)
