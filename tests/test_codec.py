import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitlm.bits.frames import text_to_bits
from bitlm.bits.codec import (
    DEFAULT_MAX_BITS, HEADER_BITS, METHODS, CodecError, compress_batch, compress_bits, compression_ratio,
    decompress_batch, decompress_bits, stream_info,
)
from bitlm.cli.codec import main
from bitlm.train.data import load_corpus

CONCRETE = ("stored", "rle", "deflate")


def pydoc_text() -> str:
    return load_corpus("pydoc").documents[0]


PYDOC = pydoc_text()


def header(method_id: int, param: int, n: int, magic: int = 0xB7, version: int = 1) -> torch.Tensor:
    """The documented header layout: magic 8 | version 4 | method 4 | param 4 | length 44, MSB first."""
    word = magic << 56 | version << 52 | method_id << 48 | param << 44 | n
    return torch.tensor([word >> (63 - i) & 1 for i in range(64)], dtype=torch.uint8)


def bits_of(kind: str, n: int, seed: int) -> torch.Tensor:
    g = np.random.default_rng(seed)
    if kind == "zeros":
        a = np.zeros(n)
    elif kind == "ones":
        a = np.ones(n)
    elif kind == "alternating":
        a = np.arange(n) % 2
    elif kind == "random":
        a = g.random(n) < g.choice([0.01, 0.5, 0.99])
    elif kind == "runs":
        lengths = g.geometric(1 / g.choice([2, 30, 1000, 100_000]), n)
        runs = min(n, int(np.searchsorted(np.cumsum(lengths), n)) + 1)  # just enough runs for n bits
        a = np.repeat(np.arange(runs) % 2, lengths[:runs])[:n] ^ g.integers(0, 2)
    else:  # text: a slice of real prose, parity framed or not (a random cut breaks the framing)
        start = int(g.integers(0, len(PYDOC)))
        b = text_to_bits(PYDOC[start:start + n // 9 + 1], parity=bool(g.integers(0, 2)))
        return b[: n if g.integers(0, 2) else None]
    return torch.from_numpy(np.asarray(a, dtype=np.uint8))


@st.composite
def bit_tensors(draw):
    n = draw(st.one_of(st.integers(0, 70), st.integers(0, 100_000)))
    kind = draw(st.sampled_from(["zeros", "ones", "alternating", "random", "runs", "text"]))
    b = bits_of(kind, n, draw(st.integers(0, 2**32 - 1)))
    return b.bool() if draw(st.booleans()) else b


def assert_round_trip(b: torch.Tensor, method: str) -> torch.Tensor:
    s = compress_bits(b, method)
    assert s.dtype == torch.uint8 and s.dim() == 1 and bool((s <= 1).all())
    info = stream_info(s)
    assert info.original_bits == b.numel() and info.stream_bits == s.numel()
    assert method == "auto" or info.method == method
    out = decompress_bits(s, dtype=b.dtype if b.dtype == torch.bool else torch.uint8)
    assert out.dtype == (torch.bool if b.dtype == torch.bool else torch.uint8)
    assert torch.equal(out, b)
    return s


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bit_tensors(), st.sampled_from(METHODS))
def test_round_trip_property(b, method):
    s = assert_round_trip(b, method)
    if method == "auto":
        assert s.numel() <= b.numel() + HEADER_BITS
    if method == "stored":
        assert s.numel() == b.numel() + HEADER_BITS


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), max_size=200), st.sampled_from(METHODS))
def test_round_trip_small_lists(values, method):
    assert_round_trip(torch.tensor(values, dtype=torch.bool).reshape(-1), method)
    assert_round_trip(torch.tensor(values, dtype=torch.uint8).reshape(-1), method)


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=300), st.booleans(), st.sampled_from(METHODS))
def test_round_trip_text_bits(text, parity, method):
    assert_round_trip(text_to_bits(text, parity), method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["zeros", "ones", "alternating", "random", "runs", "text"])
def test_round_trip_kinds(kind, method):
    for n in (0, 1, 2, 9, 100_000):
        assert_round_trip(bits_of(kind, n, seed=n), method)


@pytest.mark.parametrize("method", METHODS)
def test_runs_longer_than_2_pow_20(method):
    b = torch.cat([torch.zeros(2**21 + 3, dtype=torch.uint8), torch.ones(5, dtype=torch.uint8),
                   torch.zeros(2**20 + 1, dtype=torch.uint8), torch.ones(3 * 2**20, dtype=torch.uint8)])
    s = assert_round_trip(b, method)
    if method in ("auto", "rle"):
        assert s.numel() < 200


