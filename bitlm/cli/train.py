"""The training command line, `python -m bitlm.cli.train` (also under torchrun): flags over the preset's
defaults (or a resumed run's saved config), a progress bar, one readable line per metrics row, and
Ctrl-C that finishes the step, validates and checkpoints before it stops (a second Ctrl-C aborts).
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Sequence

import torch

from bitlm.train import distributed
from bitlm.bits.codec import METHODS
from bitlm.train.distributed import DistributedError
from bitlm.train.trainer import PRESETS, Trainer, make_configs


def format_row(row: dict) -> str:
    """One readable line for a metrics row (the CLI prints it beside the progress bar)."""
    def f(key: str, fmt: str = ".4f") -> str:
        v = row.get(key, math.nan)
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)
    line = (f"step {row['step']:>6} | raw loss {f('raw_loss')} acc {f('raw_accuracy', '.3f')}"
            f" | compressed loss {f('compressed_loss')} acc {f('compressed_accuracy', '.3f')}"
            f" ratio {f('compression_ratio', '.3f')}")
    if row.get("direct_samples"):
        line += f" | direct loss {f('direct_loss')} acc {f('direct_accuracy', '.3f')}"
    if not math.isnan(row.get("val_bits_per_byte", math.nan)):
        line += f" | val bpb {f('val_bits_per_byte')} K {f('val_K', '.3f')} C {f('val_C', '.3f')} S {f('val_S', '.3f')}"
    line += f" | lr {row['lr']:.2e} | {row['bits_per_s']:,.0f} bits/s"
    return line + (f"\n  ALERT {row['telemetry_alert']}" if row.get("telemetry_alert") else "")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bitlm.cli.train",
        description="Train a BitTransformerLM with compression-aware batches. Defaults for training "
                    "flags come from the preset; when resuming, from the run's saved config.",
        epilog="presets: " + "; ".join(
            f"{name}: {m.n_layer} layers x {m.n_embd} wide, block {m.block_size} bits, "
            + ", ".join(f"{k}={v}" for k, v in d.items()) for name, (m, d) in PRESETS.items()))
    p.add_argument("--corpus", nargs="+", help="'pydoc', 'shakespeare', a UTF-8 text file, several files, "
                   "or a folder of .txt files (default: pydoc)")
    p.add_argument("--preset", choices=list(PRESETS), help="model size and training defaults: "
                   "tiny (tests, seconds), small (minutes on a CPU), base (the shipped model) (default: small)")
    p.add_argument("--out", help="run folder for metrics.jsonl and the last/ and best/ checkpoints "
                   "(required unless --resume, which defaults to the resumed folder)")
    p.add_argument("--resume", metavar="RUN", help="continue a run folder from its last checkpoint "
                   "(step count, optimizer and RNG state restored)")
    p.add_argument("--steps", type=int, help="total optimizer steps of the run")
    p.add_argument("--time-limit", type=float, metavar="MIN", dest="time_limit",
                   help="stop after this many minutes of total training time (the LR schedule "
                        "finishes at whichever of --steps and --time-limit comes first)")
    p.add_argument("--compress-prob", type=float, dest="compress_prob",
                   help="probability that a sequence is compressed then decompressed before the model "
                        "(logged as compressed_*) (default: 0.5)")
    p.add_argument("--direct-prob", type=float, dest="direct_prob",
                   help="multi-task mode: probability that the model reads a sequence's compressed "
                        "stream itself (logged as direct_*) (default: 0)")
    p.add_argument("--direct-weight", type=float, dest="direct_weight",
                   help="weight of the direct-stream loss in the objective (default: 1)")
    p.add_argument("--codec-method", choices=list(METHODS), dest="codec_method",
                   help="codec method for compressed and direct sequences (default: auto)")
    p.add_argument("--batch-size", type=int, dest="batch_size", help="sequences per step")
    p.add_argument("--lr", type=float, help="peak learning rate (AdamW)")
    p.add_argument("--min-lr", type=float, dest="min_lr", help="learning rate at the end of the cosine")
    p.add_argument("--warmup-steps", type=int, dest="warmup_steps", help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, dest="weight_decay", help="AdamW weight decay (matrices only)")
    p.add_argument("--grad-clip", type=float, dest="grad_clip", help="gradient norm clip (0: off)")
    p.add_argument("--seed", type=int, help="seed for initialisation, batches and compression choices")
    p.add_argument("--log-every", type=int, dest="log_every", help="steps between metrics rows")
    p.add_argument("--eval-every", type=int, dest="eval_every",
                   help="steps between validations and checkpoints (0: only at the end)")
    p.add_argument("--eval-bytes", type=int, dest="eval_bytes",
                   help="size of the fixed validation slice (first bytes of the validation split)")
    p.add_argument("--val-fraction", type=float, dest="val_fraction",
                   help="held-out tail of every document (default: 0.1)")
    p.add_argument("--device", help="auto (a CUDA GPU when PyTorch sees one, else the CPU), cpu, cuda "
                   "(under torchrun: GPU LOCAL_RANK) or cuda:N (default: auto)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction,
                   help="run the forward pass under bf16 autocast (GPUs, and CPUs with AMX, where it "
                        "is ~1.4-1.6x faster; elsewhere on a CPU it is usually slower) (default: off)")
    p.add_argument("--drift-alert", type=float, dest="drift_alert", metavar="CHANGE",
                   help="alert when a validation's K, C or S moved by more than this since the previous one "
                        "(default: 0.05)")
    p.add_argument("--dist-timeout", type=float, dest="dist_timeout", metavar="SECONDS",
                   help="under torchrun: how long a process waits for the others (to start, or at any "
                        f"step) before the run ends with an error (default: {distributed.DEFAULT_TIMEOUT_S:.0f})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; under torchrun, every process runs it and rank 0 alone prints and writes files.
    Returns 0; a failure of the other processes ends it with a one-line error and exit status 1."""
    try:
        _main(argv)
        return 0
    except DistributedError as e:
        # The group is broken: a peer is dead or hung with collectives still queued in gloo's threads,
        # and leaving it or running its destructors can block or abort (SIGABRT). Every file this rank
        # writes is complete by now (checkpoints are renamed into place, metrics rows are closed),
        # so report and leave at once without them.
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    finally:
        distributed.teardown()


