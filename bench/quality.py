"""The shipped model's held-out quality: bits per byte beside what a user could pick instead and, at
equal budget, beside a plain byte-level transformer.

One run, on the held-out split of a corpus (the last 10 % of every document; for shakespeare the
last 10 % of every play, 505,739 bytes), prints one table:
  * the shipped model (--model, default assets/): bits per byte over the 8 data bits of every byte
    (the parity bit's loss reported apart), scored in non-overlapping windows of its block (what
    training's validation reports), in sliding windows of half a block (every byte after the first
    window sees at least half a block of context) and, for a v2 model, as one stream per lane with its
    attention window sliding (what generation and the neural codec see);
  * zlib -9, bz2 -9, lzma -9e, PPMd (order 16) and zpaq -m5 on the same bytes (`bench/compressors.py`;
    PPMd and zpaq when installed), alone and *given the training split* (size of train + held-out minus
    size of train alone: the fair comparison for a model trained on that split);
  * unless --skip-equal-budget, a side-by-side at equal budget: the shipped model's architecture (its
    config.json) and its byte-level twin (`bitlm.model.transformer.byte_level_config`: same global transformer over
    the same bytes of context, 256-row embedding and 256-way softmax), each trained from scratch for
    --minutes of wall clock by the same Trainer on the same windows of the training split (the same
    seed draws the same byte windows for both: checked by a digest of their first batches) with the
    schedule of the preset that config belongs to (no codec round trips, which cost time, not
    information), with --threads torch threads each, once per seed (--seeds), then scored on the same
    held-out bytes in non-overlapping windows. With --jobs 2 the twins of a seed train side by side
    in two processes, so load hits both alike. The spread over seeds is printed beside the mean.
Ratios are against bz2 -9 and the byte-level model of this run.

    python -m bench.quality                                  # shipped model in assets/, shakespeare
    python -m bench.quality --model runs/x --corpus pydoc --minutes 0.2 --threads 1
"""
import argparse
import hashlib
import multiprocessing
import os
import platform
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from bench import compressors
from bitlm.bits.frames import bits_to_bytes
from bitlm.train.data import Corpus, load_corpus, split_corpus
from bitlm.train.evaluate import evaluate_model, evaluate_stream
from bitlm.model.config import byte_level_config
from bitlm.model.config import BitLMConfig
from bitlm.model.transformer import BitTransformerLM
from bitlm.train.checkpoints import STATE_FILE, find_checkpoint, load_trainer_state
from bitlm.train.trainer import PRESETS, Trainer, make_configs

ROOT = Path(__file__).resolve().parent.parent

DASH = "—"


def machine_line() -> str:
    """Platform, cores, torch version and threads, and the 1-minute load average now."""
    cpu = " ".join(dict.fromkeys(filter(None, (platform.machine(), platform.processor()))))
    return (f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}")


def load_model_arg(ap: argparse.ArgumentParser, model: str) -> tuple[Path, BitTransformerLM]:
    """The checkpoint a benchmark's --model (or --baseline) names and its model: a save_pretrained
    folder, a run folder's best/ (else last/), or `git:REV`, the model shipped in assets/ at commit REV
    of this repository (e.g. the previous model, to compare with). A missing one ends the benchmark
    through `ap.error` with what to do."""
    if model.startswith("git:"):
        rev, folder = model[4:], Path(tempfile.mkdtemp(prefix="bitlm-"))
        for name in ("config.json", "model.safetensors"):
            shown = subprocess.run(["git", "show", f"{rev}:assets/{name}"], cwd=ROOT, capture_output=True)
            if shown.returncode:
                ap.error(f"{model}: git cannot show assets/{name} at {rev!r} ({shown.stderr.decode().strip()})")
            (folder / name).write_bytes(shown.stdout)
        return Path(model), BitTransformerLM.from_pretrained(folder)
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


DIGEST_BATCHES = 20      # batches whose byte windows the data digest covers


def train_for(config: BitLMConfig, preset: str, minutes: float, corpus: Corpus, seed: int = 1337) -> tuple[Trainer, list[str]]:
    """Train a fresh model of `config` in memory for `minutes` of wall clock, with the preset's
    schedule (cosine over the time budget) on the corpus's training split, data drawn from `seed`.
    Returns the Trainer and digests of the bytes of each of its first DIGEST_BATCHES batches (equal
    for twins that saw the same windows, whatever their bit framing)."""
    # eval_bytes: the Trainer's own end-of-run check only; the held-out scoring is the caller's
    _, train_config = make_configs(preset, steps=10**9, time_limit=minutes, compress_prob=0.0, eval_every=0,
                                   eval_bytes=4096, seed=seed)
    trainer = Trainer(config, train_config, corpus=corpus)
    digests: list[str] = []
    sample = trainer.train_data.sample

    def recorded(*args, **kwargs):
        bits = sample(*args, **kwargs)
        if len(digests) < DIGEST_BATCHES:
            digests.append(hashlib.sha256(b"".join(bits_to_bytes(row, parity=config.parity) for row in bits)).hexdigest())
        return bits
    trainer.train_data.sample = recorded
    trainer.run()
    return trainer, digests


