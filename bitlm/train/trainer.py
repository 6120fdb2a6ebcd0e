"""Compression-aware training: the `Trainer` and its presets (run folders on disk: `bitlm.train.checkpoints`;
the command line, `python -m bitlm.cli.train`: `bitlm.cli.train`).

Each step samples random windows of whole 9-bit frames from the training split. Per
sequence, with probability `direct_prob` the model reads the codec stream itself
(stream_type 1, the multi-task mode, its own `direct_loss`); otherwise, with probability
`compress_prob`, the window goes through `compress_bits` then `decompress_bits` (checked
lossless) before the model and is accounted to the compressed side, else to the raw side.
One forward serves all uncompressed-view sequences; per-sample `LossStats` split it into
`raw_*` and `compressed_*` metrics. A run folder holds `metrics.jsonl` (one row per log
step, SPEC §5 names), and the `last/` and `best/` checkpoints, each replaced atomically.
The same loop runs on a CUDA GPU (`--device`, bf16 autocast with `--amp`) and under torchrun
(`bitlm.train.distributed`): every rank draws the same global batch and its compression decisions
from the shared seed and trains on its slice of rows, so N ranks compute what one process
would on the whole batch; DDP averages the gradients and only rank 0 writes files.

    python -m bitlm.cli.train --corpus shakespeare --preset small --steps 5000 --out runs/x
    torchrun --nproc_per_node 4 -m bitlm.cli.train --corpus shakespeare --preset base --out runs/y
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch.nn.utils.rnn import pad_sequence

from bitlm.train import distributed
from bitlm.train.checkpoints import (
    METRICS_FILE, find_checkpoint, json_line, load_trainer_state, read_metrics, save_checkpoint, write_atomic,
)
from bitlm.bits.codec import METHODS, CodecError, compress_batch, decompress_batch
from bitlm.train.data import BitDataset, Corpus, CorpusError, load_corpus, split_corpus
from bitlm.train.distributed import DistContext
from bitlm.train.evaluate import evaluate_model
from bitlm.model.config import BitLMConfig
from bitlm.model.transformer import BitTransformerLM, LossStats

CHECKPOINTS = ("last", "best")


@dataclass
class TrainConfig:
    """Everything about a run except the model's shape (that is `BitLMConfig`).

    `steps` and `time_limit` are totals for the run folder, so a resumed run continues towards the same
    targets; whichever comes first ends the run, and the cosine schedule reaches `min_lr` at that point.
    Each validation also logs K, C and S of the first validation batch (`val_K`: negentropy of the
    predictions, `val_C`: LZ complexity of the model's most likely bits, `val_S`: symbiosis).
    """
    corpus: str | list[str] = "pydoc"  # a built-in corpus name ("pydoc", "shakespeare"), a text file, files or a folder
    preset: str = "small"          # a PRESETS name: the model's shape and this config's defaults
    out_dir: str | None = None     # run folder (checkpoints, metrics.jsonl); None trains in memory, writing nothing
    resume: str | None = None      # run folder to continue from (its last checkpoint)
    steps: int = 3000              # optimizer steps in all, the resumed ones included
    time_limit: float | None = None  # minutes of wall clock in all (`elapsed_s`); None: no limit
    batch_size: int = 16           # the global batch: under torchrun each of N processes takes batch_size / N
    lr: float = 2e-3               # peak learning rate, after warm-up
    min_lr: float = 2e-4           # where the cosine ends
    warmup_steps: int = 100        # linear warm-up, capped at 10 % of `steps` so that short runs still anneal
    weight_decay: float = 0.1      # AdamW's, on weights of 2 or more dimensions only
    grad_clip: float = 1.0         # global gradient-norm clip
    seed: int = 1337               # data order, compression choices and initialisation
    compress_prob: float = 0.5     # share of sequences compressed and decompressed before the model (checked lossless)
    direct_prob: float = 0.0       # share of sequences the model also reads as their compressed stream (multi-task)
    direct_weight: float = 1.0     # weight of that direct loss in the total
    codec_method: str = "auto"     # the bit codec's method for compressed and direct sequences
    val_fraction: float = 0.1      # held-out tail of every document
    log_every: int = 25            # steps between metrics rows
    eval_every: int = 250          # also the checkpoint interval; 0: only at the end
    eval_bytes: int = 16384        # size of the fixed validation slice
    device: str | None = None      # None/"auto" (this rank's GPU if there is one), "cpu", "cuda" or "cuda:N"
    amp: bool = False              # the forward under bf16 autocast
    dist_timeout: float = distributed.DEFAULT_TIMEOUT_S  # seconds any wait on the other processes may take
    drift_alert: float = 0.05      # a validation's K, C or S moving more than this raises a telemetry_alert

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
        if not self.drift_alert > 0:
            raise ValueError(f"drift_alert must be a positive change in K, C or S, got {self.drift_alert}")
        if self.dist_timeout <= 0:
            raise ValueError(f"dist_timeout must be a positive number of seconds, got {self.dist_timeout}")
        if self.device not in (None, "auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
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
    # The shipped model (v2): ALiBi over a 256-byte window that slides, 6 layers x 256 wide (~4.8M
    # parameters), light dropout for the ~7 passes over the training split that a 100-minute
    # one-thread CPU budget allows with bf16 autocast (AMX); use --time-limit to fit the budget.
    "base": (BitLMConfig(block_size=2304, n_layer=6, n_head=8, n_embd=256, dropout=0.05),
             dict(steps=20000, batch_size=16, lr=1.5e-3, min_lr=1e-4, warmup_steps=300,
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
                  max_stream_bits: int | None = None, rows: slice = slice(None)) -> Batch:
    """Decide per sequence: direct stream (p=direct_prob), else compressed (p=compress_prob), else raw.

    Takes: (B, T) 0/1 windows; `max_stream_bits` crops direct streams (the model's block size);
    `rows`, the rows to keep (a rank's share). The decisions are drawn for all B rows first, so a
    row's fate and the generator's state do not depend on how the batch is shared out.
    Returns: a `Batch` of the kept rows. Compressed rows are the codec round trip of the originals.
    Raises: `CodecError` if a round trip is not lossless.
    """
    u = torch.rand(bits.shape[0], 2, generator=generator)[rows]  # (B', 2)
    bits = bits[rows]
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


_SIDES = ("raw", "compressed", "direct")


class _Interval:
    """What this rank saw since the last logged row. Loss sums stay on the training device (no
    host sync per step) and counts on the host; `row()` sums both over the ranks in one
    all-reduce, so a row describes the global batch."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(len(_SIDES), 3, dtype=torch.float64, device=device)  # (side, nll/bits/correct)
        self.loss = torch.zeros((), dtype=torch.float64, device=device)  # this rank's share of the objective
        self.counts = torch.zeros(len(_SIDES) + 2, dtype=torch.float64)  # samples per side, original, stream bits
        self.steps = 0
        self.data_bits = 0   # window bits of the global batches
        self.seconds = 0.0

    def add(self, side: str, stats: LossStats, rows: torch.Tensor | slice = slice(None)) -> None:
        if isinstance(rows, torch.Tensor):
            n, rows = int(rows.sum()), rows.to(stats.nll_bits.device)
        else:
            n = stats.nll_bits[rows].numel()
        i = _SIDES.index(side)
        self.sums[i] += torch.stack([s[rows].sum().double() for s in (stats.nll_bits, stats.n_bits, stats.correct)])
        self.counts[i] += n

    def row(self, step: int, lr: float, elapsed_s: float, ctx: DistContext) -> dict:
        local = torch.cat([self.sums.flatten(), self.loss.view(1), self.counts.to(self.sums.device)])
        t = ctx.all_reduce(local, what=f"summing the metrics of step {step}").tolist()
        sums, loss, samples, (original, stream) = t[:9], t[9], t[10:13], t[13:]
        sides = {}
        for i, side in enumerate(_SIDES):
            nll, bits, correct = sums[3 * i:3 * i + 3]
            sides[side] = {f"{side}_loss": _div(nll, bits), f"{side}_accuracy": _div(correct, bits),
                           f"{side}_samples": int(samples[i])}
        # Each rank's loss is its share times world_size (DDP averages): the global loss is the mean.
        return {"step": step, "lr": lr, "elapsed_s": elapsed_s,
                "bits_per_s": _div(self.data_bits, self.seconds), "loss": _div(loss / ctx.world_size, self.steps),
                **sides["raw"], **sides["compressed"], "compression_ratio": _div(original, stream),
                **sides["direct"],
                "val_bits_per_byte": math.nan, "val_loss": math.nan, "val_accuracy": math.nan,
                "val_parity_loss": math.nan, "val_K": math.nan, "val_C": math.nan, "val_S": math.nan,
                "telemetry_alert": ""}


class _Objective(torch.nn.Module):
    """The loss of one step as a single `forward`, so DistributedDataParallel (whose hooks wrap
    `forward`) sees every use of the weights: the uncompressed views and the direct streams."""

    def __init__(self, model: BitTransformerLM, direct_weight: float):
        super().__init__()
        self.model = model
        self.direct_weight = direct_weight

    def forward(self, views: torch.Tensor | None, direct: torch.Tensor | None, direct_mask: torch.Tensor | None,
                view_scale: float, direct_scale: float) -> tuple[torch.Tensor, LossStats | None, LossStats | None]:
        loss, view_stats, direct_stats = 0.0, None, None
        if views is not None:
            view_stats = self.model.loss(views, stream_type=0)
            loss = view_stats.loss * view_scale
        if direct is not None:
            direct_stats = self.model.loss(direct, stream_type=1, mask=direct_mask)
            loss = loss + self.direct_weight * (direct_stats.loss * direct_scale)
        return loss, view_stats, direct_stats


def _div(a: float, b: float) -> float:
    return a / b if b else math.nan


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
    Under torchrun (or a process group the caller initialised) the Trainer joins the group
    (`bitlm.train.distributed.setup`): rows then describe the global batch on every rank, validation
    is shared out across ranks, a `stop()` on any rank stops all of them at the same step, and
    only rank 0 writes files; the caller leaves the group (`bitlm.train.distributed.teardown`).
    Raises: `CorpusError` / `ValueError` for bad data or configs, `FileNotFoundError` for a
    missing resume checkpoint, `DistributedError` when the other processes fail.
    """

    def __init__(self, model_config: BitLMConfig | None = None, train_config: TrainConfig | None = None,
                 corpus: Corpus | str | Path | list | None = None, model: BitTransformerLM | None = None):
        tc = self.config = dataclasses.replace(train_config or TrainConfig())  # ours to fill in
        ctx = self.dist = distributed.setup(tc.device, tc.dist_timeout)
        ctx.rows(tc.batch_size)  # fail now if there are more processes than sequences per step
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
        if model is None:
            if model_config is None:
                raise ValueError("give a model_config, a model, or resume=RUN_DIR")
            # Seeded initialisation without reseeding the process-wide RNG the app's other threads use.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(tc.seed)
                model = BitTransformerLM(model_config)
        self.model = model.to(ctx.device)
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
        self._objective = ctx.wrap(_Objective(model, tc.direct_weight))
        self.generator = torch.Generator().manual_seed(tc.seed)  # the same on every rank: one global batch
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
            ctx.barrier("checking the run folder")  # every rank looked before rank 0 writes
            if ctx.is_main:
                out.mkdir(parents=True, exist_ok=True)
                write_atomic(out / METRICS_FILE, "".join(json_line(r) for r in self.metrics))
                write_atomic(out / "train_config.json", json.dumps(dataclasses.asdict(tc), indent=2))

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
        """Ask the run to end after the current step (thread-safe); it logs, validates and saves first.
        In a multi-process run, all ranks end after the same step."""
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

    def _agree_done(self) -> bool:
        """`_done()` agreed by all ranks: any rank's stop or time-out ends the run for all, and every
        rank adopts the latest clock so that the time-based learning rate stays identical."""
        if not self.dist.distributed:
            return self._done()
        done, self.elapsed_s = self.dist.all_reduce(
            torch.tensor([float(self._done()), self.elapsed_s], dtype=torch.float64), op="max",
            what=f"agreeing whether to stop after step {self.step}").tolist()
        return done > 0

    def _train_step(self, interval: _Interval) -> None:
        tc, ctx = self.config, self.dist
        bits = self.train_data.sample(tc.batch_size, self.block_bits, self.generator)  # (B, T) global batch
        batch = prepare_batch(bits, tc.compress_prob, tc.direct_prob, self.generator,
                              tc.codec_method, self.block_bits, rows=ctx.rows(tc.batch_size))
        # model.loss is a mean over this rank's bits; DDP averages over ranks. Scaling each rank's
        # mean by world_size * its share of the global bits makes that average the mean over the
        # global batch, i.e. exactly the single-process objective (the scales are 1 in one process).
        local = torch.tensor([0 if batch.bits is None else batch.bits.numel(),
                              0 if batch.direct is None else int(batch.direct_mask.sum())], dtype=torch.float64)
        total = ctx.all_reduce(local, what=f"counting the bits of step {self.step + 1}").cpu()
        view_scale, direct_scale = (local * ctx.world_size / total.clamp(min=1)).tolist()
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=tc.amp):
            loss, views, direct = self._objective(batch.bits, batch.direct, batch.direct_mask,
                                                  view_scale, direct_scale)
        if views is not None:
            interval.add("raw", views, ~batch.compressed)
            interval.add("compressed", views, batch.compressed)
        if direct is not None:
            interval.add("direct", direct)
        self.optimizer.zero_grad(set_to_none=True)
        with ctx.guard(f"averaging the gradients of step {self.step + 1}"):
            loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.optimizer.step()
        interval.loss += loss.detach().double()
        interval.steps += 1
        interval.data_bits += bits.numel()
        interval.counts[len(_SIDES):] += torch.tensor([batch.original_bits, batch.stream_bits])

    def validate(self) -> dict:
        """Validation metrics on the fixed first `eval_bytes` bytes of the validation split.

        With several ranks, each scores a contiguous share of the evaluation windows (cut at
        window boundaries, so the windows are those of one process) and the sums are added up.
        """
        keys = ("bits_per_byte", "loss", "accuracy", "parity_loss")
        ctx, batch_size = self.dist, self.config.batch_size
        if not ctx.distributed:
            result = evaluate_model(self.model, self.val_data, batch_size=batch_size)
            return {f"val_{k}": result[k] for k in keys}
        window = self.block_bits // self.train_data.frame  # bytes per evaluation window
        n_windows = -(-len(self.val_data) // window)
        share = self.val_data[n_windows * ctx.rank // ctx.world_size * window:
                              n_windows * (ctx.rank + 1) // ctx.world_size * window]
        sums = torch.zeros(6, dtype=torch.float64)
        if share:
            r = evaluate_model(self.model, share, batch_size=batch_size)
            # evaluate_model returns means; times their counts they are sums again.
            parity = 0.0 if math.isnan(r["parity_loss"]) else r["parity_loss"] * r["n_bytes"]
            sums = torch.tensor([r["bits_per_byte"] * r["n_bytes"], r["loss"] * r["n_bits"],
                                 r["accuracy"] * r["n_bits"], parity, r["n_bytes"], r["n_bits"]], dtype=torch.float64)
        data_nll, nll, correct, parity, n_bytes, n_bits = ctx.all_reduce(
            sums, what=f"summing the validation of step {self.step}").tolist()
        return {"val_bits_per_byte": data_nll / n_bytes, "val_loss": nll / n_bits, "val_accuracy": correct / n_bits,
                "val_parity_loss": parity / n_bytes if self.model.config.parity else math.nan}

    def validation_telemetry(self) -> dict:
        """K, C and S (`bitlm.model.telemetry`) of the model on the first validation batch: `val_K` (K_pred,
        how certain its predictions are), `val_C` (C_pred, novelty of its most likely bits) and
        `val_S` (symbiosis with the text). The same batch every time, so a change is the model's."""
        window = self.block_bits // self.train_data.frame
        data = self.val_data[:window * self.config.batch_size]
        rows = BitDataset([data], parity=self.model.config.parity).iter_windows(self.block_bits, self.config.batch_size)
        self.model.eval()
        with torch.no_grad():
            _, tel = self.model(next(iter(rows)), telemetry=True)
        return {"val_K": tel.K_pred, "val_C": tel.C_pred, "val_S": tel.S}

    def drift(self, row: dict) -> str:
        """A one-line alert when K, C or S moved by more than `drift_alert` since the previous
        validation in this run's metrics ("" when none did)."""
        previous = next((r for r in reversed(self.metrics) if not math.isnan(r.get("val_S", math.nan))), None)
        if previous is None:
            return ""
        moved = [f"{k[4:]} {previous[k]:.3f} → {row[k]:.3f}" for k in ("val_K", "val_C", "val_S")
                 if abs(row[k] - previous[k]) > self.config.drift_alert]
        return f"telemetry drift since step {previous['step']}: {', '.join(moved)}" if moved else ""

    def _checkpoint(self, val_bpb: float) -> None:
        run_dir = self.config.out_dir
        improved = val_bpb < self.best_val
        if improved:
            self.best_val = val_bpb
        if run_dir and self.dist.is_main:
            state = self._state()
            if improved:
                save_checkpoint(run_dir, "best", self.model, state)
            save_checkpoint(run_dir, "last", self.model, state)

    def _log(self, row: dict, on_log: Callable[[dict], None] | None) -> None:
        self.metrics.append(row)
        if self.config.out_dir and self.dist.is_main:
            with open(Path(self.config.out_dir) / METRICS_FILE, "a", encoding="utf-8") as f:
                f.write(json_line(row))
                f.flush()
        if on_log is not None:
            on_log(row)

    def run(self, on_log: Callable[[dict], None] | None = None,
            on_step: Callable[[int], None] | None = None) -> pd.DataFrame:
        """Train until `steps`, `time_limit` or `stop()`. The step that ends the run is logged,
        validated and checkpointed; a `stop()` from inside `on_log` still saves `last`.

        Takes: `on_log(row)`, called in this thread after each logged row (and its checkpoint),
        and `on_step(step)`, after every optimizer step (before its row, if any); on every rank.
        Returns: all metrics rows of the run folder so far as a DataFrame.
        Raises: `DistributedError` when another rank fails (this rank's files stay as they were
        after the last complete checkpoint).
        """
        tc, ctx = self.config, self.dist
        self.model.train()
        interval = _Interval(ctx.device)
        start, elapsed0, saved_step = time.perf_counter(), self.elapsed_s, self.step
        done = self._agree_done()
        while not done:
            t0 = time.perf_counter()
            lr = self.lr_at(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self._train_step(interval)
            self.step += 1
            self.elapsed_s = elapsed0 + time.perf_counter() - start
            if on_step is not None:
                on_step(self.step)
            done = self._agree_done()
            interval.seconds += time.perf_counter() - t0
            evaluate = done or (tc.eval_every > 0 and self.step % tc.eval_every == 0)
            if evaluate or self.step % tc.log_every == 0:
                row = interval.row(self.step, lr, self.elapsed_s, ctx)
                interval = _Interval(ctx.device)
                if evaluate:
                    row.update(self.validate())
                    row.update(self.validation_telemetry())
                    row["telemetry_alert"] = self.drift(row)
                    self.model.train()
                    self._checkpoint(row["val_bits_per_byte"])
                    saved_step = self.step
                self._log(row, on_log)
                done = done or self._agree_done()  # a stop() from inside on_log
        if self.step != saved_step and tc.out_dir and ctx.is_main:
            save_checkpoint(tc.out_dir, "last", self.model, self._state())
        ctx.barrier("waiting for rank 0's final checkpoint")
        return pd.DataFrame(self.metrics)
