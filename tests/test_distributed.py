"""Multi-process training (bitlm.train.distributed and the Trainer under a process group): N ranks compute
what one process computes on the global batch, only rank 0 writes, resume, and a lost rank ends the run."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import free_port, wait_until
from test_train import noisy_pattern

from bitlm.train import distributed
from bitlm.train.distributed import DistContext, DistributedError, resolve_device
from bitlm.model.transformer import BitTransformerLM
from bitlm.train.checkpoints import STATE_FILE, find_checkpoint, load_trainer_state, read_metrics
from bitlm.train.trainer import Trainer, make_configs, prepare_batch

CONFIG = dict(steps=12, log_every=3, eval_every=6, eval_bytes=256, direct_prob=0.25, codec_method="rle")

# One rank: trains with rank 0 alone calling stop() after step 3 (every rank must stop there), resumes the
# run folder to step 12 in the same process group, and dumps its weights and optimizer state.
WORKER = textwrap.dedent("""
    import json, sys, torch
    from bitlm.train import distributed
    from bitlm.train.trainer import Trainer, make_configs
    corpus, run_dir, dump, config = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    mc, tc = make_configs("tiny", corpus=corpus, out_dir=run_dir, **config)
    first = Trainer(mc, tc)
    first.run(on_log=lambda row: first.stop() if row["step"] == 3 and first.dist.rank == 0 else None)
    resumed = Trainer.from_run(run_dir, corpus=corpus)
    resumed.run()
    torch.save({"first_step": first.step, "world_size": resumed.dist.world_size,
                "model": resumed.model.state_dict(), "optimizer": resumed.optimizer.state_dict()}, dump)
    distributed.teardown()
