"""Training at scale (issue 8, Must show 2): bits/s of 1 and 2 CPU processes side by side, and on a CUDA
GPU when there is one. Run: `python -m bench.train_scale [--preset small] [--seconds 60]`.

Every setting is a real run of `torchrun --standalone --nproc_per_node N -m bitlm.cli.train` for `--seconds`
of training (`--time-limit`), on the built-in pydoc corpus, with the preset's global batch (so N
processes share the same batch: strong scaling), validating only at the end. Threads are set
explicitly per process (OMP_NUM_THREADS = cores / N, as torchrun would for N > 1). bits/s is window
bits of the global batches trained per second of wall-clock training time (the run's `elapsed_s`)
between its first and last logged rows: start-up excluded, collectives and logging included. With
CUDA, the shipped `base` preset also runs on one GPU in fp32 and with --amp (bf16 autocast), beside
the same preset on the CPU; several GPUs add a torchrun row with one process per GPU. Load from
other processes slows every setting: the load average is printed before each one.
"""
import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


from bitlm.train.checkpoints import read_metrics
from bitlm.train.trainer import PRESETS

ROOT = Path(__file__).resolve().parents[1]


def measure(preset: str, seconds: float, nproc: int, threads: int, device: str, amp: bool = False) -> dict:
    """One torchrun training run; returns its steps and bits/s (excluding the first logged interval)."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "bitlm.cli.train", "--corpus", "pydoc", "--preset", preset, "--steps", "100000000",
               "--time-limit", str(seconds / 60), "--log-every", "5", "--eval-every", "0", "--eval-bytes", "4096",
               "--device", device, "--out", str(run)] + (["--amp"] if amp else [])
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        load = os.getloadavg()[0]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3 * seconds + 300)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        rows = read_metrics(run)
    bits_per_step = PRESETS[preset][1]["batch_size"] * PRESETS[preset][0].block_size
    first, last = rows[0], rows[-1]
    return {"steps": last["step"], "load": load,
            "bits_per_s": (last["step"] - first["step"]) * bits_per_step / (last["elapsed_s"] - first["elapsed_s"])}


def table(title: str, rows: list[tuple[str, dict]], baseline: str) -> None:
    print(f"\n{title}\n")
    print("| setting | steps | bits/s | ratio | load avg before |")
    print("|---|---|---|---|---|")
    base = dict(rows)[baseline]["bits_per_s"]
    for name, r in rows:
        print(f"| {name} | {r['steps']} | {r['bits_per_s']:,.0f} | {r['bits_per_s'] / base:.2f} × | {r['load']:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small", choices=list(PRESETS), help="preset of the CPU comparison")
    p.add_argument("--seconds", type=float, default=60, help="training seconds per setting")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}, "
          f"{platform.python_implementation()} {platform.python_version()}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start")

    def threads(n: int) -> str:
        return f"{n} thread{'s' if n > 1 else ''}"

    half = max(1, cores // 2)
    settings = [(f"1 process × {threads(cores)}", 1, cores), (f"2 processes × {threads(half)} (gloo)", 2, half)]
    if cores > 1:  # the per-process share of the 2-process row, alone
        settings.insert(1, ("1 process × 1 thread", 1, 1))
    cpu = [(name, measure(args.preset, args.seconds, n, t, "cpu")) for name, n, t in settings]
    table(f"CPU, preset {args.preset} (global batch {PRESETS[args.preset][1]['batch_size']} × "
          f"{PRESETS[args.preset][0].block_size} bits), {args.seconds:.0f} s per setting", cpu, settings[0][0])

    if not torch.cuda.is_available():
        print("\nno GPU on this machine")
        return
    gpus = torch.cuda.device_count()
    gpu = [(f"CPU, 1 process × {cores} threads", measure("base", args.seconds, 1, cores, "cpu")),
           (f"{torch.cuda.get_device_name(0)}, fp32", measure("base", args.seconds, 1, 1, "cuda")),
           (f"{torch.cuda.get_device_name(0)}, bf16 autocast", measure("base", args.seconds, 1, 1, "cuda", amp=True))]
    if gpus > 1:
        gpu.append((f"{gpus} GPUs, torchrun (nccl), bf16 autocast",
                    measure("base", args.seconds, gpus, max(1, cores // gpus), "cuda", amp=True)))
    table(f"GPU, preset base (the shipped model), {args.seconds:.0f} s per setting", gpu, gpu[0][0])


if __name__ == "__main__":
    main()
