"""Telemetry (K, C, S, attention entropy) against hand-computed values and a brute-force LZ76."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitlm.model.telemetry import (
    attention_entropy, compute_telemetry, lz76_phrases, lz_complexity, negentropy, negentropy_pred, symbiosis,
    symbiosis_kl,
)


def lz76_reference(s: str) -> int:
    """Textbook LZ76 phrase count: extend each phrase while it still occurs earlier (overlap allowed)."""
    i = c = 0
    while i < len(s):
        l = 1
        while i + l <= len(s) and s[i:i + l] in s[:i + l - 1]:
            l += 1
        c += 1
        i += l
    return c


def bits_of(s: str) -> torch.Tensor:
    return torch.tensor([int(ch) for ch in s], dtype=torch.uint8)


def H(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def test_negentropy_hand_values():
    assert negentropy(torch.zeros(100, dtype=torch.uint8)) == 1.0
    assert negentropy(torch.ones(7, dtype=torch.uint8)) == 1.0
    assert negentropy(torch.tensor([0, 1] * 50)) == 0.0
    assert negentropy(torch.tensor([1, 0, 0, 0])) == pytest.approx(1 - H(0.25), abs=1e-12)
    assert negentropy([torch.tensor([1, 1]), torch.tensor([0, 0])]) == 0.0      # a list is pooled
    with pytest.raises(ValueError):
        negentropy(torch.zeros(0))


def test_negentropy_pred_hand_values():
    assert negentropy_pred(torch.full((10,), 0.5)) == pytest.approx(0.0, abs=1e-12)
    assert negentropy_pred(torch.tensor([0.0, 1.0, 1.0])) == 1.0
    assert negentropy_pred(torch.tensor([0.1, 0.5], dtype=torch.float64)) == pytest.approx(1 - (H(0.1) + 1.0) / 2, abs=1e-12)


def test_lz76_known_example():
    # Kaspar & Schuster's example: 0 · 001 · 10 · 100 · 1000 · 101
    assert lz76_reference("0001101001000101") == 6
    assert lz76_phrases([bits_of("0001101001000101").numpy()]) == [6]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["0", "1", "0001", "01", "1111111"]), max_size=40), min_size=1, max_size=4))
def test_lz76_matches_reference(pieces):
    rows = ["".join(p) for p in pieces]                                 # repetitive rows of unequal length
    got = lz76_phrases([np.frombuffer(r.encode(), np.uint8) - 48 for r in rows])
    assert got == [lz76_reference(r) for r in rows]


def test_lz76_long_repeats_use_exact_extension():
    for s in ["0" * 3000, "01" * 700, ("0110100" * 300)[:2000], "1" + "0" * 500 + "1" + "0" * 500]:
        assert lz76_phrases([bits_of(s).numpy()]) == [lz76_reference(s)]


def test_lz_complexity_constant_small_random_near_one():
    assert lz_complexity(torch.zeros(10_000, dtype=torch.uint8)) < 0.01
    assert lz_complexity(torch.tensor([0, 1] * 5000)) < 0.01
    g = torch.Generator().manual_seed(0)
    c = lz_complexity(torch.randint(0, 2, (10_000,), generator=g))
    assert 0.9 < c < 1.15
    assert lz_complexity(torch.tensor([1])) == 0.0


def test_lz_complexity_rows_are_averaged():
    a, b = bits_of("0001101001000101"), torch.zeros(16, dtype=torch.uint8)
    ca, cb = lz_complexity(a), lz_complexity(b)
    assert ca == pytest.approx(6 * 4 / 16)
    assert lz_complexity(torch.stack([a, b])) == pytest.approx((ca + cb) / 2)
    assert lz_complexity([a, torch.zeros(0, dtype=torch.uint8), b]) == pytest.approx((ca + cb) / 2)
    with pytest.raises(ValueError):
        lz_complexity(torch.tensor([0, 2]))


def test_symbiosis_is_geometric_mean_probability():
    p, bits = torch.tensor([0.9, 0.2, 0.5, 0.7], dtype=torch.float64), torch.tensor([1, 0, 1, 0])
    probs = [0.9, 0.8, 0.5, 0.3]
    assert symbiosis(p, bits) == pytest.approx(math.prod(probs) ** 0.25, rel=1e-9)
    assert symbiosis_kl(p, bits) == pytest.approx(-sum(math.log2(q) for q in probs) / 4, rel=1e-9)
    assert symbiosis(torch.full((8,), 0.5), torch.randint(0, 2, (8,))) == pytest.approx(0.5)
    assert symbiosis(torch.tensor([1.0, 0.0]), torch.tensor([1, 0])) == 1.0
    with pytest.raises(ValueError):
        symbiosis(torch.tensor([0.5]), torch.tensor([1, 0]))


def test_attention_entropy_hand_values():
    N = 8
    uniform = torch.full((2, 3, N, N), 1 / N)
    assert torch.allclose(attention_entropy(uniform), torch.full((1, 3), math.log2(N)))
    causal = torch.tril(torch.ones(N, N)) / torch.arange(1, N + 1).unsqueeze(1)      # row i uniform over i+1 keys
    expected = sum(math.log2(i + 1) for i in range(N)) / N
    ent = attention_entropy([causal.expand(1, 2, N, N), torch.eye(N).expand(1, 2, N, N)])
    assert ent.shape == (2, 2)
    assert torch.allclose(ent[0], torch.full((2,), expected)) and torch.all(ent[1] == 0)
    mask = torch.zeros(1, N, dtype=torch.bool)
    mask[0, -1] = True                                                                # only the last query
    assert torch.allclose(attention_entropy(causal.expand(1, 2, N, N), mask), torch.full((1, 2), math.log2(N)))


def test_compute_telemetry_matches_the_functions():
    g = torch.Generator().manual_seed(1)
    bits = torch.randint(0, 2, (3, 50), generator=g)
    logits = torch.randn(3, 50, 2, generator=g)
    tel = compute_telemetry(bits, logits)
    p = logits.softmax(-1)[..., 1]
    assert torch.allclose(tel.p, p, atol=1e-6)
    assert torch.allclose(tel.entropy, -(p * p.log2() + (1 - p) * (1 - p).log2()), atol=1e-5)
    assert tel.K == pytest.approx(negentropy(bits))
    assert tel.K_pred == pytest.approx(negentropy_pred(p), abs=1e-6)
    assert tel.C == pytest.approx(lz_complexity(bits))
    assert tel.C_pred == pytest.approx(lz_complexity((p > 0.5).to(torch.uint8)))
    assert tel.S == pytest.approx(symbiosis(p, bits), rel=1e-5)
    assert tel.symbiosis_kl == pytest.approx(symbiosis_kl(p, bits), rel=1e-5)
    assert tel.attention_entropy is None and tel.attention is None and tel.on == "stream"
    assert set(tel.scalars()) == {"K", "K_pred", "C", "C_pred", "S", "symbiosis_kl"}
    assert compute_telemetry(bits, logits, lz_rows=1).C == pytest.approx(lz_complexity(bits[0]))


def test_compute_telemetry_mask_excludes_padding():
    g = torch.Generator().manual_seed(2)
    bits = torch.randint(0, 2, (2, 40), generator=g)
    logits = torch.randn(2, 40, 2, generator=g)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 25:] = False
    tel = compute_telemetry(bits, logits, mask=mask, on="decompressed")
    real_bits = torch.cat([bits[0], bits[1, :25]])
    real_p = torch.cat([tel.p[0], tel.p[1, :25]])
    assert tel.K == pytest.approx(negentropy(real_bits))
    assert tel.S == pytest.approx(symbiosis(real_p, real_bits), rel=1e-5)
    assert tel.C == pytest.approx(lz_complexity([bits[0], bits[1, :25]]))
    assert tel.on == "decompressed"
    with pytest.raises(ValueError):
        compute_telemetry(bits, logits, on="raw")
    with pytest.raises(ValueError):
        compute_telemetry(bits, logits[:, :-1])
