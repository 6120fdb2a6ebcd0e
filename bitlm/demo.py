"""The app's work on one model: streamed generation with optional compression, telemetry, and the codec tab.

Every function here takes the `AppModel` the calling visitor uses (`bitlm.visitors`) and the raw values of
the UI's fields, checks them with `bitlm.inputs` against the caps below, and turns every failure into a
short status message with a suggestion (`inputs.friendly`), so a request never ends in a traceback and the
app keeps serving. `bitlm.endpoints` binds these to the calling visitor; `app.py` lays out the UI.
"""
from __future__ import annotations

import dataclasses
import random
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import pandas as pd
import plotly.graph_objects as go
import torch

from bitlm import neural_codec, plots
from bitlm.bits import decode_bits, format_bits, frame_bits, text_to_bits
from bitlm.codec import HEADER_BITS, METHODS, CodecError, compress_bits, compression_ratio, decompress_bits, stream_info
from bitlm.evaluate import classic_bits_per_byte
from bitlm.exact import UnsupportedModelError
from bitlm.gate import MODES as GATE_MODES
from bitlm.gate import GateConfig, describe
from bitlm.inputs import (InputError, friendly, log, ok, read_bits, read_choice, read_flag, read_float, read_int,
                          read_text, warn)
from bitlm.generation import Generation
from bitlm.model import model_output_decompress
from bitlm.visitors import RECALIBRATE, AppModel

# Input caps, shown in the UI next to the fields they limit.
PROMPT_MAX_CHARS = 2_000
PROMPT_MAX_BITS = PROMPT_MAX_CHARS * 9
GEN_MAX_BYTES = 2_000
TEMPERATURE_MAX = 2.0
SEED_MAX = 2**32 - 1  # a browser's number field holds it exactly (JavaScript numbers stop at 2**53)
CODEC_MAX_CHARS = 10_000
CODEC_MAX_BITS = CODEC_MAX_CHARS * 9 * 4
# The model codes about 500 bytes/s each way in one lane; from 512 bytes on, inputs go in parallel lanes
# (2 000 bytes: ~2 000 bytes/s on one thread, 5 000 characters: ~4 000 bytes/s on two).
NEURAL_MAX_CHARS = 5_000
# Files: the Codec tab compresses and decompresses up to FILE_MAX_BYTES; the model (neural method) is tried
# on inputs up to NEURAL_FILE_MAX_BYTES and decodes a neural file only up to that length, since decoding is
# sequential (a few hundred bytes/s on the app's CPU; the CLI has no such cap). Above it: lzma, bz2, zlib, stored.
FILE_MAX_BYTES = 1 << 20
NEURAL_FILE_MAX_BYTES = 8 << 10
BLM_SUFFIX = ".blm"
LAYER_MAX = 1_000  # layer and head numbers are clamped to the model's; this only bounds what is typed

PROMPT_MODES = ("text", "bits", "compressed stream")
TELEMETRY_SOURCES = ("last generation", "text below")
TELEMETRY_VIEWS = ("decompressed bits", "compressed stream")
CODEC_MODES = ("text", "bits")
# Bit groups (frames, or bytes of a stream) per line in the bit text boxes: fits their width.
GROUPS_PER_LINE = 6
# A streamed generation shows its text at most this many times (and at least every 8 bytes).
STREAM_UPDATES = 50

_LOWER_TEMPERATURE = "Try a lower temperature or another seed"
# The gate window a request gets when it names none (bench/gate.py's default), if the model has floors for it.
GATE_DEFAULT_WINDOW = 64
GATE_MODES_EXPLAINED = ("off: no checks · warn: mark the spans below a floor, change nothing · retry: resample "
                        "such a span (hotter after a loop, cooler after letter soup), twice at most, then stop · "
                        "stop: end the text before it")


# ---------------------------------------------------------------------------------------------------
# Generate


