"""Who owns what in an app many people use at once: each visitor's model, and the one shared trainer.

A `Visitor` is one browser session's (or API client's) state, kept by Gradio per session: which model
their Generate, Telemetry and neural-codec calls use (the shipped `AppModel`, or a copy of the model
they trained) and their last generation. Nothing in it is shared. The `SharedTrainer` is the only
shared thing: it trains one `Run` at a time, in a background thread, for the visitor who started it;
only that visitor can stop it, use its model, save it or export its metrics. Runs are capped in wall
time; each visitor keeps their latest finished run while their session lives; the run folders are
bounded in count and size, removed when their session ends, and leftovers are removed at start-up.
"""
from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from bitlm.app import plots
from bitlm.bits.frames import frame_bits
from bitlm.train.data import BUILTIN_CORPORA, Corpus, CorpusError, load_corpus, split_corpus
from bitlm.generate.draft import NGramDraft
from bitlm.train.evaluate import gate_windows
from bitlm.generate.gate import GateFloors, floors_from, load_floors
from bitlm.app.inputs import InputError, ok, read_choice, read_float, read_flag, read_int, warn
from bitlm.model.transformer import BitTransformerLM
from bitlm.train.trainer import PRESETS, Trainer, make_configs

log = logging.getLogger("bitlm.app")

UPLOAD_MAX_BYTES = 5 * 1024 * 1024
TRAIN_MAX_STEPS = 20_000
CORPORA = (*BUILTIN_CORPORA, "uploaded .txt")
# Share of training samples the model reads as a compressed stream when multi-task is on.
MULTITASK_DIRECT_PROB = 0.25
# The app's run folders are named so; only those are ever removed (a CLI run elsewhere in runs/ is safe).
RUN_PREFIX = "app-"
BUSY_HINT = "try again when it has finished; Generate, Telemetry and Codec keep working meanwhile"
# The safety gate of a model trained in the app: floors calibrated, when its visitor adopts it, on up to this
# much of its run's validation text (a few seconds for the small preset), for each window size that has at
# least GATE_MIN_WINDOWS windows there.
GATE_WINDOWS = (32, 64, 128)
GATE_CAL_MAX_CHARS = 32_768
DRAFT_MAX_BYTES = 8 * 1024 * 1024   # the speculative draft's text: the whole Shakespeare training split
GATE_MIN_WINDOWS = 32
RECALIBRATE = "python -m bitlm.cli.gate calibrate --model <folder>"


# ---------------------------------------------------------------------------------------------------
# Models a visitor can use


@dataclass(frozen=True)
class AppModel:
    """A model Generate, Telemetry and the neural codec can run, and where it came from. Never edited
    after creation (runs only read it), so visitors can share the shipped one. `untrained` marks the
    freshly initialised fallback, whose predictions are chance."""
    model: BitTransformerLM
    source: str
    notice: str = ""
    untrained: bool = False
    floors: dict[int, GateFloors] = field(default_factory=dict)  # the safety gate's, by window size
    gate_note: str = ""  # why there are no floors, when there are none
    draft: NGramDraft | None = None  # guesses from the model's training text: faster generation, same bits
    # A random id of this AppModel (not settable, so `dataclasses.replace` makes a new one): how generation
    # workers tell models apart (`bitlm.app.workers`), never an address that could be reused.
    token: str = field(init=False, default_factory=lambda: uuid.uuid4().hex, compare=False)

    def describe(self) -> str:
        """Markdown: the model in use, and the fallback notice if there is one."""
        line = f"**Model:** {self.source} · {self.model.num_params():,} parameters"
        return f"{self.notice}\n\n{line}" if self.notice else line


