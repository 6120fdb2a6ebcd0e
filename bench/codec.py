"""Codec benchmark: encode/decode throughput (Mbit/s of original bits) and sizes of every codec method on
10 M random bits, 10 M run-heavy bits (geometric runs, mean 1000) and CPython's pydoc text in 9-bit parity
frames, beside zlib -1 / -9 on the same bits packed 8 per byte and a plain Python per-run-loop RLE writing
the same rle format; then the latency of one 2 304-bit compress + decompress with "auto".

    python -m bench.codec          # one thread (torch.set_num_threads(1)), about a minute
"""
import itertools
import os
import platform
import time
import zlib

import numpy as np
import torch

from bitlm.bits.frames import bytes_to_bits, text_to_bits
from bitlm.train.data import load_corpus
from bitlm.bits.codec import HEADER_BITS, compress_bits, compression_ratio, decompress_bits, stream_info

N = 10_000_000
NAIVE_BITS = 1_000_000  # the Python loop is timed on the first 1 Mbit of each input
REPEATS = 5             # best of


def best_time(fn, repeats: int = REPEATS) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def naive_rle_encode(bits: list[int], k: int) -> list[int]:
    """The rle payload, one Python iteration per run: v = run length - 1 in k-bit groups, most
    significant first, each chunk [continuation flag, k bits MSB first]."""
    out = []
    for _, run in itertools.groupby(bits):
        v = sum(1 for _ in run) - 1
        groups = [v & ((1 << k) - 1)]
        while v >> k:
            v >>= k
            groups.append(v & ((1 << k) - 1))
        for i, g in enumerate(reversed(groups)):
            out.append(int(i < len(groups) - 1))
            out.extend(g >> (k - 1 - b) & 1 for b in range(k))
    return out


def naive_rle_decode(payload: list[int], k: int, first: int) -> list[int]:
    out, v, value = [], 0, first
    for i in range(0, len(payload), k + 1):
        for b in payload[i + 1:i + k + 1]:
            v = v << 1 | b
        if not payload[i]:
            out.extend([value] * (v + 1))
            v, value = 0, 1 - value
    return out


def zlib_pair(level: int):
    def enc(b: torch.Tensor) -> bytes:
        return zlib.compress(np.packbits(b.numpy()).tobytes(), level)

    def dec(z: bytes, n: int) -> torch.Tensor:
        return torch.from_numpy(np.unpackbits(np.frombuffer(zlib.decompress(z), dtype=np.uint8))[:n])
    return enc, dec


def pydoc_text() -> str:
    return load_corpus("pydoc").documents[0]


