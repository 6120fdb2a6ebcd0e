"""Does the K/C/S safety gate catch what it should, leave ordinary text alone, and cost little?

With the model's calibrated floors (`MODEL/gate.json`, written by `python -m bitlm.cli.gate calibrate`,
which fits them on the even-numbered documents' held-out tails), one run prints:
  * false alarms: the share of windows of held-out text the calibration did NOT use (the odd-numbered
    documents' held-out tails) that fall below each floor (M: whose match length is above its limit);
    and, as generations of --bytes bytes, the share of those tails' consecutive --bytes-byte pieces in
    which M would trigger (`m_alarms`: the gate's checks and patience on each piece from its start);
  * detection: for --prompts prompts (openings of held-out passages, the same for every condition),
    generations of --bytes bytes with the gate in `warn` mode at temperature 0 (greedy: loops) and at
    --soup-temperature (letter soup), and, for contrast, at 0.8 (ordinary sampling): the share of
    generations with at least one trigger, and which metric fired; greedy once more with the floors of
    K, C and S alone (the gate before M, the long-loop signal), for before/after on the same prompts;
    and how many generations end in a loop (their last 256 bytes repeat with a period of at most 128
    bytes, `tail_period`), how many of those the gate marks there (a span in the last 256 bytes), and the
    same for the loops whose period is longer than the window (the ones C cannot see);
  * cost: generation bytes/s with the gate (warn) and without, in turns, on one thread.

    python -m bench.gate                          # shipped model in assets/
    python -m bench.gate --model runs/x --window 64 --prompts 20 --bytes 400
"""
import argparse
import collections
import random
import time

import torch

from bench.quality import load_model_arg, machine_line
from bitlm.bits.frames import frame_bits, text_to_bits
from bitlm.generate.gate import (
    FLOORED, GateConfig, GateFloors, false_alarm_rates, frame_bytes, load_floors, match_lengths,
)
from bitlm.train.data import load_corpus, split_corpus
from bitlm.train.evaluate import gate_windows


