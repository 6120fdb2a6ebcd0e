"""The exact predictor: its lookup tables, its agreement with the float model (cross-entropy within 2 %),
and bit-identical frequencies whatever the chunking, the lane batch or the thread count."""
import math

import numpy as np
import pytest
import torch

from bitlm.compress import exact, integers
from bitlm.bits.frames import bytes_to_bits
from bitlm.model.config import BitLMConfig
from bitlm.model.transformer import BitTransformerLM
from tests.exact_helpers import (TINY_V2, fitted_tiny, held_out, one_thread,  # noqa: F401 (autouse fixture)
                                 teacher_forced)


@pytest.fixture(scope="module")
def fitted() -> BitTransformerLM:
    return fitted_tiny()


def lanes_of(data: bytes, lanes: int) -> torch.Tensor:
    n = len(data) // lanes
    return torch.tensor(list(data[:lanes * n]), dtype=torch.int64).view(lanes, n)


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


@pytest.mark.parametrize("version", exact.VERSIONS)
def test_matmul_bounds_hold(version):
    """Every quantised linear keeps inputs · row L1 + bias below 2^52 (what makes any BLAS exact); in
    version 2 the weights are int8 (|w| ≤ 127) and an int8 piece's products sum below 2^31 (int32)."""
    pred = exact.ExactPredictor.of(BitTransformerLM(BitLMConfig(**TINY_V2)).eval(), version=version)
    for blk in pred.blocks:
        for lin in (blk.qkv, blk.proj, blk.fc, blk.out, pred.head):
            if version == 1:
                w = lin.w
                assert w.dtype == torch.float64 and torch.equal(w, w.round())
            else:
                w = lin.w8.long()
                assert lin.w8.dtype == torch.int8 and int(w.abs().max()) <= exact.W8_MAX
                assert 128 * exact.W8_MAX * w.size(1) < 1 << 31
            assert int(w.abs().sum(-1).max()) * lin.in_bound + int(lin.b.abs().max()) < 1 << 52
    assert math.log2(pred.v_clamp) + exact.ATT_EXP_BITS + math.log2(pred.window + 2) <= 52


def test_row_split_keeps_fourteen_bits_and_its_pieces_fit_int8():
    """Version 2's input rule at its edges: rows below 2^14 pass unchanged (s = 0); larger ones are
    shifted by the least s that brings their peak under 2^14, rounded half up, clamped to ±(2^14 - 1);
    hi in [-128, 127], lo in [0, 127], hi · 128 + lo = x'; the numba kernel gives the same."""
    from bitlm.compress import step_kernel
    rows = torch.tensor([[16383, -16383, 5, 0], [16384, -1, 2, 3], [-16385, 16384, 7, 1],
                         [(1 << 40) + 12345, -(1 << 39), 1 << 20, -3], [0, 0, 0, 0], [32767, 32766, -32768, 1]])
    hi, lo, s = exact._row_split(rows)
    assert s.view(-1).tolist() == [0, 1, 1, 27, 0, 2]
    xs = hi * 128 + lo
    assert torch.equal(xs[0], rows[0]) and xs[1].tolist() == [8192, 0, 1, 2]
    assert int(xs.abs().max()) <= 16383 and int(hi.min()) >= -128 and int(hi.max()) <= 127
    assert int(lo.min()) >= 0 and int(lo.max()) <= 127
    pieces, scale = np.zeros((2 * len(rows), 4), np.int8), np.zeros(len(rows))
    step_kernel.split_rows(rows.double().numpy(), pieces, scale, 0, len(rows))
    assert np.array_equal(pieces[0::2], hi.numpy()) and np.array_equal(pieces[1::2], lo.numpy())
    assert np.array_equal(scale, 2.0 ** s.view(-1).double().numpy())


