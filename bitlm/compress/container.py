"""A lossless file compressor that never loses to the classics: each input is coded by whichever of
neural (the model's exact integer predictor, `bitlm.compress.exact`, driving a range coder), lzma, bz2, zlib or
stored gives the smallest output, behind a header of at most 12 bytes.

Container (big-endian): magic 0xB7 | version (high 4 bits, = 1) and method (low 4 bits) | the
original length as a LEB128 varint (1-4 bytes, < 2^28) | for the neural method only, the model's
2-byte fingerprint | CRC-32 of the original (4) — then the payload: raw deflate (zlib -9, no zlib
wrapper), bz2 -9, raw LZMA2 (preset 9e, dictionary = the input size within [4 KiB, 64 MiB], so the
decoder's memory follows the stated length), the bytes themselves, or the range coder's 32-bit words
(little-endian). Neural coding is one symbol per byte (the 256 data patterns; a parity model's parity
bit is implied): the input is cut into `neural_lanes(n)` contiguous lanes, each predicted from its own
context only; the encoder runs teacher-forced chunks over all lanes at once, the decoder steps the
lanes together, and the coder interleaves symbols step by step (lane 0, 1, …). The predictor is exact
(see `bitlm.compress.exact`), so a stream decodes on any machine, thread count or device.

Decoding checks the header first (magic, version, method, length against `max_bytes`, the model's
fingerprint: a stream of another model names both), bounds every decompressor's output by the stated
length, and checks the CRC, so corrupted, truncated or foreign input raises `NeuralCodecError` (a
`CodecError`) with a reason, never garbage. Memory while decoding: the stated length (≤ max_bytes), a
decompressor's state (lzma's dictionary is at most that length), and for neural streams the lanes'
contexts, 2 · layers · window · n_embd · 8 bytes per lane (6 MB for the 6 × 256 model; 64 lanes from
16 KiB up); time is linear in the stated length, so max_bytes bounds both. `compress_file` / `decompress_file` are
the API (re-exported from `bitlm`); the command line is `python -m bitlm.cli.compress`. The float reference
path, which benchmarks measure this one against, lives in `bitlm.compress.float_reference`.
"""
from __future__ import annotations

import bz2
import hashlib
import json
import lzma
import struct
import weakref
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import constriction
import numpy as np
import torch

from bitlm.bits.codec import CodecError
from bitlm.compress.exact import (EXACT_VERSION, ExactPredictor, LaneState, UnsupportedModelError, tables,
                                  tables_digest)
from bitlm.model.transformer import BitTransformerLM

MAGIC, VERSION = 0xB7, 1
STORED, ZLIB, BZ2, LZMA, NEURAL = range(5)
METHOD_NAMES = {STORED: "stored", ZLIB: "zlib", BZ2: "bz2", LZMA: "lzma", NEURAL: "neural"}
METHODS = tuple(METHOD_NAMES.values())
MAX_HEADER_BYTES = 12
MAX_LENGTH = (1 << 28) - 1                   # the varint holds at most 4 bytes
DEFAULT_MAX_BYTES = 64 << 20                 # decode refuses longer originals unless told otherwise
LANE_BYTES, MAX_LANES = 256, 64              # neural lanes: one per 256 bytes, at most 64
CHUNK_BUDGET = 1 << 22                       # attention scores per teacher-forced chunk (memory bound)
_PROGRESS_EVERY = 4096                       # bytes between progress callbacks

Progress = Callable[[int, int], None]        # (bytes done, bytes in all)


def _lzma_filters(n: int) -> list[dict]:
    return [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME,
             "dict_size": min(max(n, 4096), 64 << 20)}]


class NeuralCodecError(CodecError):
    """A neural-codec stream could not be decoded (wrong model, truncated or corrupted data) or an
    input could not be encoded; the message says which and what to do."""


_fingerprints: "weakref.WeakKeyDictionary[BitTransformerLM, tuple[tuple, bytes]]" = weakref.WeakKeyDictionary()


