"""The app's handlers: generation with optional compression, decoding with a fallback, the codec tab,
telemetry, and the one-at-a-time background training session.

`app.py` only lays out components and wires them to the functions here. Every handler validates its
inputs against the caps below and turns every failure (bad input, `CodecError`, `CorpusError`, other
`ValueError`s, anything unexpected) into a short status message with a suggestion, so a request never
ends in a traceback and the app keeps serving. Generation and telemetry run on the model held by a
`ModelSlot`; training runs on the Trainer's own model in a background thread, and a trained model
reaches the slot only as a copy taken when the run is over ("use trained model").
"""
from __future__ import annotations

import copy
import functools
import logging
import math
import os
import random
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import gradio as gr
import pandas as pd
import plotly.graph_objects as go
import torch

from bitlm import plots
from bitlm.bits import decode_bits, format_bits, frame_bits, parse_bit_string, text_to_bits
from bitlm.codec import HEADER_BITS, METHODS, CodecError, compress_bits, compression_ratio, decompress_bits, stream_info
from bitlm.data import BUILTIN_CORPORA, CorpusError, load_corpus
from bitlm.evaluate import classic_bits_per_byte
from bitlm.model import BitTransformerLM, model_output_decompress
from bitlm import neural_codec
from bitlm.train import PRESETS, Trainer, make_configs

log = logging.getLogger(__name__)

# Input caps, shown in the UI next to the fields they limit.
PROMPT_MAX_CHARS = 2_000
PROMPT_MAX_BITS = PROMPT_MAX_CHARS * 9
GEN_MAX_BYTES = 2_000
CODEC_MAX_CHARS = 10_000
CODEC_MAX_BITS = CODEC_MAX_CHARS * 9 * 4
# The model codes about 500 bytes/s each way in one lane; from 512 bytes on, inputs go in parallel lanes
# (2 000 bytes: ~2 000 bytes/s on one thread, 5 000 characters: ~4 000 bytes/s on two).
NEURAL_MAX_CHARS = 5_000
UPLOAD_MAX_BYTES = 5 * 1024 * 1024
TRAIN_MAX_STEPS = 20_000
# A bit field may hold separators (spaces, newlines) between the bits; beyond this many characters
# it cannot be within the bit cap, so it is refused before parsing.
_BIT_FIELD_SLACK = 3

PROMPT_MODES = ("text", "bits", "compressed stream")
TELEMETRY_SOURCES = ("last generation", "text below")
TELEMETRY_VIEWS = ("decompressed bits", "compressed stream")
CORPORA = (*BUILTIN_CORPORA, "uploaded .txt")
# Bit groups (frames, or bytes of a stream) per line in the bit text boxes: fits their width.
GROUPS_PER_LINE = 6
# Share of training samples the model reads as a compressed stream when multi-task is on.
MULTITASK_DIRECT_PROB = 0.25

_LOWER_TEMPERATURE = "Try a lower temperature or another seed"


