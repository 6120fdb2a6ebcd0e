"""The app's public endpoints (web UI, HTTP API and MCP tools), each acting for the calling visitor.

`Endpoints` binds the work in `bitlm.app.generate_tab` and `bitlm.app.codec_tab` and the ownership rules in
`bitlm.app.visitors` to a Gradio session: every method takes the visitor's `gr.State` value (a `Visitor`) and the request, finds the
model that visitor uses and the run they own, and returns what the UI shows, with the updated visitor.
The methods' docstrings are the API's and the MCP tools' descriptions. Inputs arrive unprocessed (the
app's events skip Gradio's preprocessing), so every value is checked here, in `bitlm.app.generate_tab` or in `bitlm.app.codec_tab`.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from bitlm.app import codec_tab, generate_tab, plots, telemetry_tab
from bitlm.app.inputs import friendly, log, ok, warn
from bitlm.app.workers import GenerateWorkers, WorkerLost
from bitlm.app.visitors import BUSY_HINT, AppModel, SharedTrainer, Visitor, read_train_request, telemetry_alert

IDLE = "No training run yet. Pick a corpus and press Start."


def _visitor(visitor: Visitor | None, request: gr.Request | None) -> Visitor:
    visitor = visitor if isinstance(visitor, Visitor) else Visitor()
    return visitor.bind(getattr(request, "session_hash", None))


OBSERVER_TICK = 5.0   # seconds between Train status refreshes while someone else's run holds the trainer


class Endpoints:
    """The endpoints of one app: the shipped model every visitor starts with, and the shared trainer."""

    def __init__(self, shipped: AppModel, trainer: SharedTrainer, workers: GenerateWorkers | None = None):
        self.shipped = shipped
        self.trainer = trainer
        self.workers = workers  # generation processes (None: generate on the request's own thread)
        self._file_dirs: dict[str, Path] = {}  # each visitor's folder for the Codec tab's files
        self._file_lock = threading.Lock()

    def _files_dir(self, visitor: Visitor) -> Path:
        """The visitor's own temporary folder for the files the Codec tab writes (removed with the session)."""
        with self._file_lock:
            folder = self._file_dirs.get(visitor.id)
            if folder is None or not folder.is_dir():
                folder = self._file_dirs[visitor.id] = Path(tempfile.mkdtemp(prefix="bitlm-codec-"))
            return folder

    def _forget_files(self, session: str) -> None:
        with self._file_lock:
            folder = self._file_dirs.pop(session, None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    # ----------------------------------------------------------------------------------------- models

    def model_line(self, visitor: Visitor | None = None, request: gr.Request | None = None) -> str:
        """The model this visitor's Generate, Telemetry and neural codec use, as one Markdown line."""
        return _visitor(visitor, request).model(self.shipped).describe()

    def use_trained(self, visitor: Visitor | None = None, request: gr.Request | None = None) -> tuple[str, str, Visitor]:
        """Use the model you trained (your finished training run) for your Generate, Telemetry and neural codec.

        Other visitors keep their own model. Returns a status message and your model line.
        """
        visitor = _visitor(visitor, request)
        status = self._use_trained(visitor)
        return status, visitor.model(self.shipped).describe(), visitor

    @friendly(lambda status: status)
    def _use_trained(self, visitor: Visitor) -> str:
        visitor.trained = self.trainer.trained_copy(visitor.id)
        visitor.use_trained = True
        sizes, _ = generate_tab.gate_windows(visitor.trained)
        gate = (f"Its safety gate is calibrated on your run's validation text ({', '.join(map(str, sizes))}-byte "
                f"windows)." if sizes else f"Its safety gate is off: {visitor.trained.gate_note}.")
        return ok(f"Your Generate, Telemetry and neural codec now use your trained model. {gate}")

    def use_shipped(self, visitor: Visitor | None = None, request: gr.Request | None = None) -> tuple[str, str, Visitor]:
        """Go back to the shipped model for your Generate, Telemetry and neural codec (your trained model is
        kept: "use trained model" switches to it again). Returns a status message and your model line."""
        visitor = _visitor(visitor, request)
        visitor.use_trained = False
        status = ok("Your Generate, Telemetry and neural codec use the shipped model again."
                    + (" Your trained model is kept: “Use trained model” switches back." if visitor.trained else ""))
        return status, visitor.model(self.shipped).describe(), visitor

    def gate_controls(self, visitor: Visitor | None = None, request: gr.Request | None = None) -> tuple:
        """The Generate tab's gate fields for the visitor's model: the mode (only "off" without floors) and
        the window sizes it has floors for."""
        app_model = _visitor(visitor, request).model(self.shipped)
        sizes, default = generate_tab.gate_windows(app_model)
        mode = gr.update(interactive=bool(sizes), info=generate_tab.gate_info(app_model), **({} if sizes else {"value": "off"}))
        return mode, gr.update(choices=sizes, value=default, interactive=bool(sizes))

    # --------------------------------------------------------------------------------------- generate

    def generate(self, prompt: Any, mode: Any = "text", n_bytes: Any = 48, temperature: Any = 0.8,
                 seed: Any = None, compress: Any = True, gate_mode: Any = "off", gate_window: Any = None,
                 visitor: Visitor | None = None, request: gr.Request | None = None) -> Iterator[tuple]:
        """Continue a prompt with the bit-level language model; the text and bits stream as they are sampled.

        Args:
            prompt: the text to continue (up to 2,000 characters), or 0/1 bits in the other modes.
            mode: "text", "bits" or "compressed stream" (a stream the Codec tab printed).
            n_bytes: how many bytes to generate, 1 to 2,000.
            temperature: sampling temperature from 0 (greedy) to 2.
            seed: a whole number from 0 to 4,294,967,295 for a reproducible sample; empty for a random one.
            compress: compress the prompt's bits before the model and decompress its output (lossless).
            gate_mode: the K/C/S safety gate: "off" (default); "warn" marks spans whose last gate_window bytes fall
                below the model's calibrated floors (C low: a repetition loop; S low: letter soup; M, the
                match length, above its limit: a loop longer than the window) and changes
                nothing; "retry" resamples such a span hotter or cooler, twice at most, then stops; "stop" ends
                the text before it. Needs a model with floors (gate.json); otherwise refused.
            gate_window: the gate's window in bytes, one the model has floors for (e.g. 32, 64 or 128); empty
                for 64 (or the smallest calibrated). Ignored when gate_mode is "off".
        Returns:
            the text, the generated bits (one group per byte frame), the input and output compression ratios, a
            status message (with what the gate did, in words), a chart of C and S over the output with the
            floors and the gate's spans (none when the gate is off), and the gate's events: a list of
            {start, end, metric, value, floor, action, temperature} (output bytes [start, end)).
        """
        visitor = _visitor(visitor, request)
        should_stop = visitor.start_generation()
        args = (prompt, mode, n_bytes, temperature, seed, compress, gate_mode, gate_window)
        if self.workers is None:
            results = generate_tab.generate(visitor.model(self.shipped), *args, should_stop=should_stop)
        else:
            results = self.workers.generate(visitor.model(self.shipped), args, should_stop)
        try:
            for result in results:
                if result.last is not None:
                    visitor.last = result.last
                yield (*result[:5], result.gate_chart, result.gate_events, visitor)
        except (WorkerLost, OSError, RuntimeError) as e:  # only the worker path raises: generate never does
            log.warning("generation failed in its worker: %s", e)
            yield (gr.skip(), gr.skip(), gr.skip(), gr.skip(),
                   warn(f"The generation stopped: {e}", "press Generate again; the app is still running"),
                   gr.skip(), gr.skip(), visitor)

    def generate_stop(self, visitor: Visitor | None = None, request: gr.Request | None = None) -> None:
        """Stop your running generation after its current chunk; it then returns what it wrote so far with a
        "Stopped" status, as its own final result (another visitor's generation is never touched)."""
        _visitor(visitor, request).stop_current_generation()

    # -------------------------------------------------------------------------------------- telemetry

    def telemetry(self, source: Any = "text below", text: Any = "Hello, world!", view: Any = "decompressed bits",
                  layer: Any = 0, head: Any = 0, visitor: Visitor | None = None,
                  request: gr.Request | None = None) -> tuple:
        """K (negentropy), C (complexity: Lempel-Ziv), S (symbiosis), per-position predictions and attention
        of the model on a text or on your last generation.

        Args:
            source: "text below" (the text argument) or "last generation" (your last Generate result).
            text: the text to analyse, up to 2,000 characters.
            view: "decompressed bits" (the model reads the text through the codec) or "compressed stream" (the stream itself).
            layer: attention layer to draw, from 0 (clamped to the model's).
            head: attention head to draw, from 0 (clamped to the model's).
        Returns:
            a summary line, the K/C/S table, the per-position probability chart, the attention heatmap and a status message.
        """
        visitor = _visitor(visitor, request)
        result = telemetry_tab.telemetry(visitor.model(self.shipped), source, text, view, visitor.last, layer, head)
        return (result.summary, plots.json_safe(result.table), *result[2:])

    # ------------------------------------------------------------------------------------------ codec

    def neural_compress(self, text: Any, visitor: Visitor | None = None, request: gr.Request | None = None,
                        progress: gr.Progress = gr.Progress()) -> tuple:
        """Compress a text losslessly with the model driving a range coder, check the round trip, and
        compare its bits per byte with the model's cross-entropy and zlib, bz2 and lzma.

        Args:
            text: the text to compress, up to 5,000 characters.
        Returns:
            the bits-per-byte table and a status message.
        """
        visitor = _visitor(visitor, request)
        table, status = codec_tab.codec_neural(visitor.model(self.shipped), text,
                                          lambda fraction, what: progress(fraction, desc=what))
        return plots.json_safe(table), status

    def compress_file(self, upload: Any = None, text: Any = "", visitor: Visitor | None = None,
                      request: gr.Request | None = None, progress: gr.Progress = gr.Progress()) -> tuple:
        """Compress a file losslessly into a .blm file, with whichever of cm (online context mixing), the model
        mixed in with it (neural+cm) or alone (neural: a range coder driven by its exact integer predictor; both
        model methods for files up to 12 KB), lzma, bz2, zlib or stored gives the smallest output.

        Args:
            upload: the file to compress (any bytes, up to 1 MB); empty to compress the text instead.
            text: the text to compress (UTF-8, up to 10,000 characters) when no file is given.
        Returns:
            the .blm file (decompress it with decompress_file, with the same model if its method is neural or neural+cm),
            a table of every method's file size and bits per byte on these bytes (the chosen one marked), and a
            status message.
        """
        visitor = _visitor(visitor, request)
        result = codec_tab.compress_upload(visitor.model(self.shipped), upload, text, self._files_dir(visitor),
                                      lambda fraction, what: progress(fraction, desc=what))
        return result.path, plots.json_safe(result.table), result.status

    def decompress_file(self, upload: Any = None, visitor: Visitor | None = None, request: gr.Request | None = None,
                        progress: gr.Progress = gr.Progress()) -> tuple:
        """Decompress a .blm file (written by compress_file or python -m bitlm.cli.compress) back to the original
        bytes; the CRC-32 is checked. A file compressed by the model needs the same model.

        Args:
            upload: the .blm file (its original at most 1 MB, or 12 KB when coded by the model).
        Returns:
            the original file and a status message (why not, for a foreign, truncated, corrupted or too large file,
            or one compressed with another model).
        """
        visitor = _visitor(visitor, request)
        result = codec_tab.decompress_upload(visitor.model(self.shipped), upload, self._files_dir(visitor),
                                        lambda fraction, what: progress(fraction, desc=what))
        return result.path, result.status

    # --------------------------------------------------------------------------------------- training

    def train_start(self, corpus: Any = "pydoc", upload: Any = None, preset: Any = "small", steps: Any = 1000,
                    compress_prob: Any = 0.5, multitask: Any = False, visitor: Visitor | None = None,
                    request: gr.Request | None = None) -> str:
        """Start training a new model on the shared trainer (one run at a time for all visitors; a run
        stops after its step count or the app's time limit, and when your session ends).

        Args:
            corpus: "pydoc", "shakespeare" or "uploaded .txt".
            upload: the UTF-8 .txt file to train on when corpus is "uploaded .txt" (up to 5 MB).
            preset: model size: "tiny", "small" or "base".
            steps: training steps, 1 to 20,000.
            compress_prob: share of sequences compressed and decompressed before the model, 0 to 1.
            multitask: also train the model to read compressed streams directly.
        Returns:
            a status message: started, or why not (e.g. the trainer is busy with another visitor's run).
        """
        return self._start(_visitor(visitor, request), corpus, upload, preset, steps, compress_prob, multitask)

    @friendly(lambda status: status)
    def _start(self, visitor: Visitor, corpus: Any, upload: Any, preset: Any, steps: Any, compress_prob: Any,
               multitask: Any) -> str:
        busy = self.trainer.busy(visitor.id)  # said first: no need to read the inputs for nothing
        if busy:
            return warn(busy, BUSY_HINT)
        request = read_train_request(corpus, upload, preset, steps, compress_prob, multitask)
        run = self.trainer.start(visitor.id, request)
        return ok(f"Training started: {request.preset} model on {request.corpus.name} "
                  f"({request.corpus.n_bytes:,} bytes), {request.steps:,} steps, compress_prob "
                  f"{request.compress_prob:g}, multi-task {'on' if request.multitask else 'off'}, at most "
                  f"{self.trainer.time_limit_s / 60:g} minutes; metrics and checkpoints go to `{run.run_dir}`.")

    @friendly(lambda status: status)
    def train_stop(self, visitor: Visitor | None = None, request: gr.Request | None = None) -> str:
        """Stop your training run after its current step (another visitor's run is never touched).

        Returns: a status message.
        """
        self.trainer.stop(_visitor(visitor, request).id)
        return ok("Stopping after the current step…")

    def train_status(self, visitor: Visitor | None = None, request: gr.Request | None = None) -> tuple:
        """Your training run's progress: a status line (with the latest telemetry drift alert, if any), loss,
        accuracy and compression-ratio charts, the metrics table (newest first), and the K, C, S of the
        validation batch at each validation.

        Returns:
            the status line, the three charts, the metrics table and the K/C/S chart.
        """
        return self.train_refresh(visitor, request)[:-1]

    def train_refresh(self, visitor: Visitor | None = None, request: gr.Request | None = None) -> tuple:
        """`train_status` and the Train tab's refresh timer, which ticks every second while the visitor's run goes
        and every OBSERVER_TICK seconds while another visitor's does (so its step in the busy line stays true);
        the tick after either ends draws the final state and stops it."""
        visitor = _visitor(visitor, request)
        run = self.trainer.run_of(visitor.id)
        busy = None
        if run is None:
            busy = self.trainer.busy(visitor.id)
            status, rows, running = IDLE + (f" ({busy}.)" if busy else ""), [], False
        else:
            status, rows, running = run.status(), list(run.metrics), run.running
            alert = telemetry_alert(rows)
            status += f"\n\n{alert}" if alert else ""
        df = plots.metrics_frame(rows)
        table = plots.live_metrics_table(df)
        return (status, plots.loss_figure(df), plots.accuracy_figure(df), plots.ratio_figure(df), table,
                plots.telemetry_figure(df), gr.Timer(value=1.0 if running else OBSERVER_TICK, active=running or bool(busy)))

    @friendly(lambda status: (None, status))
    def save_model(self, visitor: Visitor | None = None, request: gr.Request | None = None) -> tuple:
        """Save your finished run's model (safetensors and config.json) for download.

        Returns: the run's files for download (the model, and the metrics CSV if exported) and a status message.
        """
        run = self.trainer.finished_run(_visitor(visitor, request).id)
        run.save_model()
        return run.downloads(), ok(f"Saved to `{run.run_dir / 'model'}`: load it with `BitTransformerLM.from_pretrained(...)` "
                         "on the downloaded folder, or put its files in `assets/` to make it the app's model.")

    @friendly(lambda status: (None, status))
    def export_csv(self, visitor: Visitor | None = None, request: gr.Request | None = None) -> tuple:
        """Write your run's metrics so far to a CSV file for download.

        Returns: the run's files for download (the CSV, and the model if saved) and a status message.
        """
        run = self.trainer.run_of(_visitor(visitor, request).id)
        if run is None:
            return None, warn("You have no training run yet", "start one, and wait for its first log line")
        path, rows = run.export_csv()
        return run.downloads(), ok(f"{rows} rows written to `{path}`.")

    # --------------------------------------------------------------------------------------- sessions

    def end_session(self, request: gr.Request | None = None) -> None:
        """A page was closed: stop that visitor's run and remove their run folder."""
        session = getattr(request, "session_hash", None)
        if session:
            self._forget_files(session)
            self.trainer.end_session(session)

    def forget(self, visitor: Any) -> None:
        """A session's state was deleted (Gradio expires it): the same clean-up as `end_session`."""
        if isinstance(visitor, Visitor):
            self._forget_files(visitor.id)
            try:
                self.trainer.end_session(visitor.id)
            except Exception:  # called from Gradio's state clean-up, which must not fail
                log.exception("could not end the session of a deleted state")