def model_fingerprint(model: BitTransformerLM) -> bytes:
    """First 8 bytes of sha256 over the model's config JSON and its state dict (names, dtypes,
    shapes, raw bytes, sorted by name). Cached per model; recomputed when any weight changed in
    place since (tensor version counters), e.g. after more training."""
    state = model.state_dict()
    versions = tuple((name, t._version, t.data_ptr()) for name, t in state.items())
    cached = _fingerprints.get(model)
    if cached is not None and cached[0] == versions:
        return cached[1]
    h = hashlib.sha256(json.dumps(asdict(model.config), sort_keys=True).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    fp = h.digest()[:8]
    _fingerprints[model] = (versions, fp)
    return fp


# ------------------------------------------------------------------------------------ header

@dataclass(frozen=True)
class Header:
    """A container header: method (a METHOD_NAMES key), original length, the neural model's 2-byte
    fingerprint (b"" for the other methods), CRC-32 of the original and the header's size in bytes."""
    method: int
    length: int
    fingerprint: bytes
    crc: int
    size: int

    @property
    def method_name(self) -> str:
        """The method's name: stored, zlib, bz2, lzma or neural."""
        return METHOD_NAMES[self.method]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pack_header(method: int, length: int, crc: int, fingerprint: bytes = b"") -> bytes:
    return bytes([MAGIC, VERSION << 4 | method]) + _varint(length) + fingerprint + struct.pack(">I", crc)


def read_header(blob: bytes) -> Header:
    """Parse a container header (no model needed). Raises NeuralCodecError naming what is wrong: not
    bytes, too short, foreign magic, another version, unknown method, a malformed length."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise NeuralCodecError(f"a compressed file must be bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < 2:
        raise NeuralCodecError(f"{len(blob)} bytes is too short for a BitLM compressed file (truncated?)")
    if blob[0] != MAGIC:
        raise NeuralCodecError(f"not a BitLM compressed file (first byte 0x{blob[0]:02x}, expected 0x{MAGIC:02x})")
    version, method = blob[1] >> 4, blob[1] & 0x0F
    if version != VERSION:
        raise NeuralCodecError(f"unsupported BitLM container version {version} (this codec reads version {VERSION})")
    if method not in METHOD_NAMES:
        raise NeuralCodecError(f"unknown compression method {method} in the header (corrupted file?)")
    length, shift, i = 0, 0, 2
    while True:
        if i >= len(blob):
            raise NeuralCodecError("the header ends inside its length field (truncated file)")
        if i >= 6:
            raise NeuralCodecError("the header's length field is longer than 4 bytes (corrupted file)")
        length |= (blob[i] & 0x7F) << shift
        shift += 7
        i += 1
        if not blob[i - 1] & 0x80:
            break
    fp = b""
    if method == NEURAL:
        fp, i = blob[i:i + 2], i + 2
    if len(blob) < i + 4:
        raise NeuralCodecError(f"{len(blob)} bytes end inside the {i + 4}-byte header (truncated file)")
    return Header(method, length, fp, struct.unpack(">I", blob[i:i + 4])[0], i + 4)


# ------------------------------------------------------------------------------------ neural coding

def neural_fingerprint(model: BitTransformerLM) -> bytes:
    """2 bytes naming the model for neural streams: sha256 over the float model's fingerprint (config
    and weights), the exact path's version and its lookup tables."""
    h = hashlib.sha256(model_fingerprint(model) + bytes([EXACT_VERSION]))
    h.update(tables_digest({k: v.numpy() for k, v in tables().items()}).encode())
    return h.digest()[:2]


# The neural fingerprints of models shipped in assets/ before the current one, and the commit that
# shipped each: a file one of them compressed decodes only with that model, which its commit still holds.
EARLIER_SHIPPED = {
    "fe5f": ("698a0ff", "BitLM base v2 after 100 minutes, shipped 2026-11-30 01:31"),
    "1e60": ("1ff0b1b", "BitLM base v2 after 195 minutes, shipped 2026-11-30 03:58"),
}


def earlier_model_hint(fingerprint: bytes) -> str:
    """Where to find the earlier shipped model with this neural fingerprint ("" when none is known)."""
    known = EARLIER_SHIPPED.get(fingerprint.hex())
    if known is None:
        return ""
    commit, name = known
    return (f" (model {fingerprint.hex()} matches {name}: `mkdir old && git show {commit}:assets/config.json > "
            f"old/config.json && git show {commit}:assets/model.safetensors > old/model.safetensors`, then "
            f"--model old)")


