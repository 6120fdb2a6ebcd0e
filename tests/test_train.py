"""The compression-aware training loop, multi-task mode, checkpoints and the CLI (bitlm.train.trainer)."""
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pandas as pd
import pytest
import torch

import bitlm.train.trainer as train_mod
import bitlm.cli.train as train_cli
from bitlm.bits.frames import bits_to_bytes
from bitlm.bits.codec import CodecError, compress_bits, compression_ratio, decompress_bits
from bitlm.train.data import Corpus
from bitlm.model.transformer import BitTransformerLM
from bitlm.train.checkpoints import METRICS_FILE, find_checkpoint, load_trainer_state, read_metrics, save_checkpoint
from bitlm.train.trainer import PRESETS, Trainer, make_configs, prepare_batch

SPEC_COLUMNS = ["step", "lr", "elapsed_s", "bits_per_s", "raw_loss", "raw_accuracy", "compressed_loss",
                "compressed_accuracy", "compression_ratio", "direct_loss", "direct_accuracy", "val_bits_per_byte"]


def noisy_pattern(n: int = 6000, noise: float = 0.05, seed: int = 0) -> str:
    """A repeating 7-byte (7 x 9-bit frame) pattern, each byte replaced by a random letter with prob `noise`."""
    rng = random.Random(seed)
    pattern = "BitLM!\n"
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") if rng.random() < noise else pattern[i % 7]
                   for i in range(n))


def synthetic(n: int = 6000) -> Corpus:
    return Corpus("synthetic", [noisy_pattern(n)], ["synthetic"])


def tiny(**overrides):
    return make_configs("tiny", **{"eval_bytes": 256, **overrides})


def test_presets_sizes():
    sizes = {name: BitTransformerLM(cfg).num_params() for name, (cfg, _) in PRESETS.items()}
    assert sizes["tiny"] < 20_000
    assert 200_000 <= sizes["small"] <= 1_000_000
    assert sizes["base"] >= 2_000_000 and PRESETS["base"][0].block_size == 2304


def test_seeded_runs_repeat_without_touching_the_process_rng():
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    runs = []
    for _ in range(2):
        trainer = Trainer(*tiny(steps=3, eval_every=0), synthetic())
        assert torch.equal(torch.random.get_rng_state(), before)  # init is seeded, yet the app's RNG is untouched
        runs.append((trainer.run(), trainer.model.state_dict()))
    pd.testing.assert_frame_equal(runs[0][0].drop(columns=["elapsed_s", "bits_per_s"]),
                                  runs[1][0].drop(columns=["elapsed_s", "bits_per_s"]))
    for name, w in runs[0][1].items():
        assert torch.equal(w, runs[1][1][name]), name


@pytest.mark.slow
def test_learns_a_noisy_pattern_on_both_sides(tmp_path):
    mc, tc = tiny(steps=150, eval_every=50, out_dir=str(tmp_path / "run"))
    df = Trainer(mc, tc, synthetic()).run()
    assert list(df.columns[:4]) == ["step", "lr", "elapsed_s", "bits_per_s"]
    assert set(SPEC_COLUMNS) <= set(df.columns)
    assert df.step.iloc[-1] == 150
    first, last = df.iloc[0], df.iloc[-1]
    assert last.raw_loss < 0.2 and last.compressed_loss < 0.2, (first.raw_loss, last.raw_loss)
    assert last.raw_loss < first.raw_loss / 2
    assert df.raw_loss.notna().all() and df.compressed_loss.notna().all()
    assert last.val_bits_per_byte < 3.0  # chance is 8
    # the same rows on disk, readable by pandas
    on_disk = pd.read_json(tmp_path / "run" / METRICS_FILE, lines=True)
    assert on_disk.step.tolist() == df.step.tolist()
    pd.testing.assert_series_equal(on_disk.raw_loss, df.raw_loss)
    assert on_disk.val_bits_per_byte.notna().sum() == 3  # eval_every=50
    best = find_checkpoint(tmp_path / "run", names=("best",))
    assert load_trainer_state(best)["best_val"] == pytest.approx(df.val_bits_per_byte.min())