class InputError(ValueError):
    """A request the app refuses, with a hint on what to do instead."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


def ok(message: str) -> str:
    """A success status line."""
    return f"✓ {message}"


def warn(message: str, hint: str = "") -> str:
    """A friendly failure status line: what went wrong, then what to try."""
    return f"⚠️ {message}" + (f" — {hint}" if hint else "")


def _friendly(on_error: Callable[[str], Any]) -> Callable:
    """Decorate a handler so any exception becomes `on_error(status)` instead of a traceback.

    Expected failures (bad input, codec, decoding, corpus) become their own message; anything else is
    logged with its traceback for the operator and shown as an unexpected error, and the app keeps serving.
    """
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except InputError as e:
                return on_error(warn(str(e), e.hint))
            except CodecError as e:
                return on_error(warn(f"Not a valid compressed stream: {e}",
                                     "paste the compressed bits exactly as the Codec tab printed them"))
            except CorpusError as e:
                return on_error(warn(f"Cannot use this corpus: {e}", "pick a built-in corpus or upload a UTF-8 .txt file"))
            except ValueError as e:
                return on_error(warn(str(e), "check the inputs and try again"))
            except Exception as e:
                log.exception("handler %s failed", fn.__name__)
                return on_error(warn(f"Unexpected error ({type(e).__name__}: {e})",
                                     "the app is still running; try again, and report it if it repeats"))
        return inner
    return wrap


# ---------------------------------------------------------------------------------------------------
# Input validation


def read_text(text: str | None, what: str, max_chars: int) -> str:
    """Return `text` if it is usable, else raise `InputError` (empty, whitespace only, over `max_chars`)."""
    if text is None or text == "":
        raise InputError(f"The {what} is empty", f"type some text (up to {max_chars:,} characters)")
    if not text.strip():
        raise InputError(f"The {what} is only whitespace", "type some visible text")
    if len(text) > max_chars:
        raise InputError(f"The {what} has {len(text):,} characters; the limit is {max_chars:,}", "shorten it")
    return text


def read_bits(field: str | None, what: str, max_bits: int) -> torch.Tensor:
    """Parse a typed bit string (0/1 with optional spaces, newlines, underscores) into a 1-D uint8 tensor.

    Raises: `InputError` for empty / whitespace / oversized input and for characters other than 0 and 1.
    """
    if field is None or not field.strip():
        raise InputError(f"The {what} is empty", "type bits such as 011010000 (spaces and newlines are allowed)")
    if len(field) > _BIT_FIELD_SLACK * max_bits:
        raise InputError(f"The {what} has {len(field):,} characters; the limit is {max_bits:,} bits", "shorten it")
    try:
        bits = parse_bit_string(field)
    except ValueError as e:
        raise InputError(f"The {what} is not a bit string: {e}", "use only 0 and 1 (spaces and newlines are allowed)") from e
    if bits.numel() == 0:
        raise InputError(f"The {what} has no bits", "type bits such as 011010000")
    if bits.numel() > max_bits:
        raise InputError(f"The {what} has {bits.numel():,} bits; the limit is {max_bits:,}", "shorten it")
    return bits


def _read_int(value: Any, what: str, lo: int, hi: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"The {what} must be a number, got {value!r}", f"enter a whole number from {lo} to {hi}") from None
    if not math.isfinite(number) or number != int(number) or not lo <= number <= hi:
        raise InputError(f"The {what} must be a whole number from {lo} to {hi}, got {value}", "pick a value in range")
    return int(number)


def _read_float(value: Any, what: str, lo: float, hi: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"The {what} must be a number, got {value!r}", f"enter a number from {lo} to {hi}") from None
    if not (math.isfinite(number) and lo <= number <= hi):
        raise InputError(f"The {what} must be from {lo} to {hi}, got {value}", "pick a value in range")
    return number


# ---------------------------------------------------------------------------------------------------
# The model Generate and Telemetry use


class ModelSlot:
    """The model that Generate and Telemetry run, where it came from, and a lock so a swap or another
    request never interleaves with a running one. The model object is replaced whole, never edited.
    `untrained` marks the freshly initialised fallback, whose predictions are chance."""

    def __init__(self, model: BitTransformerLM, source: str, notice: str = "", untrained: bool = False):
        self._lock = threading.Lock()
        self.model = model.eval()
        self.source = source
        self.notice = notice
        self.untrained = untrained

    @contextmanager
    def use(self) -> Iterator[BitTransformerLM]:
        """Hold the model for one request."""
        with self._lock:
            yield self.model

    def swap(self, model: BitTransformerLM, source: str) -> None:
        """Replace the model (after any request using the old one has finished)."""
        with self._lock:
            self.model = model.eval()
            self.source = source
            self.notice = ""
            self.untrained = False

    def describe(self) -> str:
        """Markdown: the model in use, and the fallback notice if there is one."""
        line = f"**Model:** {self.source} · {self.model.num_params():,} parameters"
        return f"{self.notice}\n\n{line}" if self.notice else line


def load_app_model(model_dir: str | Path = "assets", fallback_preset: str = "small") -> ModelSlot:
    """Load the shipped model, or fall back to a freshly initialised one with a visible notice.

    Takes: the folder written by `save_pretrained`, and the `PRESETS` name whose model config the
    fallback uses. Returns: a `ModelSlot`; never raises for a missing or broken model folder.
    """
    path = Path(model_dir)
    try:
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no config.json in {path}/")
        model = BitTransformerLM.from_pretrained(str(path))
        return ModelSlot(model, f"shipped model from `{path}/`")
    except Exception as e:  # a broken checkpoint must not stop the app from starting
        log.warning("could not load the model from %s (%s: %s); using a fresh %s model",
                    path, type(e).__name__, e, fallback_preset)
        reason = f"{type(e).__name__}: {e}"
    # A fixed seed makes the untrained fallback (and so every test against it) reproducible,
    # without touching the process-wide RNG.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BitTransformerLM(PRESETS[fallback_preset][0])
    notice = warn(f"No trained model could be loaded from `{path}/` ({reason}).",
                  f"running a freshly initialised, untrained **{fallback_preset}** model, so its output is "
                  "random bits; train one in the Train tab and press “Use trained model”.")
    return ModelSlot(model, f"untrained `{fallback_preset}` preset (fallback)", notice, untrained=True)


# ---------------------------------------------------------------------------------------------------
# Generate


class GenerateResult(NamedTuple):
    """Outputs of `generate`, in the order the Generate tab shows them."""
    text: str
    bits: str
    input_ratio: float | None
    output_ratio: float | None
    status: str
    last: dict | None  # prompt and output bits for the Telemetry tab


def _generate_failed(status: str) -> GenerateResult:
    return GenerateResult("", "", None, None, status, None)


def prompt_bits(prompt: str | None, mode: str, parity: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
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


@_friendly(_generate_failed)
def generate(slot: ModelSlot, prompt: str | None, mode: str, n_bytes: Any, temperature: Any, seed: Any,
             compress: bool) -> GenerateResult:
    """Continue a prompt, optionally through the compressed path.

    With `compress`, the prompt's bits are compressed and the model is fed the decompressed stream; the
    generated bits are compressed and passed through `model_output_decompress` before decoding. The codec is
    lossless, so the same seed gives the same text with compression on or off; the ratios show what it saved.
    Takes: the slot, the prompt and its mode, bytes to generate (1..GEN_MAX_BYTES), temperature (0..5, 0 greedy),
    seed (empty → a random one, reported), compression on/off.
    Returns: a `GenerateResult`; failures come back as a status message, never an exception.
    """
    n_bytes = _read_int(n_bytes, "length", 1, GEN_MAX_BYTES)
    temperature = _read_float(temperature, "temperature", 0.0, 5.0)
    seed = random.randrange(2**31) if seed is None or seed == "" else _read_int(seed, "seed", 0, 2**63 - 1)
    notes: list[str] = []
    with slot.use() as model:  # the framing read here must be the model's that generates
        parity = model.config.parity
        frame = frame_bits(parity)
        bits, in_stream = prompt_bits(prompt, mode, parity)
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
            notes.append(f"The prompt ends mid-frame; the first {skip} generated bits complete it and are not decoded.")
        t0 = time.perf_counter()
        gen = model.generate(bits, n_bytes * frame + skip, temperature=temperature, seed=seed)
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
    done = f"Generated {n_bytes} bytes in {elapsed:.2f} s (seed {seed})"
    if decoded.ok:
        head = ok(f"{done}; they decode cleanly as UTF-8.")
    else:
        head = warn(f"{done}, but they are not all valid text: {decoded.message}",
                    f"shown with � marks. {_LOWER_TEMPERATURE}" + (", or turn compression off." if compress else "."))
    if parity:
        notes.append(f"The sampler set {gen.parity_set} parity bits from the data bits before them.")
    status = "\n\n".join([head, *notes])
    last = {"prompt_bits": bits, "new_bits": out_bits, "parity": parity}
    return GenerateResult(decoded.text, format_bits(out_bits, group=frame, groups_per_line=GROUPS_PER_LINE), in_ratio, out_ratio, status, last)


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


def heatmap(attention: list | None, layer: Any, head: Any) -> go.Figure:
    """The attention heatmap of one layer and head from the arrays `telemetry` returned."""
    if not attention:
        return plots.empty_figure("run telemetry first")
    layer = min(max(int(layer or 0), 0), len(attention) - 1)
    head = min(max(int(head or 0), 0), attention[layer].shape[0] - 1)
    return plots.attention_heatmap(attention[layer][head], layer, head)


@_friendly(_telemetry_failed)
def telemetry(slot: ModelSlot, source: str, text: str | None, view: str, last: dict | None,
              layer: Any = 0, head: Any = 0) -> TelemetryResult:
    """K, C, S, per-position predictions and attention for the last generation or a text.

    `view` "decompressed bits": the text's bits are compressed and the model reads them through
    `forward_compressed`, with K/C on the decompressed bits; "compressed stream": the model reads the
    stream itself (stream type 1) and K/C describe the stream. Long inputs keep their last `block_size` bits.
    Returns: a `TelemetryResult`; failures come back as a status message.
    """
    notes = []
    if source == "last generation" and not last:
        if text is None or not text.strip():
            raise InputError("There is no generation yet", "generate something in the Generate tab, or type a text below")
        notes.append("There is no generation yet, so this is the telemetry of the text below.")
        source = "text below"
    if source == "last generation":
        bits, parity = torch.cat([last["prompt_bits"], last["new_bits"]]), last["parity"]
    elif source == "text below":
        parity = slot.model.config.parity
        bits = text_to_bits(read_text(text, "telemetry text", PROMPT_MAX_CHARS), parity=parity)
    else:
        raise InputError(f"Unknown source {source!r}", f"choose one of {', '.join(TELEMETRY_SOURCES)}")
    if view not in TELEMETRY_VIEWS:
        raise InputError(f"Unknown view {view!r}", f"choose one of {', '.join(TELEMETRY_VIEWS)}")
    frame = frame_bits(parity)
    with slot.use() as model:
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
    summary = " · ".join(f"**{r.name}** {r.value:.3f}" for r in table.itertuples())
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


@_friendly(_codec_failed)
def codec_compress(source: str | None, mode: str, method: str, parity: bool) -> CodecResult:
    """Compress typed text (as framed bits) or typed bits with the chosen method.

    Returns: the compressed stream as bits (groups of 8), "" for text, the compression ratio, a status.
    """
    if method not in METHODS:
        raise InputError(f"Unknown method {method!r}", f"choose one of {', '.join(METHODS)}")
    if mode == "text":
        bits = text_to_bits(read_text(source, "codec input", CODEC_MAX_CHARS), parity=parity)
    elif mode == "bits":
        bits = read_bits(source, "codec input", CODEC_MAX_BITS)
    else:
        raise InputError(f"Unknown input mode {mode!r}", "choose text or bits")
    stream = compress_bits(bits, method=method)
    ratio = compression_ratio(bits, stream)
    return CodecResult(format_bits(stream, group=8, groups_per_line=GROUPS_PER_LINE), "", ratio, ok(_ratio_line("Compressed", bits, stream)))


@_friendly(_codec_failed)
def codec_decompress(stream_field: str | None, parity: bool) -> CodecResult:
    """Decompress a typed stream and decode its bits as text leniently (� for what does not decode).

    Returns: the original bits (grouped by frame), the decoded text, the compression ratio, a status.
    """
    stream = read_bits(stream_field, "compressed stream", CODEC_MAX_BITS)
    bits = decompress_bits(stream, max_bits=CODEC_MAX_BITS)
    frame = frame_bits(parity)
    decoded = decode_bits(bits, parity=parity)
    status = ok(_ratio_line("Decompressed", bits, stream))
    if not decoded.ok:
        status += "\n\n" + warn(f"The bits are not clean text: {decoded.message}",
                                "shown with � marks; if they were typed bits rather than text, that is expected"
                                + ("" if not parity else ", or untick parity if they were 8-bit bytes"))
    return CodecResult(format_bits(bits, group=frame, groups_per_line=GROUPS_PER_LINE), decoded.text, compression_ratio(bits, stream), status)


class NeuralCodecResult(NamedTuple):
    """Outputs of `codec_neural`, in the order the Codec tab shows them."""
    table: pd.DataFrame
    status: str


@_friendly(lambda status: NeuralCodecResult(plots.bits_per_byte_table({}, 0), status))
def codec_neural(slot: ModelSlot, source: str | None, progress: Callable[[float, str], Any] | None = None) -> NeuralCodecResult:
    """Compress text with the model driving a range coder (`bitlm.neural_codec`), decompress it to check
    the round trip, and put its bits per byte beside the model's cross-entropy and zlib / bz2 / lzma.

    Takes: the slot, the text (≤ NEURAL_MAX_CHARS), an optional progress(fraction, message) callback.
    Returns: a `NeuralCodecResult`; failures come back as a status message.
    """
    text = read_text(source, "codec input", NEURAL_MAX_CHARS)
    data = text.encode("utf-8")

    def report(what: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda done, total: progress(done / max(total, 1), what))

    with slot.use() as model:
        t0 = time.perf_counter()
        enc = neural_codec.encode_bytes(model, data, on_progress=report("encoding"), kind=neural_codec.KIND_TEXT)
        t1 = time.perf_counter()
        back = neural_codec.decompress_text(model, enc.stream, on_progress=report("decoding"))
        t2 = time.perf_counter()
    if back != text:  # the codec checks a CRC, so this would be a bug, not bad input
        raise CodecError("the model's round trip did not give the text back")
    n = len(data)
    rows = {"model (neural codec)": 8 * len(enc.stream) / n,
            "model cross-entropy (ideal coder)": enc.ideal_bits / n,
            **classic_bits_per_byte(data)}
    status = ok(f"{n:,} bytes → {len(enc.stream):,} bytes with the model ({neural_codec.HEADER_BYTES}-byte header "
                f"included); round trip exact; encode {n / (t1 - t0):,.0f} bytes/s, decode {n / (t2 - t1):,.0f} bytes/s")
    if slot.untrained:
        status += "\n\n" + warn("The model is untrained, so it predicts no better than chance",
                                  "train one in the Train tab and press “Use trained model”")
    return NeuralCodecResult(plots.bits_per_byte_table(rows, n), status)


# ---------------------------------------------------------------------------------------------------
# Training


class TrainSnapshot(NamedTuple):
    """Outputs of a live-chart refresh, in the order the Train tab shows them."""
    status: str
    loss: go.Figure
    accuracy: go.Figure
    ratio: go.Figure
    table: pd.DataFrame
    running: bool


def _upload_corpus(upload: str | None):
    if not upload:
        raise InputError("No file uploaded", "upload a UTF-8 .txt file, or pick a built-in corpus")
    path = Path(upload)
    if not path.is_file():
        raise InputError("The uploaded file is gone", "upload it again")
    size = path.stat().st_size
    if size > UPLOAD_MAX_BYTES:
        raise InputError(f"The upload is {size / 2**20:.1f} MB; the limit is {UPLOAD_MAX_BYTES // 2**20} MB",
                         "upload a smaller text, or train on a built-in corpus")
    try:
        return load_corpus(path)
    except CorpusError as e:
        # The server-side temp path means nothing to the user; name the file they picked.
        raise InputError(f"Cannot use “{path.name}”: {str(e).replace(str(path), '').lstrip(': ')}",
                         "upload a UTF-8 .txt file, or pick a built-in corpus") from e


class TrainingSession:
    """One background training run at a time, shared by every browser session.

    The Trainer owns its model; other threads only read its metrics, ask it to stop, and take a copy of
    the model once the run is over, so the model Generate uses is never touched by training.
    """

    def __init__(self, run_root: str | Path = "runs"):
        self.run_root = Path(run_root)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._trainer: Trainer | None = None
        self._steps = 0
        self._state = "idle"  # idle | running | stopping | finished | stopped | failed
        self._message = ""
        self._started = 0.0
        self._label = ""
        self.run_dir: Path | None = None

    @property
    def running(self) -> bool:
        """Whether a run's thread is alive (also while it is stopping)."""
        return self._thread is not None and self._thread.is_alive()

    @_friendly(lambda status: status)
    def start(self, corpus: str, upload: str | None, preset: str, steps: Any, compress_prob: Any,
              multitask: bool) -> str:
        """Start a run in a background thread; refuse (with a message) while another one runs.

        Takes: one of `CORPORA` (and the uploaded file's path for "uploaded .txt"), a `PRESETS` name, the step
        count (1..TRAIN_MAX_STEPS), `compress_prob` (0..1), multi-task on/off (the model also reads compressed
        streams directly, `direct_prob` = MULTITASK_DIRECT_PROB). Returns: a status line.
        """
        already = InputError("A training run is already in progress", "stop it first, or wait for it to finish")
        if self.running:  # checked again under the lock; this spares loading a corpus for nothing
            raise already
        if preset not in PRESETS:
            raise InputError(f"Unknown model size {preset!r}", f"choose one of {', '.join(PRESETS)}")
        steps = _read_int(steps, "number of steps", 1, TRAIN_MAX_STEPS)
        compress_prob = _read_float(compress_prob, "compress_prob", 0.0, 1.0)
        if corpus == "uploaded .txt":
            data = _upload_corpus(upload)
        elif corpus in BUILTIN_CORPORA:
            data = load_corpus(corpus)
        else:
            raise InputError(f"Unknown corpus {corpus!r}", f"choose one of {', '.join(CORPORA)}")
        with self._lock:
            if self.running:
                raise already
            self.run_root.mkdir(parents=True, exist_ok=True)
            # mkdtemp: a fresh folder even for two starts in the same second, or two app processes.
            run_dir = Path(tempfile.mkdtemp(prefix=time.strftime(f"app-%Y%m%d-%H%M%S-{preset}-"), dir=self.run_root))
            model_config, config = make_configs(preset, steps=steps, compress_prob=compress_prob,
                                                direct_prob=MULTITASK_DIRECT_PROB if multitask else 0.0,
                                                out_dir=str(run_dir))
            trainer = Trainer(model_config, config, corpus=data)
            self._trainer, self._steps, self.run_dir = trainer, steps, run_dir
            self._label = f"{preset} preset on {data.name}"
            self._state, self._message, self._started = "running", "", time.time()
            self._thread = threading.Thread(target=self._run, args=(trainer,), name="bitlm-train", daemon=True)
            self._thread.start()
        return ok(f"Training started: {preset} model on {data.name} ({data.n_bytes:,} bytes), {steps} steps, "
                  f"compress_prob {compress_prob:g}, multi-task {'on' if multitask else 'off'}; "
                  f"metrics and checkpoints go to `{run_dir}`.")

    def _run(self, trainer: Trainer) -> None:
        message = ""
        try:
            trainer.run()
        except Exception as e:
            log.exception("training run failed")
            message = f"{type(e).__name__}: {e}"
        with self._lock:
            self._message = message
            self._state = "failed" if message else "stopped" if self._state == "stopping" else "finished"

    @_friendly(lambda status: status)
    def stop(self) -> str:
        """Ask the running training to stop after its current step. Returns: a status line."""
        with self._lock:
            if not self.running:
                raise InputError("No training run is in progress", "press Start to begin one")
            self._state = "stopping"
            self._trainer.stop()
        return ok("Stopping after the current step…")

    def _status(self, rows: list[dict]) -> str:
        step = int(rows[-1]["step"]) if rows else 0
        elapsed = time.time() - self._started
        progress = f"step {step}/{self._steps} · {elapsed:.0f} s"
        if self._state == "idle":
            return "No training run yet. Pick a corpus and press Start."
        if self._state == "running":
            return f"Training… {progress}"
        if self._state == "stopping":
            return f"Stopping… {progress}"
        if self._state == "failed":
            return warn(f"Training failed at step {step}: {self._message}",
                        "try a smaller model or another corpus; the app is still running")
        return ok(f"Training {self._state} at step {step}/{self._steps}. "
                  "Press “Use trained model” to generate with it, or save it.")

    def snapshot(self) -> TrainSnapshot:
        """The current status line, charts and metrics table (safe to call from any thread, any time)."""
        with self._lock:
            rows = list(self._trainer.metrics) if self._trainer is not None else []
            status, running = self._status(rows), self.running
        df = plots.metrics_frame(rows)
        return TrainSnapshot(status, plots.loss_figure(df), plots.accuracy_figure(df), plots.ratio_figure(df),
                             df, running)

    def _finished_trainer(self) -> Trainer:
        if self.running:
            raise InputError("Training is still running", "stop it (or wait for it to finish) first")
        if self._trainer is None or not self._trainer.metrics:
            raise InputError("There is no trained model yet", "start a training run first")
        return self._trainer

    @_friendly(lambda status: status)
    def use_trained(self, slot: ModelSlot) -> str:
        """Put a copy of the finished run's model into `slot` for Generate and Telemetry. Returns: a status line."""
        with self._lock:
            trainer = self._finished_trainer()
            model = copy.deepcopy(trainer.model).cpu()  # the app generates on the CPU; training may use a GPU
            step = int(trainer.metrics[-1]["step"])
        slot.swap(model, f"trained in this session ({self._label}, {step} steps)")
        return ok(f"Generate and Telemetry now use the model trained for {step} steps.")

    @_friendly(lambda status: (None, status))
    def save(self) -> tuple[list[str] | None, str]:
        """Save the finished run's model to `<run_dir>/model` (`save_pretrained`).

        Returns: (the written files, for download, or None; a status line).
        """
        with self._lock:
            trainer = self._finished_trainer()
            target = self.run_dir / "model"
            trainer.model.save_pretrained(str(target))
        files = sorted(str(f) for f in target.iterdir() if f.is_file())
        return files, ok(f"Saved to `{target}`: load it with `BitTransformerLM.from_pretrained(\"{target}\")`, "
                         "or put its files in `assets/` to make it the app's model.")

    @_friendly(lambda status: (None, status))
    def export_csv(self) -> tuple[list[str] | None, str]:
        """Write the metrics so far to `<run_dir>/metrics-app.csv` (atomically). Returns: ([path] or None, status)."""
        snapshot = self.snapshot()
        if snapshot.table.empty or self.run_dir is None:
            return None, warn("There are no metrics yet", "start a training run and wait for the first log line")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        target = self.run_dir / "metrics-app.csv"
        tmp = target.with_suffix(".csv.tmp")
        snapshot.table.to_csv(tmp, index=False)
        os.replace(tmp, target)
        return [str(target)], ok(f"{len(snapshot.table)} rows written to `{target}`.")


def refresh_training(session: TrainingSession) -> tuple:
    """The Train tab's live outputs: status, three charts, the table, and the refresh timer, which stays
    active only while a run is in progress (the tick after the run ends draws the final state and stops)."""
    snapshot = session.snapshot()
    # Newest row first and 4 significant digits: the live table is for reading, the CSV keeps everything.
    table = snapshot.table.iloc[::-1].apply(lambda col: col.map(_short) if col.dtype == float else col)
    return (*snapshot[:4], table, gr.Timer(active=snapshot.running))


def _short(x: float) -> float:
    return float(f"{x:.4g}") if math.isfinite(x) else x
