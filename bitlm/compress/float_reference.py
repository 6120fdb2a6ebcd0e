"""The float reference path of the neural codec (`bitlm.compress.container` is the exact, portable one):
the bit model's next-bit probabilities drive a range coder
(`constriction`'s queue coder, one Bernoulli symbol per bit), so a text costs about its
cross-entropy under the model ("Language Modeling Is Compression", Delétang et al. 2024).

Encoder and decoder compute every probability the same way, through the model's KV-cached
incremental predictor (`BitTransformerLM.bit_decoder`, the machinery `generate` uses) fed the
same bits in the same order, so they agree bit for bit on the same machine and thread setup (only
there: another thread count or CPU may round differently, which is why `bitlm.compress.exact` exists). The
encoder could get its probabilities from one forward over the whole window instead, but those
differ from the incremental ones in the last float bits, and one probability landing on the
other side of a rounding step would make the decoder diverge; so both sides take the same path,
and the speed comes from lanes instead: an input of n patches is cut into
min(16, n // 256) contiguous lanes of whole patches (1 for short inputs), each predicted from its
own context only, and the predictor steps all lanes at once in one batched forward. Lanes cost a
cold start each (a few bits per lane start) and divide the number of sequential steps, which is
what bounds the speed, by the lane count on both sides. P(1) is rounded to a 1/2^16 grid, clamped
to [1, 2^16 - 1], before coding. Within a lane the predictor's window slides, one cached step per
patch (a v1 checkpoint with learned positions restarts its context from its last 3/4 of whole
patches at the end of its block instead, at the same bit on both sides). Parity bits of
parity-framed bytes are not coded: the decoder sets them from their 8 data bits.

Stream layout (big-endian), HEADER_BYTES = 24: magic b"\\xb7N" | version (1, = 2) | kind (1: bits 0,
bytes 1, text 2; +0x80 when parity bits are implied) | original length (6: bits for kind 0, bytes
otherwise) | model fingerprint (8) | CRC32 of the original (4) | CRC32 of the preceding 22 header
bytes, low 16 bits (2) — then the range coder's 32-bit words, little-endian. Decoding with another
model, truncated or corrupted data raises `NeuralCodecError` (a `CodecError`), never garbage: the
header is checked before any decoding, the decode loop is bounded by the (checked) length, and the
output is checked against the CRC.
"""
from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import constriction
import numpy as np
import torch

from bitlm.bits.frames import BitDecodeError, as_bit_array, bits_to_bytes, bytes_to_bits, frame_bits
from bitlm.model.layers import PARITY_OFFSET
from bitlm.model.transformer import BitTransformerLM
from bitlm.compress.container import NeuralCodecError, model_fingerprint

MAGIC, VERSION = b"\xb7N", 2                # version 2: lanes
_HEADER = struct.Struct(">2sBB6s8sIH")
HEADER_BYTES = _HEADER.size                  # 24
KIND_BITS, KIND_BYTES, KIND_TEXT = 0, 1, 2
_KINDS = {KIND_BITS: "bits", KIND_BYTES: "bytes", KIND_TEXT: "text"}
_IMPLIED_PARITY = 0x80
PROB_BITS = 16                               # P(1) is coded on a 1/2^16 grid
DEFAULT_MAX_BYTES = 1 << 20                  # decode refuses longer originals unless told otherwise
_PROGRESS_EVERY = 1024                       # bits (over all lanes) between progress callbacks
MAX_LANES = 16                               # parallel lanes a long input is cut into
LANE_PATCHES = 256                           # patches each lane holds at least (a context window's worth)

Progress = Callable[[int, int], None]        # (bits done, bits in all)


@dataclass
class NeuralEncoding:
    """Result of `encode_bytes` / `encode_bit_tensor`.

    stream: the compressed stream (header + payload). n_bits: bits in the original; coded_bits: how
    many of them were coded (parity bits are implied). ideal_bits: the model's cross-entropy of the
    coded bits in bits (Σ -log2 P, unquantised probabilities): the size an ideal coder would reach."""
    stream: bytes
    n_bits: int
    coded_bits: int
    ideal_bits: float

    @property
    def payload_bits(self) -> int:
        """Bits of the range-coded payload (the stream without its header)."""
        return 8 * (len(self.stream) - HEADER_BYTES)


# ------------------------------------------------------------------------------------ coding core

