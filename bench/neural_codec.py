"""Neural compressor benchmark: on the first N bytes of a held-out split (default: Shakespeare's; each
--bytes value is one run, capped at the split's size), the bits per byte and the encode / decode speed
(bytes/s, one thread unless --threads) of

- the exact path (`bitlm.compress.container.compress_file` forced to the neural method: the integer
  predictor and a range coder, whole file with its header; decoded and checked),
- the float path (`bitlm.compress.float_reference`, the bit-by-bit float coder it replaces; the reference),
- zlib -9, bz2 -9, lzma -9e and `zpaq -m5` (Debian's zpaq; left out when not installed),

and the exact path's cross-entropy (Σ -log2 of its coded frequencies) beside the float model's.

    python -m bench.neural_codec --bytes 100000 1000000
    python -m bench.neural_codec --model runs/v2/best --bytes 20000 --skip-float-above 0
"""
import argparse
import bz2
import lzma
import platform
import shutil
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import torch

from bench.quality import load_model_arg
from bitlm.compress import float_reference, container
from bitlm.train.data import load_corpus, split_corpus


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def zpaq_row(data: bytes) -> tuple[int, float, float]:
    """(archive size, compress s, extract s) of `zpaq -m5`."""
    with tempfile.TemporaryDirectory() as tmp:
        src, archive, back = Path(tmp) / "data", Path(tmp) / "data.zpaq", Path(tmp) / "out"
        src.write_bytes(data)
        back.mkdir()
        quiet = dict(check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, t_enc = timed(lambda: subprocess.run(["zpaq", "a", str(archive), "data", "-m5"], cwd=tmp, **quiet))
        _, t_dec = timed(lambda: subprocess.run(["zpaq", "x", str(archive), "-to", str(back)], cwd=tmp, **quiet))
        extracted = next(p for p in back.rglob("data") if p.is_file())
        if extracted.read_bytes() != data:
            raise SystemExit("zpaq round trip FAILED")
        return archive.stat().st_size, t_enc, t_dec


def classic_rows(data: bytes) -> dict[str, tuple[int, float, float]]:
    """{name: (size, encode s, decode s)} of zlib -9, bz2 -9, lzma -9e and zpaq -m5."""
    codecs = {"zlib -9": (lambda: zlib.compress(data, 9), zlib.decompress),
              "bz2 -9": (lambda: bz2.compress(data, 9), bz2.decompress),
              "lzma -9e": (lambda: lzma.compress(data, preset=9 | lzma.PRESET_EXTREME), lzma.decompress)}
    rows = {}
    for name, (enc, dec) in codecs.items():
        blob, t_enc = timed(enc)
        back, t_dec = timed(lambda: dec(blob))
        if back != data:
            raise SystemExit(f"{name} round trip FAILED")
        rows[name] = (len(blob), t_enc, t_dec)
    if shutil.which("zpaq"):
        rows["zpaq -m5"] = zpaq_row(data)
    return rows


def run(model, data: bytes, with_exact: bool, with_float: bool) -> None:
    n = len(data)
    rows: dict[str, tuple[int, float, float]] = {}
    result = None
    if with_exact:
        result, t_enc = timed(lambda: container.compress_file(data, model, methods=("neural",)))
        back, t_dec = timed(lambda: container.decompress_file(result.blob, model, max_bytes=n))
        if back != data:
            raise SystemExit("exact path round trip FAILED")
        rows["exact path (container)"] = (len(result.blob), t_enc, t_dec)
    float_ideal = None
    if with_float:
        enc, t_enc = timed(lambda: float_reference.encode_bytes(model, data))
        back, t_dec = timed(lambda: float_reference.decompress_bytes(model, enc.stream, max_bytes=n))
        if back != data:
            raise SystemExit("float path round trip FAILED")
        rows["float path (float_reference)"] = (len(enc.stream), t_enc, t_dec)
        float_ideal = enc.ideal_bits
    rows.update(classic_rows(data))

    print(f"\n{n:,} bytes; exact path: {container.neural_lanes(n)} lanes, float path: "
          f"{float_reference.lane_count(9 * n, 9)} lanes")
    print(f"{'method':<28} {'bits/byte':>9} {'encode B/s':>11} {'decode B/s':>11}")
    for name, (size, te, td) in rows.items():
        print(f"{name:<28} {8 * size / n:>9.4f} {n / te:>11,.0f} {n / td:>11,.0f}")
    line = "cross-entropy (bits/byte, coded symbols):"
    if result is not None:
        line += f" exact path {result.neural_ideal_bits / n:.4f}"
    if float_ideal is not None:
        line += f" float path {float_ideal / n:.4f}"
    if result is not None and float_ideal is not None:
        line += f" (exact / float = {result.neural_ideal_bits / float_ideal:.4f})"
        line += (f"; file sizes exact / float = {rows['exact path (neural_codec)'][0] / rows['float path (float_codec)'][0]:.4f}"
                 f"; decode speed exact / float = {rows['float path (float_codec)'][2] / rows['exact path (neural_codec)'][2]:.2f}x")
    print(line, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="assets", help="checkpoint or run folder (default: assets)")
    p.add_argument("--corpus", default="shakespeare", help="'shakespeare', 'pydoc' or a text file/folder")
    p.add_argument("--bytes", type=int, nargs="+", default=[100_000, 1_000_000],
                   help="first N bytes of the held-out split, one run each (default: 100000 1000000)")
    p.add_argument("--skip-float-above", type=int, default=None,
                   help="run the (slow) float path only on inputs of at most this many bytes (default: all)")
    p.add_argument("--paths", nargs="+", choices=["exact", "float"], default=["exact", "float"],
                   help="which neural paths to run (default: both; the classic compressors always run)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model_arg(p, args.model)[1].eval()
    split = "".join(split_corpus(load_corpus(args.corpus))[1]).encode("utf-8")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s) "
          f"(of {torch.multiprocessing.cpu_count()} cores), torch {torch.__version__}")
    print(f"model: {args.model} ({model.num_params():,} parameters, {model.config.n_layer} x {model.config.n_embd}, "
          f"pos={model.config.pos}); text: {args.corpus} held-out split ({len(split):,} bytes)")
    for n in args.bytes:
        if n > len(split):
            print(f"\n(asked for {n:,} bytes; the held-out split has {len(split):,}, so this run takes all of it)")
        data = split[:n]
        run(model, data, "exact" in args.paths,
            "float" in args.paths and (args.skip_float_above is None or len(data) <= args.skip_float_above))


if __name__ == "__main__":
    main()
