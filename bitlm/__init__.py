"""BitLM: a bit-native transformer language model with lossless bit compression.

Text becomes UTF-8 bytes, each byte 8 data bits plus an even-parity bit; bit sequences compress losslessly;
`BitTransformerLM` reads and writes bits, reports K/C/S telemetry and, through its exact integer twin,
compresses files. The subpackages, each importing only those listed before it:

    bitlm.bits       the bit format and the bit-stream codec
    bitlm.model      config, layers, telemetry, BitTransformerLM
    bitlm.generate   the cached decoder and sampling, the n-gram draft, the safety gate
    bitlm.compress   the exact predictor, the file container, the float reference coder
    bitlm.train      corpora, the trainer, checkpoints, DDP, held-out evaluation
    bitlm.app        the Gradio app's work: inputs, visitors, one module per tab, plots, endpoints
    bitlm.cli        every command line (`python -m bitlm.cli.NAME`, or `bitlm-NAME` once installed)

The public names below are re-exported lazily, so `import bitlm` stays cheap and a command line never
imports its own module twice.
"""
import importlib

_EXPORTS = {
    "text_to_bits": "bitlm.bits.frames", "bits_to_text": "bitlm.bits.frames",
    "compress_bits": "bitlm.bits.codec", "decompress_bits": "bitlm.bits.codec",
    "compression_ratio": "bitlm.bits.codec", "CodecError": "bitlm.bits.codec",
    "BitTransformerLM": "bitlm.model.transformer", "BitLMConfig": "bitlm.model.config",
    "model_output_decompress": "bitlm.model.transformer",
    "compress_file": "bitlm.compress.container", "decompress_file": "bitlm.compress.container",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bitlm' has no attribute {name!r}")
