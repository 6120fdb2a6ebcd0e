"""Held-out evaluation: a model's bits per byte beside classic compressors on the same bytes.

`evaluate_model` scores text in consecutive, non-overlapping windows of the model's block
size (each window starts with an empty context, so this slightly overstates the loss of
a model that could see the preceding text; it is what training's validation reports).
`classic_bits_per_byte` gives zlib -9, bz2 -9 and lzma -9e on the same bytes.

    python -m bitlm.evaluate runs/x --corpus pydoc --max-bytes 100000
"""
from __future__ import annotations

import argparse
import bz2
import lzma
import math
import zlib
from collections.abc import Sequence

import torch

from bitlm.data import BitDataset, load_corpus, split_corpus
from bitlm.model import BitTransformerLM


def evaluate_model(model: BitTransformerLM, data: str | bytes, batch_size: int = 8,
                   block_bits: int | None = None) -> dict:
    """Next-bit metrics of `model` on `data`, every byte scored exactly once.

    Takes: the model, text (UTF-8 encoded) or bytes, windows per forward, and the window
    length in bits (default: the model's block size, rounded down to whole frames).
    Returns: `bits_per_byte` (cross-entropy summed over the 8 data bits of each byte,
    per byte), `parity_loss` (bits per parity bit; NaN without parity framing),
    `accuracy` (argmax-correct next bits, all positions), `loss` (bits per bit, all
    positions), `n_bytes`, `n_bits`.
    Raises: `ValueError` for empty data.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if not raw:
        raise ValueError("nothing to evaluate: the text is empty")
    parity = model.config.parity
    totals = dict(nll=0.0, data_nll=0.0, parity_nll=0.0, bits=0.0, correct=0.0, bytes=0.0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for bits in BitDataset([raw], parity=parity).iter_windows(block_bits or model.config.block_size,
                                                                       batch_size):
                stats = model.loss(bits)
                totals["nll"] += stats.nll_bits.sum().item()
                totals["data_nll"] += stats.data_nll_bits.sum().item()
                totals["parity_nll"] += stats.parity_nll_bits.sum().item()
                totals["bits"] += stats.n_bits.sum().item()
                totals["correct"] += stats.correct.sum().item()
                totals["bytes"] += stats.n_bytes.sum().item()
    finally:
        model.train(was_training)
    return {"bits_per_byte": totals["data_nll"] / totals["bytes"],
            "parity_loss": totals["parity_nll"] / totals["bytes"] if parity else math.nan,
            "accuracy": totals["correct"] / totals["bits"], "loss": totals["nll"] / totals["bits"],
            "n_bytes": int(totals["bytes"]), "n_bits": int(totals["bits"])}


def classic_bits_per_byte(data: bytes) -> dict[str, float]:
    """Bits per byte (8 x compressed size / original size) of zlib -9, bz2 -9 and lzma -9e.

    Raises: `ValueError` for empty data.
    """
    if not data:
        raise ValueError("nothing to compress: the data is empty")
    sizes = {"zlib -9": len(zlib.compress(data, 9)),
             "bz2 -9": len(bz2.compress(data, 9)),
             "lzma -9e": len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))}
    return {name: 8 * size / len(data) for name, size in sizes.items()}


def main(argv: Sequence[str] | None = None) -> None:
    from bitlm.train import find_checkpoint  # here, not at the top: bitlm.train imports this module

    p = argparse.ArgumentParser(
        prog="python -m bitlm.evaluate",
        description="Held-out bits per byte of a trained model beside zlib -9 / bz2 -9 / lzma -9e "
                    "on the same bytes.")
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                   help="a run folder (its best/ checkpoint, else last/) or a save_pretrained folder")
    p.add_argument("--corpus", nargs="+", default=["pydoc"],
                   help="'pydoc', 'shakespeare', text file(s) or a folder (default: pydoc)")
    p.add_argument("--split", choices=["val", "all"], default="val",
                   help="'val': the last --val-fraction of every document (never trained on); "
                        "'all': the whole corpus (default: val)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out tail of every document (default: 0.1)")
    p.add_argument("--max-bytes", type=int, help="score only the first N bytes of the split (default: all)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default: 8)")
    args = p.parse_args(argv)

    model = BitTransformerLM.from_pretrained(find_checkpoint(args.checkpoint, names=("best", "last")))
    corpus = load_corpus(args.corpus[0] if len(args.corpus) == 1 else args.corpus)
    texts = corpus.documents if args.split == "all" else split_corpus(corpus, args.val_fraction)[1]
    data = b"".join(t.encode("utf-8") for t in texts)[:args.max_bytes]
    result = evaluate_model(model, data, batch_size=args.batch_size)
    print(f"{corpus.name}, {args.split} split: {len(data):,} bytes; model {model.num_params():,} parameters\n")
    print(f"{'method':<10} {'bits/byte':>9}")
    print(f"{'model':<10} {result['bits_per_byte']:>9.4f}   (parity loss {result['parity_loss']:.4f} bits, "
          f"accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f} bits/bit)")
    for name, bpb in classic_bits_per_byte(data).items():
        print(f"{name:<10} {bpb:>9.4f}")


if __name__ == "__main__":
    main()
