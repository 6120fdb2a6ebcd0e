"""Compression-aware training: the `Trainer`, its presets, checkpoints and the CLI.

Each step samples random windows of whole 9-bit frames from the training split. Per
sequence, with probability `direct_prob` the model reads the codec stream itself
(stream_type 1, the multi-task mode, its own `direct_loss`); otherwise, with probability
`compress_prob`, the window goes through `compress_bits` then `decompress_bits` (checked
lossless) before the model and is accounted to the compressed side, else to the raw side.
One forward serves all uncompressed-view sequences; per-sample `LossStats` split it into
`raw_*` and `compressed_*` metrics. A run folder holds `metrics.jsonl` (one row per log
step, SPEC §5 names), and the `last/` and `best/` checkpoints, each replaced atomically.

    python -m bitlm.train --corpus shakespeare --preset small --steps 5000 --out runs/x
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch.nn.utils.rnn import pad_sequence

from bitlm.codec import METHODS, CodecError, compress_batch, decompress_batch
from bitlm.data import BitDataset, Corpus, CorpusError, load_corpus, split_corpus
from bitlm.evaluate import evaluate_model
from bitlm.model import BitLMConfig, BitTransformerLM

STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = ("last", "best")


@dataclass
class TrainConfig:
    """Everything about a run except the model's shape (that is `BitLMConfig`).

    `steps` and `time_limit` (minutes of wall clock, `elapsed_s`) are totals for the run
    folder, so a resumed run continues towards the same targets; whichever comes first
    ends the run, and the cosine schedule reaches `min_lr` at that point. Warm-up is capped
    at 10 % of `steps` so that short runs still anneal. `out_dir=None` trains in memory
    without writing files.
    """
    corpus: str | list[str] = "pydoc"
    preset: str = "small"
    out_dir: str | None = None
    resume: str | None = None      # run folder to continue from (its last checkpoint)
    steps: int = 3000
    time_limit: float | None = None
    batch_size: int = 16
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 1337
    compress_prob: float = 0.5
    direct_prob: float = 0.0
    direct_weight: float = 1.0
    codec_method: str = "auto"
    val_fraction: float = 0.1
    log_every: int = 25
    eval_every: int = 250          # also the checkpoint interval; 0: only at the end
    eval_bytes: int = 16384

    def __post_init__(self) -> None:
        for name in ("compress_prob", "direct_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("steps", "batch_size", "log_every", "eval_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.eval_every < 0 or self.warmup_steps < 0:
            raise ValueError("eval_every and warmup_steps must be >= 0")
        if not 0.0 < self.min_lr <= self.lr:
            raise ValueError(f"need 0 < min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if self.time_limit is not None and self.time_limit <= 0:
            raise ValueError(f"time_limit must be a positive number of minutes, got {self.time_limit}")
        if self.codec_method not in METHODS:
            raise ValueError(f"codec_method must be one of {METHODS}, got {self.codec_method!r}")


PRESETS: dict[str, tuple[BitLMConfig, dict]] = {
    # Tests: a few thousand parameters, a few hundred steps in seconds.
    "tiny": (BitLMConfig(block_size=144, n_layer=1, n_head=2, n_embd=16),
             dict(steps=300, batch_size=16, lr=1e-2, min_lr=1e-3, warmup_steps=20,
                  log_every=10, eval_every=100, eval_bytes=2048)),
    # The app: useful within minutes on 2 CPU cores.
    "small": (BitLMConfig(block_size=1152, n_layer=4, n_head=4, n_embd=128),
              dict(steps=3000, batch_size=16, lr=2e-3, min_lr=2e-4, warmup_steps=100,
                   log_every=25, eval_every=250, eval_bytes=16384)),
    # The shipped model: 256-byte context, ~2.8M parameters, sized for a few CPU hours
    # (about compute-optimal for ~20M training bytes); use --time-limit to fit the budget.
    "base": (BitLMConfig(block_size=2304, n_layer=6, n_head=6, n_embd=192),
             dict(steps=20000, batch_size=16, lr=2e-3, min_lr=2e-4, warmup_steps=200,
                  log_every=50, eval_every=500, eval_bytes=65536)),
}


def make_configs(preset: str = "small", **overrides) -> tuple[BitLMConfig, TrainConfig]:
    """The model and training configs of a preset, with `TrainConfig` fields overridden.

    Raises: `ValueError` for an unknown preset or field.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    model_config, train_defaults = PRESETS[preset]
    return dataclasses.replace(model_config), TrainConfig(preset=preset, **{**train_defaults, **overrides})


