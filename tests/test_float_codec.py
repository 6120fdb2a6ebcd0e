"""Float neural codec (the reference path): exact round trips (text, bytes, bit tensors, across
context restarts), coded size against the model's cross-entropy, and clear errors for wrong-model, truncated and corrupted streams."""
import random

import pytest
import torch

from bitlm.compress import float_reference as nc
from bitlm.bits.frames import bytes_to_bits, text_to_bits
from bitlm.bits.codec import CodecError
from bitlm.model.config import BitLMConfig
from bitlm.model.transformer import BitTransformerLM

SENTENCE = "the quick brown fox jumps over the lazy dog. "
HELD_OUT = ("It was the best of times, it was the worst of times; the dog sat by the fox "
            "and the fox said nothing to the quick brown dog at all. ") * 3


def tiny(seed: int = 0, **kw) -> BitTransformerLM:
    torch.manual_seed(seed)
    cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=2304)
    cfg.update(kw)
    return BitTransformerLM(BitLMConfig(**cfg)).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Coding runs thousands of one-patch steps; on a shared 2-core machine, intra-op threads only
    spin-wait on such tiny tensors (20x slower). Scoped to this module, restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> BitTransformerLM:
    return tiny()


@pytest.fixture(scope="module")
def trained() -> BitTransformerLM:
    """A tiny model fitted for a few steps to English-like text, so its probabilities are far from 1/2."""
    m = tiny(1)
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    bits = text_to_bits(SENTENCE * 40)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        starts = torch.randint(0, (bits.numel() - 576) // 9, (8,), generator=gen) * 9
        batch = torch.stack([bits[s:s + 576] for s in starts.tolist()])
        opt.zero_grad()
        m.loss(batch).loss.backward()
        opt.step()
    return m.eval()


@pytest.mark.parametrize("text", ["", "a", "héllo → 世界 🎉", SENTENCE])
def test_text_round_trip(model, text):
    stream = nc.compress_text(model, text)
    assert nc.decompress_text(model, stream) == text
    assert len(stream) >= nc.HEADER_BYTES


def test_held_out_text_round_trip_trained(trained):
    stream = nc.compress_text(trained, HELD_OUT)
    assert nc.decompress_text(trained, stream) == HELD_OUT
    assert 8 * len(stream) < 0.8 * 8 * len(HELD_OUT.encode())     # the fitted model really compresses


def test_random_bytes_round_trip(model):
    data = random.Random(0).randbytes(80)
    stream = nc.compress_bytes(model, data)
    assert nc.decompress_bytes(model, stream) == data


def test_context_restarts_stay_in_sync():
    """A 72-bit context (8 bytes) restarts many times over 60 bytes; both sides must restart alike."""
    m = tiny(2, block_size=72)
    text = "restarting contexts: ünïcödé and ascii, 0123456789"
    assert nc.decompress_text(m, nc.compress_text(m, text)) == text


def test_lane_count():
    assert [nc.lane_count(9 * n, 9) for n in (0, 1, 511, 512, 767, 768, 16 * 256, 10 ** 6)] == [1, 1, 1, 2, 2, 3, 16, 16]
    assert nc.lane_count(9 * 512 - 8, 9) == 2                                # a partial last patch counts


@pytest.mark.parametrize("case", ["bytes", "odd bits", "restarts", "transformer"])
def test_multi_lane_round_trips(model, case):
    """Inputs long enough for several lanes, the last one shorter (padded) than the others."""
    rng = random.Random(5)
    if case == "bytes":
        data = rng.randbytes(5 * nc.LANE_PATCHES + 77)                          # 5 lanes of 272 patches, the last 269
        enc = nc.encode_bytes(model, data)
        assert nc.lane_count(enc.n_bits, 9) == 5
        assert nc.decompress_bytes(model, enc.stream) == data
        assert enc.payload_bits <= 1.01 * enc.ideal_bits + 64
    elif case == "odd bits":
        bits = torch.tensor([rng.getrandbits(1) for _ in range(9 * 600 + 5)], dtype=torch.uint8)
        enc = nc.encode_bit_tensor(model, bits)
        assert enc.coded_bits == bits.numel() and nc.lane_count(bits.numel(), 9) == 2
        assert torch.equal(nc.decompress_bit_tensor(model, enc.stream), bits)
    else:
        m = tiny(2, block_size=72) if case == "restarts" else tiny(3, local="transformer", local_layers=1, local_embd=16)
        text = "".join(rng.choice("abcdé fgh\n") for _ in range(560))
        assert nc.lane_count(9 * len(text.encode()), 9) == 2
        assert nc.decompress_text(m, nc.compress_text(m, text)) == text


@pytest.mark.parametrize("local", ["factorized", "transformer"])
def test_lanes_are_independent(local):
    """Stepping 3 lanes together gives each lane the probabilities a decoder of that lane alone gives."""
    m = tiny(6, local=local, local_layers=1, local_embd=16, block_size=90)    # restarts every few patches
    gen = torch.Generator().manual_seed(0)
    seqs = torch.randint(0, 2, (3, 200), generator=gen).tolist()
    together = m.bit_decoder(lanes=3)
    alone = [m.bit_decoder() for _ in seqs]
    with torch.no_grad():
        for t in range(200):
            got = together.next_logprobs_lanes([s[:t] for s in seqs])
            for lane, (seq, dec) in enumerate(zip(seqs, alone)):
                assert got[lane] == pytest.approx(dec.next_logprobs(seq[:t]), abs=1e-5), (t, lane)


def test_transformer_local_round_trip():
    m = tiny(3, local="transformer", local_layers=1, local_embd=16)
    assert nc.decompress_text(m, nc.compress_text(m, "local transformer ✓")) == "local transformer ✓"


def test_bit_tensors(model):
    gen = torch.Generator().manual_seed(0)
    odd = torch.randint(0, 2, (101,), generator=gen, dtype=torch.uint8)     # not parity frames: every bit coded
    enc = nc.encode_bit_tensor(model, odd)
    assert enc.coded_bits == 101
    assert torch.equal(nc.decompress_bit_tensor(model, enc.stream), odd)
    frames = bytes_to_bits(b"framed bytes")                                 # valid frames: parity implied
    enc = nc.encode_bit_tensor(model, frames.bool())
    assert enc.coded_bits == 8 * 12 and enc.n_bits == 9 * 12
    assert torch.equal(nc.decompress_bit_tensor(model, enc.stream), frames)
    assert nc.decompress_bit_tensor(model, nc.compress_bit_tensor(model, torch.zeros(0, dtype=torch.uint8))).numel() == 0
    with pytest.raises(CodecError, match="0 or 1"):
        nc.compress_bit_tensor(model, torch.tensor([0, 2, 1]))


def test_no_parity_model_round_trip():
    m = tiny(4, parity=False, patch_size=8, block_size=512)
    data = "bytes without parity framing".encode()
    enc = nc.encode_bytes(m, data)
    assert enc.coded_bits == enc.n_bits == 8 * len(data)
    assert nc.decompress_bytes(m, enc.stream) == data


def test_size_matches_cross_entropy(trained):
    text = HELD_OUT[:250]                                                   # fits one 2304-bit window
    stats = trained.loss(text_to_bits(text).unsqueeze(0))                  # batched path, one window
    ce = float(stats.data_nll_bits.sum() + stats.parity_nll_bits.sum())
    enc = nc.encode_bytes(trained, text.encode())
    assert enc.ideal_bits == pytest.approx(ce, rel=1e-4)
    assert enc.payload_bits <= 1.01 * ce + 64                               # + the coder's final words
    assert enc.payload_bits >= 0.99 * ce - 64
    assert len(enc.stream) == nc.HEADER_BYTES + enc.payload_bits // 8


def test_wrong_model_is_refused(model):
    stream = nc.compress_text(model, SENTENCE)
    with pytest.raises(nc.NeuralCodecError, match="different model"):
        nc.decompress_text(tiny(seed=99), stream)


def test_fingerprint_follows_weights():
    m = tiny(5)
    fp = nc.model_fingerprint(m)
    assert nc.model_fingerprint(m) == fp == nc.model_fingerprint(tiny(5))
    stream = nc.compress_text(m, "abc")
    with torch.no_grad():
        m.head.weight[0, 0] += 1.0
    assert nc.model_fingerprint(m) != fp
    with pytest.raises(CodecError, match="different model"):
        nc.decompress_text(m, stream)


@pytest.mark.parametrize("cut", [1, 4, 10, 30])
def test_truncated_stream(model, cut):
    stream = nc.compress_text(model, SENTENCE)
    with pytest.raises(CodecError):
        nc.decompress_text(model, stream[:-cut])


def test_flipped_bits_never_give_garbage(model):
    """Any single flipped bit raises CodecError or (in the coder's slack bits) still decodes exactly;
    flips in the header and the first payload word always raise."""
    text = "flip me"
    stream = nc.compress_text(model, text)
    for i in range(0, 8 * len(stream), 3):
        bad = bytearray(stream)
        bad[i // 8] ^= 0x80 >> (i % 8)
        try:
            out = nc.decompress_text(model, bytes(bad))
        except CodecError:
            continue
        assert out == text, f"flipping bit {i} gave garbage"
        assert i >= 8 * (nc.HEADER_BYTES + 4), f"flipping bit {i} (header or first word) was not detected"


def test_header_checks(model):
    stream = nc.compress_bytes(model, b"some bytes")
    with pytest.raises(CodecError, match="holds bytes, not text"):
        nc.decompress_text(model, stream)
    with pytest.raises(CodecError, match="max_bytes"):
        nc.decompress_bytes(model, stream, max_bytes=5)
    with pytest.raises(CodecError, match="not a BitLM neural-codec stream"):
        nc.decompress_bytes(model, b"\x00" * 40)
    with pytest.raises(CodecError, match="shorter than"):
        nc.decompress_bytes(model, b"")
    with pytest.raises(CodecError, match="needs a str"):
        nc.compress_text(model, b"bytes")


def test_progress_reports_reach_the_end(model):
    seen = []
    text = "x" * 150                                                        # 1350 bits: one report mid-way
    stream = nc.compress_text(model, text, on_progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1024, 1350), (1350, 1350)]
    seen.clear()
    assert nc.decompress_text(model, stream, on_progress=lambda done, total: seen.append((done, total))) == text
    assert seen == [(1024, 1350), (1350, 1350)]