def prompts_from(texts: list[str], n: int, chars: int = 48, seed: int = 0) -> list[str]:
    """n passages of `chars` characters from the texts, starting at line starts, chosen with a seed."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        text = rng.choice(texts)
        starts = [i + 1 for i, ch in enumerate(text[:-chars]) if ch == "\n"]
        if starts:
            at = rng.choice(starts)
            out.append(text[at:at + chars])
    return out


def tail_period(data: bytes, span: int = 256, max_period: int = 128) -> int | None:
    """The smallest period P ≤ max_period with which the last `span` bytes of data repeat (they equal the
    `span` bytes P before them), or None: the output ends in a loop of period P."""
    for period in range(1, max_period + 1):
        if len(data) >= span + period and data[-span:] == data[-span - period:-period]:
            return period
    return None


def m_alarms(data: bytes, config: GateConfig, size: int) -> tuple[int, int]:
    """(pieces in which M triggers, pieces): data cut into consecutive `size`-byte pieces, each read as a
    generation from its start with the gate's checks (every window // 8 bytes from the window on) and
    patience (that many checks in a row above M's limit), as `Gate.check` reads M."""
    window, limit = config.floors.window, config.floors.floors["M"]
    fired = pieces = 0
    for lo in range(0, len(data) - size + 1, size):
        run, pieces = 0, pieces + 1
        for m in match_lengths(data[lo:lo + size])[window - 1::max(1, window // 8)]:
            run = run + 1 if m > limit else 0
            if run >= config.patience:
                fired += 1
                break
    return fired, pieces


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print its tables. Returns the figures (for tests)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="assets", help="a save_pretrained folder with a gate.json (default: assets)")
    ap.add_argument("--corpus", default="shakespeare", help="the model's corpus (default: shakespeare)")
    ap.add_argument("--window", type=int, default=64, help="gate window in bytes, one of gate.json's (default: 64)")
    ap.add_argument("--prompts", type=int, default=20, help="prompts per condition (default: 20)")
    ap.add_argument("--bytes", type=int, default=400, help="bytes per generation (default: 400)")
    ap.add_argument("--soup-temperature", type=float, default=2.0, help="the letter-soup temperature (default: 2.0)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    checkpoint, model = load_model_arg(ap, args.model)
    floors = load_floors(checkpoint).get(args.window)
    if floors is None:
        ap.error(f"{checkpoint} has no floors for a {args.window}-byte window; run "
                 f"python -m bitlm.cli.gate calibrate --model {checkpoint}")
    heldout = split_corpus(load_corpus(args.corpus))[1]
    print(machine_line() + " (start)")
    limit = floors.floors.get("M")
    print(f"model {checkpoint}; window {args.window} bytes; floors K {floors.floors['K']:.4f}, C {floors.floors['C']:.4f}, "
          f"S {floors.floors['S']:.4f} (the {floors.quantile:g} quantile of {floors.n_windows} windows: {floors.source}); "
          + (f"M limit {limit:g} bytes (the larger of the window and the {1 - floors.quantile:g} quantile of the windows' "
             "longest repeats)" if limit is not None else
             "no M limit (a gate.json from before M: recalibrate)") + "\n", flush=True)

    unseen = gate_windows(model, heldout[1::2], [args.window])[args.window]
    false_alarms = false_alarm_rates(unseen, floors)
    n_unseen = len(unseen.values["K"])
    print(f"false alarms on {n_unseen} held-out windows the calibration did not use: "
          + ", ".join(f"{m} {v:.2%}" for m, v in false_alarms.items()), flush=True)
    gate = GateConfig("warn", floors)
    pieces = m_alarms("".join(heldout[1::2]).encode("utf-8"), gate, args.bytes) if limit is not None else None
    if pieces:
        print(f"M triggers in {pieces[0]} of {pieces[1]} pieces of {args.bytes} bytes of that text read as generations",
              flush=True)

    prompts = prompts_from(heldout, args.prompts)
    before_m = GateConfig("warn", GateFloors(floors.window, {m: floors.floors[m] for m in FLOORED}, floors.quantile,
                                             floors.n_windows, floors.source))
    detection, loops = {}, {}
    frame, span = frame_bits(model.config.parity), 256
    for label, temperature, config in (("greedy (temperature 0: loops)", 0.0, gate),
                                       ("greedy, K/C/S floors only (the gate before M)", 0.0, before_m),
                                       (f"letter soup (temperature {args.soup_temperature:g})", args.soup_temperature, gate),
                                       ("ordinary sampling (temperature 0.8)", 0.8, gate)):
        if config is before_m and limit is None:
            continue
        fired, metrics, ends = 0, collections.Counter(), collections.Counter()
        for i, prompt in enumerate(prompts):
            g = model.generate(text_to_bits(prompt), frame * args.bytes, temperature=temperature, seed=100 + i,
                               gate=config)
            fired += bool(g.gate_events)
            metrics.update({e.metric for e in g.gate_events})
            period = tail_period(frame_bytes(g.bits.tolist(), frame), span)
            if period is not None:
                marked = any(e.end > args.bytes - span for e in g.gate_events)
                long = period > args.window
                ends.update({"loops": 1, "marked": int(marked), "long": int(long), "long marked": int(long and marked)})
        detection[label] = (fired / len(prompts), dict(metrics))
        loops[label] = {k: ends[k] for k in ("loops", "marked", "long", "long marked")}
        print(f"  {label}: {fired}/{len(prompts)} generations triggered the gate {dict(metrics)}; "
              f"ending in a loop {loops[label]}", flush=True)

    prompt = text_to_bits(prompts[0])
    runs = {"off": [], "warn": []}
    for _ in range(3):
        for mode in runs:
            t0 = time.perf_counter()
            model.generate(prompt, frame * args.bytes, temperature=0.8, seed=7, gate=gate if mode == "warn" else None)
            runs[mode].append(args.bytes / (time.perf_counter() - t0))
    speed = {mode: max(v) for mode, v in runs.items()}
    cost = speed["off"] / speed["warn"] - 1

    shown = [m for m in "KCSM" if m in false_alarms]
    print(f"\n| held-out windows not used for calibration | windows | {' | '.join(shown)} |")
    print("|---|---|" + "---|" * len(shown))
    print(f"| false-alarm rate (below the floor; M: above its limit) | {n_unseen} | "
          + " | ".join(f"{false_alarms[m]:.2%}" for m in shown) + " |")
    if pieces:
        print(f"| the same text as {pieces[1]} generations of {args.bytes} bytes: M triggers in | "
              f"{pieces[0]} | | | | {pieces[0] / pieces[1]:.2%} |")
    print(f"\n| {args.prompts} prompts, {args.bytes} bytes each, gate warn | triggered | by metric | end in a loop "
          f"(marked there) | of which period > {args.window} bytes (marked there) |")
    print("|---|---|---|---|---|")
    for label, (rate, metrics) in detection.items():
        ends = loops[label]
        print(f"| {label} | {rate:.0%} | {', '.join(f'{m}: {n}' for m, n in sorted(metrics.items())) or '—'} "
              f"| {ends['loops']} ({ends['marked']}) | {ends['long']} ({ends['long marked']}) |")
    print(f"\n| generation, {args.bytes} bytes, {args.threads} thread(s) | bytes/s | cost |")
    print("|---|---|---|")
    print(f"| gate off | {speed['off']:.0f} | — |")
    print(f"| gate warn, {args.window}-byte window | {speed['warn']:.0f} | {cost:+.1%} |")
    print("\n" + machine_line() + " (end)")
    return {"false_alarms": false_alarms, "m_alarms": pieces, "detection": detection, "loops": loops, "speed": speed,
            "cost": cost}


if __name__ == "__main__":
    main()
