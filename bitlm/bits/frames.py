"""The bit format: text <-> bits. A byte is 8 data bits, most significant first, followed by
one even-parity bit (the 9 bits of a frame hold an even number of ones); `parity=False` gives
plain 8-bit bytes. This module owns framing, strict decoding (`BitDecodeError` naming the first
bad byte and what is wrong), lenient decoding with a repair report (`decode_bits`), parsing of
user-typed bit strings and formatting bits for display. Everything is vectorised numpy behind
tensor-in / tensor-out functions; `as_bit_array` is the shared input check (the codec uses it too).
"""
from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

import numpy as np
import torch

# parity bit of every byte value: 1 when the byte holds an odd number of ones, so byte + bit is even
_BYTE_PARITY = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1, dtype=np.uint8) & 1
_SEPARATORS = re.compile(r"[ \t\r\n_]+")
_BAD_CHAR = re.compile(r"[^01 \t\r\n_]")
_PARITY_REASON = "parity error (its 9 bits hold an odd number of ones)"


class BitDecodeError(ValueError):
    """Strict decoding failed. `index` is the first bad byte (frame) index, `reason` what is wrong."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"byte {index}: {reason}")
        self.index = index
        self.reason = reason


@dataclass
class DecodeResult:
    """Report of a lenient decode: the text and what had to be repaired to get it."""
    text: str
    ok: bool            # nothing was repaired or replaced
    parity_errors: int  # frames whose parity bit disagreed with their data bits (data bits trusted)
    replaced: int       # bytes turned into U+FFFD (invalid UTF-8, or a trailing partial frame)
    changed: int        # bytes affected by any repair, each counted once
    message: str


def frame_bits(parity: bool) -> int:
    """Bits per byte: 9 with a parity bit, 8 without."""
    return 9 if parity else 8


def parity_of(data_bits: torch.Tensor) -> torch.Tensor:
    """Even-parity bit of (..., 8) 0/1 data bits -> (...) uint8, on the input's device."""
    if data_bits.shape[-1:] != (8,):
        raise ValueError(f"parity_of expects (..., 8) data bits, got shape {tuple(data_bits.shape)}")
    return data_bits.to(torch.uint8).sum(dim=-1, dtype=torch.uint8) & 1


def as_bit_array(bits: torch.Tensor) -> np.ndarray:
    """Check a 1-D tensor of 0/1 values (bool or any integer dtype) and return it as uint8 numpy
    (no copy for CPU bool/uint8). Raises ValueError saying what is wrong (type, shape, dtype, value)."""
    if not isinstance(bits, torch.Tensor):
        raise ValueError(f"expected a 1-D torch.Tensor of 0/1 bits, got {type(bits).__name__}")
    if bits.dim() != 1:
        raise ValueError(f"expected a 1-D tensor of bits, got shape {tuple(bits.shape)}")
    if bits.dtype == torch.bool:
        return bits.detach().cpu().numpy().view(np.uint8)
    if bits.dtype.is_floating_point or bits.dtype.is_complex:
        raise ValueError(f"bits must be bool or integer 0/1, got dtype {bits.dtype}; use .to(torch.uint8) on 0/1 data")
    arr = bits.detach().cpu().numpy()
    if arr.size and (arr.max() > 1 or (arr.dtype != np.uint8 and arr.min() < 0)):
        i = int(np.flatnonzero((arr < 0) | (arr > 1))[0])
        raise ValueError(f"bits must be 0 or 1, found {arr[i]} at index {i}")
    return arr.astype(np.uint8, copy=False)


def bytes_to_bits(data: bytes, parity: bool = True) -> torch.Tensor:
    """Bytes -> 1-D uint8 0/1 tensor: 8 data bits MSB first (+ an even-parity bit if `parity`)."""
    b = np.frombuffer(bytes(data), dtype=np.uint8)
    frames = np.empty((b.size, frame_bits(parity)), dtype=np.uint8)  # (bytes, 9|8)
    frames[:, :8] = np.unpackbits(b[:, None], axis=1)
    if parity:
        frames[:, 8] = _BYTE_PARITY[b]
    return torch.from_numpy(frames.reshape(-1))


def text_to_bits(text: str, parity: bool = True) -> torch.Tensor:
    """Text -> its UTF-8 bytes as a 1-D uint8 0/1 tensor (9 bits per byte with parity, else 8)."""
    return bytes_to_bits(text.encode("utf-8"), parity)