def same_data(a: list[str], b: list[str]) -> bool:
    """Whether two runs' batch digests agree on every batch both drew (at least one)."""
    n = min(len(a), len(b))
    return n > 0 and a[:n] == b[:n]


def twin_run(config: dict, preset: str, minutes: float, corpus_name: str, seed: int, threads: int,
             max_bytes: int | None, batch_size: int) -> dict:
    """One equal-budget run (in this process or a worker): train, then score the held-out split.
    Returns bits_per_byte, parity_loss, params, steps, seconds, threads, minutes, seed, digests."""
    torch.set_num_threads(threads)
    config = BitLMConfig.from_dict(config)
    corpus = load_corpus(corpus_name)
    heldout = b"".join(t.encode("utf-8") for t in split_corpus(corpus)[1])[:max_bytes]
    trainer, digests = train_for(config, preset, minutes, corpus, seed)
    r = evaluate_model(trainer.model, heldout, batch_size=batch_size)
    return dict(bits_per_byte=r["bits_per_byte"], parity_loss=r["parity_loss"] if config.parity else None,
                params=trainer.model.num_params(), steps=trainer.step, seconds=trainer.elapsed_s,
                threads=torch.get_num_threads(), minutes=minutes, seed=seed, digests=digests)


def _twin_star(kwargs: dict) -> dict:
    return twin_run(**kwargs)


