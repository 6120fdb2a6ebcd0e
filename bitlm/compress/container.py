"""A lossless file compressor that never loses to the classics by more than its header: each input is
coded by whichever of neural+cm, cm, neural, lzma, bz2, zlib or stored gives the smallest output,
behind a header of at most 14 bytes (`bitlm.compress.header`: version 2 carries a check over its own
bytes; version-1 files, written before, still decode).

Methods: `cm` (`bitlm.compress.cm`: online context mixing, exact integers, ~1 MB/s: for any file),
`neural+cm` (the same mixer with the model's exact probabilities as one more input) and `neural` (the
model alone driving a range coder), both in `bitlm.compress.neural`; and the classics: raw deflate
(zlib -9, no zlib wrapper), bz2 -9, raw LZMA2 (preset 9e, dictionary = the input size within
[4 KiB, 64 MiB], so the decoder's memory follows the stated length), the bytes themselves. The model
methods are tried only when a model is given (one pass of the predictor feeds both); every method's
stream is exact by construction, so a file decodes on any machine, thread count or device.

Decoding checks the header first (damage, truncation, foreign input, another version, the length
against `max_bytes`, the model's fingerprint: a stream of another model names both), bounds every
decoder's output and work by the stated length, and checks the CRC-32 of the original, so damaged,
truncated or foreign input raises `NeuralCodecError` (a `CodecError`) with a reason, never garbage.
Memory while decoding: the stated length (≤ max_bytes), a decompressor's state (lzma's dictionary is
at most that length; cm's tables are fixed by the length, at most 64 MiB + 12 MiB, see `bitlm.compress.cm`),
and for model streams the lanes' contexts (1.5 MiB a lane for the shipped model, ~100 MiB for 64 lanes,
see `bitlm.compress.exact`); time is linear in the stated length (a cm payload that runs out stops
early), so max_bytes bounds both. `compress_file` / `decompress_file` are the API (re-exported from
`bitlm`); the command line is `python -m bitlm.cli.compress`. The float reference path, which
benchmarks measure the neural method against, lives in `bitlm.compress.float_reference`.
"""
from __future__ import annotations

import bz2
import lzma
import zlib
from dataclasses import dataclass, field

from bitlm.compress import cm
from bitlm.compress.exact import VERSIONS, UnsupportedModelError
from bitlm.compress.header import (BZ2, CM, DAMAGED, LZMA, MAGIC, MAX_HEADER_BYTES, MAX_LENGTH, METHOD_NAMES,
                                   METHODS, MODEL_METHODS, NEURAL, NEURAL_CM, STORED, VERSION, ZLIB, Header,
                                   NeuralCodecError, pack_header, read_header, varint, version2_if_repaired)
from bitlm.compress.neural import (EARLIER_SHIPPED, LANE_BYTES, MAX_LANES, Progress, earlier_model_hint,
                                   lane_layout, model_decode, model_encode, model_fingerprint, neural_fingerprint,
                                   neural_lanes)
from bitlm.model.transformer import BitTransformerLM

__all__ = ["BZ2", "CM", "EARLIER_SHIPPED", "Header", "LANE_BYTES", "LZMA", "MAGIC", "MAX_HEADER_BYTES", "MAX_LANES",
           "MAX_LENGTH", "METHODS", "METHOD_NAMES", "NEURAL", "NEURAL_CM", "STORED", "VERSION", "ZLIB",
           "CompressResult", "NeuralCodecError", "compress_file", "decompress_file", "earlier_model_hint",
           "lane_layout", "model_fingerprint", "neural_fingerprint", "neural_lanes", "read_header", "varint"]

DEFAULT_MAX_BYTES = 64 << 20                 # decode refuses longer originals unless told otherwise
JUDGE_FROM = 32 << 10                        # inputs this long first try the model on a sample …
JUDGE_SAMPLE = 8 << 10                       # … of this many bytes from its middle (a start is often unlike the rest) …
JUDGE_GAIN = 0.97                            # … and run it on the whole only if neural+cm ≤ this × cm there


def _lzma_filters(n: int) -> list[dict]:
    return [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME,
             "dict_size": min(max(n, 4096), 64 << 20)}]


# ------------------------------------------------------------------------------------ classic methods

def _classic_compress(method: int, data: bytes) -> bytes:
    if method == STORED:
        return data
    if method == ZLIB:
        c = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
        return c.compress(data) + c.flush()
    if method == BZ2:
        return bz2.compress(data, 9)
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_lzma_filters(len(data)))