def _main(argv: Sequence[str] | None) -> None:
    from tqdm import tqdm

    parser = build_parser()
    args = vars(parser.parse_args(argv))
    resume, preset, out = args.pop("resume"), args.pop("preset"), args.pop("out")
    corpus = args.pop("corpus")
    overrides = {k: v for k, v in args.items() if v is not None}
    if corpus is not None:
        overrides["corpus"] = corpus[0] if len(corpus) == 1 else corpus
    if resume:
        if preset is not None:
            parser.error("--preset cannot change a resumed run's model")
        try:
            trainer = Trainer.from_run(resume, out_dir=out or resume, **overrides)
        except ValueError as e:  # bad flags, corpus or device (CorpusError is a ValueError)
            parser.error(str(e))
    else:
        if out is None:
            parser.error("--out RUN_DIR is required (or --resume RUN_DIR)")
        try:
            trainer = Trainer(*make_configs(preset or "small", out_dir=out, **overrides))
        except ValueError as e:
            parser.error(str(e))
    tc, ctx = trainer.config, trainer.dist
    torch.manual_seed(tc.seed)  # dropout, if a config uses it, draws from the process RNG, which the CLI owns
    where = f"{ctx.world_size} processes on {ctx.device.type}" if ctx.distributed else str(ctx.device)
    if ctx.is_main:
        tqdm.write(f"{tc.preset} model, {trainer.model.num_params():,} parameters, block {trainer.block_bits} bits; "
                   f"corpus {tc.corpus}: {len(trainer.train_data):,} training bytes; {where}"
                   f"{', bf16 autocast' if tc.amp else ''}; run folder {tc.out_dir}")
    bar = tqdm(total=tc.steps, initial=trainer.step, unit="step", dynamic_ncols=True, disable=not ctx.is_main)

    def on_log(row: dict) -> None:
        if ctx.is_main:
            bar.set_postfix(loss=f"{row['loss']:.4f}", bits_s=f"{row['bits_per_s']:,.0f}")
            tqdm.write(format_row(row))

    def on_interrupt(signum, frame) -> None:
        # First Ctrl-C: finish the step, validate and checkpoint; a second one aborts.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if ctx.is_main:
            tqdm.write("stopping after this step (Ctrl-C again to abort without a checkpoint)")
        trainer.stop()

    previous_handler = signal.signal(signal.SIGINT, on_interrupt)
    try:
        trainer.run(on_log=on_log, on_step=lambda step: bar.update(step - bar.n))
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        bar.close()
    final = trainer.metrics[-1] if trainer.metrics else None
    if final is not None and ctx.is_main:
        print(f"done at step {trainer.step}: val bits/byte {final['val_bits_per_byte']:.4f} "
              f"(best {trainer.best_val:.4f}), {trainer.elapsed_s / 60:.1f} min; checkpoints in {tc.out_dir}")


if __name__ == "__main__":
    sys.exit(main())