@pytest.mark.parametrize("runs", [2**16 - 1, 2**16, 2**16 + 1, 3 * 2**16 + 7])
def test_rle_across_work_blocks(runs):
    """rle handles 2**16 runs at a time: block edges, and long runs in later blocks."""
    g = np.random.default_rng(runs)
    lengths = g.geometric(1 / 3, runs)
    lengths[-5:] = [2**20 + 3, 1, 5000, 1, 70]
    b = torch.from_numpy(np.repeat(np.arange(runs) % 2, lengths).astype(np.uint8))
    assert_round_trip(b, "rle")
    s = compress_bits(b, "rle")
    t = s.clone()
    t[-(rle_k(s) + 1) * 3] ^= 1  # a flag near the end: runs merge or split, the total no longer matches
    with pytest.raises(CodecError):
        decompress_bits(t)


def test_header_layout_is_documented_one():
    s = compress_bits(torch.ones(1000, dtype=torch.uint8), "stored")
    assert torch.equal(s[:HEADER_BITS], header(0, 0, 1000))
    assert HEADER_BITS == 64


def test_auto_picks_smallest_and_size_bound():
    for b in (bits_of("random", 5000, 1), bits_of("runs", 5000, 2), text_to_bits(PYDOC[:2000])):
        sizes = {m: compress_bits(b, m).numel() for m in CONCRETE}
        assert compress_bits(b).numel() == min(sizes.values()) <= b.numel() + HEADER_BITS


def rle_k(stream: torch.Tensor) -> int:
    """Chunk width of an rle stream: header param bits 16..19 are [first bit, k - 1 (3 bits)]."""
    return int("".join(map(str, stream[17:20].tolist())), 2) + 1


def test_rle_chunk_width_adapts():
    short = compress_bits(torch.from_numpy(np.repeat(np.arange(5000) % 2, 3).astype(np.uint8)), "rle")
    long = compress_bits(torch.from_numpy(np.repeat(np.arange(50) % 2, 3000).astype(np.uint8)), "rle")
    # runs of 3: v = 2 fits one 3-bit chunk (k = 2); runs of 3000: v = 2999 (12 bits) is two 7-bit chunks (k = 6)
    assert (rle_k(short), short.numel()) == (2, 5000 * 3 + HEADER_BITS)
    assert (rle_k(long), long.numel()) == (6, 50 * 2 * 7 + HEADER_BITS)


def test_pydoc_parity_text_ratio():
    b = text_to_bits(PYDOC)
    s = compress_bits(b)
    assert stream_info(s).method == "deflate"
    assert compression_ratio(b, s) >= 3.5
    assert torch.equal(decompress_bits(s), b)


def test_deflate_with_a_broken_parity_frame_still_round_trips():
    b = text_to_bits("some text " * 50).clone()
    b[9 * 7 + 8] ^= 1
    assert_round_trip(b, "deflate")


# ------------------------------------------------------------------------------------- bad streams

def fuzz_streams() -> dict[str, torch.Tensor]:
    b = torch.cat([text_to_bits(PYDOC[1000:1040]), torch.zeros(300, dtype=torch.uint8),
                   torch.ones(40, dtype=torch.uint8), bits_of("random", 100, 0)])
    return {m: compress_bits(b, m) for m in CONCRETE}


def decodes_or_codec_error(stream: torch.Tensor, max_bits: int = 10_000) -> bool:
    try:
        out = decompress_bits(stream, max_bits=max_bits)
    except CodecError:
        return False
    assert out.dtype == torch.uint8 and out.dim() == 1 and out.numel() <= max_bits
    assert bool((out <= 1).all())
    return True


@pytest.mark.parametrize("method", CONCRETE)
def test_every_truncation_raises_codec_error(method):
    s = fuzz_streams()[method]
    for n in range(s.numel()):
        with pytest.raises(CodecError):
            decompress_bits(s[:n])


@pytest.mark.parametrize("method", CONCRETE)
def test_trailing_garbage_raises(method):
    s, g = fuzz_streams()[method], torch.Generator().manual_seed(0)
    for extra in range(1, 40):
        with pytest.raises(CodecError):
            decompress_bits(torch.cat([s, torch.randint(0, 2, (extra,), generator=g, dtype=torch.uint8)]))


@pytest.mark.parametrize("method", CONCRETE)
def test_random_bit_flips_and_byte_garbles(method):
    s = fuzz_streams()[method]
    g = np.random.default_rng(1)
    for i in g.integers(0, s.numel(), 2000):
        t = s.clone()
        t[i] ^= 1
        decodes_or_codec_error(t)
    for i in g.integers(0, s.numel() - 8, 2000):
        t = s.clone()
        t[i:i + 8] = torch.from_numpy(np.unpackbits(g.integers(0, 256, 1, dtype=np.uint8)))
        decodes_or_codec_error(t)


@pytest.mark.parametrize("method", CONCRETE)
def test_header_fields_checked(method):
    s = fuzz_streams()[method]
    for lo, hi, value, match in [(0, 8, 0xB6, "magic"), (8, 12, 2, "version"), (12, 16, 9, "unknown method")]:
        t = s.clone()
        t[lo:hi] = torch.tensor([value >> (hi - lo - 1 - i) & 1 for i in range(hi - lo)], dtype=torch.uint8)
        with pytest.raises(CodecError, match=match):
            decompress_bits(t)
    t = s.clone()
    t[-1] = 2
    with pytest.raises(CodecError, match="found 2"):
        decompress_bits(t)


