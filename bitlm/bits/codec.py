"""Lossless codec for bit sequences held in tensors: `compress_bits` turns 1-D 0/1 bits into a
self-describing 0/1 uint8 stream (so the model can read it directly) and `decompress_bits` inverts it,
raising only `CodecError` on malformed input and never allocating more than `max_bits` output bits.
The stream is a HEADER_BITS = 64-bit header, MSB first — magic 0xB7 (8 bits) | version (4) |
method id (4) | param (4) | original length (44) — then the payload of one method: `stored` (0: the bits;
param 0), `rle` (1: run lengths in fixed-width chunks, see `_rle_plan`; param = first bit << 3 | chunk
width - 1) or `deflate` (2: zlib on the bits packed into bytes; param 1 when the input was whole, valid
9-bit parity frames, stored as their data bytes only and the implied parity bits recomputed on decoding).
`auto` picks the smallest, so no stream is longer than len(bits) + HEADER_BITS.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from bitlm.bits.frames import BitDecodeError, as_bit_array, bits_to_bytes, bytes_to_bits

MAGIC, VERSION = 0xB7, 1
LENGTH_BITS = 44                  # original length field: up to 2**44 - 1 bits
HEADER_BITS = 64
DEFAULT_MAX_BITS = 1 << 28        # 256 Mbit: decompressed uint8 output of at most 256 MiB
METHODS = ("auto", "stored", "rle", "deflate")
_METHOD_IDS = ("stored", "rle", "deflate")  # a method's id in the header is its index here
_RLE_KS = np.arange(1, 9)         # value bits per rle chunk, chosen per stream
_BLOCK_RUNS = 1 << 16             # runs per rle work block
_DEFLATE_LEVEL = 9


class CodecError(ValueError):
    """A bit stream could not be compressed or decompressed; the message says what is wrong."""


@dataclass
class StreamInfo:
    """What a stream's header says (see stream_info)."""
    method: str          # "stored", "rle" or "deflate"
    original_bits: int   # length of the decompressed bits, from the header
    stream_bits: int     # length of the stream itself


def _as_bits(x: torch.Tensor, what: str) -> np.ndarray:
    try:
        return as_bit_array(x)
    except ValueError as e:
        raise CodecError(f"{what}: {e}") from None


def _header(method: str, param: int, n: int) -> np.ndarray:
    word = MAGIC << 56 | VERSION << 52 | _METHOD_IDS.index(method) << 48 | param << LENGTH_BITS | n
    return np.unpackbits(np.frombuffer(word.to_bytes(8, "big"), dtype=np.uint8))


def _read_header(arr: np.ndarray, max_bits: int) -> tuple[str, int, int]:
    """-> (method, param, original length); CodecError if the header is bad or n > max_bits."""
    if arr.size < HEADER_BITS:
        raise CodecError(f"stream of {arr.size} bits is shorter than the {HEADER_BITS}-bit header (truncated?)")
    word = int.from_bytes(np.packbits(arr[:HEADER_BITS]).tobytes(), "big")
    magic, version, method_id = word >> 56, word >> 52 & 0xF, word >> 48 & 0xF
    param, n = word >> LENGTH_BITS & 0xF, word & ((1 << LENGTH_BITS) - 1)
    if magic != MAGIC:
        raise CodecError(f"not a BitLM codec stream: magic {magic:#04x}, expected {MAGIC:#04x}")
    if version != VERSION:
        raise CodecError(f"unsupported stream version {version} (this codec reads version {VERSION})")
    if method_id >= len(_METHOD_IDS):
        raise CodecError(f"unknown method id {method_id} in the header")
    if n > max_bits:
        raise CodecError(f"header claims {n} bits, over max_bits={max_bits}; pass a larger max_bits if you trust it")
    return _METHOD_IDS[method_id], param, n


# ---------------------------------------------------------------------------------------------- rle

class _RlePlan(NamedTuple):
    first: int           # value of the first bit
    change: np.ndarray   # positions i where bit i != bit i+1: the last bit of every run but the final one
    n: int               # number of bits
    k: int               # value bits per chunk
    size: int            # payload bits

    @property
    def runs(self) -> int:
        return self.change.size + 1 if self.n else 0