@dataclass
class Batch:
    """One training batch after the per-sequence compression decisions."""
    bits: torch.Tensor | None       # (Bu, T) uncompressed views (raw, or compressed then decompressed)
    compressed: torch.Tensor        # (Bu,) bool: this row went through the codec
    original_bits: int              # summed length of the compressed rows
    stream_bits: int                # summed length of their codec streams
    direct: torch.Tensor | None     # (Bd, S) codec streams read as they are, right-padded
    direct_mask: torch.Tensor | None  # (Bd, S) bool: real stream bits


def prepare_batch(bits: torch.Tensor, compress_prob: float, direct_prob: float,
                  generator: torch.Generator | None = None, method: str = "auto",
                  max_stream_bits: int | None = None) -> Batch:
    """Decide per sequence: direct stream (p=direct_prob), else compressed (p=compress_prob), else raw.

    Takes: (B, T) 0/1 windows; `max_stream_bits` crops direct streams (the model's block size).
    Returns: a `Batch`. Compressed rows are the codec round trip of the original rows.
    Raises: `CodecError` if a round trip is not lossless.
    """
    u = torch.rand(bits.shape[0], 2, generator=generator)  # (B, 2)
    is_direct = u[:, 0] < direct_prob
    compressed = u[~is_direct, 1] < compress_prob
    view = bits[~is_direct]  # (Bu, T), a copy (boolean indexing)
    original_bits = stream_bits = 0
    if compressed.any():
        originals = view[compressed]
        streams = compress_batch(originals, method=method)
        restored = torch.stack(decompress_batch(streams))
        if not torch.equal(restored, originals):
            raise CodecError(f"codec round trip ({method}) was not lossless on a training sequence")
        view[compressed] = restored
        original_bits = originals.numel()
        stream_bits = sum(s.numel() for s in streams)
    direct = direct_mask = None
    if is_direct.any():
        streams = [s[:max_stream_bits] for s in compress_batch(bits[is_direct], method=method)]
        direct = pad_sequence(streams, batch_first=True)  # (Bd, S)
        lengths = torch.tensor([s.numel() for s in streams])
        direct_mask = torch.arange(direct.shape[1]) < lengths[:, None]  # (Bd, S)
    return Batch(view if view.shape[0] else None, compressed, original_bits, stream_bits, direct, direct_mask)


@dataclass
class _Side:
    """Sums of one side's per-sample loss stats over a log interval."""
    nll: float = 0.0
    bits: float = 0.0
    correct: float = 0.0
    samples: int = 0

    def add(self, stats, rows: torch.Tensor | slice = slice(None)) -> None:
        self.nll += stats.nll_bits[rows].sum().item()
        self.bits += stats.n_bits[rows].sum().item()
        self.correct += stats.correct[rows].sum().item()
        self.samples += stats.nll_bits[rows].numel()

    def metrics(self, prefix: str) -> dict:
        return {f"{prefix}_loss": _div(self.nll, self.bits), f"{prefix}_accuracy": _div(self.correct, self.bits),
                f"{prefix}_samples": self.samples}


@dataclass
class _Interval:
    """What happened since the last logged row."""
    raw: _Side = field(default_factory=_Side)
    compressed: _Side = field(default_factory=_Side)
    direct: _Side = field(default_factory=_Side)
    original_bits: int = 0
    stream_bits: int = 0
    loss: float = 0.0
    steps: int = 0
    data_bits: int = 0
    seconds: float = 0.0

    def row(self, step: int, lr: float, elapsed_s: float) -> dict:
        return {"step": step, "lr": lr, "elapsed_s": elapsed_s,
                "bits_per_s": _div(self.data_bits, self.seconds), "loss": _div(self.loss, self.steps),
                **self.raw.metrics("raw"), **self.compressed.metrics("compressed"),
                "compression_ratio": _div(self.original_bits, self.stream_bits),
                **self.direct.metrics("direct"),
                "val_bits_per_byte": math.nan, "val_loss": math.nan, "val_accuracy": math.nan,
                "val_parity_loss": math.nan}


def _div(a: float, b: float) -> float:
    return a / b if b else math.nan


# ---------------------------------------------------------------------------- checkpoints

