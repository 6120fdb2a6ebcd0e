"""The shipped model's held-out quality: bits per byte beside zlib / bz2 / lzma and, at equal budget,
beside a plain byte-level transformer.

One run, on the held-out split of a corpus (the last 10 % of every document; for shakespeare the
last 10 % of every play, 505,739 bytes), prints one table:
  * the shipped model (--model, default assets/): bits per byte over the 8 data bits of every byte
    (the parity bit's loss reported apart), scored in non-overlapping windows of its block (what
    training's validation reports) and in sliding windows of half a block (every byte after the
    first window sees at least half a block of context);
  * zlib -9, bz2 -9 and lzma -9e on the same bytes;
  * unless --skip-equal-budget, a side-by-side at equal budget: the shipped model's architecture (its
    config.json) and its byte-level twin (`bitlm.model.byte_level_config`: same global transformer over
    the same bytes of context, 256-row embedding and 256-way softmax), each trained from scratch for
    --minutes of wall clock by the same Trainer on the same windows of the training split with the
    schedule of the preset that config belongs to (no codec round trips, which cost time, not
    information), then scored on the same held-out bytes in non-overlapping windows.
Ratios are against bz2 -9 and the byte-level model of this run.

    python bench/quality.py                                  # shipped model in assets/, shakespeare
    python bench/quality.py --model runs/x --corpus pydoc --minutes 0.2 --threads 1
"""
import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bitlm.data import Corpus, load_corpus, split_corpus  # noqa: E402
from bitlm.evaluate import classic_bits_per_byte, evaluate_model  # noqa: E402
from bitlm.model import BitLMConfig, BitTransformerLM, byte_level_config  # noqa: E402
from bitlm.train import PRESETS, STATE_FILE, Trainer, find_checkpoint, load_trainer_state, make_configs  # noqa: E402

DASH = "—"


def machine_line() -> str:
    """Platform, cores, torch version and threads, and the 1-minute load average now."""
    cpu = " ".join(dict.fromkeys(filter(None, (platform.machine(), platform.processor()))))
    return (f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}")


def load_model_arg(ap: argparse.ArgumentParser, model: str) -> tuple[Path, BitTransformerLM]:
    """The checkpoint a benchmark's --model names (a save_pretrained folder, or a run folder's best/,
    else last/) and its model; a missing one ends the benchmark through `ap.error` with what to do."""
    try:
        checkpoint = find_checkpoint(model, names=("best", "last"))
    except FileNotFoundError as e:
        ap.error(f"{e}. Train the shipped model first (issue 6) or pass --model RUN_OR_CHECKPOINT")
    return checkpoint, BitTransformerLM.from_pretrained(checkpoint)


def preset_of(config: BitLMConfig) -> str:
    """The training preset whose model config is `config`. Raises ValueError when none is."""
    for name, (model_config, _) in PRESETS.items():
        if model_config == config:
            return name
    raise ValueError(f"the model's config matches no preset ({', '.join(PRESETS)}); pass --preset NAME for the "
                     "equal-budget training schedule")


