"""The Codec tab's work: the bit codec on typed text or bits (`compress` / `decompress`), the model as a
compressor of a text (`codec_neural`), and files in and out of the `.blm` container (`compress_upload` /
`decompress_upload`, `bitlm.compress.container`). Like `bitlm.app.generate_tab`, every function takes the raw values of
the UI's fields, checks them against the caps below and turns every failure into a status message.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pandas as pd

from bitlm.app import plots
from bitlm.app.inputs import (GROUPS_PER_LINE, InputError, friendly, ok, ratio_line, read_bits, read_choice, read_flag,
                              read_text, warn)
from bitlm.app.visitors import AppModel
from bitlm.bits.codec import METHODS, CodecError, compress_bits, compression_ratio, decompress_bits
from bitlm.bits.frames import decode_bits, format_bits, frame_bits, text_to_bits
from bitlm.compress import container
from bitlm.compress.exact import UnsupportedModelError
from bitlm.train.evaluate import classic_bits_per_byte

# Input caps, shown in the UI next to the fields they limit.
CODEC_MAX_CHARS = 10_000
CODEC_MAX_BITS = CODEC_MAX_CHARS * 9 * 4
# The exact codec decodes ~500 bytes/s in one lane (encoding is faster); from 512 bytes on, inputs go in
# parallel lanes (one thread: 2 000 bytes decode at ~1 300 bytes/s, 8 000 at ~1 900; bench/neural_codec.py).
NEURAL_MAX_CHARS = 5_000
# Files: the Codec tab compresses and decompresses up to FILE_MAX_BYTES; the model methods (neural, neural+cm)
# are tried on inputs up to NEURAL_FILE_MAX_BYTES and decode only up to that length, since decoding is
# sequential: 12 KiB decode in ~2.6 s on one thread (exact path version 2; 8 KiB took 12.7 s before issue 20),
# the app's share of a request; the CLI has no such cap. Above it: cm, lzma, bz2, zlib, stored.
FILE_MAX_BYTES = 1 << 20
NEURAL_FILE_MAX_BYTES = 12 << 10
MODEL_METHOD_NAMES = ("neural", "neural+cm")
BLM_SUFFIX = ".blm"
CODEC_MODES = ("text", "bits")
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
                       ok(ratio_line("Compressed", bits, stream)))


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
    status = ok(ratio_line("Decompressed", bits, stream))
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
    """Compress text with the model driving a range coder (the exact codec, `container.compress_file`
    with the neural method only), decompress it to check the round trip, and put its bits per byte beside
    the model's cross-entropy and zlib / bz2 / lzma.

    Takes: the model, the text (≤ NEURAL_MAX_CHARS), an optional progress(fraction, message) callback.
    Returns: a `NeuralCodecResult`; failures come back as a status message.
    """
    text = read_text(source, "codec input", NEURAL_MAX_CHARS)
    data = text.encode("utf-8")
    model = app_model.model
    t0 = time.perf_counter()
    enc = container.compress_file(data, model, methods=("neural",), on_progress=_progress(progress, "encoding"))
    t1 = time.perf_counter()
    back = container.decompress_file(enc.blob, model, max_bytes=len(data), on_progress=_progress(progress, "decoding"))
    t2 = time.perf_counter()
    if back != data:  # the codec checks a CRC, so this would be a bug, not bad input
        raise CodecError("the model's round trip did not give the text back")
    n = len(data)
    header = container.read_header(enc.blob).size
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
                         "use the command line (python -m bitlm.cli.compress) for larger files")
    if size == 0:
        raise InputError(f"“{name}” is empty", hint)
    return path.read_bytes(), name


@friendly(_file_failed)
def compress_upload(app_model: AppModel, upload: Any, text: Any, out_dir: str | Path,
                    progress: Callable[[float, str], Any] | None = None) -> FileCodecResult:
    """Compress an uploaded file (≤ FILE_MAX_BYTES) or, without one, the text (≤ CODEC_MAX_CHARS, as UTF-8)
    into a `.blm` file (`container.compress_file`: the smallest of neural+cm, cm, neural, lzma, bz2, zlib
    and stored; the model methods only up to NEURAL_FILE_MAX_BYTES), written in `out_dir` (the visitor's own folder).

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
    methods = container.METHODS if neural else tuple(m for m in container.METHODS if m not in MODEL_METHOD_NAMES)
    t0 = time.perf_counter()
    result = container.compress_file(data, app_model.model, methods=methods,
                                     on_progress=_progress(progress, "compressing with the model"))
    seconds = time.perf_counter() - t0
    out = Path(out_dir) / (_safe_name(name, "file") + BLM_SUFFIX)
    out.write_bytes(result.blob)
    order = ("neural+cm", "cm", "neural", "lzma", "bz2", "zlib", "stored")
    sizes = {m: result.sizes[m] for m in order if m in result.sizes}
    status = ok(f"“{name}”: {n:,} bytes → {len(result.blob):,} bytes with **{result.method}** "
                f"({result.bits_per_byte:.3f} bits/byte, header included) in {seconds:.1f} s. Download "
                f"“{out.name}” above; decompress it here"
                + (" with this same model." if result.method in MODEL_METHOD_NAMES else " (no model needed: it is "
                                                                                          f"{result.method})."))
    if not neural:
        status += (f"\n\nThe model was not tried: {n:,} bytes is over {NEURAL_FILE_MAX_BYTES:,}, where the app "
                   f"would take minutes to decode it (`python -m bitlm.cli.compress compress` has no such cap).")
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
    hint = f"upload a {BLM_SUFFIX} file exactly as this tab (or python -m bitlm.cli.compress) wrote it"
    blob, name = read_file(upload, "compressed file", 2 * FILE_MAX_BYTES, hint)
    try:
        header = container.read_header(blob)
        if header.length > FILE_MAX_BYTES:
            raise InputError(f"“{name}” holds {header.length:,} bytes; the app decompresses at most {FILE_MAX_BYTES:,}",
                             f"decompress it with python -m bitlm.cli.compress decompress {name}")
        if header.method_name in MODEL_METHOD_NAMES and header.length > NEURAL_FILE_MAX_BYTES:
            raise InputError(f"“{name}” holds {header.length:,} bytes coded by the model; the app decodes at most "
                             f"{NEURAL_FILE_MAX_BYTES:,} (about 4,500 bytes a second)",
                             f"decompress it with python -m bitlm.cli.compress decompress {name}")
        t0 = time.perf_counter()
        data = container.decompress_file(blob, app_model.model, max_bytes=FILE_MAX_BYTES,
                                         on_progress=_progress(progress, "decompressing with the model"))
    except (CodecError, UnsupportedModelError) as e:
        if "loaded model" in str(e) or "load that model" in str(e):
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
                              f"{seconds:.1f} s, CRC-32 checked. Download “{out.name}” above."))