def save_checkpoint(run_dir: str | Path, name: str, model: BitTransformerLM, state: dict) -> Path:
    """Write `run_dir/name/` (model via `save_pretrained` + `trainer_state.pt`) atomically.

    The checkpoint is written to `name.tmp/`, then swapped in: the old one becomes
    `name.old/`, `name.tmp/` becomes `name/`, `name.old/` is deleted. A crash at any point
    leaves a complete `name/` or `name.old/` (see `find_checkpoint`).
    Takes: `state` of tensors and plain Python values (loadable with `weights_only=True`).
    """
    run_dir = Path(run_dir)
    final, tmp, old = run_dir / name, run_dir / f"{name}.tmp", run_dir / f"{name}.old"
    if tmp.exists():  # left by a crash mid-write: never complete, never read
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    torch.save(state, tmp / STATE_FILE)  # written last: its presence marks a complete folder
    for f in tmp.iterdir():  # flush to disk before the rename makes the folder visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
    return final


def find_checkpoint(path: str | Path, names: Sequence[str] = ("last",)) -> Path:
    """The checkpoint folder to load from a run folder or a checkpoint folder.

    Takes: a checkpoint folder (has `config.json`) or a run folder, and the checkpoint
    names to try in order. For each name, `name/` is used, else `name.old/` (a crash
    between the two renames of `save_checkpoint`); `name.tmp/` is never used.
    Raises: `FileNotFoundError` saying what was looked for.
    """
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    for name in names:
        for candidate in (path / name, path / f"{name}.old"):
            if (candidate / STATE_FILE).is_file() and (candidate / "config.json").is_file():
                return candidate
    raise FileNotFoundError(
        f"{path}: no checkpoint found (looked for a config.json there and for {', '.join(names)} "
        "checkpoint folders of a run)"
    )


def load_trainer_state(checkpoint: str | Path) -> dict:
    """`trainer_state.pt` of a checkpoint folder (tensors and plain types only)."""
    return torch.load(Path(checkpoint) / STATE_FILE, weights_only=True)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Rows of a run folder's `metrics.jsonl` (empty if none); a torn last line from a kill is skipped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise
    return [{k: math.nan if v is None else v for k, v in r.items()} for r in rows]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _json_line(row: dict) -> str:
    # NaN is not JSON: write null, which pandas reads back as NaN.
    return json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}) + "\n"


# ---------------------------------------------------------------------------- trainer