def load_app_model(model_dir: str | Path = "assets", fallback_preset: str = "small",
                   draft_corpus: str | None = None) -> AppModel:
    """Load the shipped model, or fall back to a freshly initialised one with a visible notice.

    Takes: the folder written by `save_pretrained`, the `PRESETS` name whose model config the
    fallback uses, and the corpus the model was trained on (its training split feeds the
    speculative `NGramDraft`; None: no draft, plain generation). Returns: an `AppModel`; never
    raises for a missing or broken model folder or corpus.
    """
    path = Path(model_dir)
    try:
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no config.json in {path}/")
        model = BitTransformerLM.from_pretrained(str(path)).eval()
    except Exception as e:  # a broken checkpoint must not stop the app from starting
        log.warning("could not load the model from %s (%s: %s); using a fresh %s model",
                    path, type(e).__name__, e, fallback_preset)
        reason = f"{type(e).__name__}: {e}"
    else:
        try:
            floors = load_floors(path)
            note = "" if floors else f"`{path}/` has no gate.json; make one with `{RECALIBRATE}`"
            if not floors and model.config.pos == "learned":
                note = "it is a v1 model (learned positions), which the gate cannot calibrate; use a v2 model"
        except ValueError as e:
            log.warning("%s; the gate is off", e)
            floors, note = {}, f"{e}; remake it with `{RECALIBRATE}`"
        draft = None
        if draft_corpus is not None:
            try:
                draft = make_draft(split_corpus(load_corpus(draft_corpus))[0], model)
            except (ValueError, OSError) as e:
                log.warning("no speculative draft from %s (%s); generation runs without one", draft_corpus, e)
        return AppModel(model, f"shipped model from `{path}/`", floors=floors, gate_note=note, draft=draft)
    # A fixed seed makes the untrained fallback (and so every test against it) reproducible,
    # without touching the process-wide RNG.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BitTransformerLM(PRESETS[fallback_preset][0]).eval()
    notice = warn(f"No trained model could be loaded from `{path}/` ({reason}).",
                  f"running a freshly initialised, untrained **{fallback_preset}** model, so its output is "
                  "random bits; train one in the Train tab and press “Use trained model”.")
    return AppModel(model, f"untrained `{fallback_preset}` preset (fallback)", notice, untrained=True,
                    gate_note="the untrained fallback model has no calibrated floors")


def make_draft(texts: list[str], model: BitTransformerLM) -> NGramDraft:
    """The speculative draft of a model from (the first DRAFT_MAX_BYTES of) its training texts.
    Raises ValueError for a text too short to draft from."""
    text = "".join(texts).encode("utf-8")[:DRAFT_MAX_BYTES]
    return NGramDraft(text, parity=model.config.parity)


def calibrate_gate(model: BitTransformerLM, text: str, source: str) -> tuple[dict[int, GateFloors], str]:
    """The safety gate's floors for a model from its own held-out text (each metric's 1st percentile over
    windows of the first GATE_CAL_MAX_CHARS characters, as `python -m bitlm.cli.gate calibrate` computes them).

    Takes: the model, the text, and where the text comes from (kept in the floors). Returns: ({window bytes:
    floors} for each of GATE_WINDOWS with at least GATE_MIN_WINDOWS windows, and "" or why there are none).
    Never raises for a model or text that cannot be calibrated.
    """
    try:
        cal = gate_windows(model, [text[:GATE_CAL_MAX_CHARS]], GATE_WINDOWS)
    except ValueError as e:  # empty text, or a v1 model that cannot stream
        return {}, f"the gate could not be calibrated on {source} ({e})"
    floors = {w: floors_from(c, 0.01, source) for w, c in cal.items() if len(c.values["K"]) >= GATE_MIN_WINDOWS}
    if not floors:
        return {}, (f"{source} is too short to calibrate the gate (it needs {GATE_MIN_WINDOWS} windows of "
                    f"{min(GATE_WINDOWS)} bytes); train on a longer text")
    return floors, ""


def telemetry_alert(rows: list[dict]) -> str:
    """The latest telemetry drift alert of a run's metrics (`telemetry_alert` of a validation row) as one
    line with its step, or "" when there is none."""
    for row in reversed(rows):
        alert = row.get("telemetry_alert")
        if isinstance(alert, str) and alert:
            return f"🔔 Step {row.get('step', '?'):,}: {alert}"
    return ""