def inputs() -> dict[str, torch.Tensor]:
    g = np.random.default_rng(0)
    lengths = g.geometric(1 / 1000, N // 500)
    runs = np.repeat(np.arange(lengths.size) % 2, lengths)[:N].astype(np.uint8)
    assert runs.size == N
    return {
        "random 10M": torch.from_numpy(g.integers(0, 2, N, dtype=np.uint8)),
        "runs mean 1000, 10M": torch.from_numpy(runs),
        "pydoc, parity frames": text_to_bits(pydoc_text()),
    }


def bench_input(name: str, bits: torch.Tensor) -> list[dict]:
    n, rows = bits.numel(), []
    for method in ("stored", "rle", "deflate", "auto"):
        te, stream = best_time(lambda: compress_bits(bits, method))
        td, out = best_time(lambda: decompress_bits(stream))
        assert torch.equal(out, bits), (name, method)
        label = method if method != "auto" else f"auto ({stream_info(stream).method})"
        rows.append(dict(method=label, size=stream.numel(), enc=n / te, dec=n / td))
    for level in (1, 9):
        enc, dec = zlib_pair(level)
        te, z = best_time(lambda: enc(bits))
        td, out = best_time(lambda: dec(z, n))
        assert torch.equal(out, bits)
        rows.append(dict(method=f"zlib -{level} (8/byte)", size=8 * len(z), enc=n / te, dec=n / td))
    head = bits[:NAIVE_BITS]
    s = compress_bits(head, "rle")
    k, first = int("".join(map(str, s[17:20].tolist())), 2) + 1, int(s[16])
    lst = head.tolist()
    te, payload = best_time(lambda: naive_rle_encode(lst, k), repeats=1)
    td, out = best_time(lambda: naive_rle_decode(payload, k, first), repeats=1)
    assert payload == s[HEADER_BITS:].tolist() and out == lst  # same format, same result
    rows.append(dict(method="naive Python rle*", size=None, enc=head.numel() / te, dec=head.numel() / td))
    for r in rows:
        r["data"], r["n"] = name, n
    return rows


def latency() -> tuple[float, float, float]:
    """Median, p99 and mean microseconds of compress + decompress ("auto") of one 2 304-bit sample."""
    data = pydoc_text().encode()
    g = np.random.default_rng(1)
    samples = [bytes_to_bits(data[i:i + 256]) for i in g.integers(0, len(data) - 256, 3000)]
    times = []
    for b in samples:
        t0 = time.perf_counter()
        out = decompress_bits(compress_bits(b))
        times.append(time.perf_counter() - t0)
        assert out.numel() == 2304
    t = np.array(times[500:]) * 1e6  # the first samples warm caches up
    return float(np.median(t)), float(np.percentile(t, 99)), float(t.mean())


def main() -> None:
    torch.set_num_threads(1)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
          f"threads {torch.get_num_threads()}; times are best of {REPEATS}")
    rows = [r for name, bits in inputs().items() for r in bench_input(name, bits)]
    print(f"\n| data | method | stream bits | compression_ratio | size / zlib -9 | encode Mbit/s | decode Mbit/s "
          f"| encode × naive | decode × naive |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in dict.fromkeys(r["data"] for r in rows):
        group = [r for r in rows if r["data"] == name]
        z9 = next(r["size"] for r in group if r["method"].startswith("zlib -9"))
        naive = group[-1]
        for r in group:
            size = "—" if r["size"] is None else f"{r['size']:,}"
            ratio = "—" if r["size"] is None else f"{compression_ratio(r['n'], r['size']):.3f}"
            vs_z9 = "—" if r["size"] is None else f"{r['size'] / z9:.3f}"
            print(f"| {name} | {r['method']} | {size} | {ratio} | {vs_z9} | {r['enc'] / 1e6:,.1f} | "
                  f"{r['dec'] / 1e6:,.1f} | {r['enc'] / naive['enc']:,.1f} | {r['dec'] / naive['dec']:,.1f} |")
    print(f"\n* naive Python rle: one Python iteration per run (itertools.groupby) writing the same payload as "
          f"`rle` (checked equal), timed once on the first {NAIVE_BITS:,} bits of each input, lists in and out.")
    print("  zlib rows include packing the bits 8 per byte (and unpacking on decode); stream bits of the "
          f"codec include its {HEADER_BITS}-bit header.")

    med, p99, mean = latency()
    print(f"\n2 304-bit sample (256 bytes of pydoc text), compress + decompress with auto: "
          f"median {med:.0f} µs, p99 {p99:.0f} µs, mean {mean:.0f} µs (2 500 samples)")

    def speed(data, method, key):
        return next(r[key] for r in rows if r["data"] == data and r["method"] == method) / 1e6
    checks = [
        ("rle encode ≥ 50 Mbit/s on random bits", speed("random 10M", "rle", "enc") >= 50),
        ("rle decode ≥ 50 Mbit/s on random bits", speed("random 10M", "rle", "dec") >= 50),
        ("rle encode ≥ 200 Mbit/s on run-heavy bits", speed("runs mean 1000, 10M", "rle", "enc") >= 200),
        ("rle decode ≥ 200 Mbit/s on run-heavy bits", speed("runs mean 1000, 10M", "rle", "dec") >= 200),
        ("2 304-bit auto round trip < 1 ms (median)", med < 1000),
    ]
    print("\ntargets: " + "; ".join(f"{what}: {'met' if ok else 'MISSED'}" for what, ok in checks))


if __name__ == "__main__":
    main()