class Trainer:
    """Trains a `BitTransformerLM`; used by the CLI and the app.

    Takes: the model config (ignored when `model` is given; taken from the checkpoint when
    `train_config.resume` is set), the `TrainConfig`, the corpus (a `Corpus`, or a name /
    path / list for `load_corpus`; default `train_config.corpus`), and optionally a model.
    `run()` trains, `stop()` (any thread) ends the run after the current step, `metrics`
    holds the logged rows. A row covers the steps since the previous one: `step`, `lr`,
    `elapsed_s` (total training wall time of the run), `bits_per_s` (window bits sampled per
    second of training steps), `loss` (the objective), `{raw,compressed,direct}_loss` (bits
    per bit), `_accuracy` and `_samples`, `compression_ratio` (original / stream bits of the
    compressed samples), and `val_bits_per_byte`, `val_loss`, `val_accuracy`,
    `val_parity_loss` on validation steps; NaN where a side had no samples or no validation ran.
    Raises: `CorpusError` / `ValueError` for bad data or configs, `FileNotFoundError` for a
    missing resume checkpoint.
    """

    def __init__(self, model_config: BitLMConfig | None = None, train_config: TrainConfig | None = None,
                 corpus: Corpus | str | Path | list | None = None, model: BitTransformerLM | None = None):
        tc = self.config = dataclasses.replace(train_config or TrainConfig())  # ours to fill in
        state = None
        if tc.resume:
            if model is not None:
                raise ValueError("pass either a model or resume=RUN_DIR, not both")
            checkpoint = find_checkpoint(tc.resume)
            model = BitTransformerLM.from_pretrained(checkpoint)
            if model_config is not None and model_config != model.config:
                raise ValueError(f"model_config differs from the checkpoint's in {checkpoint}; omit it to resume")
            state = load_trainer_state(checkpoint)
            if tc.out_dir is None:
                tc.out_dir = str(tc.resume)
        torch.manual_seed(tc.seed)
        if model is None:
            if model_config is None:
                raise ValueError("give a model_config, a model, or resume=RUN_DIR")
            model = BitTransformerLM(model_config)
        self.model = model
        self.block_bits = model.config.block_size

        if isinstance(corpus, Corpus):
            tc.corpus = corpus.name
        else:
            corpus = load_corpus(tc.corpus if corpus is None else corpus)
        train_texts, val_texts = split_corpus(corpus, tc.val_fraction)
        self.train_data = BitDataset(train_texts, parity=model.config.parity)
        self.val_data = b"".join(t.encode("utf-8") for t in val_texts)[:tc.eval_bytes]
        if not self.val_data:
            raise CorpusError(f"corpus {corpus.name!r}: the validation split is empty; use a longer text")

        decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=tc.lr, betas=(0.9, 0.99))
        self.generator = torch.Generator().manual_seed(tc.seed)
        self.step = 0
        self.elapsed_s = 0.0
        self.best_val = math.inf
        self.metrics: list[dict] = []
        self._stop = threading.Event()
        if state is not None:
            self._restore(state, tc.resume)
        if tc.out_dir:
            out = Path(tc.out_dir)
            if state is None and ((out / METRICS_FILE).exists() or any((out / n).exists() for n in CHECKPOINTS)):
                raise FileExistsError(f"{out} already holds a run; resume it (--resume {out}) or choose a new folder")
            out.mkdir(parents=True, exist_ok=True)
            _write_atomic(out / METRICS_FILE, "".join(_json_line(r) for r in self.metrics))
            _write_atomic(out / "train_config.json", json.dumps(dataclasses.asdict(tc), indent=2))

    @classmethod
    def from_run(cls, run_dir: str | Path, corpus: Corpus | str | Path | list | None = None,
                 **overrides) -> Trainer:
        """Continue a run folder: its saved `TrainConfig` with `overrides` (e.g. `steps`)."""
        saved = load_trainer_state(find_checkpoint(run_dir))["train_config"]
        tc = TrainConfig(**{**saved, "out_dir": str(run_dir), **overrides, "resume": str(run_dir)})
        return cls(None, tc, corpus)

    def _restore(self, state: dict, run_dir: str | Path) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.elapsed_s, self.best_val = state["step"], state["elapsed_s"], state["best_val"]
        # Rows logged after the checkpoint (a kill between them) belong to steps that will be redone.
        self.metrics = [r for r in read_metrics(run_dir) if r["step"] <= self.step]

    def _state(self) -> dict:
        return {"step": self.step, "elapsed_s": self.elapsed_s, "best_val": self.best_val,
                "optimizer": self.optimizer.state_dict(), "data_rng": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(), "train_config": dataclasses.asdict(self.config)}

    def stop(self) -> None:
        """Ask the run to end after the current step (thread-safe); it logs, validates and saves first."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """Whether `stop()` was called."""
        return self._stop.is_set()

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine from `lr` to `min_lr` at the end of the run (steps or time)."""
        tc = self.config
        warmup = min(tc.warmup_steps, tc.steps // 10)
        if step < warmup:
            return tc.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, tc.steps - warmup)
        if tc.time_limit is not None:
            progress = max(progress, self.elapsed_s / (tc.time_limit * 60))
        return tc.min_lr + 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * (tc.lr - tc.min_lr)

    def _done(self) -> bool:
        tc = self.config
        out_of_time = tc.time_limit is not None and self.elapsed_s >= tc.time_limit * 60
        return self.step >= tc.steps or self._stop.is_set() or out_of_time

    def _train_step(self, interval: _Interval) -> None:
        tc = self.config
        bits = self.train_data.sample(tc.batch_size, self.block_bits, self.generator)  # (B, T)
        batch = prepare_batch(bits, tc.compress_prob, tc.direct_prob, self.generator,
                              tc.codec_method, self.block_bits)
        loss = 0.0
        if batch.bits is not None:
            stats = self.model.loss(batch.bits, stream_type=0)
            loss = stats.loss
            interval.raw.add(stats, ~batch.compressed)
            interval.compressed.add(stats, batch.compressed)
        if batch.direct is not None:
            stats = self.model.loss(batch.direct, stream_type=1, mask=batch.direct_mask)
            loss = loss + tc.direct_weight * stats.loss
            interval.direct.add(stats)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.optimizer.step()
        interval.loss += loss.item()
        interval.steps += 1
        interval.data_bits += bits.numel()
        interval.original_bits += batch.original_bits
        interval.stream_bits += batch.stream_bits

    def validate(self) -> dict:
        """Validation metrics on the fixed first `eval_bytes` bytes of the validation split."""
        result = evaluate_model(self.model, self.val_data, batch_size=self.config.batch_size)
        return {f"val_{k}": result[k] for k in ("bits_per_byte", "loss", "accuracy", "parity_loss")}

    def _checkpoint(self, val_bpb: float) -> None:
        run_dir = self.config.out_dir
        improved = val_bpb < self.best_val
        if improved:
            self.best_val = val_bpb
        if run_dir:
            state = self._state()
            if improved:
                save_checkpoint(run_dir, "best", self.model, state)
            save_checkpoint(run_dir, "last", self.model, state)

    def _log(self, row: dict, on_log: Callable[[dict], None] | None) -> None:
        self.metrics.append(row)
        if self.config.out_dir:
            with open(Path(self.config.out_dir) / METRICS_FILE, "a", encoding="utf-8") as f:
                f.write(_json_line(row))
                f.flush()
        if on_log is not None:
            on_log(row)

    def run(self, on_log: Callable[[dict], None] | None = None,
            on_step: Callable[[int], None] | None = None) -> pd.DataFrame:
        """Train until `steps`, `time_limit` or `stop()`. The step that ends the run is logged,
        validated and checkpointed; a `stop()` from inside `on_log` still saves `last`.

        Takes: `on_log(row)`, called in this thread after each logged row (and its checkpoint),
        and `on_step(step)`, after every optimizer step (before its row, if any).
        Returns: all metrics rows of the run folder so far as a DataFrame.
        """
        tc = self.config
        self.model.train()
        interval = _Interval()
        start, elapsed0, saved_step = time.perf_counter(), self.elapsed_s, self.step
        while not self._done():
            t0 = time.perf_counter()
            lr = self.lr_at(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self._train_step(interval)
            self.step += 1
            interval.seconds += time.perf_counter() - t0
            self.elapsed_s = elapsed0 + time.perf_counter() - start
            if on_step is not None:
                on_step(self.step)
            evaluate = self._done() or (tc.eval_every > 0 and self.step % tc.eval_every == 0)
            if evaluate or self.step % tc.log_every == 0:
                row = interval.row(self.step, lr, self.elapsed_s)
                interval = _Interval()
                if evaluate:
                    row.update(self.validate())
                    self.model.train()
                    self._checkpoint(row["val_bits_per_byte"])
                    saved_step = self.step
                self._log(row, on_log)
        if self.step != saved_step and tc.out_dir:
            save_checkpoint(tc.out_dir, "last", self.model, self._state())
        return pd.DataFrame(self.metrics)


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
        line += f" | val bpb {f('val_bits_per_byte')}"
    return line + f" | lr {row['lr']:.2e} | {row['bits_per_s']:,.0f} bits/s"


# ---------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bitlm.train",
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
    return p


def main(argv: Sequence[str] | None = None) -> None:
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
        trainer = Trainer.from_run(resume, out_dir=out or resume, **overrides)
    else:
        if out is None:
            parser.error("--out RUN_DIR is required (or --resume RUN_DIR)")
        try:
            model_config, tc = make_configs(preset or "small", out_dir=out, **overrides)
        except ValueError as e:
            parser.error(str(e))
        trainer = Trainer(model_config, tc)
    tc = trainer.config
    tqdm.write(f"{tc.preset} model, {trainer.model.num_params():,} parameters, block {trainer.block_bits} bits; "
               f"corpus {tc.corpus}: {len(trainer.train_data):,} training bytes; run folder {tc.out_dir}")
    bar = tqdm(total=tc.steps, initial=trainer.step, unit="step", dynamic_ncols=True)

    def on_log(row: dict) -> None:
        bar.set_postfix(loss=f"{row['loss']:.4f}", bits_s=f"{row['bits_per_s']:,.0f}")
        tqdm.write(format_row(row))

    def on_interrupt(signum, frame) -> None:
        # First Ctrl-C: finish the step, validate and checkpoint; a second one aborts.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        tqdm.write("stopping after this step (Ctrl-C again to abort without a checkpoint)")
        trainer.stop()

    previous_handler = signal.signal(signal.SIGINT, on_interrupt)
    try:
        trainer.run(on_log=on_log, on_step=lambda step: bar.update(step - bar.n))
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        bar.close()
    final = trainer.metrics[-1] if trainer.metrics else None
    if final is not None:
        print(f"done at step {trainer.step}: val bits/byte {final['val_bits_per_byte']:.4f} "
              f"(best {trainer.best_val:.4f}), {trainer.elapsed_s / 60:.1f} min; checkpoints in {tc.out_dir}")


if __name__ == "__main__":
    main()