@dataclass
class Visitor:
    """One session's state (a `gr.State` value): who they are, the model they chose, their last generation.

    `id` is the Gradio session hash (a random id for a request without one), the key the shared
    trainer knows them by. `trained` is their own copy of a model they trained; `use_trained`
    whether Generate uses it instead of the shipped model.
    """
    id: str = ""
    trained: AppModel | None = None
    use_trained: bool = False
    last: dict | None = None  # prompt and new bits of the last generation, for Telemetry
    # Stop of the Generate tab: a generation runs as number `generation` and ends at its next chunk once
    # `stop_generation` equals that number; plain ints, so the State stays copyable and an old Stop never
    # reaches a newer generation.
    generation: int = 0
    stop_generation: int = -1

    def start_generation(self) -> Callable[[], bool]:
        """Number a new generation of this visitor's; returns the check that says whether Stop was pressed
        for it (and not for an earlier one)."""
        self.generation += 1
        mine = self.generation
        return lambda: self.stop_generation == mine

    def stop_current_generation(self) -> None:
        """Stop this visitor's running generation at its next chunk (nothing if none is running)."""
        self.stop_generation = self.generation

    def bind(self, session_hash: str | None) -> "Visitor":
        """Take the session's id (Gradio's session hash), or a random one if there is none. Returns self."""
        if session_hash:
            self.id = session_hash
        elif not self.id:
            self.id = uuid.uuid4().hex
        return self

    def model(self, shipped: AppModel) -> AppModel:
        """The model this visitor's requests run."""
        return self.trained if self.use_trained and self.trained is not None else shipped


# ---------------------------------------------------------------------------------------------------
# Training runs and the one trainer


def read_upload(upload: Any) -> tuple[Path, str]:
    """The server path and the visitor's file name of an uploaded file (Gradio's FileData as a dict).

    Only a dict that Gradio validated (a file in its upload cache) is accepted; a bare string is never
    taken as a server path. Raises: `InputError`.
    """
    if upload is None or upload == "":
        raise InputError("No file uploaded", "upload a UTF-8 .txt file, or pick a built-in corpus")
    if not isinstance(upload, dict) or not isinstance(upload.get("path"), str):
        raise InputError("The upload is not a file", "upload a UTF-8 .txt file with the upload box "
                         "(over the API: gradio_client.handle_file)")
    path = Path(upload["path"])
    name = upload.get("orig_name") if isinstance(upload.get("orig_name"), str) else path.name
    if not path.is_file():
        raise InputError(f"The uploaded file “{name}” is gone", "upload it again")
    return path, name


def _upload_corpus(upload: Any) -> Corpus:
    path, name = read_upload(upload)
    size = path.stat().st_size
    if size > UPLOAD_MAX_BYTES:
        raise InputError(f"“{name}” is {size / 2**20:.1f} MB; the limit is {UPLOAD_MAX_BYTES // 2**20} MB",
                         "upload a smaller text, or train on a built-in corpus")
    try:
        corpus = load_corpus(path)
    except CorpusError as e:
        # The server-side temp path means nothing to the user; name the file they picked.
        raise InputError(f"Cannot use “{name}”: {str(e).replace(str(path), '').lstrip(': ')}",
                         "upload a UTF-8 .txt file, or pick a built-in corpus") from e
    return Corpus(name, corpus.documents, [name])