class GenerateResult(NamedTuple):
    """Outputs of `generate`, in the order the Generate tab shows them."""
    text: str
    bits: str
    input_ratio: float | None
    output_ratio: float | None
    status: str
    last: dict | None  # prompt and output bits for the Telemetry tab; None until the generation is complete
    gate_chart: go.Figure | None = None  # C and S over the output, floors and triggers; None with the gate off
    gate_events: list[dict] | None = None  # the gate's triggers (`GateEvent`s as dicts); None with the gate off


def _generate_failed(status: str) -> GenerateResult:
    return GenerateResult("", "", None, None, status, None)


def prompt_bits(prompt: Any, mode: str, parity: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The prompt as the model's bits, and the compressed stream when the prompt was one.

    Takes: the prompt field, one of `PROMPT_MODES`, the model's parity framing.
    Returns: (bits (T,) uint8, stream or None). Raises: `InputError`, `CodecError`.
    """
    if mode == "text":
        return text_to_bits(read_text(prompt, "prompt", PROMPT_MAX_CHARS), parity=parity), None
    if mode == "bits":
        return read_bits(prompt, "bit prompt", PROMPT_MAX_BITS), None
    if mode == "compressed stream":
        stream = read_bits(prompt, "compressed prompt", PROMPT_MAX_BITS)
        return decompress_bits(stream, max_bits=PROMPT_MAX_BITS), stream
    raise InputError(f"Unknown prompt mode {mode!r}", f"choose one of {', '.join(PROMPT_MODES)}")


def _ratio_line(label: str, original: torch.Tensor, stream: torch.Tensor) -> str:
    ratio = compression_ratio(original, stream)
    line = (f"{label}: {original.numel():,} → {stream.numel():,} bits "
            f"(`{stream_info(stream).method}`, compression ratio {ratio:.3f})")
    if ratio < 1:
        line += f"; short or varied bits do not compress, and the header costs {HEADER_BITS} bits"
    return line


def output_bits_text(bits: torch.Tensor, skip: int, frame: int) -> str:
    """Generated bits as text grouped on true frame boundaries: the `skip` bits that complete a prompt's
    last frame first, on a line of their own, then one group per frame."""
    frames = format_bits(bits[skip:], group=frame, groups_per_line=GROUPS_PER_LINE)
    return frames if not skip else format_bits(bits[:skip], group=skip) + "\n" + frames


def read_seed(seed: Any) -> int:
    """The seed field: empty (None or '') means a random seed; else a whole number in 0..SEED_MAX."""
    if seed is None or (isinstance(seed, str) and not seed.strip()):
        return random.randrange(2**31)
    return read_int(seed, "seed", 0, SEED_MAX)


def gate_windows(app_model: AppModel) -> tuple[list[int], int | None]:
    """The window sizes (bytes) the model's gate has floors for, and the one a request naming none gets
    (GATE_DEFAULT_WINDOW if calibrated, else the smallest); ([], None) for a model without floors."""
    sizes = sorted(app_model.floors)
    if not sizes:
        return [], None
    return sizes, GATE_DEFAULT_WINDOW if GATE_DEFAULT_WINDOW in sizes else sizes[0]


def gate_info(app_model: AppModel) -> str:
    """One line for the Generate tab's gate field: what the modes do and where the floors come from, or why
    this model's gate is off."""
    if not app_model.floors:
        return f"Off for this model: {app_model.gate_note or 'it has no calibrated floors'}."
    f = next(iter(app_model.floors.values()))
    return f"{GATE_MODES_EXPLAINED}. Floors: the {f.quantile:g} quantile of K, C, S on {f.source or 'held-out text'}."


def read_gate(app_model: AppModel, mode: Any, window: Any) -> GateConfig | None:
    """The gate a request asks for: None when `mode` is "off" (the window is then not read), else a
    `GateConfig` with the model's floors for `window` bytes (empty: `gate_windows`'s default).
    Raises: `InputError` for an unknown mode or window, or a gate on a model without floors."""
    mode = read_choice(mode, "gate mode", GATE_MODES)
    if mode == "off":
        return None
    sizes, default = gate_windows(app_model)
    if not sizes:
        raise InputError(f"This model's safety gate is off: {app_model.gate_note or 'it has no calibrated floors'}",
                         f"set the gate to “off”, or use a model with floors (`{RECALIBRATE}` makes them for a "
                         "v2 model's folder; a model trained here gets them when you use it)")
    window = default if window is None or window == "" else read_int(window, "gate window", 1, 2**20)
    if window not in sizes:
        raise InputError(f"The gate has no floors for a {window}-byte window",
                         f"choose one of {', '.join(map(str, sizes))} bytes")
    return GateConfig(mode, app_model.floors[window])


def _gate_line(gate: GateConfig, events: list, stopped: bool) -> str:
    words = describe(events, stopped) or "no window fell below the floors"
    return f"**Safety gate** ({gate.mode}, {gate.floors.window}-byte window): {words}."


def _gate_outputs(gate: GateConfig | None, gen: Generation, n_bytes: int) -> tuple[go.Figure | None, list | None]:
    """The gate's chart and events (as dicts) of a generation so far; (None, None) with the gate off."""
    if gate is None:
        return None, None
    chart = plots.gate_figure(gen.gate_trace, gate.floors.floors, gen.gate_events, n_bytes, gate.floors.window)
    return chart, [dataclasses.asdict(e) for e in gen.gate_events]


@friendly(_generate_failed)
def generate(app_model: AppModel, prompt: Any, mode: Any, n_bytes: Any, temperature: Any, seed: Any,
             compress: Any, gate_mode: Any = "off", gate_window: Any = None) -> Iterator[GenerateResult]:
    """Continue a prompt, streaming: yields the text and bits so far while the model samples, then the result.

    With `compress`, the prompt's bits are compressed and the model is fed the decompressed stream; the
    generated bits are compressed and passed through `model_output_decompress` before decoding. The codec is
    lossless, so the same seed gives the same text with compression on or off; the ratios show what it saved.
    With a gate (`gate_mode` warn, retry or stop; `read_gate`), K/C/S of the last `gate_window` output bytes
    are checked against the model's calibrated floors as it samples: every yield carries the gate's chart and
    events, and its status says what the gate did; a retry rolls the output back, so a later yield can be
    shorter than an earlier one (each yield replaces the last).
    Takes: the model, the prompt and its mode, bytes to generate (1..GEN_MAX_BYTES), temperature
    (0..TEMPERATURE_MAX, 0 greedy), seed (empty → a random one, reported), compression on/off, the gate's
    mode and window.
    Yields: `GenerateResult`s, cumulative; ratios and `last` only in the final one. Failures come back as a
    status message, never an exception. Closing the iterator stops the generation.
    """
    mode = read_choice(mode, "prompt mode", PROMPT_MODES)
    n_bytes = read_int(n_bytes, "length", 1, GEN_MAX_BYTES)
    temperature = read_float(temperature, "temperature", 0.0, TEMPERATURE_MAX)
    seed = read_seed(seed)
    compress = read_flag(compress, "Enable Compression setting")
    gate = read_gate(app_model, gate_mode, gate_window)
    model = app_model.model
    parity = model.config.parity
    frame = frame_bits(parity)
    bits, in_stream = prompt_bits(prompt, mode, parity)
    notes: list[str] = []
    in_ratio = None
    if compress and in_stream is None:
        in_stream = compress_bits(bits)
    if in_stream is not None:
        in_ratio = compression_ratio(bits, in_stream)
        notes.append(_ratio_line("Input", bits, in_stream))
        # The model reads what comes out of the stream, so the compressed path is the one exercised.
        bits = decompress_bits(in_stream, max_bits=PROMPT_MAX_BITS)

    # A bit prompt that ends mid-frame: the first generated bits complete that frame; decoding starts after.
    skip = -bits.numel() % frame
    if skip:
        notes.append(f"The prompt ends mid-frame; the first {skip} generated bits complete it (shown on a line "
                     "of their own) and are not decoded.")
    chunk_bytes = max(8, -(-n_bytes // STREAM_UPDATES))
    t0 = time.perf_counter()
    stream = model.generate_stream(bits, n_bytes * frame + skip, temperature=temperature, seed=seed,
                                   chunk_bits=chunk_bytes * frame, gate=gate, draft=app_model.draft)
    gen = None
    try:
        while True:
            # Grad mode is per thread and Gradio may resume this stream on another of its threads: set it
            # around every step, not once around the loop.
            with torch.no_grad():
                step = next(stream, None)
            if step is None:
                break
            gen = step
            done = max(gen.bits.numel() - skip, 0) // frame
            if done < n_bytes and not gen.gate_stopped:
                text = decode_bits(gen.bits[skip:skip + done * frame], parity=parity).text
                status = f"Generating… {done:,} of {n_bytes:,} bytes ({time.perf_counter() - t0:.1f} s, seed {seed})"
                if gen.gate_events:
                    status += "\n\n" + _gate_line(gate, gen.gate_events, False)
                yield GenerateResult(text, output_bits_text(gen.bits, min(skip, gen.bits.numel()), frame), in_ratio,
                                     None, status, None, *_gate_outputs(gate, gen, done))
    finally:
        with torch.no_grad():  # closing runs the stream's own clean-up, which may set grad mode: keep it inside
            stream.close()
    elapsed = time.perf_counter() - t0
    out_bits, out_ratio = gen.bits, None

    if compress:
        out_stream = compress_bits(out_bits)
        out_ratio = compression_ratio(out_bits, out_stream)
        notes.append(_ratio_line("Output", out_bits, out_stream))
        try:
            out_bits = model_output_decompress(out_stream)
        except CodecError as e:
            # Never expected for a stream the codec just wrote; fall back to the raw bits rather than fail.
            log.error("model_output_decompress failed on a fresh stream: %s", e)
            notes.append(warn(f"The output stream did not decompress ({e})", "showing the raw generated bits; "
                              "turn compression off if this repeats"))

    decoded = decode_bits(out_bits[skip:], parity=parity)
    made = max(gen.bits.numel() - skip, 0) // frame
    stopped = f" of {n_bytes:,} (the gate stopped it)" if gen.gate_stopped else ""
    done = f"Generated {made:,} bytes{stopped} in {elapsed:.2f} s (seed {seed})"
    if decoded.ok:
        head = ok(f"{done}; they decode cleanly as UTF-8.")
    else:
        head = warn(f"{done}, but they are not all valid text: {decoded.message}",
                    f"shown with � marks. {_LOWER_TEMPERATURE}" + (", or turn compression off." if compress else "."))
    if parity:
        notes.append(f"The sampler set {gen.parity_set} parity bits from the data bits before them.")
    if gate is not None:
        notes.insert(0, _gate_line(gate, gen.gate_events, gen.gate_stopped))
    status = "\n\n".join([head, *notes])
    last = {"prompt_bits": bits, "new_bits": out_bits, "parity": parity}
    yield GenerateResult(decoded.text, output_bits_text(out_bits, skip, frame), in_ratio, out_ratio, status, last,
                         *_gate_outputs(gate, gen, made))


def generate_all(app_model: AppModel, *args: Any) -> GenerateResult:
    """`generate` run to the end: its final result (for callers that do not stream)."""
    result = None
    for result in generate(app_model, *args):
        pass
    return result


# ---------------------------------------------------------------------------------------------------
# Telemetry


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
        bits = text_to_bits(read_text(text, "telemetry text", PROMPT_MAX_CHARS), parity=parity)
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
    notes.append(_ratio_line("Stream", bits, stream))
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


# ---------------------------------------------------------------------------------------------------
# Codec


class CodecResult(NamedTuple):
    """Outputs of the codec tab's compress and decompress, in the order the tab shows them."""
    bits: str
    text: str
    ratio: float | None
    status: str


def _codec_failed(status: str) -> CodecResult:
    return CodecResult("", "", None, status)


@friendly(_codec_failed)
def compress(source: Any, mode: Any, method: Any, parity: Any) -> CodecResult:
    """Compress text (as 9-bit parity frames, or 8-bit bytes) or typed bits losslessly with the bit codec.

    Args:
        source: the text (up to 10,000 characters) or bits (0/1, spaces allowed) to compress.
        mode: "text" or "bits".
        method: "auto" (the smallest), "stored", "rle" or "deflate".
        parity: text as 9-bit frames with an even-parity bit (true) or plain 8-bit bytes (false).
    Returns:
        the compressed stream as bits (groups of 8), an empty text, the compression ratio, and a status message.
    """
    method = read_choice(method, "method", METHODS)
    mode = read_choice(mode, "input mode", CODEC_MODES)
    parity = read_flag(parity, "parity setting")
    if mode == "text":
        bits = text_to_bits(read_text(source, "codec input", CODEC_MAX_CHARS), parity=parity)
    else:
        bits = read_bits(source, "codec input", CODEC_MAX_BITS)
    stream = compress_bits(bits, method=method)
    ratio = compression_ratio(bits, stream)
    return CodecResult(format_bits(stream, group=8, groups_per_line=GROUPS_PER_LINE), "", ratio,
                       ok(_ratio_line("Compressed", bits, stream)))


@friendly(_codec_failed)
def decompress(stream_field: Any, parity: Any) -> CodecResult:
    """Decompress a bit-codec stream and decode its bits as text leniently (� for what does not decode).

    Args:
        stream_field: the compressed stream as 0/1 bits (spaces and newlines allowed), as compress printed it.
        parity: decode the bits as 9-bit parity frames (true) or plain 8-bit bytes (false).
    Returns:
        the original bits (one group per frame), the decoded text, the compression ratio, and a status message.
    """
    parity = read_flag(parity, "parity setting")
    stream = read_bits(stream_field, "compressed stream", CODEC_MAX_BITS)
    bits = decompress_bits(stream, max_bits=CODEC_MAX_BITS)
    frame = frame_bits(parity)
    decoded = decode_bits(bits, parity=parity)
    status = ok(_ratio_line("Decompressed", bits, stream))
    if not decoded.ok:
        status += "\n\n" + warn(f"The bits are not clean text: {decoded.message}",
                                "shown with � marks; if they were typed bits rather than text, that is expected"
                                + ("" if not parity else ", or untick parity if they were 8-bit bytes"))
    return CodecResult(format_bits(bits, group=frame, groups_per_line=GROUPS_PER_LINE), decoded.text,
                       compression_ratio(bits, stream), status)


class NeuralCodecResult(NamedTuple):
    """Outputs of `codec_neural`, in the order the Codec tab shows them."""
    table: pd.DataFrame
    status: str


def _progress(progress: Callable[[float, str], Any] | None, what: str) -> Callable[[int, int], None] | None:
    return None if progress is None else (lambda done, total: progress(done / max(total, 1), what))


@friendly(lambda status: NeuralCodecResult(plots.bits_per_byte_table({}, 0), status))
def codec_neural(app_model: AppModel, source: Any,
                 progress: Callable[[float, str], Any] | None = None) -> NeuralCodecResult:
    """Compress text with the model driving a range coder (the exact codec, `neural_codec.compress_file`
    with the neural method only), decompress it to check the round trip, and put its bits per byte beside
    the model's cross-entropy and zlib / bz2 / lzma.

    Takes: the model, the text (≤ NEURAL_MAX_CHARS), an optional progress(fraction, message) callback.
    Returns: a `NeuralCodecResult`; failures come back as a status message.
    """
    text = read_text(source, "codec input", NEURAL_MAX_CHARS)
    data = text.encode("utf-8")
    model = app_model.model
    t0 = time.perf_counter()
    enc = neural_codec.compress_file(data, model, methods=("neural",), on_progress=_progress(progress, "encoding"))
    t1 = time.perf_counter()
    back = neural_codec.decompress_file(enc.blob, model, max_bytes=len(data), on_progress=_progress(progress, "decoding"))
    t2 = time.perf_counter()
    if back != data:  # the codec checks a CRC, so this would be a bug, not bad input
        raise CodecError("the model's round trip did not give the text back")
    n = len(data)
    header = neural_codec.read_header(enc.blob).size
    rows = {"model (neural codec)": 8 * len(enc.blob) / n,
            "model cross-entropy (ideal coder)": enc.neural_ideal_bits / n,
            **classic_bits_per_byte(data)}
    status = ok(f"{n:,} bytes → {len(enc.blob):,} bytes with the model ({header}-byte header included); round "
                f"trip exact; encode {n / (t1 - t0):,.0f} bytes/s, decode {n / (t2 - t1):,.0f} bytes/s")
    if app_model.untrained:
        status += "\n\n" + warn("The model is untrained, so it predicts no better than chance",
                                "train one in the Train tab and press “Use trained model”")
    return NeuralCodecResult(plots.bits_per_byte_table(rows, n), status)


# ------------------------------------------------------------------------------------- file codec

class FileCodecResult(NamedTuple):
    """Outputs of `compress_upload` and `decompress_upload`: the file written (None on failure), the methods
    table (compress only; empty otherwise) and a status message."""
    path: str | None
    table: pd.DataFrame
    status: str


def _file_failed(status: str) -> FileCodecResult:
    return FileCodecResult(None, plots.file_codec_table({}, 0, ""), status)


def _safe_name(name: str, fallback: str) -> str:
    """A file name safe to write: the last path part, only letters, digits, dot, dash and underscore."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name.replace("\\", "/")).name)[:100].strip(".")
    return name or fallback


def read_file(upload: Any, what: str, max_bytes: int, hint: str) -> tuple[bytes, str]:
    """The bytes and the visitor's file name of an uploaded file (Gradio's FileData as a dict, in its upload
    cache; a bare string is never taken as a server path). Raises `InputError`: nothing uploaded, not a
    file, gone, empty, over `max_bytes`."""
    if upload is None or upload == "":
        raise InputError(f"No {what} uploaded", hint)
    if not isinstance(upload, dict) or not isinstance(upload.get("path"), str):
        raise InputError(f"The {what} is not a file", "upload it with the upload box (over the API: "
                         "gradio_client.handle_file)")
    path = Path(upload["path"])
    name = upload.get("orig_name") if isinstance(upload.get("orig_name"), str) else path.name
    if not path.is_file():
        raise InputError(f"The uploaded file “{name}” is gone", "upload it again")
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError(f"“{name}” is {size:,} bytes; the limit here is {max_bytes:,} bytes",
                         "use the command line (python -m bitlm.neural_codec) for larger files")
    if size == 0:
        raise InputError(f"“{name}” is empty", hint)
    return path.read_bytes(), name


@friendly(_file_failed)
def compress_upload(app_model: AppModel, upload: Any, text: Any, out_dir: str | Path,
                    progress: Callable[[float, str], Any] | None = None) -> FileCodecResult:
    """Compress an uploaded file (≤ FILE_MAX_BYTES) or, without one, the text (≤ CODEC_MAX_CHARS, as UTF-8)
    into a `.blm` file (`neural_codec.compress_file`: the smallest of neural, lzma, bz2, zlib and stored;
    neural only up to NEURAL_FILE_MAX_BYTES), written in `out_dir` (the visitor's own folder).

    Returns: a `FileCodecResult` with the written path, the methods table and a status; failures come back
    as a status message."""
    if upload is None or upload == "":
        data = read_text(text, "codec input", CODEC_MAX_CHARS).encode("utf-8")
        name = "text"
    else:
        data, name = read_file(upload, "file", FILE_MAX_BYTES, "upload a file, or clear the upload box to compress "
                                                                 "the text above")
    n = len(data)
    neural = n <= NEURAL_FILE_MAX_BYTES
    methods = neural_codec.METHODS if neural else tuple(m for m in neural_codec.METHODS if m != "neural")
    t0 = time.perf_counter()
    result = neural_codec.compress_file(data, app_model.model, methods=methods,
                                        on_progress=_progress(progress, "compressing with the model"))
    seconds = time.perf_counter() - t0
    out = Path(out_dir) / (_safe_name(name, "file") + BLM_SUFFIX)
    out.write_bytes(result.blob)
    order = ("neural", "lzma", "bz2", "zlib", "stored")
    sizes = {m: result.sizes[m] for m in order if m in result.sizes}
    status = ok(f"“{name}”: {n:,} bytes → {len(result.blob):,} bytes with **{result.method}** "
                f"({result.bits_per_byte:.3f} bits/byte, header included) in {seconds:.1f} s. Download "
                f"“{out.name}” below; decompress it here"
                + (" with this same model." if result.method == "neural" else " (no model needed: it is "
                                                                             f"{result.method})."))
    if not neural:
        status += (f"\n\nThe model was not tried: {n:,} bytes is over {NEURAL_FILE_MAX_BYTES:,}, where the app "
                   f"would take minutes to decode it (`python -m bitlm.neural_codec compress` has no such cap).")
    elif result.neural_skipped:
        status += f"\n\nThe model was not tried: {result.neural_skipped}."
    elif app_model.untrained:
        status += "\n\n" + warn("The model is untrained, so it predicts no better than chance",
                                  "train one in the Train tab and press “Use trained model”")
    return FileCodecResult(str(out), plots.file_codec_table(sizes, n, result.method), status)


@friendly(_file_failed)
def decompress_upload(app_model: AppModel, upload: Any, out_dir: str | Path,
                      progress: Callable[[float, str], Any] | None = None) -> FileCodecResult:
    """Decompress an uploaded `.blm` file (as `compress_upload` or the CLI wrote it) back to the original,
    written in `out_dir` (the visitor's own folder). Originals over FILE_MAX_BYTES, and neural ones over
    NEURAL_FILE_MAX_BYTES, are refused before anything is decoded.

    Returns: a `FileCodecResult` with the written path, an empty table and a status; a foreign, truncated,
    corrupted or too large file, or one of another model, comes back as a status message."""
    hint = f"upload a {BLM_SUFFIX} file exactly as this tab (or python -m bitlm.neural_codec) wrote it"
    blob, name = read_file(upload, "compressed file", 2 * FILE_MAX_BYTES, hint)
    try:
        header = neural_codec.read_header(blob)
        if header.length > FILE_MAX_BYTES:
            raise InputError(f"“{name}” holds {header.length:,} bytes; the app decompresses at most {FILE_MAX_BYTES:,}",
                             f"decompress it with python -m bitlm.neural_codec decompress {name}")
        if header.method_name == "neural" and header.length > NEURAL_FILE_MAX_BYTES:
            raise InputError(f"“{name}” holds {header.length:,} bytes coded by the model; the app decodes at most "
                             f"{NEURAL_FILE_MAX_BYTES:,} (a few hundred bytes a second)",
                             f"decompress it with python -m bitlm.neural_codec decompress {name}")
        t0 = time.perf_counter()
        data = neural_codec.decompress_file(blob, app_model.model, max_bytes=FILE_MAX_BYTES,
                                            on_progress=_progress(progress, "decompressing with the model"))
    except (CodecError, UnsupportedModelError) as e:
        if "model" in str(e):
            raise InputError(f"Cannot decompress “{name}”: {e}",
                             "to switch model here: the Train tab's “Use trained model” or “Back to the shipped "
                             "model”") from e
        raise InputError(f"Cannot decompress “{name}”: {e}", hint) from e
    seconds = time.perf_counter() - t0
    stem = name[:-len(BLM_SUFFIX)] if name.lower().endswith(BLM_SUFFIX) else name + ".out"
    out = Path(out_dir) / _safe_name(stem, "decompressed")
    out.write_bytes(data)
    return FileCodecResult(str(out), plots.file_codec_table({}, 0, ""),
                           ok(f"“{name}” ({len(blob):,} bytes, {header.method_name}) → {len(data):,} bytes in "
                              f"{seconds:.1f} s, CRC-32 checked. Download “{out.name}” below."))
