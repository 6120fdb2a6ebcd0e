"""Golden streams: the exact neural stream format, pinned. Files written by the code of commit 2d5e33c
(EXACT_VERSION 1) with the shipped model (tests/data/golden/*.blm, their originals *.bin, digests in
golden.json; tests/data/golden/make_golden.py wrote them and names the originals' sources) must decode
byte for byte, and re-encoding each original must give the very same bytes. A seeded tiny model with a
head count that is not a power of two (3) and a window the input overflows (the ring wraps) must give
frequencies with the pinned SHA-256, by teacher-forced chunks and by one-slot steps.

Any change of the integer arithmetic that moves one frequency (a rounding, a clamp, a table, a shift)
fails here; such a change must bump EXACT_VERSION and keep or refuse old streams by name.
"""
import hashlib
import json
import random
from pathlib import Path

import pytest
import torch

from bitlm.compress import container, exact
from bitlm.model.config import BitLMConfig
from bitlm.model.transformer import BitTransformerLM
from tests.exact_helpers import one_thread, teacher_forced  # noqa: F401 (autouse fixture)

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
ROOT = Path(__file__).resolve().parents[1]
TINY = dict(n_layer=2, n_head=3, n_embd=48, block_size=9 * 64, attn_window=24)   # alibi, factorized (defaults)
TINY_LANES, TINY_INPUT_BYTES = 3, 240                                             # 80 slots a lane > 24
STREAMS = ("shakespeare_300", "shakespeare_1500", "pydoc_topics_600", "numpy_so_400")


def tiny_model() -> BitTransformerLM:
    """The seeded tiny model (3 heads of 16, 2 layers, window 24), matrices scaled ×4 so activations,
    attention scores and their rounding are far from trivial, and BOS's first 8 components ×10000 (up
    to ~±390) so the residual clamp (±256) and any narrower one bite: the sink's keys and values, seen
    by every slot, follow them."""
    torch.manual_seed(20)
    model = BitTransformerLM(BitLMConfig(**TINY)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
        model.bos[:8].mul_(10000.0)
    return model


def tiny_input() -> torch.Tensor:
    """(3, 80) int64 bytes: text then random bytes (a fixed generator)."""
    text = (b"To be, or not to be, that is the question: whether 'tis nobler in the mind " * 3)[:160]
    data = text + random.Random(20).randbytes(TINY_INPUT_BYTES - len(text))
    return torch.tensor(list(data), dtype=torch.int64).view(TINY_LANES, -1)


def tiny_frequencies(pred: exact.ExactPredictor, chunk: int) -> torch.Tensor:
    """(3, 80, 256) frequencies of `tiny_input`, chunk slots at a time (1: the decoder's steps)."""
    return teacher_forced(pred, tiny_input(), chunk)


def _digest() -> dict:
    return json.loads((GOLDEN / "golden.json").read_text())


@pytest.fixture(scope="module")
def shipped() -> BitTransformerLM:
    return BitTransformerLM.from_pretrained(str(ROOT / "assets")).eval()


def test_golden_files_are_the_recorded_ones():
    assert sorted(_digest()["streams"]) == sorted(STREAMS)
    for name, d in _digest()["streams"].items():
        assert hashlib.sha256((GOLDEN / f"{name}.bin").read_bytes()).hexdigest() == d["sha256"], name
        assert hashlib.sha256((GOLDEN / f"{name}.blm").read_bytes()).hexdigest() == d["blm_sha256"], name


def test_format_constants_are_the_pinned_ones(shipped):
    d = _digest()
    assert exact.EXACT_VERSION == d["exact_version"] and exact.TABLES_SHA256 == d["tables_sha256"]
    assert container.neural_fingerprint(shipped).hex() == d["neural_fingerprint"]


@pytest.mark.parametrize("name", STREAMS)
def test_golden_stream_decodes_and_reencodes_to_the_same_bytes(shipped, name):
    """The golden files are version-1 containers (written before the header check); today's container
    writes version 2, whose header differs, around the very same neural payload."""
    original, blob = (GOLDEN / f"{name}.bin").read_bytes(), (GOLDEN / f"{name}.blm").read_bytes()
    old = container.read_header(blob)
    assert (old.method_name, old.version) == ("neural", 1)
    assert container.decompress_file(blob, shipped) == original
    again = container.compress_file(original, shipped, methods=("neural",)).blob
    new = container.read_header(again)
    assert (new.method_name, new.version, new.crc, new.length) == ("neural", 2, old.crc, old.length)
    assert again[new.size:] == blob[old.size:]


@pytest.mark.parametrize("chunk", [64, 1])
def test_tiny_model_frequencies_match_the_pinned_digest(chunk):
    freq = tiny_frequencies(exact.ExactPredictor(tiny_model()), chunk)
    want = _digest()["tiny_model"]
    assert list(freq.shape) == want["shape"]
    assert hashlib.sha256(freq.numpy().astype("<i8").tobytes()).hexdigest() == want["freq_sha256"]