@pytest.mark.parametrize("p, raw, compressed", [(0.0, True, False), (1.0, False, True)])
def test_compress_prob_extremes_log_one_side(p, raw, compressed):
    mc, tc = tiny(steps=20, compress_prob=p)
    df = Trainer(mc, tc, synthetic()).run()
    assert df.raw_loss.notna().all() == raw and df.raw_loss.isna().all() == (not raw)
    assert df.compressed_loss.notna().all() == compressed and df.compressed_loss.isna().all() == (not compressed)
    assert df.compression_ratio.notna().all() == compressed
    assert (df.raw_samples > 0).all() == raw and (df.compressed_samples > 0).all() == compressed
    assert df.direct_loss.isna().all() and (df.direct_samples == 0).all()


def test_half_compressed_and_ratio_is_the_codecs(monkeypatch):
    batches = []

    def recording_prepare(*args, **kwargs):
        batches.append(prepare_batch(*args, **kwargs))
        return batches[-1]

    monkeypatch.setattr(train_mod, "prepare_batch", recording_prepare)
    mc, tc = tiny(steps=60, log_every=10, eval_every=0)
    df = Trainer(mc, tc, synthetic()).run()
    n_compressed, n_raw = df.compressed_samples.sum(), df.raw_samples.sum()
    assert n_compressed + n_raw == 60 * tc.batch_size
    assert 0.4 < n_compressed / (n_compressed + n_raw) < 0.6
    for i, row in df.iterrows():
        rows = torch.cat([b.bits[b.compressed] for b in batches[10 * i:10 * (i + 1)]])
        streams = [compress_bits(r) for r in rows]
        assert row.compressed_samples == len(rows)
        assert row.compression_ratio == pytest.approx(compression_ratio(rows.numel(), sum(s.numel() for s in streams)))


def test_prepare_batch_round_trip_is_checked(monkeypatch):
    bits = torch.randint(0, 2, (8, 90), dtype=torch.uint8)
    monkeypatch.setattr(train_mod, "decompress_batch", lambda streams: [1 - decompress_bits(s) for s in streams])
    with pytest.raises(CodecError, match="not lossless"):
        prepare_batch(bits, 1.0, 0.0)


def test_prepare_batch_splits_views_and_direct_streams():
    g = torch.Generator().manual_seed(1)
    bits = torch.randint(0, 2, (32, 180), dtype=torch.uint8)
    bits[:, :40] = 0  # a compressible run at the start of every row
    batch = prepare_batch(bits, 0.5, 0.5, g, method="rle")
    n_view, n_direct = batch.bits.shape[0], batch.direct.shape[0]
    assert n_view + n_direct == 32 and 0 < n_direct < 32 and 0 < batch.compressed.sum() < n_view
    direct_rows = [decompress_bits(s[m]) for s, m in zip(batch.direct, batch.direct_mask)]
    rows = {tuple(r.tolist()) for r in bits}
    assert {tuple(r.tolist()) for r in batch.bits} | {tuple(r.tolist()) for r in direct_rows} == rows
    assert batch.direct_mask.sum(1).tolist() == [compress_bits(r, "rle").numel() for r in direct_rows]
    cropped = prepare_batch(bits, 0.5, 1.0, torch.Generator().manual_seed(1), max_stream_bits=100)
    assert cropped.bits is None and cropped.direct.shape == (32, 100) and cropped.direct_mask.all()


def test_direct_mode_logs_direct_loss_and_next_bit_loss_sees_only_views():
    text = ("\x00" * 30 + "\x03") * 60  # long runs of 0 bits: rle streams fit in the block uncropped
    mc, tc = tiny(steps=30, direct_prob=0.5, codec_method="rle")
    trainer = Trainer(mc, tc, Corpus("runs", [text], ["runs"]))
    calls = []
    real_loss = trainer.model.loss

    def spy(bits, stream_type=0, mask=None):
        if trainer.model.training:  # not validation
            calls.append((bits.clone(), stream_type, mask))
        return real_loss(bits, stream_type=stream_type, mask=mask)

    trainer.model.loss = spy
    df = trainer.run()
    assert df.direct_loss.notna().all() and (df.direct_samples > 0).all()
    assert (df.raw_samples + df.compressed_samples + df.direct_samples == tc.log_every * tc.batch_size).all()
    views = [c for c in calls if c[1] == 0]
    direct = [c for c in calls if c[1] == 1]
    assert views and direct and all(c[2] is None for c in views)
    for bits, _, _ in views:  # only text windows (strict parity decode), never a codec stream
        assert all(bits_to_bytes(r).decode() in text for r in bits)
    for bits, _, mask in direct:
        assert mask is not None and bits.shape[1] < mc.block_size
        assert all(bits_to_bytes(decompress_bits(r[m])).decode() in text for r, m in zip(bits, mask))


