"""Run folders on disk: atomic checkpoints (`save_checkpoint` / `find_checkpoint`), the trainer state
beside them, and the metrics log (`metrics.jsonl`, one JSON row per logged step).

A checkpoint folder holds the model (`save_pretrained`: config.json + model.safetensors) and
`trainer_state.pt` (tensors and plain values only, loaded with `weights_only=True`); it is written
to `name.tmp/` and swapped in, so a crash at any point leaves a complete checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from bitlm.model.transformer import BitTransformerLM

STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"


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
    """`trainer_state.pt` of a checkpoint folder (tensors and plain types only), on the CPU
    whatever device wrote it."""
    return torch.load(Path(checkpoint) / STATE_FILE, weights_only=True, map_location="cpu")


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


def write_atomic(path: Path, text: str) -> None:
    """Write a text file through a temp file and a rename: readers see the old or the new file, whole."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def json_line(row: dict) -> str:
    """One metrics row as a JSON line; NaN (not JSON) becomes null, which pandas reads back as NaN."""
    return json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}) + "\n"
