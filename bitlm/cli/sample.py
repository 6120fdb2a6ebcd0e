"""`python -m bitlm.cli.sample` (`bitlm-sample`): load a model and print text it writes after a prompt.

    python -m bitlm.cli.sample --prompt "KING." --bytes 400 --temperature 0.8 --seed 1
    python -m bitlm.cli.sample --model runs/x --draft shakespeare      # a run folder: its best/, else last/

The prompt and the new text go to stdout, one line of figures (bytes, speed, what the decoder repaired) to
stderr. Parity bits are set from their byte's data bits, never sampled. `--draft CORPUS` lets one cached step
check several guessed bytes (an n-gram table of the corpus's training split): the same text, only faster.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch

from bitlm.bits.frames import decode_bits, frame_bits, text_to_bits
from bitlm.generate.draft import NGramDraft
from bitlm.model.transformer import BitTransformerLM
from bitlm.paths import assets_dir
from bitlm.train.checkpoints import find_checkpoint
from bitlm.train.data import CorpusError, load_corpus, split_corpus

PROG = "python -m bitlm.cli.sample"
MAX_BYTES = 1_000_000   # about half an hour at the shipped model's speed on one core


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(assets_dir()),
                   help="a model folder (config.json + model.safetensors) or a run folder (default: the shipped model)")
    p.add_argument("--prompt", default="", help="text to continue (default: none, the model starts from nothing)")
    p.add_argument("--bytes", type=int, default=500, help=f"bytes to write, 1..{MAX_BYTES:,} (default: 500)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy, 0..2 (default: 0.8)")
    p.add_argument("--seed", type=int, help="makes the text reproducible (default: a random one)")
    p.add_argument("--draft", metavar="CORPUS",
                   help="speculate with an n-gram draft of this corpus's training split (e.g. shakespeare)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (1 with a one-line error, 2 for bad usage)."""
    p = _parser()
    args = p.parse_args(argv)
    if not 1 <= args.bytes <= MAX_BYTES or not 0 <= args.temperature <= 2 or args.threads < 1:
        p.error(f"need 1 ≤ --bytes ≤ {MAX_BYTES:,}, 0 ≤ --temperature ≤ 2 and --threads ≥ 1")
    torch.set_num_threads(args.threads)
    try:
        model = BitTransformerLM.from_pretrained(find_checkpoint(args.model, names=("best", "last")))
        parity = model.config.parity
        draft = None
        if args.draft:
            draft = NGramDraft("".join(split_corpus(load_corpus(args.draft))[0]), parity=parity)
    except (OSError, ValueError, CorpusError) as e:   # FileNotFoundError is an OSError; CorpusError a ValueError
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    frame = frame_bits(parity)
    start = time.perf_counter()
    with torch.no_grad():
        gen = model.generate(text_to_bits(args.prompt, parity=parity), args.bytes * frame,
                             temperature=args.temperature, seed=args.seed, draft=draft)
    seconds = time.perf_counter() - start
    decoded = decode_bits(gen.bits, parity=parity)
    print(args.prompt + decoded.text)
    print(f"{args.bytes:,} bytes in {seconds:.2f} s ({args.bytes / seconds:,.0f} bytes/s); "
          f"{gen.parity_set:,} parity bits set; {decoded.message}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
