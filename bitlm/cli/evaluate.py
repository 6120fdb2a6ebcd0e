"""`python -m bitlm.cli.evaluate` (`bitlm-evaluate`): held-out bits per byte of a trained model beside zlib -9,
bz2 -9 and lzma -9e on the same bytes (`bitlm.train.evaluate`).

    python -m bitlm.cli.evaluate runs/x --corpus pydoc --max-bytes 100000 --stride 576
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bitlm.model.transformer import BitTransformerLM
from bitlm.train.checkpoints import find_checkpoint
from bitlm.train.data import load_corpus, split_corpus
from bitlm.train.evaluate import classic_bits_per_byte, evaluate_model


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bitlm.cli.evaluate",
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
    p.add_argument("--stride", type=int, metavar="BITS",
                   help="sliding windows advancing this many bits (half the block size gives every byte "
                        "after the first window at least half a block of context; block/stride times the "
                        "cost) (default: non-overlapping windows, as training's validation)")
    args = p.parse_args(argv)

    model = BitTransformerLM.from_pretrained(find_checkpoint(args.checkpoint, names=("best", "last")))
    corpus = load_corpus(args.corpus[0] if len(args.corpus) == 1 else args.corpus)
    texts = corpus.documents if args.split == "all" else split_corpus(corpus, args.val_fraction)[1]
    data = b"".join(t.encode("utf-8") for t in texts)[:args.max_bytes]
    result = evaluate_model(model, data, batch_size=args.batch_size, stride_bits=args.stride)
    windows = "non-overlapping windows" if args.stride is None else f"sliding windows, stride {args.stride} bits"
    print(f"{corpus.name}, {args.split} split: {len(data):,} bytes; model {model.num_params():,} parameters; "
          f"{windows} of {model.config.block_size} bits\n")
    print(f"{'method':<10} {'bits/byte':>9}")
    print(f"{'model':<10} {result['bits_per_byte']:>9.4f}   (parity loss {result['parity_loss']:.4f} bits, "
          f"accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f} bits/bit)")
    for name, bpb in classic_bits_per_byte(data).items():
        print(f"{name:<10} {bpb:>9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