def equal_budget(config: BitLMConfig, preset: str, minutes: float, corpus_name: str, seeds: int, threads: int,
                 jobs: int, max_bytes: int | None, batch_size: int) -> dict[str, list[dict]]:
    """Runs of the bit model and its byte-level twin, one pair per seed (pairs side by side with jobs=2).
    Returns {"bit": [run per seed], "byte": [...]} (see `twin_run`)."""
    twins = {"bit": config, "byte": byte_level_config(config)}
    tasks = [dict(config=asdict(cfg), preset=preset, minutes=minutes, corpus_name=corpus_name, seed=1337 + i,
                  threads=threads, max_bytes=max_bytes, batch_size=batch_size)
             for i in range(seeds) for cfg in twins.values()]
    if jobs > 1:
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            results = pool.map(_twin_star, tasks, chunksize=1)
    else:
        results = [_twin_star(t) for t in tasks]
    return {"bit": results[0::2], "byte": results[1::2]}


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark and print its table. Returns the table's rows (for tests)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="assets", help="the shipped model: a save_pretrained folder or a run "
                    "folder (its best/, else last/ checkpoint) (default: assets)")
    ap.add_argument("--corpus", default="shakespeare", help="corpus name or path; its held-out split is scored "
                    "and its training split trains the equal-budget models (default: shakespeare)")
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget per equal-budget model "
                    "(default: 10)")
    ap.add_argument("--seeds", type=int, default=2, help="equal-budget runs per model, seeds 1337, 1338, ... "
                    "(default: 2)")
    ap.add_argument("--jobs", type=int, default=1, choices=(1, 2), help="2: train each seed's twins side by side "
                    "in two processes (default: 1, one after the other)")
    ap.add_argument("--skip-equal-budget", action="store_true", help="only the shipped model and the compressors")
    ap.add_argument("--skip-shipped", action="store_true", help="leave out the shipped model's own rows (e.g. to run "
                    "the equal-budget comparison apart); its config still sets the twins' architecture")
    ap.add_argument("--preset", choices=list(PRESETS), help="schedule of the equal-budget training (default: the "
                    "preset whose model config is the shipped model's)")
    ap.add_argument("--max-bytes", type=int, help="score only the first N held-out bytes (quick checks; the "
                    "reported figures use the whole split)")
    ap.add_argument("--batch-size", type=int, default=8, help="windows per evaluation forward pass (default: 8)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch threads, of the shipped model's scoring and of each equal-budget run "
                         "(default: torch's default, all cores)")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error(f"--seeds must be at least 1, got {args.seeds}")
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
    train_texts, val_texts = split_corpus(corpus)
    heldout = b"".join(t.encode("utf-8") for t in val_texts)[:args.max_bytes]
    train = b"".join(t.encode("utf-8") for t in train_texts)
    print(machine_line() + " (start)")
    print(f"corpus {corpus.name}: {corpus.n_bytes:,} bytes; held-out split (last 10 % of every document) "
          f"{len(heldout):,} bytes; shipped model {checkpoint} ({model.num_params():,} parameters, "
          f"block {model.config.block_size} bits)\n", flush=True)

    rows = []

    def add(name: str, bpb: float, params: int | None = None, training: str = DASH, parity_loss: float | None = None,
            seconds: float | None = None, is_shipped: bool = False, given_train: float | None = None,
            spread: str = DASH) -> None:
        rows.append(dict(name=name, bits_per_byte=bpb, params=params, training=training, parity_loss=parity_loss,
                         seconds=seconds, shipped=is_shipped, given_train=given_train, spread=spread))
        print(f"  {name}: {bpb:.4f} bits/byte" + ("" if given_train is None else f", {given_train:.4f} given the "
              "training split") + ("" if seconds is None else f" ({seconds:.0f} s)"), flush=True)

    half = model.config.block_size // 2
    for label, stride in (() if args.skip_shipped else
                          (("non-overlapping windows", None), (f"sliding windows, stride {half} bits", half))):
        t0 = time.perf_counter()
        r = evaluate_model(model, heldout, batch_size=args.batch_size, stride_bits=stride)
        add(f"shipped bit model, {label}", r["bits_per_byte"], model.num_params(), shipped_training,
            r["parity_loss"], time.perf_counter() - t0, is_shipped=True)
    if not args.skip_shipped and model.config.pos != "learned" and model.config.local == "factorized":
        t0 = time.perf_counter()
        r = evaluate_stream(model, heldout)
        add("shipped bit model, streaming (window slides, 16 lanes)", r["bits_per_byte"], model.num_params(),
            shipped_training, r["parity_loss"], time.perf_counter() - t0, is_shipped=True)

    byte_bpb = None
    if not args.skip_equal_budget:
        runs = equal_budget(model.config, preset, args.minutes, args.corpus, args.seeds, args.threads, args.jobs,
                            args.max_bytes, args.batch_size)
        for bit, byte in zip(runs["bit"], runs["byte"]):
            if not same_data(bit["digests"], byte["digests"]):
                raise RuntimeError(f"the equal-budget twins of seed {bit['seed']} saw different training data")
        digests = [runs["bit"][0]["digests"][0][:16]]
        for side, name in (("bit", "bit model (p=9, parity)"), ("byte", "byte-level model (p=8, 256-way)")):
            bpbs = [r["bits_per_byte"] for r in runs[side]]
            for r in runs[side]:
                add(f"{name}, {args.minutes:g} min, seed {r['seed']}", r["bits_per_byte"], r["params"],
                    f"{r['steps']} steps, {r['seconds']:.0f} s, {r['threads']} thread(s)", r["parity_loss"])
            spread = f"± {(max(bpbs) - min(bpbs)) / 2:.4f} (half range)" if len(bpbs) > 1 else DASH
            add(f"{name}, {args.minutes:g} min, mean of {len(bpbs)}", statistics.fmean(bpbs), runs[side][0]["params"],
                f"{statistics.fmean(r['steps'] for r in runs[side]):.0f} steps on average", spread=spread)
        byte_bpb = rows[-1]["bits_per_byte"]

    t0 = time.perf_counter()
    classic = compressors.bits_per_byte(heldout, train)
    for name, bpb in classic.items():
        add(name, bpb["alone"], given_train=bpb["given_train"])
    print(f"  (compressors: {time.perf_counter() - t0:.0f} s" + (f"; not installed: {', '.join(compressors.missing())}"
                                                                  if compressors.missing() else "") + ")")
    bz2_bpb = classic["bz2 -9"]["alone"]

    print(f"\nheld-out {corpus.name}, {len(heldout):,} bytes; bits per byte over the 8 data bits of every byte"
          + ("" if preset is None else f"; equal budget: preset {preset} schedule, {args.minutes:g} min each, "
                                       f"torch threads {args.threads}, same data (first batch digest {digests.pop()})") + "\n")
    print("| model | parameters | training | held-out bits/byte | given the training split | spread over seeds "
          "| parity loss (bits) | × bz2 -9 | × byte model |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        params = DASH if row["params"] is None else f"{row['params']:,}"
        parity = DASH if row["parity_loss"] is None else f"{row['parity_loss']:.1e}"
        given = DASH if row["given_train"] is None else f"{row['given_train']:.4f}"
        if row["shipped"]:
            given = f"{row['bits_per_byte']:.4f} (trained on it)"
        vs_byte = DASH if row["shipped"] or byte_bpb is None else f"{row['bits_per_byte'] / byte_bpb:.3f}"
        print(f"| {row['name']} | {params} | {row['training']} | {row['bits_per_byte']:.4f} | {given} | {row['spread']} "
              f"| {parity} | {row['bits_per_byte'] / bz2_bpb:.3f} | {vs_byte} |")
    if byte_bpb is not None:
        print("\n× byte model is left out for the shipped model: it was trained for longer than the byte-level "
              "model here, so the ratio would not be a like-for-like comparison.")
    print(machine_line() + " (end; over the core count means the runs shared the CPU)")
    return rows


if __name__ == "__main__":
    main()
