"""Golden streams: the exact neural stream format of every version this code reads, pinned. Files written
with the shipped model by the code of commit 2d5e33c (EXACT_VERSION 1: tests/data/golden/*.v1.blm) and by
the commit that introduced version 2 (*.v2.blm) — their originals *.bin, digests in golden.json;
tests/data/golden/make_golden.py wrote them and names the originals' sources — must decode byte for byte,
and re-encoding each original with that version must give the very same bytes (version 2, today's, through
`compress_file`). A seeded tiny model with a head count that is not a power of two (3) and a window the
input overflows (the ring wraps) must give frequencies with each version's pinned SHA-256, by
teacher-forced chunks and by one-slot steps.

Any change of the integer arithmetic that moves one frequency (a rounding, a clamp, a table, a shift)
fails here; such a change must bump EXACT_VERSION and keep or refuse old streams by name.
"""
import hashlib
import json
import random
from pathlib import Path

import pytest
import torch

from bitlm.compress import container, exact, neural
from bitlm.model.config import BitLMConfig
from bitlm.model.transformer import BitTransformerLM
from tests.exact_helpers import one_thread, teacher_forced  # noqa: F401 (autouse fixture)

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
ROOT = Path(__file__).resolve().parents[1]
TINY = dict(n_layer=2, n_head=3, n_embd=48, block_size=9 * 64, attn_window=24)   # alibi, factorized (defaults)
TINY_LANES, TINY_INPUT_BYTES = 3, 240                                             # 80 slots a lane > 24
STREAMS = ("shakespeare_300", "shakespeare_1500", "pydoc_topics_600", "numpy_so_400")
VERSIONS = (1, 2)


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
    d = _digest()
    assert sorted(d["originals"]) == sorted(STREAMS) and sorted(d["versions"]) == [str(v) for v in VERSIONS]
    for name, o in d["originals"].items():
        assert hashlib.sha256((GOLDEN / f"{name}.bin").read_bytes()).hexdigest() == o["sha256"], name
    for v, entry in d["versions"].items():
        assert sorted(entry["streams"]) == sorted(STREAMS)
        for name, f in entry["streams"].items():
            assert hashlib.sha256((GOLDEN / f"{name}.v{v}.blm").read_bytes()).hexdigest() == f["blm_sha256"], name


def test_format_constants_are_the_pinned_ones(shipped):
    d = _digest()
    assert exact.VERSIONS == VERSIONS and exact.EXACT_VERSION == max(VERSIONS)
    assert exact.TABLES_SHA256 == d["tables_sha256"]
    for v in VERSIONS:
        assert container.neural_fingerprint(shipped, v).hex() == d["versions"][str(v)]["neural_fingerprint"]
    assert container.neural_fingerprint(shipped) == container.neural_fingerprint(shipped, exact.EXACT_VERSION)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", STREAMS)
def test_golden_stream_decodes_and_reencodes_to_the_same_bytes(shipped, name, version):
    """The version-1 streams sit in version-1 containers (written before the header check); today's
    container writes version 2 (a header version, not the exact path's), around the very same payload.
    `decompress_file` tells the exact path's version by the model fingerprint the header names."""
    original, blob = (GOLDEN / f"{name}.bin").read_bytes(), (GOLDEN / f"{name}.v{version}.blm").read_bytes()
    old = container.read_header(blob)
    assert old.method_name == "neural"
    assert container.decompress_file(blob, shipped) == original
    payload = neural.model_encode(shipped, original, ("neural",), version=version)[0]["neural"]
    assert payload == blob[old.size:]
    if version == exact.EXACT_VERSION:
        assert container.compress_file(original, shipped, methods=("neural",)).blob == blob


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("chunk", [64, 1])
def test_tiny_model_frequencies_match_the_pinned_digest(chunk, version):
    freq = tiny_frequencies(exact.ExactPredictor(tiny_model(), version=version), chunk)
    want = _digest()["versions"][str(version)]["tiny_model"]
    assert list(freq.shape) == want["shape"]
    assert hashlib.sha256(freq.numpy().astype("<i8").tobytes()).hexdigest() == want["freq_sha256"]
