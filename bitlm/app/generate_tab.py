"""The Generate tab's work: streamed generation with optional compression and the safety gate (the
Telemetry tab: `bitlm.app.telemetry_tab`; the Codec tab: `bitlm.app.codec_tab`).

Every function here takes the `AppModel` the calling visitor uses (`bitlm.app.visitors`) and the raw values of
the UI's fields, checks them with `bitlm.app.inputs` against the caps below, and turns every failure into a
short status message with a suggestion (`inputs.friendly`), so a request never ends in a traceback and the
app keeps serving. `bitlm.app.endpoints` binds these to the calling visitor; `app.py` lays out the UI.
"""
from __future__ import annotations

import dataclasses
import random
import time
from typing import Any, Callable, Iterator, NamedTuple

import plotly.graph_objects as go
import torch

from bitlm.app import plots
from bitlm.app.inputs import (GROUPS_PER_LINE, InputError, friendly, log, ok, ratio_line, read_bits, read_choice,
                              read_flag, read_float, read_int, read_text, warn)
from bitlm.app.visitors import RECALIBRATE, AppModel
from bitlm.bits.codec import CodecError, compress_bits, compression_ratio, decompress_bits
from bitlm.bits.frames import decode_bits, format_bits, frame_bits, text_to_bits
from bitlm.generate.decoder import Generation
from bitlm.generate.gate import MODES as GATE_MODES
from bitlm.generate.gate import GateConfig, describe
from bitlm.model.transformer import model_output_decompress

# Input caps, shown in the UI next to the fields they limit.
PROMPT_MAX_CHARS = 2_000
PROMPT_MAX_BITS = PROMPT_MAX_CHARS * 9
GEN_MAX_BYTES = 2_000
TEMPERATURE_MAX = 2.0
SEED_MAX = 2**32 - 1  # a browser's number field holds it exactly (JavaScript numbers stop at 2**53)

PROMPT_MODES = ("text", "bits", "compressed stream")
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
    m = f"; and a limit on {plots.METRIC_NAMES['M']}: {plots.M_EXPLAINED}" if "M" in f.floors else ""
    return (f"{GATE_MODES_EXPLAINED}. Floors: the {f.quantile:g} quantile of K, C, S on "
            f"{f.source or 'held-out text'}{m}.")


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
             compress: Any, gate_mode: Any = "off", gate_window: Any = None,
             should_stop: Callable[[], bool] | None = None) -> Iterator[GenerateResult]:
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
    mode and window, and `should_stop`, asked after every streamed chunk: once it returns True the generation
    ends there as if that were its length (the visitor's Stop), and the final result says so.
    Yields: `GenerateResult`s, cumulative; ratios and `last` only in the final one. Failures come back as a
    status message, never an exception. Closing the iterator abandons the generation (no final result).
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
        notes.append(ratio_line("Input", bits, in_stream))
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
    stopped_by_visitor = False
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
                if should_stop is not None and should_stop():
                    stopped_by_visitor = True
                    break
    finally:
        with torch.no_grad():  # closing runs the stream's own clean-up, which may set grad mode: keep it inside
            stream.close()
    elapsed = time.perf_counter() - t0
    out_bits, out_ratio = gen.bits, None

    if compress:
        out_stream = compress_bits(out_bits)
        out_ratio = compression_ratio(out_bits, out_stream)
        notes.append(ratio_line("Output", out_bits, out_stream))
        try:
            out_bits = model_output_decompress(out_stream)
        except CodecError as e:
            # Never expected for a stream the codec just wrote; fall back to the raw bits rather than fail.
            log.error("model_output_decompress failed on a fresh stream: %s", e)
            notes.append(warn(f"The output stream did not decompress ({e})", "showing the raw generated bits; "
                              "turn compression off if this repeats"))

    decoded = decode_bits(out_bits[skip:], parity=parity)
    made = max(gen.bits.numel() - skip, 0) // frame
    if stopped_by_visitor:
        done = f"Stopped: generated {made:,} of {n_bytes:,} bytes"
    else:
        done = f"Generated {made:,} bytes" + (f" of {n_bytes:,} (the gate stopped it)" if gen.gate_stopped else "")
    done += f" in {elapsed:.2f} s (seed {seed})"
    if decoded.ok and stopped_by_visitor:
        head = f"⏹ {done}; the text and bits above are what was generated until then, and decode cleanly as UTF-8."
    elif decoded.ok:
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