def test_int8_engine_falls_back_when_int_mm_saturates(fitted, monkeypatch):
    """The check `_int8_engine` runs picks torch._int_mm here and refuses one that sums pairs of
    products in saturating int16 (a CPU without VNNI); the float64 fallback gives the same integers."""
    arr = lanes_of(held_out("pydoc", 300), 3)
    assert exact._int8_engine() == "int_mm"
    ref = teacher_forced(exact.ExactPredictor(fitted, kernel="numba"), arr, 1)
    real = torch._int_mm

    def saturating(a, b, out=None):
        a16, b16 = (a.long() + 128), b.long()                 # u8 · s8, pairs summed and clamped to int16
        prod = (a16.unsqueeze(-1) * b16.unsqueeze(0)).view(a.size(0), -1, 2, b.size(1)).sum(2)
        return (prod.clamp(-32768, 32767).sum(1) - 128 * b16.sum(0)).to(torch.int32)
    monkeypatch.setattr(torch, "_int_mm", saturating)
    monkeypatch.setattr(integers, "_ENGINE", [])
    assert exact._int8_engine() == "float64"
    assert torch.equal(teacher_forced(exact.ExactPredictor(fitted, kernel="numba"), arr, 1), ref)
    monkeypatch.setattr(torch, "_int_mm", real)


# ------------------------------------------------------------------------------- the numba kernel (issue 20)

@pytest.mark.parametrize("version", exact.VERSIONS)
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_numba_kernel_gives_the_torch_reference_integers(fitted, chunk, version):
    """The numba kernel (int16 rings, integer attention; version 2: int8 matmuls) against the float64
    torch path, past the window, whatever the chunk, the thread count or the lane split."""
    ref = teacher_forced(exact.ExactPredictor(fitted, kernel="torch", version=version),
                         lanes_of(held_out("pydoc", 300), 3), 64)
    arr = lanes_of(held_out("pydoc", 300), 3)
    for threads in (1, 2, 3):
        pred = exact.ExactPredictor(fitted, kernel="numba", threads=threads, version=version)
        assert pred.kernel == "numba"
        assert torch.equal(teacher_forced(pred, arr, chunk), ref), (chunk, threads)


def test_numba_kernel_follows_torch_thread_count(fitted):
    pred = exact.ExactPredictor.of(fitted)
    assert pred.kernel == exact.DEFAULT_KERNEL == "numba" and pred.threads is None
    arr = lanes_of(held_out("shakespeare", 400), 4)
    one = teacher_forced(pred, arr, 1)
    torch.set_num_threads(2)
    try:
        two = teacher_forced(pred, arr, 1)
        assert torch.get_num_threads() == 2                 # a step restores the caller's setting
    finally:
        torch.set_num_threads(1)
    assert torch.equal(one, two)


@pytest.mark.parametrize("scale", [5.0, 6.0])   # 5.0: one lane of layer 1 widens, 6.0: all
def test_lanes_that_outgrow_int16_are_widened_exactly(scale):
    """Version 1 (int16 rings): q/k/v weights scaled up until keys and values leave int16 (in some lanes
    or all): those lanes' rings are widened to int32 and the integers stay the torch path's, with 1 or 2
    threads."""
    torch.manual_seed(7)
    m = BitTransformerLM(BitLMConfig(**TINY_V2)).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
        for b in m.blocks:
            b.attn.c_attn.weight.mul_(scale)
    arr = lanes_of(held_out("pydoc", 4 * 70), 4)
    ref = teacher_forced(exact.ExactPredictor(m, kernel="torch", version=1), arr, 64)
    for threads, chunk in ((1, 1), (2, 1), (2, 9)):
        pred = exact.ExactPredictor(m, kernel="numba", threads=threads, version=1)
        state = exact.LaneState(pred, 4)
        parts = []
        for s in range(0, arr.size(1), chunk):
            e = min(s + chunk, arr.size(1))
            parts.append(pred.frequencies(state, arr[:, max(s - 1, 0):e - 1], e - s))
        assert torch.equal(torch.cat(parts, 1), ref), (threads, chunk)
        assert state.wide.any()
        for i in range(len(pred.blocks)):
            if state.wide[i].any():
                assert state.wide_k[i].dtype == np.int32
                assert max(np.abs(state.wide_k[i]).max(), np.abs(state.wide_v[i]).max()) > 32767


