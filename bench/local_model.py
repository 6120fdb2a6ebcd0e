"""Which local model? The factorized and the transformer local model beside a byte-level model.

Trains each variant for the same wall-clock budget on the training split of a corpus (same
global transformer, same batch of windows of the same number of bytes, same schedule) and
scores all of them on the same held-out text (the last 10 % of every document). The
byte-level model is `bitlm.model.transformer.byte_level_config` (`patch_size=8, parity=False`): a causal
transformer over bytes with a 256-row embedding table and a 256-way softmax head, i.e. a plain
byte-level transformer.

    python -m bench.local_model --corpus shakespeare --minutes 10
"""
import argparse
import os
import platform
import time
from dataclasses import replace

import torch

from bitlm.train.data import load_corpus, split_corpus
from bitlm.train.evaluate import classic_bits_per_byte, evaluate_model
from bitlm.model.config import byte_level_config
from bitlm.train.trainer import Trainer, make_configs

BYTES_PER_WINDOW = 128


def variants(preset: str) -> dict:
    base, _ = make_configs(preset)
    bits9 = replace(base, block_size=9 * BYTES_PER_WINDOW)
    return {
        "bit, factorized local (p=9)": bits9,
        "bit, transformer local (p=9)": replace(bits9, local="transformer"),
        "byte-level (p=8, no parity)": byte_level_config(bits9),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="shakespeare", help="corpus name or path (default: shakespeare)")
    ap.add_argument("--preset", default="small", help="training preset whose model size and schedule to use")
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget per variant")
    ap.add_argument("--eval-bytes", type=int, default=None, help="score only the first N held-out bytes")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    corpus = load_corpus(args.corpus)
    heldout = b"".join(t.encode("utf-8") for t in split_corpus(corpus)[1])[:args.eval_bytes]
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average at start "
          f"{os.getloadavg()[0]:.2f}")
    print(f"corpus {corpus.name}: {corpus.n_bytes:,} bytes; held-out {len(heldout):,} bytes; "
          f"{args.minutes:g} min per variant, preset {args.preset}\n")

    rows = []
    for name, model_config in variants(args.preset).items():
        _, train_config = make_configs(args.preset, corpus=args.corpus, steps=10**9, time_limit=args.minutes,
                                       compress_prob=0.0, eval_every=0)
        trainer = Trainer(model_config, train_config, corpus=corpus)
        t0 = time.perf_counter()
        trainer.run()
        train_s = time.perf_counter() - t0
        result = evaluate_model(trainer.model, heldout)
        step = trainer.metrics[-1]["step"] if trainer.metrics else 0
        rows.append((name, trainer.model.num_params(), step, train_s, result["bits_per_byte"]))
        print(f"  {name}: {result['bits_per_byte']:.3f} bits/byte after {step} steps ({train_s:.0f} s)", flush=True)

    byte_bpb = rows[-1][-1]
    print(f"\n| model | parameters | steps | train s | held-out bits/byte | × byte-level |")
    print("|---|---|---|---|---|---|")
    for name, n, steps, secs, bpb in rows:
        print(f"| {name} | {n:,} | {steps} | {secs:.0f} | {bpb:.3f} | {bpb / byte_bpb:.2f} |")
    for name, bpb in classic_bits_per_byte(heldout).items():
        print(f"| {name} | — | — | — | {bpb:.3f} | {bpb / byte_bpb:.2f} |")
    print(f"\nload average at end {os.getloadavg()[0]:.2f} (2 cores: values over 2 mean the runs shared the CPU)")


if __name__ == "__main__":
    main()