def lane_count(n_bits: int, patch_size: int) -> int:
    """How many lanes a stream of n_bits is coded in: one per LANE_PATCHES whole patches, 1 to MAX_LANES."""
    return max(1, min(MAX_LANES, -(-n_bits // patch_size) // LANE_PATCHES))


def _bernoulli(k: int) -> "constriction.stream.model.Bernoulli":
    """The coder's model of one bit with P(1) = k / 2^16."""
    return constriction.stream.model.Bernoulli(k / (1 << PROB_BITS), perfect=False)


def _quantise(lp1: float) -> int:
    """P(1) = exp(lp1) on the coder's grid: k / 2^16 with 1 ≤ k < 2^16, so neither bit is impossible."""
    return min(max(round(math.exp(lp1) * (1 << PROB_BITS)), 1), (1 << PROB_BITS) - 1)


@torch.no_grad()
def _run(model: BitTransformerLM, n_bits: int, implied_parity: bool, choose: Callable[[int, int], int],
         on_progress: Progress | None) -> tuple[list[int], float]:
    """Walk the n_bits positions, cut into `lane_count` lanes of whole patches that the predictor
    steps together (lane i holds bits [i·L, (i+1)·L), the last one padded with uncoded zeros), so
    encoder and decoder visit the same positions in the same order: step by step, lane by lane.
    `choose(t, k)` returns coded bit t given its quantised P(1); implied parity bits are set here,
    never chosen. Returns (bits, ideal code length of the coded bits)."""
    p = model.config.patch_size
    lanes = lane_count(n_bits, p)
    lane_bits = -(-(-(-n_bits // p)) // lanes) * p                        # ceil(patches / lanes) patches
    ends = [min(lane_bits, n_bits - i * lane_bits) for i in range(lanes)]    # real bits of each lane
    seqs: list[list[int]] = [[] for _ in range(lanes)]
    decoder = model.bit_decoder(stream_type=0, lanes=lanes)
    was_training = model.training
    model.eval()
    try:
        ideal = 0.0
        for step in range(lane_bits):
            if implied_parity and step % p == PARITY_OFFSET:
                for seq in seqs:
                    seq.append(sum(seq[-PARITY_OFFSET:]) & 1)
            else:
                for i, ((lp0, lp1), seq) in enumerate(zip(decoder.next_logprobs_lanes(seqs), seqs)):
                    if step >= ends[i]:
                        seq.append(0)   # padding past the end of the last lane: known to both sides
                        continue
                    bit = choose(i * lane_bits + step, _quantise(lp1))
                    ideal -= (lp1 if bit else lp0) / math.log(2)
                    seq.append(bit)
            if on_progress is not None and (step + 1) % max(1, _PROGRESS_EVERY // lanes) == 0:
                on_progress(min(n_bits, (step + 1) * lanes), n_bits)
        if on_progress is not None:
            on_progress(n_bits, n_bits)
        return [bit for seq, end in zip(seqs, ends) for bit in seq[:end]], ideal
    finally:
        model.train(was_training)


def _encode(model: BitTransformerLM, arr: np.ndarray, kind: int, length: int, crc: int, implied_parity: bool,
            on_progress: Progress | None) -> NeuralEncoding:
    bits = arr.tolist()
    ks: list[int] = []
    symbols: list[int] = []

    def known(t: int, k: int) -> int:
        ks.append(k)
        symbols.append(bits[t])
        return bits[t]

    _, ideal = _run(model, len(bits), implied_parity, known, on_progress)   # callers imply only valid parity
    encoder = constriction.stream.queue.RangeEncoder()
    if symbols:
        encoder.encode(np.array(symbols, dtype=np.int32), constriction.stream.model.Bernoulli(perfect=False),
                       np.array(ks, dtype=np.float64) / (1 << PROB_BITS))
    payload = encoder.get_compressed().astype("<u4").tobytes()
    flags = kind | (_IMPLIED_PARITY if implied_parity else 0)
    head = _HEADER.pack(MAGIC, VERSION, flags, length.to_bytes(6, "big"), model_fingerprint(model), crc, 0)[:-2]
    head += struct.pack(">H", zlib.crc32(head) & 0xFFFF)
    return NeuralEncoding(stream=head + payload, n_bits=len(bits), coded_bits=len(symbols), ideal_bits=ideal)


@dataclass
class _Header:
    kind: int
    implied_parity: bool
    length: int
    crc: int


def _read_header(model: BitTransformerLM, data: bytes, max_bytes: int) -> _Header:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise NeuralCodecError(f"a neural-codec stream must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < HEADER_BYTES:
        raise NeuralCodecError(f"stream of {len(data)} bytes is shorter than the {HEADER_BYTES}-byte header (truncated?)")
    magic, version, flags, length, fp, crc, check = _HEADER.unpack(data[:HEADER_BYTES])
    if magic != MAGIC:
        raise NeuralCodecError(f"not a BitLM neural-codec stream: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise NeuralCodecError(f"unsupported neural-codec version {version} (this codec reads version {VERSION})")
    if zlib.crc32(data[:HEADER_BYTES - 2]) & 0xFFFF != check:
        raise NeuralCodecError("the stream header is corrupted (header checksum mismatch)")
    kind, implied_parity, length = flags & 0x7F, bool(flags & _IMPLIED_PARITY), int.from_bytes(length, "big")
    if kind not in _KINDS:
        raise NeuralCodecError(f"unknown stream kind {kind} in the header")
    if fp != model_fingerprint(model):
        raise NeuralCodecError(f"the stream was encoded with a different model (fingerprint {fp.hex()}, this model "
                               f"is {model_fingerprint(model).hex()}); decode it with the model that encoded it")
    n_bytes = math.ceil(length / 8) if kind == KIND_BITS else length
    if n_bytes > max_bytes:
        raise NeuralCodecError(f"header claims {n_bytes} bytes, over max_bytes={max_bytes}; pass a larger "
                               f"max_bytes if you trust the stream")
    if (len(data) - HEADER_BYTES) % 4:
        raise NeuralCodecError(f"the payload is {len(data) - HEADER_BYTES} bytes, not whole 32-bit words (truncated?)")
    return _Header(kind, implied_parity, length, crc)


def _decode(model: BitTransformerLM, data: bytes, n_bits: int, implied_parity: bool,
            on_progress: Progress | None) -> np.ndarray:
    words = np.frombuffer(bytes(data[HEADER_BYTES:]), dtype="<u4").astype(np.uint32)
    decoder = constriction.stream.queue.RangeDecoder(words)

    def decode_one(t: int, k: int) -> int:
        try:
            return int(decoder.decode(_bernoulli(k)))
        except Exception as e:    # constriction reports invalid data with its own exception types
            raise NeuralCodecError(f"the payload is corrupted or truncated (range decoder failed at bit {t}: {e})") from e

    bits, _ = _run(model, n_bits, implied_parity, decode_one, on_progress)
    if not decoder.maybe_exhausted():
        raise NeuralCodecError("the payload holds more data than the header's length needs (corrupted stream)")
    return np.array(bits, dtype=np.uint8)


def _crc_mismatch() -> NeuralCodecError:
    return NeuralCodecError("the decoded data does not match the stream's checksum: the stream is corrupted or "
                            "truncated (or was encoded on a machine whose float arithmetic differs)")


# ------------------------------------------------------------------------------------ public API

def encode_bytes(model: BitTransformerLM, data: bytes, on_progress: Progress | None = None,
                 kind: int = KIND_BYTES) -> NeuralEncoding:
    """Compress bytes with the model (see the module docstring).

    Takes: the model, the bytes, on_progress(bits done, bits in all) called every 1024 bits, kind
    (KIND_BYTES or KIND_TEXT, recorded in the header). Returns a NeuralEncoding (stream, sizes and
    the model's ideal code length). Raises NeuralCodecError for non-bytes input."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise NeuralCodecError(f"encode_bytes needs bytes, got {type(data).__name__}")
    data = bytes(data)
    parity = model.config.parity
    arr = bytes_to_bits(data, parity=parity).numpy()
    return _encode(model, arr, kind, len(data), zlib.crc32(data), parity, on_progress)


def compress_bytes(model: BitTransformerLM, data: bytes, on_progress: Progress | None = None) -> bytes:
    """Bytes -> neural-codec stream (bytes). Raises NeuralCodecError for non-bytes input."""
    return encode_bytes(model, data, on_progress).stream


def decompress_bytes(model: BitTransformerLM, data: bytes, max_bytes: int = DEFAULT_MAX_BYTES,
                     on_progress: Progress | None = None) -> bytes:
    """Exact inverse of compress_bytes (also reads text streams, returning their UTF-8 bytes).

    Raises NeuralCodecError when the stream is not a neural-codec stream of bytes/text, was made
    with another model, is truncated or corrupted, or claims more than max_bytes."""
    h = _read_header(model, data, max_bytes)
    if h.kind == KIND_BITS:
        raise NeuralCodecError("this stream holds a bit tensor; use decompress_bit_tensor")
    arr = _decode(model, data, h.length * frame_bits(h.implied_parity), h.implied_parity, on_progress)
    try:
        out = bits_to_bytes(torch.from_numpy(arr), parity=h.implied_parity)
    except BitDecodeError as e:   # unreachable for parity set by the decoder; kept as a clear error
        raise NeuralCodecError(f"decoded bits are not valid frames: {e}") from e
    if zlib.crc32(out) != h.crc:
        raise _crc_mismatch()
    return out


def compress_text(model: BitTransformerLM, text: str, on_progress: Progress | None = None) -> bytes:
    """Text (coded as its UTF-8 bytes) -> neural-codec stream. Raises NeuralCodecError for non-str."""
    if not isinstance(text, str):
        raise NeuralCodecError(f"compress_text needs a str, got {type(text).__name__}")
    return encode_bytes(model, text.encode("utf-8"), on_progress, kind=KIND_TEXT).stream


def decompress_text(model: BitTransformerLM, data: bytes, max_bytes: int = DEFAULT_MAX_BYTES,
                    on_progress: Progress | None = None) -> str:
    """Exact inverse of compress_text. Raises NeuralCodecError as decompress_bytes, and when the
    stream holds bytes that are not UTF-8 text."""
    h = _read_header(model, data, max_bytes)
    if h.kind != KIND_TEXT:
        raise NeuralCodecError(f"this stream holds {_KINDS[h.kind]}, not text; use decompress_"
                               f"{'bit_tensor' if h.kind == KIND_BITS else 'bytes'}")
    raw = decompress_bytes(model, data, max_bytes, on_progress)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:   # only on a checksum collision: compress_text wrote UTF-8
        raise NeuralCodecError(f"the decoded bytes are not UTF-8 ({e}); the stream is corrupted") from e


def encode_bit_tensor(model: BitTransformerLM, bits: torch.Tensor, on_progress: Progress | None = None) -> NeuralEncoding:
    """Compress a 1-D 0/1 tensor. When the model is parity-framed and the bits are whole, valid
    parity frames, their parity bits are implied (not coded); otherwise every bit is coded.
    Returns a NeuralEncoding. Raises NeuralCodecError for a tensor that is not 1-D 0/1."""
    try:
        arr = as_bit_array(bits)
    except ValueError as e:
        raise NeuralCodecError(f"encode_bit_tensor: {e}") from None
    p = frame_bits(True)
    implied = (model.config.parity and arr.size % p == 0
               and not (arr.reshape(-1, p).sum(1, dtype=np.int64) & 1).any())
    crc = zlib.crc32(np.packbits(arr).tobytes())
    return _encode(model, arr, KIND_BITS, int(arr.size), crc, bool(implied), on_progress)


def compress_bit_tensor(model: BitTransformerLM, bits: torch.Tensor, on_progress: Progress | None = None) -> bytes:
    """1-D 0/1 tensor -> neural-codec stream (see encode_bit_tensor)."""
    return encode_bit_tensor(model, bits, on_progress).stream


def decompress_bit_tensor(model: BitTransformerLM, data: bytes, max_bits: int = 8 * DEFAULT_MAX_BYTES,
                          on_progress: Progress | None = None) -> torch.Tensor:
    """Exact inverse of compress_bit_tensor: returns the 1-D uint8 0/1 tensor.
    Raises NeuralCodecError as decompress_bytes (max_bits bounds the length)."""
    h = _read_header(model, data, math.ceil(max_bits / 8))
    if h.kind != KIND_BITS:
        raise NeuralCodecError(f"this stream holds {_KINDS[h.kind]}; use decompress_{_KINDS[h.kind]}")
    if h.length > max_bits:
        raise NeuralCodecError(f"header claims {h.length} bits, over max_bits={max_bits}")
    arr = _decode(model, data, h.length, h.implied_parity, on_progress)
    if zlib.crc32(np.packbits(arr).tobytes()) != h.crc:
        raise _crc_mismatch()
    return torch.from_numpy(arr)
