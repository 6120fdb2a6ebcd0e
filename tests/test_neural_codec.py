"""The compressor's container: round trips of any bytes, never worse than the classics by more than the
header, streams that decode in another process with another thread count and chunk layout, and a
CodecError with a reason (never garbage) for wrong-model, truncated, corrupted and foreign input."""
import bz2
import lzma
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from bitlm.compress import container as nc
from bitlm.compress.header import pack_header
from bitlm.bits.codec import CodecError
from bitlm.model.config import BitLMConfig
from bitlm.model.transformer import BitTransformerLM
from tests.exact_helpers import TINY_V2, fitted_tiny, input_set, one_thread  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parent.parent
INPUTS = input_set()


@pytest.fixture(scope="module")
def fitted() -> BitTransformerLM:
    return fitted_tiny()


@pytest.fixture(scope="module")
def saved(fitted, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fitted")
    fitted.save_pretrained(path)
    return path


def best_classic(data: bytes) -> int:
    return min(len(data), len(zlib.compress(data, 9)), len(bz2.compress(data, 9)), len(lzma.compress(data)))


@pytest.mark.parametrize("name", INPUTS)
def test_round_trip_and_never_worse_than_the_classics(fitted, name):
    data = INPUTS[name]
    result = nc.compress_file(data, fitted)
    assert nc.decompress_file(result.blob, fitted) == data
    assert len(result.blob) == min(result.sizes.values())
    assert len(result.blob) <= nc.MAX_HEADER_BYTES + best_classic(data), result.sizes
    assert nc.read_header(result.blob).method_name == result.method
    assert nc.read_header(result.blob).size <= nc.MAX_HEADER_BYTES
    for method in ("neural", "cm", "neural+cm"):                          # each new path on every input
        forced = nc.compress_file(data, fitted, methods=(method,))
        assert nc.decompress_file(forced.blob, fitted) == data, method
        assert nc.read_header(forced.blob).size <= nc.MAX_HEADER_BYTES


def test_neural_wins_on_held_out_text(fitted):
    """The fitted model (seconds of training) beats every classic method on 400 bytes of text it has
    never seen (held-out Shakespeare), and its payload is within 1 % (+ the coder's last words) of its
    cross-entropy."""
    result = nc.compress_file(INPUTS["shakespeare"][:400], fitted, methods=nc.METHODS[:5])
    assert result.method == "neural", result.sizes
    assert 8 * (len(result.blob) - nc.MAX_HEADER_BYTES) <= 1.01 * result.neural_ideal_bits + 64


def test_header_stays_within_14_bytes_at_the_largest_length():
    for method in (nc.NEURAL, nc.NEURAL_CM):
        assert len(pack_header(method, nc.MAX_LENGTH, 0, b"ab")) == nc.MAX_HEADER_BYTES == 14
        h = nc.read_header(pack_header(method, nc.MAX_LENGTH, 7, b"ab"))
        assert (h.method, h.length, h.fingerprint, h.crc, h.size, h.version) == (method, nc.MAX_LENGTH, b"ab", 7, 14, 2)


def test_other_layouts_and_thread_counts_decode(saved, tmp_path):
    """Two processes: one writes every input (neural, cm, neural+cm) with 2 threads and chunks of 5 slots,
    the other with 1 thread and the default chunks; the streams are byte-identical and each decodes the
    other's."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()

    def worker(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "tests.exact_helpers", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]

    worker("encode", str(saved), str(a), "--threads", "2", "--chunk", "5")
    worker("encode", str(saved), str(b), "--threads", "1")
    for i in range(len(INPUTS)):
        for method in ("neural", "cm", "neural+cm"):
            assert (a / f"{i}-{method}.blm").read_bytes() == (b / f"{i}-{method}.blm").read_bytes(), (list(INPUTS)[i], method)
    worker("decode", str(saved), str(a), "--threads", "1")
    worker("decode", str(saved), str(b), "--threads", "2")


def test_a_cpu_without_vnni_writes_and_reads_the_same_streams(saved, tmp_path):
    """oneDNN held to AVX2 in another process (as on a CPU without VNNI, where torch._int_mm sums pairs of
    int8 products in saturating int16 and is not exact): the int8 engine's check refuses _int_mm, and the
    float fallback writes the very streams this process's engine writes, and decodes them."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()

    def worker(*args: str, **env: str) -> str:
        done = subprocess.run([sys.executable, "-m", "tests.exact_helpers", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=600, env={**os.environ, **env})
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    assert "int8 engine float64" in worker("encode", str(saved), str(a), "--threads", "2", "--methods", "neural",
                                           ONEDNN_MAX_CPU_ISA="AVX2")
    worker("encode", str(saved), str(b), "--threads", "1", "--methods", "neural")
    for i in range(len(INPUTS)):
        assert (a / f"{i}-neural.blm").read_bytes() == (b / f"{i}-neural.blm").read_bytes(), list(INPUTS)[i]
    worker("decode", str(saved), str(b), "--threads", "1", "--methods", "neural", ONEDNN_MAX_CPU_ISA="AVX2")


def test_a_file_of_an_earlier_shipped_model_says_where_that_model_is(fitted, monkeypatch):
    blob = nc.compress_file(INPUTS["shakespeare"][:600], fitted, methods=("neural",)).blob
    other = BitTransformerLM(BitLMConfig(**TINY_V2)).eval()
    with pytest.raises(CodecError) as plain:
        nc.decompress_file(blob, other)
    assert "git show" not in str(plain.value)
    monkeypatch.setitem(nc.EARLIER_SHIPPED, nc.neural_fingerprint(fitted).hex(), ("abc1234", "an earlier model"))
    with pytest.raises(CodecError, match="matches an earlier model: .*git show abc1234:assets/model.safetensors"):
        nc.decompress_file(blob, other)


def test_the_shipped_model_is_not_listed_as_an_earlier_one():
    shipped = BitTransformerLM.from_pretrained(ROOT / "assets")
    assert nc.neural_fingerprint(shipped).hex() not in nc.EARLIER_SHIPPED


def test_wrong_model_names_both(fitted):
    blob = nc.compress_file(INPUTS["shakespeare"][:600], fitted, methods=("neural",)).blob
    other = BitTransformerLM(BitLMConfig(**TINY_V2)).eval()
    want, got = nc.neural_fingerprint(fitted).hex(), nc.neural_fingerprint(other).hex()
    assert want != got
    with pytest.raises(CodecError, match=f"compressed with model {want}, but the loaded model is {got}"):
        nc.decompress_file(blob, other)
    with pytest.raises(CodecError, match="load that model"):
        nc.decompress_file(blob, None)
    v1 = BitTransformerLM(BitLMConfig(n_layer=1, n_head=2, n_embd=16, block_size=144, pos="learned")).eval()
    with pytest.raises(CodecError, match=f"but the loaded model is {nc.neural_fingerprint(v1).hex()}"):
        nc.decompress_file(blob, v1)


def test_v1_model_falls_back_to_the_classics():
    v1 = BitTransformerLM(BitLMConfig(n_layer=1, n_head=2, n_embd=16, block_size=144, pos="learned")).eval()
    result = nc.compress_file(b"text " * 50, v1)
    assert "neural" not in result.sizes and "ALiBi" in result.neural_skipped
    assert nc.decompress_file(result.blob, None) == b"text " * 50


@pytest.mark.parametrize("method", nc.METHODS)
def test_damage_never_gives_garbage(fitted, method):
    """Every truncation and every flipped byte (one bit pattern per byte) raises CodecError or, where
    the damage falls in bits the decoder never reads, still gives the exact original."""
    data = INPUTS["shakespeare"][:60]
    blob = nc.compress_file(data, fitted, methods=(method,)).blob
    for cut in range(len(blob)):
        with pytest.raises(CodecError):
            nc.decompress_file(blob[:cut], fitted)
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x5A
        try:
            out = nc.decompress_file(bytes(bad), fitted)
        except CodecError:
            continue
        assert out == data, f"flipping byte {i} gave garbage"
    for extra in (b"\0", b"more", b"more bytes"):
        try:                                   # appended bytes are refused, but for whole words after a
            out = nc.decompress_file(blob + extra, fitted)       # range coder's payload, which it may read
        except CodecError:                                       # as padding: the data must come out exact
            continue
        assert method == "neural" and len(extra) % 4 == 0 and out == data, extra


@pytest.mark.parametrize("blob, reason", [
    (b"", "too short"),
    (b"PK\x03\x04 a zip file", "not a BitLM compressed file"),
    (zlib.compress(b"hello"), "not a BitLM compressed file"),
    (bytes([nc.MAGIC, 0x31, 5]) + b"\0" * 9, "unsupported BitLM container version 3"),
    (bytes([nc.MAGIC, 0x1F, 5]) + b"\0" * 9, "unknown compression method 15"),
    (bytes([nc.MAGIC, 0x10, 0x80, 0x80, 0x80, 0x80, 0x01]) + b"\0" * 4, "longer than 4 bytes"),
    (bytes([nc.MAGIC, 0x10, 0x85]), "ends inside its header"),
    (bytes([nc.MAGIC, 0x25, 0x85]), "ends inside its header"),
    (bytes([nc.MAGIC, 0x25, 5]) + b"\0" * 6, "damaged \\(header check failed\\)"),
])
def test_foreign_input(fitted, blob, reason):
    with pytest.raises(CodecError, match=reason):
        nc.decompress_file(blob, fitted)


def test_length_cap_is_checked_before_any_work(fitted):
    """A header claiming the maximum length is refused by max_bytes before a byte is allocated or
    decoded; within the cap, a stored payload shorter than claimed is refused too."""
    huge = pack_header(nc.STORED, nc.MAX_LENGTH, 0) + b"abc"
    with pytest.raises(CodecError, match="over the limit"):
        nc.decompress_file(huge, fitted)
    with pytest.raises(CodecError, match="over the limit"):
        nc.decompress_file(pack_header(nc.NEURAL, 10 ** 6, 0, b"xy"), fitted, max_bytes=1000)
    with pytest.raises(CodecError, match="gives 3 bytes, the header says 1000"):
        nc.decompress_file(pack_header(nc.STORED, 1000, 0) + b"abc", fitted)
    bomb = nc.compress_file(b"\0" * 100_000, None, methods=("zlib",)).blob
    forged = pack_header(nc.ZLIB, 10, nc.read_header(bomb).crc) + bomb[nc.read_header(bomb).size:]
    with pytest.raises(CodecError, match=r"gives 11\+ bytes, the header says 10"):
        nc.decompress_file(forged, fitted)


def test_bad_arguments(fitted):
    with pytest.raises(CodecError, match="needs bytes"):
        nc.compress_file("text", fitted)
    with pytest.raises(CodecError, match="methods"):
        nc.compress_file(b"x", fitted, methods=("gzip",))
    with pytest.raises(CodecError, match="must be bytes"):
        nc.decompress_file(None, fitted)


def test_progress_reaches_the_end(fitted):
    seen = []
    data = INPUTS["pydoc"]
    blob = nc.compress_file(data, fitted, methods=("neural",), on_progress=lambda d, t: seen.append((d, t))).blob
    assert seen[-1] == (len(data), len(data)) and seen == sorted(seen)
    seen.clear()
    assert nc.decompress_file(blob, fitted, on_progress=lambda d, t: seen.append((d, t))) == data
    assert seen[-1] == (len(data), len(data))


def test_lanes():
    assert [nc.neural_lanes(n) for n in (0, 1, 511, 512, 767, 64 * 256, 10 ** 6)] == [1, 1, 1, 2, 2, 64, 64]
    L, lens = nc.lane_layout(1000, 3)
    assert L == 334 and lens.tolist() == [334, 334, 332]
