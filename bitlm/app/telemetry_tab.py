"""The Telemetry tab's work: K, C, S, per-position predictions and attention heatmaps of the last
generation or of a typed text, read raw (through the codec: compressed, then decompressed) or as the
compressed stream itself. The model reads the whole input with its attention window sliding
(`bitlm.train.evaluate.sliding_logprobs`); the attention heatmap, a (slots × slots) picture, shows the last
block (`forward_compressed`). A v1 model, which cannot slide, reads the last block only, and says so.

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
from bitlm.bits.codec import HEADER_BITS, compress_bits, decompress_bits
from bitlm.bits.frames import frame_bits, text_to_bits
from bitlm.model.telemetry import compute_telemetry
from bitlm.train.evaluate import can_slide, sliding_logprobs

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
    stream = compress_bits(bits)
    notes.append(ratio_line("Stream", bits, stream))
    # The bits the model reads: the decompressed stream (the codec is lossless: the same bits), or the stream.
    read = decompress_bits(stream, max_bits=bits.numel()) if view == "decompressed bits" else stream
    read_frame, stream_type = (frame, 0) if view == "decompressed bits" else (0, 1)
    # The heatmap's block: the last whole frames that fit, with room for the codec header in the stream view.
    room = model.config.block_size - (HEADER_BITS if view == "compressed stream" else 0)
    tail = bits[-(room - room % frame):] if bits.numel() > room else bits
    with torch.no_grad():
        tail_stream = compress_bits(tail)
        if view == "decompressed bits":
            _, tail_tel = model.forward_compressed([tail_stream], return_attention=True)
        else:
            _, tail_tel = model.forward(tail_stream[None], stream_type=1, return_attention=True)
    if can_slide(model):
        logits = sliding_logprobs(model, read, stream_type)                                     # (T, 2)
        tel = compute_telemetry(read, logits, on="decompressed" if view == "decompressed bits" else "stream")
        if tail.numel() < bits.numel():
            notes.append(f"The model read all {read.numel():,} bits, its attention window sliding; the attention "
                         f"map shows the last {tail.numel() // frame:,} bytes (one block).")
    else:
        tel = tail_tel
        read = tail_stream if view == "compressed stream" else tail
        if tail.numel() < bits.numel():
            notes.append(f"Only the last {tail.numel():,} of {bits.numel():,} bits fit this model's context (a "
                         "v1 model with learned positions cannot slide).")
    table = plots.telemetry_table({k: getattr(tel, k) for k in plots.TELEMETRY_EXPLAINED})
    summary = " · ".join(f"**{r.name}** {r.value:.3f}" for r in table.itertuples() if r.value is not None)
    p = tel.p.reshape(-1)[:read.numel()].float().numpy()
    entropy = tel.entropy.reshape(-1)[:read.numel()].float().numpy()
    prob = plots.position_figure(p, entropy, read.numpy(), frame=read_frame, what=view)
    attention = [a[0].float().numpy() for a in tail_tel.attention] if tail_tel.attention else None
    status = "\n\n".join([ok(f"Telemetry with the model reading the {view}; K and C describe the {tel.on} bits."),
                          *notes])
    return TelemetryResult(summary, table, prob, heatmap(attention, layer, head), status, attention)