def _blocks(runs: int) -> list[tuple[int, int]]:
    # rle works on runs a block at a time: the working arrays stay in cache (~1.4x faster than whole arrays)
    return [(r, min(r + _BLOCK_RUNS, runs)) for r in range(0, runs, _BLOCK_RUNS)]


def _run_values(change: np.ndarray, n: int, r0: int, r1: int) -> np.ndarray:
    """v = length - 1 of runs r0 .. r1-1."""
    last = np.empty(r1 - r0 + 1, dtype=np.int64)  # the last bit of each run, after the previous run's
    last[0] = change[r0 - 1] if r0 else -1
    inner = change[r0:r1]
    last[1:1 + inner.size] = inner
    if inner.size < r1 - r0:
        last[-1] = n - 1  # the final run
    v = np.diff(last)
    v -= 1
    return v


def _rle_plan(arr: np.ndarray) -> _RlePlan:
    """Runs and the best chunk width. A run of length L is coded as v = L - 1 in k-bit groups, most
    significant first (like MIDI's variable-length quantities), each group a (k+1)-bit chunk
    [continuation flag, k value bits MSB first]; flag 0 marks a run's last chunk. Fixed-width chunks let
    the decoder reshape the payload and find every run in parallel; the exact size for every k in 1..8
    comes from a histogram of bit lengths, so choosing k costs almost nothing."""
    change = np.flatnonzero(arr[1:] != arr[:-1])
    hist = np.zeros(LENGTH_BITS + 1, dtype=np.int64)
    plan = _RlePlan(int(arr[0]) if arr.size else 0, change, arr.size, k=0, size=0)  # k, size: below
    for r0, r1 in _blocks(plan.runs):
        v = _run_values(change, arr.size, r0, r1)
        hist += np.bincount(np.frexp(v)[1], minlength=hist.size)  # bit lengths, exact: v < 2**44
    chunks = np.maximum(1, -(-np.arange(hist.size) // _RLE_KS[:, None]))  # (8, bit lengths)
    sizes = (_RLE_KS + 1) * (chunks @ hist)
    i = int(np.argmin(sizes))
    return plan._replace(k=int(_RLE_KS[i]), size=int(sizes[i]))


def _rle_encode(plan: _RlePlan) -> tuple[int, np.ndarray]:
    k = plan.k
    out = np.empty((plan.size // (k + 1), k + 1), dtype=np.uint8)  # (chunks, k+1)
    pos = 0
    for r0, r1 in _blocks(plan.runs):
        v = _run_values(plan.change, plan.n, r0, r1)
        c = np.frexp(v)[1] + (k - 1)  # chunks per run: ceil(bit length / k), at least 1
        c //= k
        np.maximum(c, 1, out=c)
        end = np.cumsum(c)
        end -= 1  # each run's last chunk: it holds the lowest group
        vals = np.empty(end[-1] + 1, dtype=np.uint8)  # (block chunks,) value groups
        vals[end] = v  # uint8 assignment keeps the low 8 bits, of which the low k are written
        # higher groups of the few runs that need them, one level at a time (at most 44 / k levels)
        runs, j = np.flatnonzero(c > 1), 1
        while runs.size:
            vals[end[runs] - j] = v[runs] >> (k * j)
            j += 1
            runs = runs[c[runs] > j]
        block = out[pos:pos + vals.size]
        block[:, 0] = 1
        block[end, 0] = 0
        for i in range(k):  # one column at a time: faster than unpackbits on (chunks, 1)
            block[:, 1 + i] = vals >> (k - 1 - i) & 1
        pos += vals.size
    return plan.first << 3 | (k - 1), out.reshape(-1)


def _run_lengths(chunks: np.ndarray, end: np.ndarray, r0: int, r1: int) -> np.ndarray:
    """Lengths (int64) of runs r0 .. r1-1 from the (chunks, k+1) payload and each run's last chunk."""
    k = chunks.shape[1] - 1
    first_chunk = end[r0 - 1] + 1 if r0 else 0
    rows = chunks[first_chunk:end[r1 - 1] + 1]
    e = end[r0:r1] - first_chunk
    c = np.diff(e, prepend=-1)  # chunks per run
    if (int(c.max()) - 1) * k >= LENGTH_BITS:
        raise CodecError(f"an rle run is longer than the {LENGTH_BITS}-bit length limit")
    vals = rows[:, 1].copy()  # (block chunks,) value group of each chunk
    for i in range(2, k + 1):
        vals = vals << 1 | rows[:, i]
    v = vals[e].astype(np.int64)
    runs, j = np.flatnonzero(c > 1), 1
    while runs.size:
        v[runs] |= vals[e[runs] - j].astype(np.int64) << (k * j)
        j += 1
        runs = runs[c[runs] > j]
    v += 1  # each < 2**52
    return v


def _rle_decode(payload: np.ndarray, param: int, n: int) -> np.ndarray:
    first, k = param >> 3, (param & 7) + 1
    if payload.size % (k + 1):
        raise CodecError(f"rle payload of {payload.size} bits is not a whole number of {k + 1}-bit chunks")
    chunks = payload.reshape(-1, k + 1)  # (chunks, k+1)
    if chunks.size and chunks[-1, 0]:
        raise CodecError("rle payload ends inside a run (truncated?)")
    end = np.flatnonzero(chunks[:, 0] == 0)  # each run's last chunk
    if end.size > n or (n and not end.size):
        raise CodecError(f"rle payload has {end.size} runs for {n} bits")
    lengths = [_run_lengths(chunks, end, r0, r1) for r0, r1 in _blocks(end.size)]
    # a float64 sum equals n exactly iff the runs add up to n (n < 2**44: exact below 2**53, far above
    # otherwise); checked before anything of size n is allocated
    total = sum(float(block.sum(dtype=np.float64)) for block in lengths)
    if total != n:
        raise CodecError(f"rle runs add up to {total:.0f} bits but the header says {n}")
    out, pos = np.empty(n, dtype=np.uint8), 0
    values = np.empty(min(end.size, _BLOCK_RUNS), dtype=np.uint8)
    values[0::2], values[1::2] = first, 1 - first  # blocks hold an even number of runs: same pattern
    for block in lengths:
        pos2 = pos + int(block.sum())
        out[pos:pos2] = np.repeat(values[:block.size], block)
        pos = pos2
    return out


# ------------------------------------------------------------------------------------------ deflate

def _deflate_encode(arr: np.ndarray) -> tuple[int, np.ndarray]:
    try:  # whole, valid parity frames: keep only the data bytes, the parity bits are implied
        raw, implied = bits_to_bytes(torch.from_numpy(arr), parity=True), 1
    except BitDecodeError:
        raw, implied = np.packbits(arr).tobytes(), 0
    return implied, np.unpackbits(np.frombuffer(zlib.compress(raw, _DEFLATE_LEVEL), dtype=np.uint8))


def _deflate_decode(payload: np.ndarray, param: int, n: int) -> np.ndarray:
    if param > 1:
        raise CodecError(f"bad deflate flag {param} in the header")
    if payload.size % 8:
        raise CodecError(f"deflate payload of {payload.size} bits is not whole bytes")
    if param and n % 9:
        raise CodecError(f"header says {n} bits of parity frames, not a multiple of 9")
    nbytes = n // 9 if param else -(-n // 8)
    d = zlib.decompressobj()
    try:  # max_length caps the output one byte past what the header allows: no zip bomb gets further
        raw = d.decompress(np.packbits(payload).tobytes(), nbytes + 1)
    except zlib.error as e:
        raise CodecError(f"deflate payload is corrupt: {e}") from None
    if len(raw) != nbytes:
        raise CodecError(f"deflate payload holds {'more than ' if len(raw) > nbytes else ''}{len(raw)} bytes, "
                         f"header says {nbytes}")
    if not d.eof:
        raise CodecError("deflate payload is truncated")
    if d.unused_data:
        raise CodecError(f"{len(d.unused_data)} bytes of trailing garbage after the deflate payload")
    bits = bytes_to_bits(raw, parity=bool(param)).numpy()
    if bits[n:].any():
        raise CodecError("nonzero padding bits after the last deflate byte")
    return bits[:n]


def _stored_decode(payload: np.ndarray, param: int, n: int) -> np.ndarray:
    if param:
        raise CodecError(f"bad stored flag {param} in the header")
    if payload.size != n:
        raise CodecError(f"stored payload has {payload.size} bits, header says {n}")
    return payload.copy()


_DECODERS = {"stored": _stored_decode, "rle": _rle_decode, "deflate": _deflate_decode}


# --------------------------------------------------------------------------------------- public API

def compress_bits(bits: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """Compress 1-D 0/1 bits (bool or integer dtype) into a self-describing stream.

    method: "auto" (smallest of the three), "stored", "rle" or "deflate".
    Returns a 1-D uint8 0/1 CPU tensor, never longer than len(bits) + HEADER_BITS with "auto".
    Raises CodecError for an unknown method or input that is not a 1-D tensor of 0/1 values."""
    if method not in METHODS:
        raise CodecError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    arr = _as_bits(bits, "compress_bits input")
    n = arr.size
    if n >= 1 << LENGTH_BITS:
        raise CodecError(f"{n} bits is over the {LENGTH_BITS}-bit length limit of the stream header")
    plan = _rle_plan(arr) if method in ("rle", "auto") else None
    deflated = _deflate_encode(arr) if method in ("deflate", "auto") else None
    if method == "auto":  # the rle size is known without building its payload; ties go to the faster decoder
        method = min(("stored", n), ("rle", plan.size), ("deflate", deflated[1].size), key=lambda c: c[1])[0]
    if method == "stored":
        param, payload = 0, arr
    elif method == "rle":
        param, payload = _rle_encode(plan)
    else:
        param, payload = deflated
    return torch.from_numpy(np.concatenate([_header(method, param, n), payload]))


def decompress_bits(stream: torch.Tensor, max_bits: int = DEFAULT_MAX_BITS,
                    dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Exact inverse of compress_bits.

    Takes a 1-D 0/1 stream; returns the original bits as a 1-D CPU tensor of `dtype` (uint8 or bool).
    Raises CodecError for any malformed stream (truncated, bad header, lengths that disagree, trailing
    data, non-0/1 values) and, before allocating anything, for a header claiming more than max_bits."""
    if dtype not in (torch.uint8, torch.bool):
        raise CodecError(f"dtype must be torch.uint8 or torch.bool, got {dtype}")
    arr = _as_bits(stream, "compressed stream")
    method, param, n = _read_header(arr, max_bits)
    out = torch.from_numpy(_DECODERS[method](arr[HEADER_BITS:], param, n))
    return out.view(torch.bool) if dtype == torch.bool else out


def stream_info(stream: torch.Tensor) -> StreamInfo:
    """Read a stream's header without decompressing. Raises CodecError if it is not a valid header."""
    arr = _as_bits(stream, "compressed stream")
    method, _, n = _read_header(arr, max_bits=1 << LENGTH_BITS)
    return StreamInfo(method=method, original_bits=n, stream_bits=arr.size)


def _length(x: int | torch.Tensor) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel()
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 0:
        return int(x)
    raise ValueError(f"expected a bit count (int >= 0) or a tensor of bits, got {x!r}")


def compression_ratio(original_bits: int | torch.Tensor, compressed_bits: int | torch.Tensor) -> float:
    """original / compressed size in bits (> 1 means smaller); ints or tensors (their lengths)."""
    original, compressed = _length(original_bits), _length(compressed_bits)
    if compressed == 0:
        raise ValueError("compressed size is 0 bits; a compression ratio needs a non-empty stream")
    return original / compressed


def compress_batch(bits: torch.Tensor | list[torch.Tensor], method: str = "auto") -> list[torch.Tensor]:
    """compress_bits on every row of a (B, T) tensor or every tensor of a list."""
    if isinstance(bits, torch.Tensor) and bits.dim() == 2:
        bits = bits.unbind(0)
    elif not isinstance(bits, (list, tuple)):
        raise CodecError(f"compress_batch expects a (B, T) tensor or a list of 1-D tensors, got {type(bits).__name__}"
                         + (f" of shape {tuple(bits.shape)}" if isinstance(bits, torch.Tensor) else ""))
    return [compress_bits(b, method) for b in bits]


def decompress_batch(streams: list[torch.Tensor], max_bits: int = DEFAULT_MAX_BITS,
                     dtype: torch.dtype = torch.uint8) -> list[torch.Tensor]:
    """decompress_bits on every stream of a list (streams differ in length, so no 2-D input)."""
    if not isinstance(streams, (list, tuple)):
        raise CodecError(f"decompress_batch expects a list of 1-D streams, got {type(streams).__name__}")
    return [decompress_bits(s, max_bits, dtype) for s in streams]
