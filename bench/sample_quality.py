"""Is the shipped model's generated text made of real words, and does it always decode?

Generates --bytes bytes (default 2,000) after each of a few prompts at temperature 0.8 with fixed
seeds (prompt i uses --seed + i), then reports per generation and overall:
  * the share of its alphabetic words ([A-Za-z]+, case-folded) that occur in the vocabulary of the
    corpus's training split; a word cut by the byte limit at the end, or begun in the prompt, is not
    counted. The baseline is the same share for the held-out split (real text the model never saw);
  * whether it passes STRICT decoding (`bits_to_text(..., errors="strict")`: every parity bit right,
    valid UTF-8, whole frames), with the first error when it does not.
Prints one table and the start of the first sample. With --baseline (another checkpoint, e.g.
`git:REV` for the model shipped at commit REV) the same prompts and seeds run on both models, the
two in turn for each prompt so that load hits both alike, and a last table sets their word shares
and generation speeds side by side. The --model also runs with speculation (`bitlm.generate.draft.NGramDraft`
built from the corpus's training split; --no-draft skips it): the table checks its bits equal the
plain generation's and gives its speed beside the others.

    python -m bench.sample_quality                           # shipped model in assets/, shakespeare
    python -m bench.sample_quality --threads 1 --baseline git:f8e9949   # beside the v1 model
    python -m bench.sample_quality --model runs/x --corpus pydoc --threads 1
"""
import argparse
import re
import time

import torch

from bench.quality import load_model_arg, machine_line
from bitlm.bits.frames import BitDecodeError, bits_to_text, decode_bits, frame_bits, text_to_bits
from bitlm.train.data import load_corpus, split_corpus
from bitlm.generate.draft import NGramDraft
from bitlm.train.evaluate import vocabulary, word_share
from bitlm.model.transformer import BitTransformerLM

PROMPTS = (
    "KING.\n",
    "HAMLET.\nTo be, or not to be, that is the question:\n",
    "SCENE I. A street.\n\n[Enter two Gentlemen.]\n\n",
    "QUEEN.\nMy lord, ",
)
LEADING_LETTERS = re.compile(r"\A[A-Za-z]+")
TRAILING_LETTERS = re.compile(r"[A-Za-z]+\Z")


def strict_decode(bits: torch.Tensor, parity: bool) -> tuple[str, str | None]:
    """Decode generated bits strictly.

    Returns: (text, None) when every frame has the right parity bit and the bytes are valid UTF-8;
    otherwise (the lenient decoding with U+FFFD marks, the strict decoder's error message)."""
    try:
        return bits_to_text(bits, parity=parity, errors="strict"), None
    except BitDecodeError as e:
        return decode_bits(bits, parity=parity).text, str(e)


def scored_text(prompt: str, generated: str) -> str:
    """The generated text without the partial words at its edges: the end of a word the prompt began
    (when the prompt ends with a letter) and a word the byte limit may have cut (when it ends with one)."""
    if LEADING_LETTERS.match(prompt[-1:]):
        generated = LEADING_LETTERS.sub("", generated)
    return TRAILING_LETTERS.sub("", generated)


def sample(model: BitTransformerLM, prompt: str, n_bytes: int, temperature: float, seed: int,
           vocab: set[str], draft: NGramDraft | None = None) -> dict:
    """Generate n_bytes after prompt and measure them (see the module docstring).

    Returns: prompt, seed, text, strict_error (None when strict decoding passed), seconds, and
    word_share's words / known / share of the scored text."""
    parity = model.config.parity
    t0 = time.perf_counter()
    gen = model.generate(text_to_bits(prompt, parity=parity), n_bytes * frame_bits(parity),
                         temperature=temperature, seed=seed, draft=draft)
    seconds = time.perf_counter() - t0
    text, error = strict_decode(gen.bits, parity)
    return dict(prompt=prompt, seed=seed, text=text, bits=gen.bits, strict_error=error, seconds=seconds,
                **word_share(scored_text(prompt, text), vocab))


