"""The exact predictor: its lookup tables, its agreement with the float model (cross-entropy within 2 %),
and bit-identical frequencies whatever the chunking, the lane batch or the thread count."""
import math

import numpy as np
import pytest
import torch

from bitlm.compress import exact
from bitlm.bits.frames import bytes_to_bits
from bitlm.model.config import BitLMConfig
from bitlm.model.transformer import BitTransformerLM
from tests.exact_helpers import TINY_V2, fitted_tiny, held_out, one_thread  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def fitted() -> BitTransformerLM:
    return fitted_tiny()


def lanes_of(data: bytes, lanes: int) -> torch.Tensor:
    n = len(data) // lanes
    return torch.tensor(list(data[:lanes * n]), dtype=torch.int64).view(lanes, n)


def teacher_forced(pred: exact.ExactPredictor, arr: torch.Tensor, chunk: int) -> torch.Tensor:
    """(B, L) bytes -> (B, L, 256) frequencies, chunk slots at a time."""
    state = exact.LaneState(pred, arr.size(0))
    parts = []
    for s in range(0, arr.size(1), chunk):
        e = min(s + chunk, arr.size(1))
        parts.append(pred.frequencies(state, arr[:, max(s - 1, 0):e - 1], e - s))
    return torch.cat(parts, dim=1)


def test_tables_match_their_functions():
    t = exact.tables()
    d = np.arange(t["att_exp"].numel() - 1) / (1 << exact.LOGIT_BITS)
    assert np.abs(t["att_exp"][:-1].numpy() - np.exp(-d) * (1 << exact.ATT_EXP_BITS)).max() <= 1
    assert t["att_exp"][-1] == 0 and t["head_exp"][-1] == 0 and t["head_exp"][0] == 1 << exact.HEAD_EXP_BITS
    r = exact.GELU_RANGE << exact.ACT_BITS
    x = torch.arange(-r, r + 1, dtype=torch.float64) / (1 << exact.ACT_BITS)
    want = torch.nn.functional.gelu(x) * (1 << exact.ACT_BITS)
    assert (t["gelu"].double() - want).abs().max() <= 1
    assert exact.tables_digest({k: v.numpy() for k, v in t.items()}) == exact.TABLES_SHA256


def test_round_pow2_is_exact_rounding():
    for num in range(0, 40):
        for den in (1, 2, 3, 6, 8):
            assert exact._round_pow2(num, den) == round(2 ** (num / den)), (num, den)


def test_cross_entropy_within_2_percent_of_the_float_model(fitted):
    """Held-out Shakespeare in 6 lanes of 60 bytes (each longer than the 32-slot window): the exact
    predictor's code length against the float model's data-bit cross-entropy on the same lanes."""
    arr = lanes_of(held_out("shakespeare", 360), 6)
    freq = teacher_forced(exact.ExactPredictor.of(fitted), arr, 64)
    assert (freq.sum(-1) == exact.FREQ_TOTAL).all() and (freq >= 0).all()
    coded = freq.gather(-1, arr.unsqueeze(-1)).squeeze(-1) + 1
    ce_exact = float((24 - torch.log2(coded.double())).sum())
    bits = torch.stack([bytes_to_bits(bytes(row.tolist())) for row in arr])
    with torch.no_grad():
        ce_float = float(fitted.loss(bits).data_nll_bits.sum())
    assert ce_float / arr.numel() < 6.0                        # the fitted model is far from uniform
    assert abs(ce_exact / ce_float - 1) < 0.02, (ce_exact, ce_float)


@pytest.mark.parametrize("seed", [0, 1])
def test_chunks_steps_and_lane_batches_agree_to_the_bit(fitted, seed):
    """One-slot steps (the decoder), chunks of 7 and 64 slots (the encoder), and each lane alone give
    identical integers, past the window (slots 32+ slide)."""
    model = fitted if seed == 0 else BitTransformerLM(BitLMConfig(**TINY_V2)).eval()
    pred = exact.ExactPredictor.of(model)
    arr = lanes_of(held_out("pydoc", 300), 3)
    ref = teacher_forced(pred, arr, 64)
    assert torch.equal(teacher_forced(pred, arr, 1), ref)
    assert torch.equal(teacher_forced(pred, arr, 7), ref)
    for lane in range(3):
        assert torch.equal(teacher_forced(pred, arr[lane:lane + 1], 13), ref[lane:lane + 1])


def test_frequencies_do_not_depend_on_threads(fitted):
    pred = exact.ExactPredictor.of(fitted)
    arr = lanes_of(held_out("shakespeare", 400), 4)
    one = teacher_forced(pred, arr, 50)
    torch.set_num_threads(2)
    try:
        two = teacher_forced(pred, arr, 50)
    finally:
        torch.set_num_threads(1)
    assert torch.equal(one, two)


def test_no_parity_model():
    torch.manual_seed(3)
    m = BitTransformerLM(BitLMConfig(n_layer=1, n_head=2, n_embd=16, patch_size=8, parity=False, block_size=8 * 48,
                                     attn_window=16)).eval()
    pred = exact.ExactPredictor.of(m)
    arr = lanes_of(b"bytes without parity framing, " * 3, 2)
    freq = teacher_forced(pred, arr, 45)
    assert torch.equal(teacher_forced(pred, arr, 1), freq)
    with torch.no_grad():
        ce_float = float(m.loss(torch.stack([torch.tensor([(b >> (7 - i)) & 1 for b in row.tolist() for i in range(8)])
                                             for row in arr])).data_nll_bits.sum())
    coded = freq.gather(-1, arr.unsqueeze(-1)).squeeze(-1) + 1
    assert abs(float((24 - torch.log2(coded.double())).sum()) / ce_float - 1) < 0.02


@pytest.mark.parametrize("kw, why", [
    (dict(pos="learned"), "ALiBi"),
    (dict(local="transformer", local_layers=1, local_embd=16), "factorized"),
    (dict(patch_size=1, parity=False, block_size=64), "codes bytes"),
])
def test_unsupported_models_are_refused(kw, why):
    cfg = dict(n_layer=1, n_head=2, n_embd=16, block_size=144)
    cfg.update(kw)
    with pytest.raises(exact.UnsupportedModelError, match=why):
        exact.ExactPredictor(BitTransformerLM(BitLMConfig(**cfg)))


def test_predictor_follows_weight_changes():
    torch.manual_seed(4)
    m = BitTransformerLM(BitLMConfig(**TINY_V2)).eval()
    first = exact.ExactPredictor.of(m)
    assert exact.ExactPredictor.of(m) is first
    with torch.no_grad():
        m.patch_emb.weight[5, 0] += 0.5
    assert exact.ExactPredictor.of(m) is not first


def test_matmul_bounds_hold():
    """Every quantised linear keeps inputs · row L1 + bias below 2^52 (what makes any BLAS exact)."""
    pred = exact.ExactPredictor.of(BitTransformerLM(BitLMConfig(**TINY_V2)).eval())
    for blk in pred.blocks:
        for lin in (blk.qkv, blk.proj, blk.fc, blk.out):
            assert lin.w.dtype == torch.float64 and torch.equal(lin.w, lin.w.round())
            assert int(lin.w.abs().sum(-1).max()) * lin.in_bound + int(lin.b.abs().max()) < 1 << 52
    assert math.log2(pred.v_clamp) + exact.ATT_EXP_BITS + math.log2(pred.window + 2) <= 52