def _split_frames(bits: torch.Tensor, parity: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """-> (data bytes of the whole frames, bool mask of frames with a wrong parity bit, leftover bit count)."""
    arr = as_bit_array(bits)
    fb = frame_bits(parity)
    frames = arr[: arr.size - arr.size % fb].reshape(-1, fb)  # (bytes, 9|8)
    data = np.packbits(frames[:, :8], axis=1).reshape(-1)
    bad = _BYTE_PARITY[data] != frames[:, 8] if parity else np.zeros(data.size, dtype=bool)
    return data, bad, arr.size % fb


def _check_errors(errors: str) -> None:
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors must be 'strict' or 'replace', got {errors!r}")


def bits_to_bytes(bits: torch.Tensor, parity: bool = True, errors: str = "strict") -> bytes:
    """1-D 0/1 tensor -> bytes. Strict: raises BitDecodeError for a wrong length or a parity error.
    errors="replace": trusts the data bits of every whole frame and drops a trailing partial frame."""
    _check_errors(errors)
    data, bad, tail = _split_frames(bits, parity)
    if errors == "strict":
        if bad.any():
            raise BitDecodeError(int(np.argmax(bad)), _PARITY_REASON)
        if tail:
            raise BitDecodeError(data.size, _length_reason(data.size, tail, parity))
    return data.tobytes()


def _length_reason(whole: int, tail: int, parity: bool) -> str:
    fb = frame_bits(parity)
    return (f"wrong length: {whole * fb + tail} bits is not a multiple of {fb} "
            f"({whole} whole bytes and {tail} leftover bits)")


def bits_to_text(bits: torch.Tensor, parity: bool = True, errors: str = "strict") -> str:
    """1-D 0/1 tensor -> text. Strict raises BitDecodeError at the first bad byte (the earliest of:
    invalid UTF-8, parity error, incomplete trailing frame); errors="replace" is `decode_bits(...).text`."""
    _check_errors(errors)
    if errors == "replace":
        return decode_bits(bits, parity).text
    data, bad, tail = _split_frames(bits, parity)
    cut = int(np.argmax(bad)) if bad.any() else data.size
    try:  # bytes before the first bad frame; a UTF-8 sequence cut short by it is that frame's fault
        text = codecs.getincrementaldecoder("utf-8")().decode(data[:cut].tobytes(), final=cut == data.size and not tail)
    except UnicodeDecodeError as e:
        raise BitDecodeError(e.start, f"invalid UTF-8 ({e.reason})") from None
    if cut < data.size:
        raise BitDecodeError(cut, _PARITY_REASON)
    if tail:
        raise BitDecodeError(data.size, _length_reason(data.size, tail, parity))
    return text


def decode_bits(bits: torch.Tensor, parity: bool = True) -> DecodeResult:
    """Lenient decode with a report; never raises for a 1-D 0/1 tensor. Parity errors are repaired by
    trusting the 8 data bits; every byte that is not valid UTF-8 becomes one U+FFFD; a trailing partial
    frame becomes one U+FFFD. Raises ValueError only for input that is not 0/1 bits."""
    data, bad_parity, tail = _split_frames(bits, parity)
    # surrogateescape maps each undecodable byte to one lone surrogate U+DC80..U+DCFF, which valid
    # UTF-8 never yields, so code points tell exactly which bytes were bad
    escaped = data.tobytes().decode("utf-8", "surrogateescape")
    cp = np.frombuffer(escaped.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).copy()
    undecodable = (cp >= 0xDC80) & (cp <= 0xDCFF)
    utf8_len = np.where(undecodable, 1, 1 + (cp >= 0x80) + (cp >= 0x800) + (cp >= 0x10000))
    changed_mask = bad_parity.copy()
    changed_mask[(np.cumsum(utf8_len) - utf8_len)[undecodable]] = True
    cp[undecodable] = 0xFFFD
    text = cp.tobytes().decode("utf-32-le") + ("\ufffd" if tail else "")

    parity_errors, replaced = int(bad_parity.sum()), int(undecodable.sum()) + bool(tail)
    notes = []
    if parity_errors:
        notes.append(f"repaired {parity_errors} parity error(s) by trusting the data bits")
    if undecodable.any():
        notes.append(f"replaced {int(undecodable.sum())} invalid UTF-8 byte(s) with U+FFFD")
    if tail:
        notes.append(f"replaced a trailing partial byte ({tail} bits) with U+FFFD")
    return DecodeResult(
        text=text, ok=not notes, parity_errors=parity_errors, replaced=replaced,
        changed=int(changed_mask.sum()) + bool(tail),
        message="; ".join(notes) if notes else f"decoded {data.size} bytes cleanly",
    )


def parse_bit_string(s: str) -> torch.Tensor:
    """User-typed '0'/'1' characters -> 1-D uint8 tensor. Spaces, tabs, newlines and underscores are
    ignored; any other character raises ValueError naming it and its 0-based position."""
    m = _BAD_CHAR.search(s)
    if m:
        line = s.count("\n", 0, m.start()) + 1
        col = m.start() - (s.rfind("\n", 0, m.start()) + 1) + 1
        raise ValueError(f"invalid character {m.group()!r} at position {m.start()} (line {line}, column {col}); "
                         "only 0, 1, spaces, tabs, newlines and underscores are allowed")
    digits = _SEPARATORS.sub("", s).encode("ascii")
    return torch.from_numpy(np.frombuffer(digits, dtype=np.uint8) - ord("0"))


def format_bits(bits: torch.Tensor, group: int = 9, groups_per_line: int = 8) -> str:
    """Bits -> '0'/'1' text: groups of `group` bits separated by spaces, `groups_per_line` per line."""
    if group < 1 or groups_per_line < 1:
        raise ValueError(f"group and groups_per_line must be >= 1, got {group} and {groups_per_line}")
    s = (as_bit_array(bits) + ord("0")).tobytes().decode("ascii")
    groups = [s[i:i + group] for i in range(0, len(s), group)]
    return "\n".join(" ".join(groups[i:i + groups_per_line]) for i in range(0, len(groups), groups_per_line))
