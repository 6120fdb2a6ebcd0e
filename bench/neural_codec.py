"""Neural compressor benchmark: on the first N bytes of a held-out split (default: Shakespeare's; each
--bytes value is one run, capped at the split's size), the bits per byte and the encode / decode speed
(bytes/s, one thread unless --threads) of

- the exact path (`bitlm.compress.container.compress_file` forced to the neural method: the integer
  predictor and a range coder, whole file with its header; decoded and checked),
- the float path (`bitlm.compress.float_reference`, the bit-by-bit float coder it replaces; the reference),
- zlib -9, bz2 -9, lzma -9e and `zpaq -m5` (Debian's zpaq; left out when not installed),

and the exact path's cross-entropy (Σ -log2 of its coded frequencies) beside the float model's.

--speed: in one run, per --bytes value, the exact path's encode and decode bytes/s of version 1 (float64
linear layers: the previous code path) and version 2 (int8 linear layers with exact int32 sums), with 1
and 2 threads, beside zpaq -m5, and the ratios; --before REV adds the code at git REV (e.g. 313227e^, the
code when issue 20 was filed), run from a worktree in a subprocess, and checks that version 1 writes its
very stream. --profile: where one decode step's time goes (64 lanes, full ring, 1 thread unless
--threads) in versions 1 and 2: attention, linear layers, the rest (with more threads only the total:
the parts would add up the threads' times).

    python -m bench.neural_codec --bytes 100000 1000000
    python -m bench.neural_codec --model runs/v2/best --bytes 20000 --skip-float-above 0
    python -m bench.neural_codec --speed --before 313227e^ --bytes 2000 8000 32000 100000
    python -m bench.neural_codec --profile
    python -m bench.neural_codec --mixing --bytes 100000 1000000   # the whole held-out split: 505 739 bytes

--mixing: per --bytes value, bits/byte and encode / decode bytes/s of the container's neural+cm, neural and cm
methods (each forced; decoded and checked), beside zpaq -m5, one thread.
"""
import argparse
import bz2
import json
import lzma
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import torch

from bench.quality import load_model_arg
from bitlm.compress import container, exact, float_reference, neural
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


def _full_state(pred: exact.ExactPredictor, lanes: int, split: bytes) -> exact.LaneState:
    """A LaneState of `lanes` lanes of held-out text whose ring is full and has wrapped (window + 44 slots)."""
    n = pred.window + 44
    arr = torch.tensor(list(split[:lanes * n]), dtype=torch.int64).view(lanes, n)
    state = exact.LaneState(pred, lanes)
    for s in range(0, n - 1, 16):
        e = min(s + 16, n - 1)
        pred.frequencies(state, arr[:, max(s - 1, 0):e - 1], e - s)
    return state


def profile_step(model, split: bytes, lanes: int = 64, steps: int = 12) -> dict[str, dict[str, float]]:
    """{path: {part: ms per decode step}} for one-slot steps of `lanes` lanes over a full ring, for the
    numba kernel of version 1 (float64 linears, int16 rings) and version 2 (int8 linears and rings): the
    attention (`post_qkv` / `post_qkv8`: attention with the qkv rounding and the ring store), the linear layers (`ExactPredictor._matmul`:
    v1 the float64 matmuls, v2 the int8 pieces, products and join), the rest (total minus both), median
    over `steps` steps."""
    import statistics
    from bitlm.compress import attention_kernel as K
    out = {}
    for version in (1, 2):
        pred = exact.ExactPredictor(model, kernel="numba", version=version)
        state = _full_state(pred, lanes, split)
        acc = {"attention": 0.0, "linear": 0.0}
        patches = []

        def timer(owner, name, part):
            fn = getattr(owner, name)

            def wrapped(*a, **k):
                t0 = time.perf_counter()
                r = fn(*a, **k)
                acc[part] += time.perf_counter() - t0
                return r
            patches.append((owner, name, fn))
            setattr(owner, name, wrapped)
        timer(K, "post_qkv8" if version >= 2 else "post_qkv", "attention")
        timer(pred, "_matmul", "linear")
        rows = {"attention": [], "linear": [], "total": []}
        prev = torch.tensor(list(split[:lanes]), dtype=torch.int64).view(lanes, 1)
        try:
            for _ in range(steps):
                acc["attention"] = acc["linear"] = 0.0
                t0 = time.perf_counter()
                pred.frequencies(state, prev, 1)
                rows["total"].append(time.perf_counter() - t0)
                rows["attention"].append(acc["attention"])
                rows["linear"].append(acc["linear"])
        finally:
            for owner, name, fn in reversed(patches):
                if owner is pred:
                    delattr(pred, name)
                else:
                    setattr(owner, name, fn)
        med = {k: 1000 * statistics.median(v) for k, v in rows.items()}
        med["rest"] = med["total"] - med["attention"] - med["linear"]
        out[f"v{version}"] = med
    return out