def print_table(results: list[dict], reference: dict, n_bytes: int, corpus_name: str) -> dict:
    """Print one model's per-prompt table; returns its totals: words, known, share, passed, bytes_per_s."""
    words, known = sum(r["words"] for r in results), sum(r["known"] for r in results)
    overall = known / words if words else float("nan")
    passed = sum(r["strict_error"] is None for r in results)
    speed = n_bytes * len(results) / sum(r["seconds"] for r in results)
    print("\n| text | seed | words | in training vocabulary | × held-out text | strict decode | bytes/s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        status = "pass" if r["strict_error"] is None else f"FAIL: {r['strict_error']}"
        print(f"| generated after {r['prompt']!r} | {r['seed']} | {r['words']} | {r['share']:.1%} "
              f"| {r['share'] / reference['share']:.3f} | {status} | {n_bytes / r['seconds']:.0f} |")
    print(f"| all generations | — | {words} | {overall:.1%} | {overall / reference['share']:.3f} "
          f"| {passed}/{len(results)} pass | {speed:.0f} |")
    print(f"| held-out {corpus_name} text (baseline) | — | {reference['words']} | {reference['share']:.1%} "
          f"| 1.000 | — | — |")
    return dict(words=words, known=known, share=overall, passed=passed, bytes_per_s=speed)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark and print its table(s). Returns the --model's per-prompt results (for tests)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="assets", help="a save_pretrained folder, a run folder (its best/, "
                    "else last/ checkpoint) or git:REV (default: assets)")
    ap.add_argument("--baseline", help="a second model to compare with, same forms as --model (e.g. git:f8e9949, "
                    "the v1 model)")
    ap.add_argument("--corpus", default="shakespeare", help="corpus name or path whose training split gives the "
                    "vocabulary (default: shakespeare)")
    ap.add_argument("--prompt", action="append", help="a prompt (repeat for several; default: four Shakespeare "
                    "openings)")
    ap.add_argument("--bytes", type=int, default=2000, help="bytes to generate per prompt (default: 2000)")
    ap.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default: 0.8)")
    ap.add_argument("--seed", type=int, default=1234, help="seed of the first prompt; prompt i uses seed + i "
                    "(default: 1234)")
    ap.add_argument("--sample-chars", type=int, default=600, help="characters of the first sample to print")
    ap.add_argument("--no-draft", action="store_true", help="skip the speculative run of --model")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch threads (default: torch's default, all cores)")
    args = ap.parse_args(argv)
    if args.bytes < 1:
        ap.error(f"--bytes must be at least 1, got {args.bytes}")
    torch.set_num_threads(args.threads)

    corpus = load_corpus(args.corpus)
    train_texts, val_texts = split_corpus(corpus)
    vocab = vocabulary(train_texts)
    checkpoint, model = load_model_arg(ap, args.model)
    models = {"model": (checkpoint, model, None)}
    if not args.no_draft:
        draft = NGramDraft("".join(train_texts), parity=model.config.parity)
        models["model+draft"] = (f"{checkpoint} with a draft from the {corpus.name} training split", model, draft)
    if args.baseline:
        models["baseline"] = (*load_model_arg(ap, args.baseline), None)
    reference = word_share("".join(val_texts), vocab)
    prompts = args.prompt or list(PROMPTS)
    print(machine_line() + " (start)")
    for role, (checkpoint, model, _) in models.items():
        print(f"{role} {checkpoint} ({model.num_params():,} parameters, positions {model.config.pos})")
    print(f"vocabulary: {len(vocab):,} words of the {corpus.name} training split; {args.bytes:,} bytes per prompt "
          f"at temperature {args.temperature:g}\n", flush=True)

    results = {role: [] for role in models}
    for i, prompt in enumerate(prompts):
        for role, (_, model, draft) in models.items():
            r = sample(model, prompt, args.bytes, args.temperature, args.seed + i, vocab, draft)
            results[role].append(r)
            print(f"  {role} {prompt!r}: {r['share']:.1%} of {r['words']} words known, strict decode "
                  f"{'passed' if r['strict_error'] is None else 'FAILED'} ({r['seconds']:.1f} s)", flush=True)

    totals = {}
    for role, (checkpoint, _, _) in models.items():
        print(f"\n{role}: {checkpoint}")
        totals[role] = print_table(results[role], reference, args.bytes, corpus.name)
    if "model+draft" in results:
        same = sum(torch.equal(a["bits"], b["bits"]) for a, b in zip(results["model"], results["model+draft"]))
        print(f"\nspeculation: {same}/{len(prompts)} generations bit-identical to plain generation; "
              f"{totals['model+draft']['bytes_per_s'] / totals['model']['bytes_per_s']:.2f}x its speed")
    if args.baseline:
        old = totals["baseline"]
        roles = [r for r in ("model", "model+draft") if r in totals]
        print(f"\n| {args.bytes:,} bytes per prompt, {args.threads} thread(s) | "
              + " | ".join(f"{args.model}{' + draft' if r != 'model' else ''}" for r in roles)
              + f" | {args.baseline} | ratio{'s' if len(roles) > 1 else ''} |")
        print("|---" * (len(roles) + 3) + "|")
        ratio = lambda key, fmt: ", ".join(format(totals[r][key] / old[key], fmt) for r in roles)  # noqa: E731
        print("| generation bytes/s | " + " | ".join(f"{totals[r]['bytes_per_s']:.0f}" for r in roles)
              + f" | {old['bytes_per_s']:.0f} | {ratio('bytes_per_s', '.2f')} (×) |")
        print("| words in training vocabulary | " + " | ".join(f"{totals[r]['share']:.1%}" for r in roles)
              + f" | {old['share']:.1%} | {ratio('share', '.3f')} |")
        print("| strict decode | " + " | ".join(f"{totals[r]['passed']}/{len(prompts)}" for r in roles)
              + f" | {old['passed']}/{len(prompts)} | — |")
    first = results["model"][0]
    print(f"\nsample of {args.model} (seed {first['seed']}, first {args.sample_chars} characters after the prompt):\n")
    print(first["prompt"] + first["text"][:args.sample_chars])
    print("\n" + machine_line() + " (end)")
    return results["model"]


if __name__ == "__main__":
    main()
