"""BitLM: a bit-native transformer language model with lossless bit compression.

Text becomes UTF-8 bytes, each byte 8 data bits plus an even-parity bit (`bitlm.bits`);
bit sequences compress losslessly (`bitlm.codec`); `BitTransformerLM` reads and writes
bits (`bitlm.model`) and reports K/C/S telemetry (`bitlm.telemetry`). The public names are
re-exported here lazily, so `python -m bitlm.codec` and friends run without importing their
own module twice.
"""
import importlib

_EXPORTS = {
    "text_to_bits": "bitlm.bits", "bits_to_text": "bitlm.bits",
    "compress_bits": "bitlm.codec", "decompress_bits": "bitlm.codec",
    "compression_ratio": "bitlm.codec", "CodecError": "bitlm.codec",
    "BitTransformerLM": "bitlm.model", "BitLMConfig": "bitlm.config",
    "model_output_decompress": "bitlm.model",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bitlm' has no attribute {name!r}")