""")


def rank_env(rank: int, world_size: int, port: int) -> dict:
    """The variables torchrun gives each worker (and one thread each, as torchrun sets too)."""
    return {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "pattern.txt"
    path.write_text(noisy_pattern(3000))
    return path


@pytest.mark.slow
def test_two_ranks_match_one_process_over_the_global_batch_and_resume(tmp_path, corpus_file):
    run, port = tmp_path / "run", free_port()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(corpus_file), str(run), str(tmp_path / f"rank{r}.pt"),
                               json.dumps(CONFIG)], env=rank_env(r, 2, port)) for r in range(2)]
    try:
        assert [p.wait(120) for p in procs] == [0, 0]
    finally:
        for p in procs:
            p.kill()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [d["first_step"] for d in ranks] == [3, 3]  # rank 0's stop() stopped rank 1 at the same step
    assert [d["world_size"] for d in ranks] == [2, 2]

    # Identical on both ranks: the same averaged gradients and optimizer steps.
    for name, w in ranks[0]["model"].items():
        assert torch.equal(w, ranks[1]["model"][name]), name
    for k, state in ranks[0]["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state[key], ranks[1]["optimizer"]["state"][k][key])

    # One process straight through 12 steps over the same global batches: the same model up to float rounding.
    mc, tc = make_configs("tiny", corpus=str(corpus_file), **CONFIG)
    single = Trainer(mc, tc)
    assert single.dist.world_size == 1
    single.run()
    for name, w in single.model.state_dict().items():
        got = ranks[0]["model"][name]
        if name.endswith("attn.c_attn.bias"):
            # The key bias adds the same score to every key of a query, which the softmax cancels: its true
            # gradient is 0, so it holds only rounding noise (~1e-6) that differs with summation order.
            d = w.numel() // 3
            assert got[d:2 * d].abs().max() < 1e-4 and w[d:2 * d].abs().max() < 1e-4
            w, got = torch.cat([w[:d], w[2 * d:]]), torch.cat([got[:d], got[2 * d:]])
        assert (got - w).abs().max() <= 1e-5 * w.abs().max(), name
    trained = BitTransformerLM(mc)
    trained.load_state_dict(ranks[0]["model"])
    bits = single.train_data.sample(4, mc.block_size, torch.Generator().manual_seed(0))
    torch.testing.assert_close(trained.loss(bits).nll_bits, single.model.loss(bits).nll_bits, rtol=1e-5, atol=1e-5)

    # Rank 0 alone wrote one metrics file and one set of checkpoints; its rows describe the global batch.
    assert sorted(p.name for p in tmp_path.rglob("*") if p.parent == tmp_path) == ["rank0.pt", "rank1.pt", "run"]
    assert sorted(p.name for p in run.iterdir()) == ["best", "last", "metrics.jsonl", "train_config.json"]
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [3, 6, 9, 12]
    for got, want in zip(rows, single.metrics):
        for key in ("raw_samples", "compressed_samples", "direct_samples", "compression_ratio"):
            assert got[key] == want[key], key
        for key in ("loss", "raw_loss", "compressed_loss", "direct_loss", "raw_accuracy", "val_bits_per_byte"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, nan_ok=True), key
    assert load_trainer_state(find_checkpoint(run))["step"] == 12


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_a_lost_rank_ends_the_run_with_a_clear_error_and_the_checkpoint_loads(tmp_path, corpus_file, sig):
    # A healthy collective waits out rank 0's checkpoint and eval: on a loaded machine that can take seconds,
    # so the timeout leaves room for them (a hung rank is still caught, 15 s later).
    run, port, timeout = tmp_path / "run", free_port(), 15
    args = [sys.executable, "-m", "bitlm.cli.train", "--corpus", str(corpus_file), "--preset", "tiny", "--steps", "100000",
            "--log-every", "5", "--eval-every", "5", "--eval-bytes", "128", "--out", str(run),
            "--dist-timeout", str(timeout)]
    logs = [open(tmp_path / f"rank{r}.log", "w") for r in range(2)]
    procs = [subprocess.Popen(args, env=rank_env(r, 2, port), stdout=logs[r], stderr=subprocess.STDOUT)
             for r in range(2)]
    try:
        wait_until(lambda: (run / "last" / STATE_FILE).exists(), 90, what="rank 0's first checkpoint")
        procs[1].send_signal(sig)
        # Killed: the dead peer's connection resets at once; hung: the collective times out.
        status = procs[0].wait(timeout + 30)
        assert status == 1, (status, (tmp_path / "rank0.log").read_text()[-3000:])
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for f in logs:
            f.close()
    error = (tmp_path / "rank0.log").read_text().splitlines()[-1]
    assert error.startswith("error: rank 0 of 2: ") and "failed" in error and "--resume" in error, error
    if sig == signal.SIGSTOP:
        assert f"hung for more than {timeout} s" in error and "Timed out" in error

    checkpoint = find_checkpoint(run)
    step = load_trainer_state(checkpoint)["step"]
    assert step >= 5 and step % 5 == 0
    BitTransformerLM.from_pretrained(checkpoint)
    resumed = Trainer.from_run(run, corpus=str(corpus_file), steps=step + 2)  # one process now
    resumed.run()
    assert resumed.step == step + 2


def test_prepare_batch_shares_rows_as_the_whole_batch_decides_them():
    bits = torch.randint(0, 2, (10, 180), dtype=torch.uint8)
    bits[:, :60] = 0
    g_whole = torch.Generator().manual_seed(3)
    whole = prepare_batch(bits, 0.5, 0.3, g_whole, method="rle")
    parts = []
    for rank in range(3):
        g = torch.Generator().manual_seed(3)
        parts.append(prepare_batch(bits, 0.5, 0.3, g, method="rle", rows=DistContext(rank, 3).rows(10)))
        assert torch.equal(g.get_state(), g_whole.get_state())  # every rank's generator stays in step
    assert torch.equal(torch.cat([p.bits for p in parts if p.bits is not None]), whole.bits)
    assert torch.equal(torch.cat([p.compressed for p in parts]), whole.compressed)
    assert sum(p.original_bits for p in parts) == whole.original_bits
    assert sum(p.stream_bits for p in parts) == whole.stream_bits
    direct = [row[m] for p in parts if p.direct is not None for row, m in zip(p.direct, p.direct_mask)]
    assert [r.tolist() for r in direct] == [row[m].tolist() for row, m in zip(whole.direct, whole.direct_mask)]


def test_rows_cover_the_batch_once_and_need_a_row_per_rank():
    for world_size in (1, 2, 3, 5):
        shares = [range(10)[DistContext(r, world_size).rows(10)] for r in range(world_size)]
        assert [i for s in shares for i in s] == list(range(10))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError, match="smaller than the 4 processes"):
        DistContext(0, 4).rows(3)


def test_single_process_context_without_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = distributed.setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.distributed, ctx.is_main) == (0, 1, False, True)
    assert not torch.distributed.is_initialized()
    values = torch.tensor([1.0, 2.0])
    assert ctx.all_reduce(values) is values and ctx.wrap(torch.nn.Linear(2, 2)).__class__ is torch.nn.Linear
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        distributed.setup("cpu")
    with pytest.raises(ValueError, match="positive"):
        distributed.setup("cpu", timeout_s=0)


def test_devices(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device cpu"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device(None, local_rank=1) == resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="PyTorch sees 2 GPU"):
        resolve_device("cuda", local_rank=2)
    with pytest.raises(ValueError, match="device must be"):
        make_configs("tiny", device="tpu")


def test_guard_names_the_rank_and_what_failed_but_leaves_other_errors_alone():
    with pytest.raises(DistributedError, match=r"rank 1 of 2: averaging the gradients of step 7 failed.*peer"):
        with DistContext(1, 2).guard("averaging the gradients of step 7"):
            raise RuntimeError("Connection reset by peer")
    with pytest.raises(torch.OutOfMemoryError):
        with DistContext(1, 2).guard("a step"):
            raise torch.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(RuntimeError, match="^plain$"):
        with DistContext().guard("a step"):
            raise RuntimeError("plain")


def test_amp_runs_the_training_forward_in_bf16_and_keeps_float32_weights(corpus_file):
    runs, dtypes = {}, {False: set(), True: set()}
    for amp in (False, True):
        mc, tc = make_configs("tiny", corpus=str(corpus_file), steps=3, log_every=3, eval_every=0, eval_bytes=128,
                              amp=amp, direct_prob=0.5)
        runs[amp] = Trainer(mc, tc)
        runs[amp].model.blocks[0].mlp.register_forward_hook(
            lambda module, args, out, amp=amp: dtypes[amp].add(out.dtype) if module.training else None)
        runs[amp].run()
    assert dtypes == {False: {torch.float32}, True: {torch.bfloat16}}
    assert all(p.dtype == torch.float32 for p in runs[True].model.parameters())
    for fp32, bf16 in zip(runs[False].metrics, runs[True].metrics):
        for key in ("loss", "raw_loss", "direct_loss", "val_bits_per_byte"):
            assert bf16[key] == pytest.approx(fp32[key], rel=1e-2), key