def _kernel_case(rng, H, hd, rows, Q, q_l1, k_sign, v_val, zero_q=False):
    """Inputs of attention_kernel.attention for one lane: int16 rings (H, hd, rows) at ±32767 or random,
    Q queries whose heads have L1 norm q_l1 (signs matching the keys', so q·k reaches q_l1 · 32767),
    every ring row visible with bias 0 and the chunk causal."""
    from bitlm.compress import attention_kernel as K
    rk = np.full((1, H, hd, rows), 32767, np.int16) * k_sign if k_sign else \
        rng.integers(-32767, 32768, (1, H, hd, rows)).astype(np.int16)
    rv = np.full((1, H, hd, rows), v_val, np.int16) if v_val is not None else \
        rng.integers(-32767, 32768, (1, H, hd, rows)).astype(np.int16)
    C = H * hd
    q = np.zeros((Q, C), np.int32)
    if not zero_q:
        for n in range(Q):
            for h in range(H):
                part = np.full(hd, q_l1 // hd, np.int64)
                part[: q_l1 % hd] += 1
                q[n, h * hd:(h + 1) * hd] = part * (k_sign or 1)
    kc = rng.integers(-32767, 32768, (Q, C)).astype(np.int64)
    vc = rng.integers(-32767, 32768, (Q, C)).astype(np.int64)
    br = np.zeros((Q, H, rows), np.int64)
    bc = np.where(np.arange(Q)[None, None, :] <= np.arange(Q)[:, None, None], 0, K.HIDDEN_BIAS).repeat(H, 1)
    return q, kc, vc, rk, rv, np.ascontiguousarray(br), np.ascontiguousarray(bc)


@pytest.mark.parametrize("case", [
    dict(q_l1=65538, k_sign=1, v_val=32767),        # q·k = 65538 · 32767 = 2^31 - 2: the int32 path's edge
    dict(q_l1=65538, k_sign=-1, v_val=-32767),
    dict(q_l1=65539, k_sign=1, v_val=32767),        # one past it: int64
    dict(q_l1=0, k_sign=1, v_val=32767, zero_q=True),   # every weight 2^16: Σ e >> 8 = 256 · rows
    dict(q_l1=0, k_sign=-1, v_val=-32767, zero_q=True),
    dict(q_l1=40000, k_sign=0, v_val=None),         # random keys and values
    dict(q_l1=200_000, k_sign=0, v_val=None)])
@pytest.mark.parametrize("rows, Q", [(256, 1), (257, 1), (255, 3), (256, 16)])
def test_attention_kernel_int32_paths_agree_with_int64(case, rows, Q):
    """The kernel's int32 sums (q·k when Σ|q| · 32767 < 2^31; Σ e·v split at e >> 8 and e & 255 when
    those sums' bounds fit) give the int64 path's outputs on the extremes of their bounds: the same
    lane as an int16 ring (narrow paths where the bound holds) and as an int32 ring (int64 paths always)."""
    from bitlm.compress import attention_kernel as K
    rng = np.random.default_rng(rows * 100 + Q)
    H, hd = 3, 32
    q, kc, vc, rk, rv, br, bc = _kernel_case(rng, H, hd, rows, Q, **case)
    table = exact.tables()["att_exp"].numpy()
    outs = []
    for wide in (0, 1):
        out = np.full((Q, H * hd), np.nan)
        K.attention(q, kc, vc, rk, rv, rk.astype(np.int32), rv.astype(np.int32), np.array([wide], np.int8),
                    br, bc, table, hd, out, 0, 1)
        outs.append(out)
    assert not np.isnan(outs[0]).any()
    assert np.array_equal(outs[0], outs[1])
    # and the float64 reference of the torch path, on this lane
    qf = torch.from_numpy(q.astype(np.float64)).view(Q, H, hd).transpose(0, 1)             # (H, Q, hd)
    kf = torch.cat([torch.from_numpy(rk[0].astype(np.float64)).transpose(1, 2),
                    torch.from_numpy(kc.astype(np.float64)).view(Q, H, hd).transpose(0, 1)], 1)   # (H, rows+Q, hd)
    vf = torch.cat([torch.from_numpy(rv[0].astype(np.float64)).transpose(1, 2),
                    torch.from_numpy(vc.astype(np.float64)).view(Q, H, hd).transpose(0, 1)], 1)
    bias = torch.from_numpy(np.concatenate([br, bc], 2)).transpose(0, 1)                   # (H, Q, rows+Q)
    bias = torch.where(bias == K.HIDDEN_BIAS, float(exact._HIDDEN), -bias.double())
    pred = exact.ExactPredictor.__new__(exact.ExactPredictor)
    pred.att_exp, pred.att_exp_f = exact.tables()["att_exp"], exact.tables()["att_exp"].double()
    ref = pred._attention(qf.to(torch.int64).unsqueeze(0), [(kf.unsqueeze(0), vf.unsqueeze(0), bias)])[0]
    assert np.array_equal(outs[0], ref.transpose(0, 1).reshape(Q, H * hd).double().numpy())


def test_memory_per_lane_and_for_the_decoder():
    """The figures of LaneState's docstring: version 2 holds keys and values in int8 with an int8 shift
    per head and row, 2 · layers · window · (n_embd + n_head) bytes a lane (0.81 MB for the shipped 6 × 256
    model with 8 heads and its 256-slot window; version 1's int16: 1.57 MB; the torch path's float64:
    6.3 MB); a 64-lane decoder's rings and ring_pos add up to exactly 64 times that + window · 8; a decode
    step's buffers to 57 352 bytes a lane; the predictor's weights to 4.9 MB (int8; version 1: 38.4 MB)."""
    from pathlib import Path
    model = BitTransformerLM.from_pretrained(str(Path(__file__).resolve().parents[1] / "assets")).eval()
    c = model.config
    pred = exact.ExactPredictor.of(model)
    per_lane = 2 * c.n_layer * c.window * (c.n_embd + c.n_head)
    assert exact.LaneState.bytes_per_lane(pred) == per_lane == 811_008
    state = exact.LaneState(pred, 64)
    assert state.nbytes() == 64 * per_lane + c.window * 8 == 51_906_560
    assert all(a.dtype == np.int8 for a in state.ring_k + state.ring_v + state.shift_k + state.shift_v)
    pred.frequencies(state, None, 1)                            # a decode step's buffers
    C, F = c.n_embd, pred.blocks[0].fc.b.numel()
    pieces, products = 2 * (C + F), 4 * 2 * (C + 3 * C + F)       # int8 inputs; int32 products per width
    shifts = 2 * 8 * c.n_head                                    # a slot's key and value shifts per head
    assert state.scratch_bytes() == 64 * (8 * (9 * C + 2 * F + 256) + 4 * C + pieces + products + 8 + shifts) \
        == 64 * 56_968
    assert pred.weight_bytes() == 4_896_768                      # int8 weights, int64 biases: 4.9 MB
    v1 = exact.ExactPredictor(model, version=1)
    assert v1.weight_bytes() == 38_385_664                       # float64: 38.4 MB
    assert exact.LaneState.bytes_per_lane(v1) == 2 * c.n_layer * c.window * c.n_embd * 2 == 1_572_864
    assert exact.LaneState(v1, 64).nbytes() == 64 * 1_572_864 + c.window * 8 + 64 * c.n_layer
    ref = exact.ExactPredictor(model, kernel="torch")
    assert exact.LaneState.bytes_per_lane(ref) == 8 * 2 * c.n_layer * c.window * c.n_embd == 6_291_456
    assert exact.LaneState(ref, 2).nbytes() == 2 * 6_291_456 + c.window * 8


@pytest.mark.parametrize("q_l1, k_shift, v_shift", [
    (16_909_320, 0, 0),          # L1 · 127 = 2^31 - 1 - 87: q·k' in int32 at its edge
    (16_909_321, 3, 2),          # one past it: int64
    (0, 20, 16),                 # every weight 2^16, values << 16: Σ wh · 127 just fits int32 (256 or 257 rows)
    (0, 0, 17),                  # << 17: int64
    (40_000, None, None)])       # random int8 keys, values and shifts (0 … 20)
@pytest.mark.parametrize("rows, Q", [(256, 1), (257, 1), (255, 3)])
def test_int8_attention_kernel_gives_the_reference_at_its_bounds(q_l1, k_shift, v_shift, rows, Q):
    """Version 2's attention kernel (int8 rings with a shift per head and row; int32 sums where the
    bounds checked per query allow, else int64) against the torch path's float64 attention over the
    same keys and values x' << s, at the edges of both int32 bounds."""
    from bitlm.compress import attention_kernel as K
    rng = np.random.default_rng(rows * 10 + Q + q_l1 % 7)
    H, hd = 3, 32
    C = H * hd
    if k_shift is None:
        rk, rv = (rng.integers(-127, 128, (H, hd, rows)).astype(np.int8) for _ in range(2))
        rks, rvs = (rng.integers(0, 21, (H, rows)).astype(np.int8) for _ in range(2))
    else:
        rk, rv = np.full((H, hd, rows), 127, np.int8), np.full((H, hd, rows), -127, np.int8)
        rks, rvs = np.full((H, rows), k_shift, np.int8), np.full((H, rows), v_shift, np.int8)
    q = np.zeros((Q, C), np.int32)
    for h in range(H):
        part = np.full(hd, q_l1 // hd, np.int64)
        part[: q_l1 % hd] += 1
        q[:, h * hd:(h + 1) * hd] = part
    kc = rng.integers(-127, 128, (Q, C)).astype(np.int64) << 5
    vc = rng.integers(-127, 128, (Q, C)).astype(np.int64) << 9
    br = np.zeros((Q, H, rows), np.int64)
    bc = np.ascontiguousarray(np.where(np.arange(Q)[None, None, :] <= np.arange(Q)[:, None, None], 0,
                                       K.HIDDEN_BIAS).repeat(H, 1))
    table = exact.tables()["att_exp"].numpy()
    out = np.full((Q, C), np.nan)
    K._lane_attention8(q, kc, vc, rk, rv, rks, rvs, 0, br, bc, table, hd, out, np.empty(rows + Q, np.int64),
                       np.empty(rows, np.int32), np.empty(rows + Q, np.int64), np.empty(rows, np.int32),
                       np.empty(rows, np.int32))
    keys = torch.from_numpy(rk.astype(np.int64) << rks[:, None, :].astype(np.int64)).double().transpose(1, 2)
    vals = torch.from_numpy(rv.astype(np.int64) << rvs[:, None, :].astype(np.int64)).double().transpose(1, 2)
    kf = torch.cat([keys, torch.from_numpy(kc).double().view(Q, H, hd).transpose(0, 1)], 1)   # (H, rows+Q, hd)
    vf = torch.cat([vals, torch.from_numpy(vc).double().view(Q, H, hd).transpose(0, 1)], 1)
    bias = torch.from_numpy(np.concatenate([br, bc], 2)).transpose(0, 1)                     # (H, Q, rows+Q)
    bias = torch.where(bias == K.HIDDEN_BIAS, float(exact._HIDDEN), -bias.double())
    pred = exact.ExactPredictor.__new__(exact.ExactPredictor)
    pred.att_exp, pred.att_exp_f = exact.tables()["att_exp"], exact.tables()["att_exp"].double()
    qf = torch.from_numpy(q.astype(np.int64)).view(Q, H, hd).transpose(0, 1)
    ref = pred._attention(qf.unsqueeze(0), [(kf.unsqueeze(0), vf.unsqueeze(0), bias)])[0]
    assert not np.isnan(out).any()
    assert np.array_equal(out, ref.transpose(0, 1).reshape(Q, C).double().numpy())
