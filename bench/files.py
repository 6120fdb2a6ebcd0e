"""The compressor on files people have (`bench/test_files.py`: prose, code, CSV, JSON, a log, HTML, a
binary, Shakespeare in Folio spelling and held out), beside the classic tools on the same bytes.

Per file: bits per byte (whole files, headers included) of the container's `neural+cm`, `cm` and
`neural` methods and its choice, and of `xz -9e`, `bzip2 -9`, `zstd -19 --ultra`, PPMd var. I order 16
(`pyppmd`) and `zpaq -m5` (tools not installed are left out), then the ratio of the choice to the best
classic. Targets (issue 19): ≤ 0.95 × the best classic on every text file, ≤ 0.85 × on the Folio slice,
binaries no more than the header over the best classic.

    python -m bench.files                         # the shipped model, every file (minutes: the model codes ~1.5 KB/s)
    python -m bench.files --bytes 16384 --only json log --check
    python -m bench.files --set validation       # files of the same kinds that cm's tuning never saw
"""
import argparse
import platform
import shutil
import subprocess
import time

import torch

from bench import test_files
from bench.compressors import COMPRESSORS
from bench.quality import load_model_arg
from bitlm.compress import container


def _tool(cmd: list[str], data: bytes) -> int | None:
    if shutil.which(cmd[0]) is None:
        return None
    return len(subprocess.run(cmd, input=data, capture_output=True, check=True).stdout)


def classics(data: bytes) -> dict[str, int]:
    """{tool: compressed bytes} of the classic tools installed here (PPMd and zpaq as bench.compressors
    runs them everywhere else)."""
    known = COMPRESSORS
    out = {"xz -9e": _tool(["xz", "-9e", "-c", "-"], data),
           "bzip2 -9": known["bz2 -9"][0](data),
           "zstd -19": _tool(["zstd", "-19", "--ultra", "-c", "-q", "-"], data)}
    for name, short in (("PPMd (order 16, 1 GB)", "PPMd o16"), ("zpaq -m5", "zpaq -m5")):
        size, available = known[name]
        out[short] = size(data) if available() else None
    return {k: v for k, v in out.items() if v is not None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="assets", help="model folder, run folder or git:REV (default: the shipped model)")
    p.add_argument("--bytes", type=int, default=test_files.SLICE, help="bytes per file (default %(default)s)")
    p.add_argument("--only", nargs="*", help="file names (default: all)")
    p.add_argument("--check", action="store_true", help="also decompress every choice and compare")
    p.add_argument("--set", default="bench", choices=["bench", "validation"],
                   help="bench (default): the files cm was tuned on; validation: others of the same kinds")
    args = p.parse_args()
    torch.set_num_threads(1)
    _, model = load_model_arg(p, args.model)
    model.eval()
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, 1 thread; "
          f"{args.bytes} bytes a file")
    missing = test_files.missing_files(args.set)
    if missing:
        print("not on this machine (left out):", ", ".join(missing))
    head = f"{'file':17s} {'n':>6s} {'nn+cm':>6s} {'cm':>6s} {'neural':>6s} {'chosen':>14s}"
    first = True
    worst_text = 0.0
    for name, (kind, data) in test_files.files(args.only, args.set).items():
        data = data[:args.bytes]
        t0 = time.perf_counter()
        result = container.compress_file(data, model)
        seconds = time.perf_counter() - t0
        if args.check:
            assert container.decompress_file(result.blob, model) == data, name
        bpb = {m: 8 * s / len(data) for m, s in result.sizes.items()}
        cl = classics(data)
        best_name = min(cl, key=cl.get)
        ratio = len(result.blob) / cl[best_name]
        if first:
            print(head + "".join(f" {k:>9s}" for k in cl) + "   choice/best classic")
            first = False
        print(f"{name:17s} {len(data):6d} {bpb.get('neural+cm', float('nan')):6.3f} {bpb['cm']:6.3f} "
              f"{bpb.get('neural', float('nan')):6.3f} {result.method:>9s} {result.bits_per_byte:.3f}"
              + "".join(f" {8 * v / len(data):9.3f}" for v in cl.values())
              + f"   {ratio:.3f} ({best_name}; {len(result.blob) - cl[best_name]:+d} B) {seconds:.0f}s", flush=True)
        if kind == "text":
            worst_text = max(worst_text, ratio)
    print(f"worst text file: {worst_text:.3f} × the best classic (target ≤ 0.95)")


if __name__ == "__main__":
    main()
