"""Neural compressor benchmark: on the first N bytes of a held-out split (default: Shakespeare's; each
--bytes value is one run, capped at the split's size), the bits per byte and the encode / decode speed
(bytes/s, one thread unless --threads) of

- the exact path (`bitlm.compress.container.compress_file` forced to the neural method: the integer
  predictor and a range coder, whole file with its header; decoded and checked),
- the float path (`bitlm.compress.float_reference`, the bit-by-bit float coder it replaces; the reference),
- zlib -9, bz2 -9, lzma -9e and `zpaq -m5` (Debian's zpaq; left out when not installed),

and the exact path's cross-entropy (Σ -log2 of its coded frequencies) beside the float model's.

--speed: in one run, per --bytes value, the exact path's encode and decode bytes/s with the reference
kernel (kernel="torch": float64 torch attention over float64 rings, the code before issue 20) and the
numba kernel (int16 rings), with 1 and 2 threads, beside zpaq -m5, and the ratios new / old (the streams
of both kernels are checked to be the same bytes). --profile: where one decode step's time goes (64
lanes, full ring, 1 thread unless --threads): attention, linear layers (the float64 matmuls), the rest
(with more threads only the total: the parts would add up the threads' times).

    python -m bench.neural_codec --bytes 100000 1000000
    python -m bench.neural_codec --model runs/v2/best --bytes 20000 --skip-float-above 0
    python -m bench.neural_codec --speed --bytes 2000 8000 32000 100000
    python -m bench.neural_codec --profile
    python -m bench.neural_codec --mixing --bytes 100000 1000000   # the whole held-out split: 505 739 bytes

--mixing: per --bytes value, bits/byte and encode / decode bytes/s of the container's neural+cm, neural and cm
methods (each forced; decoded and checked), beside zpaq -m5, one thread.
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
from bitlm.compress import container, exact, float_reference
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
    """{kernel: {part: ms per decode step}} for one-slot steps of `lanes` lanes over a full ring: the
    attention (torch: `_attention`; numba: `post_qkv`, i.e. attention with the qkv rounding and the ring
    store), the linear layers (the float64 matmuls; the torch path's `_Linear` calls, their rounding
    included), the rest (total minus both), median over `steps` steps."""
    import statistics
    from bitlm.compress import attention_kernel as K
    out = {}
    numba_pred = exact.ExactPredictor(model, kernel="numba")
    state_n = _full_state(numba_pred, lanes, split)
    for kernel in ("numba", "torch"):       # the reference last: its idle OpenMP threads spin a while
        pred = numba_pred if kernel == "numba" else exact.ExactPredictor(model, kernel="torch")
        state = state_n
        if kernel == "torch":                           # the same context in the reference's float64 rings
            state = exact.LaneState(pred, lanes)
            for i in range(len(pred.blocks)):
                state.ring_k[i], state.ring_v[i] = state_n._ring_double(i)
            state.ring_pos, state.pos = torch.from_numpy(state_n.ring_pos.copy()), state_n.pos
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
        if kernel == "torch":
            timer(pred, "_attention", "attention")
            timer(exact._Linear, "__call__", "linear")
        else:
            timer(K, "post_qkv", "attention")
            timer(torch, "matmul", "linear")
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
                setattr(owner, name, fn)
        med = {k: 1000 * statistics.median(v) for k, v in rows.items()}
        med["rest"] = med["total"] - med["attention"] - med["linear"]
        out[kernel] = med
    return out


def speed(model, split: bytes, sizes: list[int], threads: tuple[int, ...] = (1, 2)) -> None:
    """Encode / decode bytes/s of the reference (torch) and numba kernels with 1 and 2 threads beside
    zpaq -m5, ratios new / old, on the first n held-out bytes for each n (see the module docstring)."""
    saved = exact.DEFAULT_KERNEL
    t0 = time.perf_counter()
    exact.DEFAULT_KERNEL = "numba"
    container.decompress_file(container.compress_file(split[:600], model, methods=("neural",)).blob, model)
    print(f"warm-up (numba compiles its kernels once per process): {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"{'bytes':>8} {'thr':>3} {'path':<22} {'encode B/s':>11} {'decode B/s':>11} {'encode s':>9} {'decode s':>9}")
    try:
        for n in sizes:
            data = split[:n]
            res: dict[tuple[str, int], tuple[float, float]] = {}
            blobs = {}
            for t in threads:
                torch.set_num_threads(t)
                for kernel in ("torch", "numba"):
                    exact.DEFAULT_KERNEL = kernel
                    exact.ExactPredictor.of(model)                    # derived outside the timings
                    result, t_enc = timed(lambda: container.compress_file(data, model, methods=("neural",)))
                    back, t_dec = timed(lambda: container.decompress_file(result.blob, model, max_bytes=n))
                    if back != data:
                        raise SystemExit(f"{kernel} kernel round trip FAILED")
                    blobs[kernel, t] = result.blob
                    res[kernel, t] = (t_enc, t_dec)
                    name = "reference (torch)" if kernel == "torch" else "new (numba)"
                    print(f"{len(data):>8,} {t:>3} {name:<22} {len(data) / t_enc:>11,.0f} {len(data) / t_dec:>11,.0f} "
                          f"{t_enc:>9.2f} {t_dec:>9.2f}", flush=True)
            if len(set(blobs.values())) != 1:
                raise SystemExit("the kernels or thread counts wrote different streams: FAILED")
            if shutil.which("zpaq"):
                _, z_enc, z_dec = zpaq_row(data)
                print(f"{len(data):>8,} {'':>3} {'zpaq -m5':<22} {len(data) / z_enc:>11,.0f} {len(data) / z_dec:>11,.0f} "
                      f"{z_enc:>9.2f} {z_dec:>9.2f}")
            o1 = res["torch", threads[0]]
            for t in threads:
                (oe, od), (ne, nd) = res["torch", t], res["numba", t]
                print(f"{len(data):>8,} {t:>3} ratio new/old same threads: encode {oe / ne:.2f}x, decode {od / nd:.2f}x; "
                      f"new vs old with {threads[0]} thread: encode {o1[0] / ne:.2f}x, decode {o1[1] / nd:.2f}x", flush=True)
    finally:
        exact.DEFAULT_KERNEL = saved



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
        for kernel, parts in profile_step(model, split).items():
            if torch.get_num_threads() > 1:           # the parts would add up the threads' times
                parts = {"total": parts["total"]}
            print(f"decode step, {torch.get_num_threads()} thread(s), kernel {kernel}: " +
                  ", ".join(f"{k} {v:.1f} ms" for k, v in parts.items()), flush=True)
        return
    if args.speed:
        speed(model, split, [min(n, len(split)) for n in args.bytes])
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
