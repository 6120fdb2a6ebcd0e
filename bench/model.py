"""Model benchmark (issue 3, Must show 5): training throughput p = 1 vs p = 9, generation speed with and
without the KV cache, telemetry overhead. Run: `python bench/model.py` (about 15 s on 2 idle cores; more on a busy machine).

Uses torch.set_num_threads(os.cpu_count()) explicitly. Measurements alternate between the compared
variants and report the fastest of the repeats, so load from other processes on a shared machine hits
both alike and disturbs the figures as little as possible.
"""
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bitlm.bits import text_to_bits  # noqa: E402
from bitlm.model import BitLMConfig, BitTransformerLM  # noqa: E402

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife. However little known the feelings or views of such a man may be on his "
        "first entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families. ")


def alternate(fns: dict, repeats: int) -> dict:
    """Fastest seconds of each callable, calling them in turn `repeats` times after one warm-up each."""
    times = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: min(v) for k, v in times.items()}


def train_step(model: BitTransformerLM, bits: torch.Tensor):
    def step():
        model.zero_grad(set_to_none=True)
        model.loss(bits).loss.backward()
    return step


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    rows = []

    # 1. training throughput (forward + backward of loss()), full 2304-bit context
    T = 2304
    configs = {
        "p=9 factorized": (BitLMConfig(), 8),
        "p=9 local transformer": (BitLMConfig(local="transformer"), 8),
        "p=1 (flat bits)": (BitLMConfig(patch_size=1, parity=False), 1),
    }
    models, steps = {}, {}
    for name, (cfg, batch) in configs.items():
        models[name] = BitTransformerLM(cfg).train()
        bits = torch.randint(0, 2, (batch, T), dtype=torch.uint8)
        steps[name] = train_step(models[name], bits)
    secs = alternate(steps, repeats=5)
    base = configs["p=1 (flat bits)"][1] * T / secs["p=1 (flat bits)"]
    for name, (cfg, batch) in configs.items():
        rate = batch * T / secs[name]
        rows.append((f"train bits/s, {name} ({models[name].num_params() / 1e6:.2f}M params)", f"{rate:,.0f}",
                     f"{rate / base:.1f}x vs p=1", "p=9 ≥ 5x p=1" if name == "p=9 factorized" else ""))

    # 2. generation at a 1024-bit context, default (~1M-parameter) model
    model = BitTransformerLM(BitLMConfig()).eval()
    prompt = text_to_bits(TEXT * 2)[:1024]
    n_cached, n_full = 9 * 128, 9 * 4
    gen_secs = alternate({
        "cached": lambda: model.generate(prompt, n_cached, seed=0),
        "full": lambda: model.generate(prompt, n_full, seed=0, use_cache=False),
    }, repeats=3)
    cached = n_cached / 9 / gen_secs["cached"]
    full = n_full / 9 / gen_secs["full"]
    rows.append((f"generate bytes/s, KV cache ({model.num_params() / 1e6:.2f}M params)", f"{cached:,.1f}",
                 f"{cached / full:.1f}x vs no cache", "≥ 200 B/s, ≥ 10x"))
    rows.append(("generate bytes/s, full forward per bit", f"{full:,.1f}", "1.0x", ""))

    # 3. telemetry overhead on a batch of 8 x 2304 bits (no grad, as in evaluation and the app)
    bits = torch.randint(0, 2, (8, T), dtype=torch.uint8)
    with torch.no_grad():
        fwd = alternate({
            "off": lambda: model(bits, telemetry=False),
            "on": lambda: model(bits, telemetry=True),
            "full": lambda: model(bits, telemetry=True, return_attention=True),
        }, repeats=15)
    rows.append(("forward 8x2304 bits, telemetry off (ms)", f"{fwd['off'] * 1e3:.1f}", "1.00x", ""))
    rows.append(("forward + telemetry (default) (ms)", f"{fwd['on'] * 1e3:.1f}",
                 f"{(fwd['on'] / fwd['off'] - 1) * 100:+.1f} %", "≤ 15 %"))
    rows.append(("forward + telemetry, return_attention (ms)", f"{fwd['full'] * 1e3:.1f}",
                 f"{(fwd['full'] / fwd['off'] - 1) * 100:+.1f} %", ""))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()} (set explicitly)")
    widths = [max(len(r[i]) for r in rows + [("metric", "value", "ratio", "target")]) for i in range(4)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    print(line(("metric", "value", "ratio", "target")))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


if __name__ == "__main__":
    main()