_BEFORE = """
import hashlib, json, sys, time, torch
from bitlm.compress import container
from bitlm.model.transformer import BitTransformerLM
model = BitTransformerLM.from_pretrained(sys.argv[1]).eval()
everything = open(sys.argv[2], "rb").read()
container.decompress_file(container.compress_file(everything[:600], model, methods=("neural",)).blob, model)
for n in map(int, sys.argv[3].split(",")):
    for t in map(int, sys.argv[4].split(",")):
        torch.set_num_threads(t)
        data = everything[:n]
        t0 = time.perf_counter(); blob = container.compress_file(data, model, methods=("neural",)).blob
        t_enc = time.perf_counter() - t0
        t0 = time.perf_counter(); back = container.decompress_file(blob, model)
        t_dec = time.perf_counter() - t0
        assert back == data, "round trip failed"
        open(f"{sys.argv[2]}.{n}.{t}", "wb").write(blob)
        print(json.dumps([n, t, t_enc, t_dec]), flush=True)
"""


def before_rows(rev: str, model_dir: Path, split: bytes, sizes: list[int], threads: tuple[int, ...]
                ) -> dict[tuple[int, int], tuple[float, float, bytes]]:
    """{(n, threads): (encode s, decode s, neural payload)} of the code at git `rev` (a worktree, run in a
    subprocess on the same model and bytes), for the ratios against the code when the issue was filed."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        tree, data = Path(tmp) / "tree", Path(tmp) / "data"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=root, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            data.write_bytes(split[:max(sizes)])
            run = subprocess.run([sys.executable, "-c", _BEFORE, str(model_dir.resolve()), str(data),
                                  ",".join(map(str, sizes)), ",".join(map(str, threads))],
                                 cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
            if run.returncode:
                raise SystemExit(f"the code at {rev} failed: {run.stderr.strip()[-800:]}")
            out = {}
            for line in run.stdout.splitlines():
                n, t, t_enc, t_dec = json.loads(line)
                blob = Path(f"{data}.{n}.{t}").read_bytes()
                out[n, t] = (t_enc, t_dec, blob[container.read_header(blob).size:])
            return out
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=root, check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def speed(model, split: bytes, sizes: list[int], threads: tuple[int, ...] = (1, 2), before: str | None = None,
          model_dir: Path | None = None) -> None:
    """Encode / decode bytes/s of the exact path's version 1 (float64 linears: the previous code path) and
    version 2 (int8 linears, today's), and of the code at git `before` (the code when issue 20 was filed,
    run from a worktree) with 1 and 2 threads, beside zpaq -m5, and the ratios, on the first n held-out
    bytes for each n. Checks that every thread count writes the same stream, and that version 1's stream
    is the one the code at `before` writes."""
    old = before_rows(before, model_dir, split, sizes, threads) if before else {}
    t0 = time.perf_counter()
    container.decompress_file(container.compress_file(split[:600], model, methods=("neural",)).blob, model)
    print(f"warm-up (numba compiles its kernels once per process): {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"{'bytes':>8} {'thr':>3} {'path':<24} {'encode B/s':>11} {'decode B/s':>11} {'encode s':>9} {'decode s':>9}")

    def row(n: int, t: int, name: str, t_enc: float, t_dec: float) -> None:
        print(f"{n:>8,} {t:>3} {name:<24} {n / t_enc:>11,.0f} {n / t_dec:>11,.0f} {t_enc:>9.2f} {t_dec:>9.2f}", flush=True)
    for n in sizes:
        data = split[:n]
        res: dict[tuple[int, int], tuple[float, float]] = {}
        for t in threads:
            torch.set_num_threads(t)
            if (n, t) in old:
                res[0, t] = old[n, t][:2]
                row(n, t, f"at filing ({before})", *res[0, t])
            for version in (1, 2):
                exact.ExactPredictor.of(model, version=version)          # derived outside the timings
                payloads, t_enc = timed(lambda: neural.model_encode(model, data, ("neural",), version=version))
                payload = payloads[0]["neural"]
                back, t_dec = timed(lambda: neural.model_decode(model, payload, n, version=version))
                if back != data:
                    raise SystemExit(f"version {version} round trip FAILED")
                if (n, t) in old and version == 1 and payload != old[n, t][2]:
                    raise SystemExit(f"version 1 wrote another stream than the code at {before}: FAILED")
                if version == 2:
                    blob = container.compress_file(data, model, methods=("neural",)).blob
                    if blob[container.read_header(blob).size:] != payload:
                        raise SystemExit("compress_file wrote another version-2 stream: FAILED")
                res[version, t] = (t_enc, t_dec)
                if res.get(("payload", version), payload) != payload:
                    raise SystemExit(f"version {version} wrote another stream with {t} threads: FAILED")
                res["payload", version] = payload
                row(n, t, f"v{version} ({'float64' if version == 1 else 'int8'} linears)", t_enc, t_dec)
        if shutil.which("zpaq"):
            _, z_enc, z_dec = zpaq_row(data)
            print(f"{n:>8,} {'':>3} {'zpaq -m5':<24} {n / z_enc:>11,.0f} {n / z_dec:>11,.0f} {z_enc:>9.2f} {z_dec:>9.2f}")
        for t in threads:
            (ne, nd), (pe, pd) = res[2, t], res[1, t]
            line = f"{n:>8,} {t:>3} v2 / v1 same threads: encode {pe / ne:.2f}x, decode {pd / nd:.2f}x"
            if (0, t) in res:
                (oe, od), (o1e, o1d) = res[0, t], res[0, threads[0]]
                line += (f"; v2 / at filing, same threads: encode {oe / ne:.2f}x, decode {od / nd:.2f}x; "
                         f"v2 / at filing with {threads[0]} thread: encode {o1e / ne:.2f}x, decode {o1d / nd:.2f}x")
            print(line, flush=True)


def mixing(model, split: bytes, sizes: list[int]) -> None:
    """Per size: bits/byte and encode / decode bytes/s of neural+cm, neural and cm (each method forced,
    whole files with headers, decoded and checked), beside zpaq -m5, one thread."""
    for n in sizes:
        data = split[:n]
        print(f"\n{len(data):,} held-out bytes, 1 thread")
        print(f"{'method':12s} {'bits/byte':>9s} {'encode B/s':>11s} {'decode B/s':>11s}")
        speeds = {}
        for method in ("neural+cm", "neural", "cm"):
            result, t_enc = timed(lambda: container.compress_file(data, model, methods=(method,)))
            back, t_dec = timed(lambda: container.decompress_file(result.blob, model))
            if back != data:
                raise SystemExit(f"{method} round trip FAILED")
            speeds[method] = len(data) / t_dec
            print(f"{method:12s} {8 * len(result.blob) / len(data):9.3f} {len(data) / t_enc:11,.0f} "
                  f"{len(data) / t_dec:11,.0f}", flush=True)
        if shutil.which("zpaq"):
            size, t_enc, t_dec = zpaq_row(data)
            print(f"{'zpaq -m5':12s} {8 * size / len(data):9.3f} {len(data) / t_enc:11,.0f} {len(data) / t_dec:11,.0f}")
        print(f"neural+cm decodes at {speeds['neural+cm'] / speeds['neural']:.3f} × the speed of neural alone; "
              f"cm at {speeds['cm'] / 1e3:,.0f} KB/s")


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
    p.add_argument("--speed", action="store_true",
                   help="only the exact path's speed: reference vs numba kernel, 1 and 2 threads, beside zpaq -m5")
    p.add_argument("--mixing", action="store_true",
                   help="bits/byte and speed of neural+cm, neural and cm (issue 19) beside zpaq -m5, one thread")
    p.add_argument("--before", metavar="REV", help="with --speed: also time the code at git REV (a worktree), "
                   "e.g. 313227e^, the code when issue 20 was filed")
    p.add_argument("--profile", action="store_true", help="only where a decode step's time goes (64 lanes, full ring)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model_arg(p, args.model)[1].eval()
    split = "".join(split_corpus(load_corpus(args.corpus))[1]).encode("utf-8")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s) "
          f"(of {torch.multiprocessing.cpu_count()} cores), torch {torch.__version__}")
    print(f"model: {args.model} ({model.num_params():,} parameters, {model.config.n_layer} x {model.config.n_embd}, "
          f"pos={model.config.pos}); text: {args.corpus} held-out split ({len(split):,} bytes)")
    if args.profile:
        for path, parts in profile_step(model, split).items():
            if torch.get_num_threads() > 1:           # the parts would add up the threads' times
                parts = {"total": parts["total"]}
            print(f"decode step, {torch.get_num_threads()} thread(s), {path}: " +
                  ", ".join(f"{k} {v:.1f} ms" for k, v in parts.items()), flush=True)
        return
    if args.speed:
        model_dir = Path(args.model)
        if args.before and not (model_dir / "model.safetensors").exists():
            p.error("--before needs --model to be a save_pretrained folder (the default, assets, is one)")
        speed(model, split, [min(n, len(split)) for n in args.bytes], before=args.before, model_dir=model_dir)
        return
    if args.mixing:
        mixing(model, split, [min(n, len(split)) for n in args.bytes])
        return
    for n in args.bytes:
        if n > len(split):
            print(f"\n(asked for {n:,} bytes; the held-out split has {len(split):,}, so this run takes all of it)")
        data = split[:n]
        run(model, data, "exact" in args.paths,
            "float" in args.paths and (args.skip_float_above is None or len(data) <= args.skip_float_above))


if __name__ == "__main__":
    main()
