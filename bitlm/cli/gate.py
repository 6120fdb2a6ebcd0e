"""`python -m bitlm.cli.gate calibrate` (`bitlm-gate`): the safety gate's floors for a model folder
(`bitlm.generate.gate`): each metric's quantile over windows of held-out text that the model scores itself
(M, the longest repeat of earlier output: a limit from above, the larger of the window and its 1 - quantile),
checked for false alarms on other held-out windows, written to MODEL/gate.json.

    python -m bitlm.cli.gate calibrate --model assets --corpus shakespeare --windows 32 64 128
"""
from __future__ import annotations

import argparse
import sys

from bitlm.generate.gate import false_alarm_rates, floors_from, save_floors
from bitlm.model.transformer import BitTransformerLM
from bitlm.train.data import load_corpus, split_corpus
from bitlm.train.evaluate import gate_windows


def main(argv: list[str] | None = None) -> int:
    """`python -m bitlm.cli.gate calibrate`: compute the floors of a model and write its gate.json."""
    ap = argparse.ArgumentParser(prog="python -m bitlm.cli.gate", description="The K/C/S safety gate's floors.")
    sub = ap.add_subparsers(dest="command", required=True)
    cal = sub.add_parser("calibrate", help="floors from held-out text: each metric's quantile over windows of "
                         "the even-numbered documents' held-out tails, checked on the odd-numbered ones; writes "
                         "MODEL/gate.json")
    cal.add_argument("--model", default="assets", help="a save_pretrained folder (default: assets)")
    cal.add_argument("--corpus", default="shakespeare", help="the corpus the model was trained on (default: shakespeare)")
    cal.add_argument("--windows", type=int, nargs="+", default=[32, 64, 128], help="window sizes in bytes "
                     "(default: 32 64 128)")
    cal.add_argument("--quantile", type=float, default=0.01, help="floor quantile (default: 0.01)")
    args = ap.parse_args(argv)
    if not 0 < args.quantile < 0.5 or min(args.windows) < 8:
        ap.error("need 0 < --quantile < 0.5 and windows of at least 8 bytes")

    model = BitTransformerLM.from_pretrained(args.model)
    heldout = split_corpus(load_corpus(args.corpus))[1]
    fit, check = gate_windows(model, heldout[0::2], args.windows), gate_windows(model, heldout[1::2], args.windows)
    source = f"{args.corpus} held-out split, even-numbered documents"
    floors = [floors_from(fit[w], args.quantile, source) for w in args.windows]
    path = save_floors(floors, args.model)
    print(f"{path}: floors at the {args.quantile:g} quantile")
    print(f"(M, the longest repeat of earlier text, triggers above its limit: the larger of the window and M's "
          f"{1 - args.quantile:g} quantile over windows)")
    print("| window (bytes) | windows fitted | K floor | C floor | S floor | M limit (bytes) | false alarms on held-out "
          "windows not fitted (K / C / S / M) |")
    print("|---|---|---|---|---|---|---|")
    for f in floors:
        fa = false_alarm_rates(check[f.window], f)
        print(f"| {f.window} | {f.n_windows} | {f.floors['K']:.4f} | {f.floors['C']:.4f} | {f.floors['S']:.4f} "
              f"| {f.floors['M']:g} | {fa['K']:.1%} / {fa['C']:.1%} / {fa['S']:.1%} / {fa['M']:.1%} of "
              f"{len(check[f.window].values['K'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