def test_stop_from_another_thread_ends_with_a_checkpoint(tmp_path):
    mc, tc = tiny(steps=100_000, log_every=5, eval_every=1000, out_dir=str(tmp_path))
    trainer = Trainer(mc, tc, synthetic())
    first_row = threading.Event()
    thread = threading.Thread(target=trainer.run, kwargs={"on_log": lambda row: first_row.set()})
    thread.start()
    assert first_row.wait(60)
    trainer.stop()
    thread.join(60)
    assert not thread.is_alive() and trainer.stopped
    assert trainer.step < 100_000
    last = trainer.metrics[-1]
    assert last["step"] == trainer.step and not math.isnan(last["val_bits_per_byte"])
    assert load_trainer_state(find_checkpoint(tmp_path))["step"] == trainer.step


def test_stop_then_resume_continues_exactly(tmp_path):
    corpus = synthetic()
    mc, tc = tiny(steps=20, log_every=5, eval_every=10, out_dir=str(tmp_path / "a"))
    first = Trainer(mc, tc, corpus)
    first.run(on_log=lambda row: first.stop() if row["step"] == 5 else None)
    assert first.step == 5
    assert load_trainer_state(find_checkpoint(tmp_path / "a"))["step"] == 5

    resumed = Trainer.from_run(tmp_path / "a", corpus=corpus)
    assert resumed.step == 5 and resumed.config.steps == 20
    saved, restored = first.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert saved["state"].keys() == restored["state"].keys()
    for k in saved["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(saved["state"][k][name], restored["state"][k][name])
    resumed.run()
    assert resumed.step == 20
    assert [r["step"] for r in read_metrics(tmp_path / "a")] == [5, 10, 15, 20]

    straight = Trainer(mc, tiny(steps=20, log_every=5, eval_every=10)[1], corpus)
    straight.run()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_resume_drops_metrics_rows_after_the_checkpoint(tmp_path):
    mc, tc = tiny(steps=10, log_every=5, eval_every=5, out_dir=str(tmp_path))
    Trainer(mc, tc, synthetic()).run()
    with open(tmp_path / METRICS_FILE, "a") as f:  # a row logged after the last checkpoint, then a torn line
        f.write('{"step": 11, "lr": 0.1}\n{"step": 12, "l')
    resumed = Trainer.from_run(tmp_path, corpus=synthetic(), steps=15)
    assert [r["step"] for r in resumed.metrics] == [5, 10]
    resumed.run()
    assert pd.read_json(tmp_path / METRICS_FILE, lines=True).step.tolist() == [5, 10, 15]


def test_checkpoint_swap_survives_every_crash_point(tmp_path):
    model = BitTransformerLM(PRESETS["tiny"][0])
    save_checkpoint(tmp_path, "last", model, {"step": 1})
    save_checkpoint(tmp_path, "last", model, {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    # killed between "last -> last.old" and "last.tmp -> last", with a half-written tmp
    os.replace(tmp_path / "last", tmp_path / "last.old")
    (tmp_path / "last.tmp").mkdir()
    (tmp_path / "last.tmp" / "config.json").write_text("{")
    assert find_checkpoint(tmp_path) == tmp_path / "last.old"
    assert load_trainer_state(find_checkpoint(tmp_path))["step"] == 2
    save_checkpoint(tmp_path, "last", model, {"step": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    assert load_trainer_state(find_checkpoint(tmp_path))["step"] == 3
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        find_checkpoint(tmp_path / "empty")


SAVER = textwrap.dedent("""
    import sys, torch
    from bitlm.model.transformer import BitTransformerLM
    from bitlm.train.checkpoints import save_checkpoint
    from bitlm.train.trainer import PRESETS
    model = BitTransformerLM(PRESETS["tiny"][0])
    step = 0
    while True:
        step += 1
        save_checkpoint(sys.argv[1], "last", model, {"step": step, "blob": torch.full((200_000,), float(step))})
        if step == 1:
            print("saving", flush=True)
""")


@pytest.mark.slow
def test_sigkill_during_checkpoint_saves_never_leaves_a_broken_checkpoint(tmp_path):
    rng = random.Random(0)
    for _ in range(4):  # the same folder each time: later saves start from what a kill left behind
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline() == "saving\n"
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        checkpoint = find_checkpoint(tmp_path)
        state = load_trainer_state(checkpoint)
        assert state["step"] >= 1 and torch.equal(state["blob"], torch.full((200_000,), float(state["step"])))
        BitTransformerLM.from_pretrained(checkpoint)


def test_cli_trains_prints_lines_and_resumes(tmp_path, capsys):
    corpus_file = tmp_path / "pattern.txt"
    corpus_file.write_text(noisy_pattern(3000))
    run = tmp_path / "run"
    train_cli.main(["--corpus", str(corpus_file), "--preset", "tiny", "--steps", "20", "--log-every", "10",
                    "--eval-bytes", "128", "--out", str(run)])
    out = capsys.readouterr().out
    assert "step     10 | raw loss" in out and "compressed loss" in out and "ratio" in out
    assert "val bits/byte" in out
    train_cli.main(["--resume", str(run), "--steps", "30"])
    assert [r["step"] for r in read_metrics(run)] == [10, 20, 30]
    assert load_trainer_state(find_checkpoint(run))["step"] == 30


def test_cli_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--corpus", "--preset", "--steps", "--out", "--compress-prob", "--direct-prob",
                 "--time-limit", "--resume"):
        assert flag in text
    parser = train_cli.build_parser()
    assert all(a.help for a in parser._actions)


def test_schedule_warmup_cosine_and_time_limit(tmp_path):
    mc, tc = tiny(steps=200, warmup_steps=10, lr=1e-2, min_lr=1e-3, time_limit=10.0)
    trainer = Trainer(mc, tc, synthetic())
    assert trainer.lr_at(0) == pytest.approx(1e-3) and trainer.lr_at(9) == pytest.approx(1e-2)
    assert trainer.lr_at(105) == pytest.approx(5.5e-3) and trainer.lr_at(200) == pytest.approx(1e-3)
    trainer.elapsed_s = 5 * 60  # half the time budget used: the cosine follows time when it runs ahead
    assert trainer.lr_at(20) == pytest.approx(5.5e-3)
    short = Trainer(mc, tiny(steps=20, warmup_steps=100)[1], synthetic())
    assert short.lr_at(1) == pytest.approx(1e-2)  # warm-up capped at 10 % of the steps

    mc, tc = tiny(steps=10**9, time_limit=0.005, out_dir=str(tmp_path / "timed"))
    timed = Trainer(mc, tc, synthetic())
    df = timed.run()
    assert timed.step < 10**9 and df.elapsed_s.iloc[-1] >= 0.3 and df.val_bits_per_byte.notna().iloc[-1]
    with pytest.raises(FileExistsError, match="already holds a run"):
        Trainer(mc, tc, synthetic())


def test_bad_configs_are_rejected():
    with pytest.raises(ValueError, match="compress_prob"):
        make_configs("tiny", compress_prob=1.5)
    with pytest.raises(ValueError, match="unknown preset"):
        make_configs("huge")
    with pytest.raises(ValueError, match="codec_method"):
        make_configs("tiny", codec_method="zip")


def test_validation_logs_k_c_s_and_alerts_on_drift():
    """Every validation row carries K, C and S of the same validation batch; a move larger than
    drift_alert between two validations gives a one-line alert naming the metric, a small one none."""
    from bitlm.cli.train import format_row
    mc, tc = tiny(steps=60, eval_every=20, drift_alert=1e-6)
    trainer = Trainer(mc, tc, synthetic())
    df = trainer.run()
    val = df[df.val_bits_per_byte.notna()]
    assert len(val) == 3 and val[["val_K", "val_C", "val_S"]].notna().all().all()
    assert ((val.val_S > 0) & (val.val_S <= 1)).all()
    assert val.telemetry_alert.iloc[0] == ""                             # nothing to compare with yet
    assert all(a.startswith("telemetry drift since step") for a in val.telemetry_alert.iloc[1:])
    assert "ALERT telemetry drift" in format_row(val.iloc[1].to_dict())
    direct = trainer.validation_telemetry()
    assert direct == pytest.approx({k: val.iloc[-1][k] for k in ("val_K", "val_C", "val_S")})
    quiet = Trainer(*tiny(steps=60, eval_every=20, drift_alert=10.0), synthetic()).run()
    assert (quiet.telemetry_alert.fillna("") == "").all()
    with pytest.raises(ValueError, match="drift_alert"):
        tiny(drift_alert=0.0)