def neural_lanes(n: int) -> int:
    """Lanes an n-byte input is coded in: one per LANE_BYTES, 1 to MAX_LANES."""
    return max(1, min(MAX_LANES, n // LANE_BYTES))


def _lane_layout(n: int, lanes: int) -> tuple[int, np.ndarray]:
    """(lane length L, (lanes,) real lengths): lane i holds bytes [i·L, min(n, (i+1)·L))."""
    L = -(-n // lanes)
    return L, np.clip(n - np.arange(lanes) * L, 0, L)


_FAMILY = constriction.stream.model.Categorical(perfect=False)


def _chunk_slots(pred: ExactPredictor, lanes: int) -> int:
    """Slots per teacher-forced chunk so that lanes · heads · chunk · (chunk + window) ≤ CHUNK_BUDGET."""
    q = 1
    while q < 4096 and lanes * pred.n_head * (2 * q) * (2 * q + pred.window) <= CHUNK_BUDGET:
        q *= 2
    return q


def neural_encode(model: BitTransformerLM, data: bytes, chunk: int | None = None,
                  on_progress: Progress | None = None, device: str = "cpu") -> tuple[bytes, float]:
    """Range-code data with the model's exact predictor: returns (payload, ideal bits = Σ -log2 of the
    coded frequencies). chunk: slots per teacher-forced step (None: as CHUNK_BUDGET allows); device:
    where the predictor runs; neither changes the payload. Raises UnsupportedModelError for a model
    the exact path cannot run."""
    pred = ExactPredictor.of(model, device)
    n = len(data)
    if n == 0:
        return b"", 0.0
    lanes = neural_lanes(n)
    L, lens = _lane_layout(n, lanes)
    arr = np.zeros(lanes * L, dtype=np.uint8)                # bytes, widened per chunk (memory: n, not 8n)
    arr[:n] = np.frombuffer(data, dtype=np.uint8)
    arr = torch.from_numpy(arr.reshape(lanes, L))
    q = chunk or _chunk_slots(pred, lanes)
    state = LaneState(pred, lanes)
    encoder = constriction.stream.queue.RangeEncoder()
    ideal = 0.0
    with torch.no_grad():
        for s in range(0, L, q):
            e = min(s + q, L)
            freq = pred.frequencies(state, arr[:, max(s - 1, 0):e - 1].long(), e - s).cpu()  # (lanes, e - s, 256)
            valid = torch.from_numpy(np.arange(s, e)[:, None] < lens[None, :])  # (e - s, lanes) step-major
            f = freq.transpose(0, 1)[valid]
            sym = arr[:, s:e].t()[valid].long()
            coded = f.gather(-1, sym.unsqueeze(-1)).squeeze(-1) + 1
            ideal += float((24 - torch.log2(coded.double())).sum())
            encoder.encode(sym.numpy().astype(np.int32), _FAMILY, f.double().numpy())
            if on_progress is not None:
                on_progress(int(np.minimum(lens, e).sum()), n)
    return encoder.get_compressed().astype("<u4").tobytes(), ideal


def neural_decode(model: BitTransformerLM, payload: bytes, n: int, on_progress: Progress | None = None,
                  device: str = "cpu") -> bytes:
    """Inverse of `neural_encode` for an n-byte original (on any device). Raises NeuralCodecError when
    the payload is not whole 32-bit words or the range decoder rejects it (the caller checks the CRC)."""
    if n == 0:
        if payload:
            raise NeuralCodecError(f"{len(payload)} unexpected bytes after the header of an empty file (corrupted file)")
        return b""
    if len(payload) % 4:
        raise NeuralCodecError(f"the neural payload is {len(payload)} bytes, not whole 32-bit words (truncated?)")
    pred = ExactPredictor.of(model, device)
    lanes = neural_lanes(n)
    L, lens = _lane_layout(n, lanes)
    decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
    out = np.zeros((lanes, L), dtype=np.uint8)
    state = LaneState(pred, lanes)
    prev = None
    every = max(1, _PROGRESS_EVERY // lanes)
    with torch.no_grad():
        for j in range(L):
            freq = pred.frequencies(state, prev, 1)[:, 0].cpu()                     # (lanes, 256)
            valid = j < lens
            try:
                out[valid, j] = decoder.decode(_FAMILY, freq[torch.from_numpy(valid)].double().numpy())
            except Exception as e:      # constriction reports invalid data with its own exception types
                raise NeuralCodecError(f"the neural payload is corrupted or truncated (range decoder failed at "
                                       f"byte {j} of its lanes: {e})") from e
            prev = torch.from_numpy(out[:, j:j + 1]).long()
            if on_progress is not None and ((j + 1) % every == 0 or j + 1 == L):
                on_progress(int(np.minimum(lens, j + 1).sum()), n)
    if not decoder.maybe_exhausted():
        raise NeuralCodecError("the neural payload holds more data than its length needs (corrupted file)")
    return out.reshape(-1)[:n].tobytes()


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
            raise NeuralCodecError(f"the {name} payload is corrupted ({e})") from e
    if len(out) != n:
        raise NeuralCodecError(f"the {name} payload gives {len(out)}{'+' if len(out) > n else ''} bytes, the header "
                               f"says {n} (corrupted or truncated file)")
    if not done:
        raise NeuralCodecError(f"the {name} payload ends early (truncated file)")
    if rest:
        raise NeuralCodecError(f"{len(rest)} unexpected bytes after the {name} payload (corrupted file)")
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


def compress_file(data: bytes, model: BitTransformerLM | None, methods: tuple[str, ...] = METHODS,
                  on_progress: Progress | None = None, chunk: int | None = None, device: str = "cpu") -> CompressResult:
    """Compress any bytes into a container, with whichever of `methods` is smallest (ties: the first in
    METHODS order). The neural method is tried when a model is given and the exact path runs it; a
    model it cannot run (v1 learned positions, a transformer local model) is skipped with the reason in
    `neural_skipped`. on_progress(bytes done, bytes in all) follows the neural encoder; chunk and
    device (where the exact predictor runs) never change the output.
    Returns a CompressResult. Raises NeuralCodecError for non-bytes, an input of 2^28 bytes or more, an
    unknown method, or methods=("neural",) with no model or one the exact path cannot run."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise NeuralCodecError(f"compress_file needs bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_LENGTH:
        raise NeuralCodecError(f"{len(data):,} bytes is over the container's limit of {MAX_LENGTH:,} bytes")
    unknown = set(methods) - set(METHODS)
    if unknown or not methods:
        raise NeuralCodecError(f"methods must be a non-empty subset of {METHODS}, got {methods!r}")
    crc = zlib.crc32(data)
    blobs: dict[str, bytes] = {}
    for code, name in METHOD_NAMES.items():
        if name in methods and code != NEURAL:
            blobs[name] = _pack_header(code, len(data), crc) + _classic_compress(code, data)
    ideal, skipped = None, ""
    if "neural" in methods:
        if model is None:
            skipped = "no model given"
        else:
            try:
                payload, ideal = neural_encode(model, data, chunk, on_progress, device)
                blobs["neural"] = _pack_header(NEURAL, len(data), crc, neural_fingerprint(model)) + payload
            except UnsupportedModelError as e:
                skipped = str(e)
    if not blobs:
        raise NeuralCodecError(f"the neural method could not run ({skipped}) and no other method was asked for")
    best = min(blobs, key=lambda name: (len(blobs[name]), METHODS.index(name)))
    return CompressResult(blobs[best], best, len(data), {k: len(v) for k, v in blobs.items()}, ideal, skipped)


def decompress_file(blob: bytes, model: BitTransformerLM | None, max_bytes: int = DEFAULT_MAX_BYTES,
                    on_progress: Progress | None = None, device: str = "cpu") -> bytes:
    """Exact inverse of `compress_file`. model is needed only for neural streams (`read_header(blob)
    .method_name` says which). max_bytes caps the original's size (checked before anything is
    allocated or decoded). Raises NeuralCodecError with the reason for foreign, truncated or corrupted
    input, a length over max_bytes, a neural stream without a model or with another model (naming both
    fingerprints), and a CRC mismatch."""
    h = read_header(blob)
    blob = bytes(blob)
    if h.length > max_bytes:
        raise NeuralCodecError(f"the file says it holds {h.length:,} bytes, over the limit of {max_bytes:,} "
                               f"(raise max_bytes if you trust it)")
    payload = blob[h.size:]
    if h.method == NEURAL:
        if model is None:
            raise NeuralCodecError("this file was compressed with a model (method neural); load that model to "
                                   "decompress it")
        loaded = neural_fingerprint(model)
        if loaded != h.fingerprint:
            raise NeuralCodecError(f"this file was compressed with model {h.fingerprint.hex()}, but the loaded model "
                                   f"is {loaded.hex()}; decompress it with the model that compressed it"
                                   + earlier_model_hint(h.fingerprint))
        out = neural_decode(model, payload, h.length, on_progress, device)
    else:
        out = _classic_decompress(h.method, payload, h.length)
    if zlib.crc32(out) != h.crc:
        raise NeuralCodecError(f"the decompressed data does not match the file's CRC-32 (method {h.method_name}): "
                               f"the file is corrupted or truncated")
    return out