def _classic_decompress(method: int, payload: bytes, n: int) -> bytes:
    """Decompress at most n + 1 bytes (never more), then insist on exactly n and on a clean end."""
    name = METHOD_NAMES[method]
    if method == STORED:
        out, done, rest = payload, True, b""
    else:
        try:
            if method == ZLIB:
                d = zlib.decompressobj(-15)
                out = d.decompress(payload, n + 1)
                done, rest = d.eof, d.unused_data + d.unconsumed_tail
            else:
                d = (bz2.BZ2Decompressor() if method == BZ2
                     else lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=_lzma_filters(n)))
                out = d.decompress(payload, max_length=n + 1)
                done, rest = d.eof, d.unused_data
        except (zlib.error, OSError, lzma.LZMAError, EOFError, ValueError) as e:
            raise NeuralCodecError(f"{DAMAGED}: the {name} payload cannot be decompressed ({e})") from e
    if len(out) != n:
        raise NeuralCodecError(f"{DAMAGED} or truncated: the {name} payload gives {len(out)}"
                               f"{'+' if len(out) > n else ''} bytes, the header says {n}")
    if not done:
        raise NeuralCodecError(f"the file is truncated: the {name} payload ends early")
    if rest:
        raise NeuralCodecError(f"{DAMAGED}: {len(rest)} unexpected bytes after the {name} payload")
    return out


# ------------------------------------------------------------------------------------ public API

@dataclass(frozen=True)
class CompressResult:
    """What `compress_file` did. blob: the compressed file. method: the method chosen. sizes: the
    whole-file size in bytes of every method tried (header included). original_bytes: the input's
    size. neural_ideal_bits: the exact model's code length Σ -log2 P of the input (None when the
    neural method was not tried). neural_skipped: why it was not tried ("" when it was)."""
    blob: bytes
    method: str
    original_bytes: int
    sizes: dict[str, int] = field(default_factory=dict)
    neural_ideal_bits: float | None = None
    neural_skipped: str = ""

    @property
    def bits_per_byte(self) -> float:
        """8 · compressed size / original size (inf for an empty input)."""
        return 8 * len(self.blob) / self.original_bytes if self.original_bytes else float("inf")


