"""BitLM: a bit-native transformer language model with lossless bit compression.

Text becomes UTF-8 bytes, each byte 8 data bits plus an even-parity bit (`bitlm.bits`);
bit sequences compress losslessly (`bitlm.codec`); `BitTransformerLM` reads and writes
bits (`bitlm.model`) and reports K/C/S telemetry (`bitlm.telemetry`).
"""
from bitlm.bits import bits_to_text, text_to_bits
from bitlm.codec import CodecError, compress_bits, compression_ratio, decompress_bits

__all__ = [
    "text_to_bits", "bits_to_text",
    "compress_bits", "decompress_bits", "compression_ratio", "CodecError",
]
from bitlm.model import BitLMConfig, BitTransformerLM, model_output_decompress  # noqa: E402
__all__ += ["BitTransformerLM", "BitLMConfig", "model_output_decompress"]