def test_max_bits_guard():
    b = torch.ones(1000, dtype=torch.uint8)
    for m in CONCRETE:
        s = compress_bits(b, m)
        assert decompress_bits(s, max_bits=1000).numel() == 1000
        with pytest.raises(CodecError, match="max_bits"):
            decompress_bits(s, max_bits=999)
    with pytest.raises(CodecError, match="max_bits"):  # a lying header over the default limit
        decompress_bits(torch.cat([header(0, 0, DEFAULT_MAX_BITS + 1), torch.zeros(10, dtype=torch.uint8)]))


def peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(CodecError):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_lying_rle_runs_raise_before_allocating():
    # header says 1000 bits; one run claims 2**40 (k = 8: five 0xff groups)
    chunks = [[1] + [1] * 8] * 4 + [[0] + [1] * 8]
    s = torch.cat([header(1, 7, 1000), torch.tensor(sum(chunks, []), dtype=torch.uint8)])
    assert peak_bytes(lambda: decompress_bits(s, max_bits=2**44)) < 1_000_000


def test_rle_run_over_length_limit():
    chunks = [[1] + [1] * 8] * 6 + [[0] + [1] * 8]  # a 56-bit run length
    with pytest.raises(CodecError, match="limit"):
        decompress_bits(torch.cat([header(1, 7, 1000), torch.tensor(sum(chunks, []), dtype=torch.uint8)]))


def test_zip_bomb_capped():
    bomb = np.unpackbits(np.frombuffer(zlib.compress(bytes(50_000_000), 9), dtype=np.uint8))
    s = torch.cat([header(2, 0, 8000), torch.from_numpy(bomb)])
    assert peak_bytes(lambda: decompress_bits(s)) < 5_000_000
    with pytest.raises(CodecError, match="more than"):
        decompress_bits(s)


@pytest.mark.parametrize("bad, match", [
    (torch.tensor([0, 1, 2]), "found 2 at index 2"),
    (torch.tensor([255, 0], dtype=torch.uint8), "found 255"),
    (torch.tensor([0, -1]), "found -1"),
    (torch.tensor([0.0, 1.0]), "dtype"),
    (torch.tensor([0.5]), "dtype"),
    (torch.zeros(2, 8, dtype=torch.uint8), "1-D"),
    ([0, 1, 1], "torch.Tensor"),
    (np.array([0, 1], dtype=np.uint8), "torch.Tensor"),
    (None, "torch.Tensor"),
])
def test_non_binary_input_rejected(bad, match):
    with pytest.raises(CodecError, match=match) as e:
        compress_bits(bad)
    assert isinstance(e.value, ValueError)
    with pytest.raises(CodecError, match=match):
        decompress_bits(bad)


def test_other_integer_dtypes_accepted():
    b = torch.randint(0, 2, (500,))  # int64, as torch.randint gives
    assert torch.equal(decompress_bits(compress_bits(b)), b.to(torch.uint8))


def test_bad_arguments():
    with pytest.raises(CodecError, match="unknown method"):
        compress_bits(torch.ones(3, dtype=torch.uint8), "lz4")
    with pytest.raises(CodecError, match="dtype"):
        decompress_bits(compress_bits(torch.ones(3, dtype=torch.uint8)), dtype=torch.float32)


def test_stream_info():
    b = bits_of("runs", 10_000, 5)
    s = compress_bits(b, "rle")
    info = stream_info(s)
    assert (info.method, info.original_bits, info.stream_bits) == ("rle", 10_000, s.numel())
    assert stream_info(s[:HEADER_BITS]).original_bits == 10_000  # reads the header only
    with pytest.raises(CodecError, match="shorter than"):
        stream_info(s[:10])


def test_compression_ratio():
    assert compression_ratio(900, 300) == 3.0
    assert compression_ratio(torch.zeros(900), torch.zeros(300)) == 3.0
    with pytest.raises(ValueError):
        compression_ratio(10, 0)
    with pytest.raises(ValueError):
        compression_ratio(-1, 5)


def test_batch_helpers():
    x = torch.randint(0, 2, (4, 2304), dtype=torch.uint8)
    x[1] = 0
    streams = compress_batch(x)
    assert len(streams) == 4 and streams[1].numel() < 100
    assert torch.equal(torch.stack(decompress_batch(streams)), x)
    ragged = [x[0, :10], x[1, :2000].bool()]
    out = decompress_batch(compress_batch(ragged, "rle"), dtype=torch.bool)
    assert [o.tolist() for o in out] == [r.bool().tolist() for r in ragged]
    with pytest.raises(CodecError, match="list"):
        compress_batch(x[0])
    with pytest.raises(CodecError, match="list"):
        decompress_batch(streams[0])


def test_cli(capsys):
    main(["--text", "hello hello hello hello"])
    out = capsys.readouterr().out
    assert "compression_ratio" in out and "ok" in out and "MISMATCH" not in out
