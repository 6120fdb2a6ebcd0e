"""Bits: the bit format (text <-> 9-bit parity frames, `frames`) and the lossless codec for bit sequences
held in tensors (`codec`). The bottom layer: it imports nothing else of BitLM.

SPEC §2 names `bitlm.bits.text_to_bits` and `bitlm.bits.bits_to_text`, so the frame functions are re-exported here.
"""
from bitlm.bits.frames import BitDecodeError, bits_to_bytes, bits_to_text, bytes_to_bits, text_to_bits

__all__ = ["BitDecodeError", "bits_to_bytes", "bits_to_text", "bytes_to_bits", "text_to_bits"]