def _check_long_enough(corpus: Corpus, preset: str, val_fraction: float) -> None:
    """Refuse a corpus whose training part is shorter than one window of the preset's model."""
    config = PRESETS[preset][0]
    need = -(-config.block_size // frame_bits(config.parity))  # bytes in one training window
    train, _ = split_corpus(corpus, val_fraction)
    have = sum(len(t.encode("utf-8")) for t in train)
    if have < need:
        total = -(-need * 10 // 9) + 1
        window = {name: -(-c.block_size // frame_bits(c.parity)) for name, (c, _) in PRESETS.items()}
        smaller = [name for name in PRESETS if window[name] < need and window[name] <= have]
        raise InputError(f"“{corpus.name}” is too short for the {preset} model: it trains on the first 90 % of "
                         f"the text ({have:,} bytes here) and needs at least {need:,} bytes of it",
                         f"upload a longer text (at least about {total:,} bytes)"
                         + (f", or pick the {smaller[-1]} model size" if smaller else ""))


@dataclass
class TrainRequest:
    """A checked Start: the corpus and settings of a run."""
    corpus: Corpus
    preset: str
    steps: int
    compress_prob: float
    multitask: bool


def read_train_request(corpus: Any, upload: Any, preset: Any, steps: Any, compress_prob: Any,
                       multitask: Any) -> TrainRequest:
    """Check every Start input, load the corpus and check it is long enough, before any run starts.

    Raises: `InputError` (in the Train tab's words) for anything a visitor can fix.
    """
    corpus = read_choice(corpus, "corpus", CORPORA)
    preset = read_choice(preset, "model size", tuple(PRESETS))
    steps = read_int(steps, "number of steps", 1, TRAIN_MAX_STEPS)
    compress_prob = read_float(compress_prob, "compress_prob", 0.0, 1.0)
    multitask = read_flag(multitask, "multi-task setting")
    data = _upload_corpus(upload) if corpus == "uploaded .txt" else load_corpus(corpus)
    _check_long_enough(data, preset, make_configs(preset)[1].val_fraction)
    return TrainRequest(data, preset, steps, compress_prob, multitask)


class Run:
    """One training run: its owner, its Trainer in a background thread, and what it left.

    The Trainer owns its model while it trains; other threads only read its step and metrics and ask it
    to stop. When the thread ends, the run keeps the model and the metrics and lets go of the rest.
    """

    def __init__(self, owner: str, trainer: Trainer, run_dir: Path, steps: int, label: str, time_limit_s: float,
                 val_text: str = "", train_texts: list[str] | None = None):
        self.owner, self.run_dir, self.steps, self.label = owner, run_dir, steps, label
        self.train_texts = train_texts or []   # the speculative draft is built from them on adoption
        self.time_limit_s = time_limit_s
        self.val_text = val_text[:GATE_CAL_MAX_CHARS]  # the gate calibrates on it when the model is adopted
        self.gate: tuple[dict[int, GateFloors], str] | None = None  # calibrate_gate's answer, once computed
        self.trainer: Trainer | None = trainer
        self.model: BitTransformerLM = trainer.model
        self.metrics: list[dict] = trainer.metrics
        self.state = "running"  # running | stopping | finished | stopped | failed
        self.message = ""
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._train, name="bitlm-train", daemon=True)

    @property
    def running(self) -> bool:
        """Whether the thread is alive (also while it is stopping)."""
        return self.thread.is_alive()

    @property
    def step(self) -> int:
        """Steps done so far."""
        return self.trainer.step if self.trainer is not None else int(self.metrics[-1]["step"]) if self.metrics else 0

    def seconds_left(self) -> float:
        """About how long the run has left: the step rate so far, capped by the wall-time limit."""
        elapsed = time.monotonic() - self.started
        left = max(self.time_limit_s - elapsed, 0.0)
        step = self.step
        if step > 0:
            left = min(left, (self.steps - step) * elapsed / step)
        return left

    def _train(self) -> None:
        try:
            self.trainer.run()
        except Exception as e:
            log.exception("training run %s failed", self.run_dir.name)
            self.message = f"{type(e).__name__}: {e}"
        self.model = self.trainer.model.cpu()  # the app generates on the CPU; training may use a GPU
        self.metrics = list(self.trainer.metrics)
        self.trainer = None  # drops the optimizer and the corpus
        self.state = "failed" if self.message else "stopped" if self.state == "stopping" else "finished"

    def stop(self) -> None:
        """Ask the run to stop after its current step."""
        if self.running and self.trainer is not None:
            self.state = "stopping"
            self.trainer.stop()

    def save_model(self) -> list[str]:
        """Save the finished model to `<run_dir>/model` (`save_pretrained`). Returns: the written files."""
        if self.running:
            raise InputError("Your training is still running", "stop it (or wait for it to finish) first")
        target = self.run_dir / "model"
        self.model.save_pretrained(str(target))
        return sorted(str(f) for f in target.iterdir() if f.is_file())

    def downloads(self) -> list[str]:
        """Everything of this run written for download so far: the saved model's files and the metrics CSV
        (so saving one never takes the other off the Downloads list)."""
        model = self.run_dir / "model"
        files = sorted(str(f) for f in model.iterdir() if f.is_file()) if model.is_dir() else []
        csv = self.run_dir / "metrics-app.csv"
        return files + ([str(csv)] if csv.is_file() else [])

    def export_csv(self) -> tuple[Path, int]:
        """Write the metrics so far to `<run_dir>/metrics-app.csv` (atomically). Returns: (path, rows)."""
        table = plots.metrics_frame(list(self.metrics))
        if table.empty:
            raise InputError("There are no metrics yet", "wait for the first log line of your run")
        target = self.run_dir / "metrics-app.csv"
        tmp = target.with_suffix(".csv.tmp")
        table.to_csv(tmp, index=False)
        os.replace(tmp, target)
        return target, len(table)

    def status(self) -> str:
        """The run's one-line status for its owner."""
        step = self.step
        elapsed = time.monotonic() - self.started
        if self.state == "running":
            return f"Training… step {step:,}/{self.steps:,} · {elapsed:.0f} s · about {_minutes(self.seconds_left())} left"
        if self.state == "stopping":
            return f"Stopping… step {step:,}/{self.steps:,} · {elapsed:.0f} s"
        if self.state == "failed":
            return warn(f"Training failed at step {step:,}: {self.message}",
                        "try a smaller model or another corpus; the app is still running")
        reason = ""
        if self.state == "finished" and step < self.steps:
            reason = f" (the {_minutes(self.time_limit_s)} time limit for a run)"
        return ok(f"Training {self.state} at step {step:,}/{self.steps:,}{reason}. "
                  "Press “Use trained model” to generate with it, or save it.")


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class SharedTrainer:
    """The app's one trainer, shared fairly by every visitor: one run at a time, owned by its starter.

    Takes: the folder runs are written under, the wall-time cap of a run in seconds, and the bounds on
    the kept runs (count and total bytes on disk; the oldest finished runs go first). Folders named
    `RUN_PREFIX*` under `run_root` left by an earlier process are removed at start-up.
    """

    def __init__(self, run_root: str | Path = "runs", time_limit_s: float = 600.0, max_runs: int = 8,
                 max_bytes: int = 256 * 2**20):
        if time_limit_s <= 0 or max_runs < 1 or max_bytes <= 0:
            raise ValueError("time_limit_s, max_runs and max_bytes must be positive")
        self.run_root = Path(run_root)
        self.time_limit_s, self.max_runs, self.max_bytes = time_limit_s, max_runs, max_bytes
        self._lock = threading.Lock()
        self._active: Run | None = None
        self._runs: OrderedDict[str, Run] = OrderedDict()  # owner -> their latest run, oldest first
        for leftover in sorted(self.run_root.glob(f"{RUN_PREFIX}*")):
            log.info("removing the leftover run folder %s", leftover)
            shutil.rmtree(leftover, ignore_errors=True)

    def run_of(self, owner: str) -> Run | None:
        """The owner's latest run (running or finished), if it is still kept."""
        with self._lock:
            return self._runs.get(owner)

    def busy(self, owner: str | None = None) -> str | None:
        """Why `owner` may not start now: another visitor's run is going (its step and time left, never
        whose it is). None when the trainer is free or the run going is the owner's own."""
        run = self._active
        if run is None or not run.running or run.owner == owner:
            return None
        return (f"The trainer is busy with another visitor's run (step {run.step:,} of {run.steps:,}, "
                f"about {_minutes(run.seconds_left())} left)")

    def start(self, owner: str, request: TrainRequest) -> Run:
        """Start `request` for `owner` in a background thread.

        Returns: the new `Run`. Raises: `InputError` while any run is going (the owner's own, or another
        visitor's: the message tells its step and time left, never whose it is).
        """
        with self._lock:
            active = self._active
            if active is not None and active.running:
                if active.owner == owner:
                    raise InputError("Your training run is still going", "stop it first, or wait for it to finish")
                raise InputError(self.busy(owner), BUSY_HINT)
            self._forget(owner)  # a visitor keeps one run: the new one replaces their last
            self._prune(keep=self.max_runs - 1)
            self.run_root.mkdir(parents=True, exist_ok=True)
            # mkdtemp: a fresh folder even for two starts in the same second, or two app processes.
            run_dir = Path(tempfile.mkdtemp(prefix=time.strftime(f"{RUN_PREFIX}%Y%m%d-%H%M%S-{request.preset}-"),
                                            dir=self.run_root))
            model_config, config = make_configs(
                request.preset, steps=request.steps, compress_prob=request.compress_prob,
                direct_prob=MULTITASK_DIRECT_PROB if request.multitask else 0.0,
                time_limit=self.time_limit_s / 60, out_dir=str(run_dir))
            try:
                trainer = Trainer(model_config, config, corpus=request.corpus)
            except Exception:
                shutil.rmtree(run_dir, ignore_errors=True)
                raise
            train_texts, val_texts = split_corpus(request.corpus, config.val_fraction)
            run = Run(owner, trainer, run_dir, request.steps, f"{request.preset} preset on {request.corpus.name}",
                      self.time_limit_s, "".join(val_texts)[:GATE_CAL_MAX_CHARS], train_texts)
            self._runs[owner] = self._active = run
            run.thread.start()
        log.info("training run %s started", run_dir.name)
        return run

    def stop(self, owner: str) -> Run:
        """Ask the owner's running run to stop. Returns: the run. Raises: `InputError` if they have none
        going (another visitor's run is never touched)."""
        run = self.run_of(owner)
        if run is None or not run.running:
            raise InputError("You have no training run in progress", "press Start to begin one")
        run.stop()
        return run

    def finished_run(self, owner: str) -> Run:
        """The owner's finished run with metrics. Raises: `InputError` while it runs or when there is none."""
        run = self.run_of(owner)
        if run is not None and run.running:
            raise InputError("Your training is still running", "stop it (or wait for it to finish) first")
        if run is None or not run.metrics:
            raise InputError("You have no trained model yet", "start a training run first")
        return run

    def trained_copy(self, owner: str) -> AppModel:
        """A copy of the owner's finished model, theirs to generate with (training never touches it), with
        its safety gate calibrated on the run's validation text (the first time it is adopted)."""
        run = self.finished_run(owner)
        model = copy.deepcopy(run.model).cpu().eval()
        if run.gate is None:
            run.gate = calibrate_gate(model, run.val_text, f"the validation split of {run.label}")
        floors, note = run.gate
        try:
            draft = make_draft(run.train_texts, model)
        except ValueError:
            draft = None
        return AppModel(model, f"your trained model ({run.label}, {run.step:,} steps)", floors=floors, gate_note=note,
                        draft=draft)

    def end_session(self, owner: str) -> None:
        """The owner's session is over: stop their run if it is going and remove their run folder."""
        with self._lock:
            run = self._runs.get(owner)
        if run is None:
            return
        run.stop()
        run.thread.join(timeout=60)  # a step is short; the folder is removed once no checkpoint is written
        with self._lock:
            self._forget(owner)
        log.info("session ended: run %s removed", run.run_dir.name)

    def _forget(self, owner: str) -> None:
        """Drop the owner's run and its folder (lock held; never the active run while it trains)."""
        run = self._runs.get(owner)
        if run is not None and not run.running:
            del self._runs[owner]
            shutil.rmtree(run.run_dir, ignore_errors=True)
            if self._active is run:
                self._active = None

    def _prune(self, keep: int) -> None:
        """Remove the oldest finished runs until at most `keep` are kept and their folders fit `max_bytes`."""
        finished = [o for o, r in self._runs.items() if not r.running]
        while finished and (len(self._runs) > keep or
                            sum(_folder_bytes(r.run_dir) for r in self._runs.values()) > self.max_bytes):
            self._forget(finished.pop(0))