def train_for(config: BitLMConfig, preset: str, minutes: float, corpus: Corpus) -> Trainer:
    """Train a fresh model of `config` in memory for `minutes` of wall clock, with the preset's
    schedule (cosine over the time budget) on the corpus's training split. Returns the Trainer."""
    # eval_bytes: the Trainer's own end-of-run check only; the held-out scoring is the caller's
    _, train_config = make_configs(preset, steps=10**9, time_limit=minutes, compress_prob=0.0, eval_every=0,
                                   eval_bytes=4096)
    trainer = Trainer(config, train_config, corpus=corpus)
    trainer.run()
    return trainer


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark and print its table. Returns the table's rows (for tests)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="assets", help="the shipped model: a save_pretrained folder or a run "
                    "folder (its best/, else last/ checkpoint) (default: assets)")
    ap.add_argument("--corpus", default="shakespeare", help="corpus name or path; its held-out split is scored "
                    "and its training split trains the equal-budget models (default: shakespeare)")
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget per equal-budget model "
                    "(default: 10)")
    ap.add_argument("--skip-equal-budget", action="store_true", help="only the shipped model and the compressors")
    ap.add_argument("--preset", choices=list(PRESETS), help="schedule of the equal-budget training (default: the "
                    "preset whose model config is the shipped model's)")
    ap.add_argument("--max-bytes", type=int, help="score only the first N held-out bytes (quick checks; the "
                    "reported figures use the whole split)")
    ap.add_argument("--batch-size", type=int, default=8, help="windows per evaluation forward pass (default: 8)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch threads (default: torch's default, all cores)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    checkpoint, model = load_model_arg(ap, args.model)
    shipped_training = "shipped"
    if (checkpoint / STATE_FILE).is_file():   # a run's checkpoint knows how long it trained
        state = load_trainer_state(checkpoint)
        shipped_training = f"{state['step']} steps, {state['elapsed_s'] / 60:.0f} min"
    preset = None
    if not args.skip_equal_budget:
        try:
            preset = args.preset or preset_of(model.config)
        except ValueError as e:
            ap.error(str(e))
    corpus = load_corpus(args.corpus)
    heldout = b"".join(t.encode("utf-8") for t in split_corpus(corpus)[1])[:args.max_bytes]
    print(machine_line() + " (start)")
    print(f"corpus {corpus.name}: {corpus.n_bytes:,} bytes; held-out split (last 10 % of every document) "
          f"{len(heldout):,} bytes; shipped model {checkpoint} ({model.num_params():,} parameters, "
          f"block {model.config.block_size} bits)\n", flush=True)

    rows = []

    def add(name: str, bpb: float, params: int | None = None, training: str = DASH,
            parity_loss: float | None = None, seconds: float | None = None, is_shipped: bool = False) -> None:
        rows.append(dict(name=name, bits_per_byte=bpb, params=params, training=training, parity_loss=parity_loss,
                         seconds=seconds, shipped=is_shipped))
        print(f"  {name}: {bpb:.4f} bits/byte" + ("" if seconds is None else f" (scored in {seconds:.0f} s)"),
              flush=True)

    half = model.config.block_size // 2
    for label, stride in (("non-overlapping windows", None), (f"sliding windows, stride {half} bits", half)):
        t0 = time.perf_counter()
        r = evaluate_model(model, heldout, batch_size=args.batch_size, stride_bits=stride)
        add(f"shipped bit model, {label}", r["bits_per_byte"], model.num_params(), shipped_training,
            r["parity_loss"], time.perf_counter() - t0, is_shipped=True)

    byte_bpb = None
    if not args.skip_equal_budget:
        twins = (("bit model (p=9, parity)", model.config), ("byte-level model (p=8, 256-way)",
                                                            byte_level_config(model.config)))
        for name, config in twins:
            trainer = train_for(config, preset, args.minutes, corpus)
            t0 = time.perf_counter()
            r = evaluate_model(trainer.model, heldout, batch_size=args.batch_size)
            add(f"{name}, {args.minutes:g} min", r["bits_per_byte"], trainer.model.num_params(),
                f"{trainer.step} steps, {trainer.elapsed_s:.0f} s", r["parity_loss"] if config.parity else None,
                time.perf_counter() - t0)
        byte_bpb = rows[-1]["bits_per_byte"]

    classic = classic_bits_per_byte(heldout)
    for name, bpb in classic.items():
        add(name, bpb)
    bz2_bpb = classic["bz2 -9"]

    print(f"\nheld-out {corpus.name}, {len(heldout):,} bytes; bits per byte over the 8 data bits of every byte"
          + ("" if preset is None else f"; equal budget: preset {preset} schedule, {args.minutes:g} min each, "
                                       f"torch threads {args.threads}") + "\n")
    print("| model | parameters | training | held-out bits/byte | parity loss (bits) | × bz2 -9 | × byte model |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        params = DASH if row["params"] is None else f"{row['params']:,}"
        parity = DASH if row["parity_loss"] is None else f"{row['parity_loss']:.1e}"
        vs_byte = DASH if row["shipped"] or byte_bpb is None else f"{row['bits_per_byte'] / byte_bpb:.3f}"
        print(f"| {row['name']} | {params} | {row['training']} | {row['bits_per_byte']:.4f} | {parity} "
              f"| {row['bits_per_byte'] / bz2_bpb:.3f} | {vs_byte} |")
    if byte_bpb is not None:
        print("\n× byte model is left out for the shipped model: it was trained for longer than the byte-level "
              "model here, so the ratio would not be a like-for-like comparison.")
    print(machine_line() + " (end; over the core count means the runs shared the CPU)")
    return rows


if __name__ == "__main__":
    main()
