"""`python -m bitlm.cli.codec` (`bitlm-codec`): compress bits with the bit-stream codec (`bitlm.bits.codec`) and
print each method's stream size and compression ratio, for a text, a file or built-in samples.

    python -m bitlm.cli.codec --demo
    python -m bitlm.cli.codec --text "to be or not to be"
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from bitlm.bits.codec import METHODS, compress_bits, compression_ratio, decompress_bits, stream_info
from bitlm.bits.frames import bytes_to_bits, text_to_bits
from bitlm.train.data import load_corpus


def _demo_samples() -> dict[str, torch.Tensor]:
    pydoc = load_corpus("pydoc").documents[0]
    g = np.random.default_rng(0)
    runs = np.repeat(np.arange(2000) % 2, g.geometric(1 / 1000, 2000)).astype(np.uint8)
    return {
        "sentence (parity frames)": text_to_bits("BitLM reads and writes text one bit at a time."),
        "pydoc text (parity frames)": text_to_bits(pydoc),
        "pydoc text (8-bit bytes)": text_to_bits(pydoc, parity=False),
        "run-heavy bits (mean run 1000)": torch.from_numpy(runs),
        "random bits": torch.from_numpy(g.integers(0, 2, 100_000, dtype=np.uint8)),
    }


def _report(samples: dict[str, torch.Tensor]) -> None:
    print(f"{'input':32} {'bits':>10}  {'method':14} {'stream bits':>12} {'compression_ratio':>18}  round trip")
    for name, bits in samples.items():
        for method in METHODS:
            stream = compress_bits(bits, method)
            label = method if method != "auto" else f"auto={stream_info(stream).method}"
            ok = torch.equal(decompress_bits(stream), bits.to(torch.uint8))
            print(f"{name:32} {bits.numel():>10}  {label:14} {stream.numel():>12} "
                  f"{compression_ratio(bits, stream):>18.3f}  {'ok' if ok else 'MISMATCH'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bitlm.cli.codec", description="Compress bits with the BitLM codec and "
                                "print stream sizes and compression ratios per method.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--demo", action="store_true", help="built-in samples: a sentence, pydoc text, runs, noise")
    g.add_argument("--text", help="compress this text (UTF-8, 9-bit parity frames)")
    g.add_argument("--file", help="compress this file's bytes (9-bit parity frames)")
    args = p.parse_args(argv)
    if args.demo:
        samples = _demo_samples()
    elif args.text is not None:
        samples = {"--text": text_to_bits(args.text)}
    else:
        try:
            with open(args.file, "rb") as f:
                samples = {args.file[-32:]: bytes_to_bits(f.read())}
        except OSError as e:
            p.error(f"cannot read {args.file}: {e.strerror}")
    _report(samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