def model_pays(data: bytes, model: BitTransformerLM, device: str = "cpu") -> tuple[bool, str]:
    """Whether the model methods deserve a whole pass over data (the model codes ~1-3 KB/s, cm ~0.5 MB/s):
    on JUDGE_SAMPLE bytes from its middle, neural+cm must come out at most JUDGE_GAIN × cm. Returns
    (verdict, why)."""
    start = max(0, (len(data) - JUDGE_SAMPLE) // 2)
    sample = data[start:start + JUDGE_SAMPLE]
    mixed = len(model_encode(model, sample, ("neural+cm",), device=device)[0]["neural+cm"])
    alone = len(cm.cm_encode(sample))
    why = (f"on {len(sample):,} bytes from its middle the model mixed in gave {mixed:,} bytes against cm's {alone:,} "
           f"({mixed / alone:.3f} ×, it must be ≤ {JUDGE_GAIN})")
    return mixed <= JUDGE_GAIN * alone, why


def compress_file(data: bytes, model: BitTransformerLM | None, methods: tuple[str, ...] = METHODS,
                  on_progress: Progress | None = None, chunk: int | None = None, device: str = "cpu",
                  judge: bool = True) -> CompressResult:
    """Compress any bytes into a container, with whichever of `methods` is smallest (ties: the first in
    METHODS order). The model methods (neural, neural+cm) are tried when a model is given and the exact
    path runs it (one pass of the predictor serves both); a model it cannot run (v1 learned positions,
    a transformer local model) is skipped with the reason in `neural_skipped`. on_progress(bytes done,
    bytes in all) follows the slowest coder; chunk and device (where the exact predictor runs) never
    change the output. judge: with cm among the methods and an input of JUDGE_FROM bytes or more, the
    model runs on the whole input only if it pays on a sample (`model_pays`; else `neural_skipped` says
    what the sample showed): on a file the model does not know this saves its whole pass (minutes a
    megabyte) for a few seconds, and costs at most what neural+cm would have saved below 0.97 × cm.
    Returns a CompressResult. Raises NeuralCodecError for non-bytes, an input of 2^28 bytes or more, an
    unknown method, or only model methods with no model or one the exact path cannot run."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise NeuralCodecError(f"compress_file needs bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_LENGTH:
        raise NeuralCodecError(f"{len(data):,} bytes is over the container's limit of {MAX_LENGTH:,} bytes")
    if isinstance(methods, str) or set(methods) - set(METHODS) or not methods:
        raise NeuralCodecError(f"methods must be a non-empty subset of {METHODS}, got {methods!r}")
    crc = zlib.crc32(data)
    blobs: dict[str, bytes] = {}
    for code, name in METHOD_NAMES.items():
        if name in methods and code in (STORED, ZLIB, BZ2, LZMA):
            blobs[name] = pack_header(code, len(data), crc) + _classic_compress(code, data)
    model_coders = tuple(METHOD_NAMES[c] for c in MODEL_METHODS if METHOD_NAMES[c] in methods)
    if "cm" in methods:
        payload = cm.cm_encode(data, None if model_coders else on_progress) if data else b""
        blobs["cm"] = pack_header(CM, len(data), crc) + payload
    ideal, skipped = None, ""
    if model_coders:
        if model is None:
            skipped = "no model given"
        elif judge and "cm" in methods and len(data) >= JUDGE_FROM and not (pays := model_pays(data, model, device))[0]:
            skipped = pays[1]
        else:
            try:
                payloads, ideal = model_encode(model, data, model_coders, chunk, on_progress, device)
                fp = neural_fingerprint(model)
                for name, payload in payloads.items():
                    blobs[name] = pack_header(METHODS.index(name), len(data), crc, fp) + payload
                if "neural" not in model_coders:
                    ideal = None
            except UnsupportedModelError as e:
                skipped = str(e)
    if not blobs:
        raise NeuralCodecError(f"the {' and '.join(model_coders)} method{'s' if len(model_coders) > 1 else ''} could "
                               f"not run ({skipped}) and no other method was asked for")
    best = min(blobs, key=lambda name: (len(blobs[name]), METHODS.index(name)))
    return CompressResult(blobs[best], best, len(data), {k: len(v) for k, v in blobs.items()}, ideal, skipped)


def decompress_file(blob: bytes, model: BitTransformerLM | None, max_bytes: int = DEFAULT_MAX_BYTES,
                    on_progress: Progress | None = None, device: str = "cpu") -> bytes:
    """Exact inverse of `compress_file`. model is needed only for model methods (`read_header(blob)
    .method_name` says which). max_bytes caps the original's size (checked before anything is
    allocated or decoded). Raises NeuralCodecError with the reason for damaged, truncated or foreign
    input, a length over max_bytes, a model stream without a model or with another model (naming both
    fingerprints), and a CRC mismatch."""
    h = read_header(blob)
    blob = bytes(blob)
    try:
        return _decode(h, blob, model, max_bytes, on_progress, device)
    except NeuralCodecError:
        if h.version == 1 and version2_if_repaired(blob):     # a version-2 file whose byte 1 now says 1
            raise NeuralCodecError(f"{DAMAGED} (header check failed: its second byte was changed)") from None
        raise


def _decode(h: Header, blob: bytes, model: BitTransformerLM | None, max_bytes: int,
            on_progress: Progress | None, device: str) -> bytes:
    if h.length > max_bytes:
        raise NeuralCodecError(f"the file says it holds {h.length:,} bytes, over the limit of {max_bytes:,} "
                               f"(raise max_bytes if you trust it)")
    payload = blob[h.size:]
    if h.method in MODEL_METHODS:
        if model is None:
            raise NeuralCodecError(f"this file was compressed with a model (method {h.method_name}); load that "
                                   f"model to decompress it")
        version = next((v for v in sorted(VERSIONS, reverse=True)
                        if neural_fingerprint(model, v) == h.fingerprint), None)
        if version is None:                  # files of an earlier exact path name the model with its version
            raise NeuralCodecError(f"this file was compressed with model {h.fingerprint.hex()}, but the loaded model "
                                   f"is {neural_fingerprint(model).hex()}; decompress it with the model that "
                                   f"compressed it" + earlier_model_hint(h.fingerprint))
        out = model_decode(model, payload, h.length, h.method_name, on_progress, device, version)
    elif h.method == CM:
        if h.length == 0 and payload:
            raise NeuralCodecError(f"{DAMAGED}: {len(payload)} unexpected bytes after the header of an empty file")
        out = cm.cm_decode(payload, h.length, on_progress) if h.length else b""
    else:
        out = _classic_decompress(h.method, payload, h.length)
    if zlib.crc32(out) != h.crc:
        raise NeuralCodecError(f"{DAMAGED}: what it decodes to does not match its CRC-32 (method {h.method_name})")
    return out
