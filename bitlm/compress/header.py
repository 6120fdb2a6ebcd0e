"""The container's header: which method coded a file, the original's length and CRC-32, the model's
fingerprint for model methods, and (version 2) a check over the header's own bytes, so that damage is
told apart from another model, another version or a length over the cap.

Version 2 (written today, big-endian): magic 0xB7 | version 2 (high 4 bits) and method (low 4 bits) |
the original length as a LEB128 varint (1-4 bytes, < 2^28) | for model methods (neural, neural+cm) the
model's 2-byte fingerprint | CRC-32 of the original (4) | CRC-16/XMODEM of all the bytes before it (2):
at most 14 bytes. A CRC-16 detects every error confined to 16 consecutive bits, so one damaged byte
always fails the check when the header keeps its shape; when the damage changes the shape (a length
byte's continuation bit, the method), the check is read from elsewhere and passes by chance once in
65 536. Damage to the first two bytes (magic, version/method) is recognised by trying the 16 version-2
values of byte 1 under the magic: a header that then passes its check is damaged, not foreign or from
another version. Version 1 (before the check; no model+cm methods) is still read: its header
parses as before, and `version2_if_repaired` lets the caller tell a version-2 file whose byte 1 was
damaged into a "1" from a real version-1 file when something else is wrong with it.
"""
from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass

from bitlm.bits.codec import CodecError

MAGIC, VERSION = 0xB7, 2
STORED, ZLIB, BZ2, LZMA, NEURAL, CM, NEURAL_CM = range(7)
METHOD_NAMES = {STORED: "stored", ZLIB: "zlib", BZ2: "bz2", LZMA: "lzma", NEURAL: "neural", CM: "cm",
                NEURAL_CM: "neural+cm"}
METHODS = tuple(METHOD_NAMES.values())          # also the tie-break order: the first smallest wins
MODEL_METHODS = (NEURAL, NEURAL_CM)             # methods whose header names the model
V1_METHODS = (STORED, ZLIB, BZ2, LZMA, NEURAL)  # what version 1 could hold
MAX_HEADER_BYTES = 14
MAX_LENGTH = (1 << 28) - 1                      # the varint holds at most 4 bytes


class NeuralCodecError(CodecError):
    """A compressed file could not be decoded (damaged, truncated, foreign, another model, over the
    length cap) or an input could not be encoded; the message says which and what to do."""


DAMAGED = "the file is damaged"


@dataclass(frozen=True)
class Header:
    """A container header: method (a METHOD_NAMES key), original length, the model's 2-byte fingerprint
    (b"" for methods without a model), CRC-32 of the original, the header's size in bytes and the
    container version (1 or 2)."""
    method: int
    length: int
    fingerprint: bytes
    crc: int
    size: int
    version: int = VERSION

    @property
    def method_name(self) -> str:
        """The method's name: stored, zlib, bz2, lzma, neural, cm or neural+cm."""
        return METHOD_NAMES[self.method]


def varint(n: int) -> bytes:
    """n ≥ 0 as a LEB128 varint."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pack_header(method: int, length: int, crc: int, fingerprint: bytes = b"", version: int = VERSION) -> bytes:
    """The header of a file (version 2 unless told; version 1 only for tests of old files)."""
    head = bytes([MAGIC, version << 4 | method]) + varint(length) + fingerprint + struct.pack(">I", crc)
    return head + struct.pack(">H", binascii.crc_hqx(head, 0)) if version == 2 else head


class _Truncated(Exception):
    pass


def _parse(blob: bytes, version: int) -> tuple[Header, bool]:
    """(header, its check passed) for a header of `version` at the start of blob. Raises _Truncated
    when blob ends inside it and NeuralCodecError for a malformed length or an unknown method."""
    method = blob[1] & 0x0F
    if method not in METHOD_NAMES or (version == 1 and method not in V1_METHODS):
        raise NeuralCodecError(f"unknown compression method {method} in the header")
    length, shift, i = 0, 0, 2
    while True:
        if i >= len(blob):
            raise _Truncated
        if i >= 6:
            raise NeuralCodecError("the header's length field is longer than 4 bytes")
        length |= (blob[i] & 0x7F) << shift
        shift += 7
        i += 1
        if not blob[i - 1] & 0x80:
            break
    fp = b""
    if method in MODEL_METHODS:
        fp, i = blob[i:i + 2], i + 2
    end = i + 4 + (2 if version == 2 else 0)
    if len(blob) < end:
        raise _Truncated
    crc = struct.unpack(">I", blob[i:i + 4])[0]
    ok = version == 1 or struct.unpack(">H", blob[i + 4:end])[0] == binascii.crc_hqx(blob[:i + 4], 0)
    return Header(method, length, fp, crc, end, version), ok


def version2_if_repaired(blob: bytes) -> bool:
    """Whether blob is a version-2 file with its first or second byte damaged: with the magic and one of
    the 16 version-2 values of byte 1 in their place, the header passes its check."""
    for b1 in range(VERSION << 4, (VERSION << 4) + len(METHOD_NAMES)):
        candidate = bytes([MAGIC, b1]) + blob[2:]
        if candidate[:2] == blob[:2]:
            continue
        try:
            if _parse(candidate, 2)[1]:
                return True
        except (_Truncated, NeuralCodecError):
            continue
    return False


def read_header(blob: bytes) -> Header:
    """Parse a container header (no model needed). Raises NeuralCodecError naming what is wrong: not
    bytes, truncated, damaged (version 2's check, or a version-2 file whose first bytes were hit),
    foreign, another version, or, for version 1, an unknown method or a malformed length."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise NeuralCodecError(f"a compressed file must be bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < 2:
        raise NeuralCodecError(f"{len(blob)} bytes is too short for a BitLM compressed file (truncated?)")
    version = blob[1] >> 4
    if blob[0] != MAGIC or version not in (1, 2):
        if version2_if_repaired(blob):
            raise NeuralCodecError(f"{DAMAGED} (header check failed: its first bytes were changed)")
        if blob[0] != MAGIC:
            raise NeuralCodecError(f"not a BitLM compressed file (first byte 0x{blob[0]:02x}, expected 0x{MAGIC:02x})")
        raise NeuralCodecError(f"unsupported BitLM container version {version} (this codec reads versions 1 and 2; "
                               f"a newer BitLM may read it)")
    try:
        header, ok = _parse(blob, version)
    except _Truncated:
        raise NeuralCodecError(f"the file ends inside its header ({len(blob)} bytes): it is "
                               f"{'damaged or truncated' if version == 2 else 'truncated'}") from None
    except NeuralCodecError as e:
        if version == 2 or version2_if_repaired(blob):
            raise NeuralCodecError(f"{DAMAGED} (header check failed: {e})") from None
        raise NeuralCodecError(f"{e} (a damaged file?)") from None
    if not ok:
        raise NeuralCodecError(f"{DAMAGED} (header check failed)")
    return header
