"""Numba attention kernels of the exact predictor's CPU path (`bitlm.compress.exact`, kernel="numba"):
the qkv linear's rounding into q, k, v, and the integer attention of a chunk of Q query slots (Q = 1: a
decode step) over each lane's ring of keys/values — version 2: int8 with a shift per head and row
(`post_qkv8`, `_lane_attention8`); version 1: int16 (int32/int64 for a lane whose values outgrew int16;
`post_qkv`, `_lane_attention`) — then the ring store. The steps between the other matmuls are in
`bitlm.compress.step_kernel`.

Every function repeats, operation for operation, what `ExactPredictor`'s torch path does, so the
integers are the same: dot products and Σ e·v, Σ e are exact integer sums (int64, or int32 where a
bound checked on the query's own numbers proves every partial sum fits: see `_lane_attention`);
a score is (q·k + 2^13) >> 14 (= floor(q·k / 2^14 + 1/2), the torch path's `_fshift`) minus the ALiBi
bias; weights come from the same exp table after the same max subtraction and clamp to its last entry
(0); an output is np.rint(float(Σ e·v) / float(Σ e)): both sums are integers below 2^52, so the int64 ->
float64 conversions are exact, the IEEE-754 division is correctly rounded (numba's default: no fastmath,
no reciprocal), and rint rounds half to even like torch.round. The layer norm uses the same integer mean
and variance, the same int -> float conversion, sqrt and division (single correctly rounded IEEE ops)
and rint; the linears' results (exact integers in float64) are rounded by the same x·2^-s + 1/2, floor.
All functions take a lane range [b0, b1) and release the GIL, so lanes can run on several threads: each
lane's numbers depend on that lane alone, so any split gives the same bits. A layer's attention runs lane by lane
(`post_qkv`: split, attend, store), so the ring rows a step overwrites are still in cache when written.
"""
from __future__ import annotations


import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from bitlm.compress.step_kernel import _JIT, _shift_clamp

I16_MAX = 32767
PREFETCH_AHEAD = 4096        # elements: how far ahead of the row being read the next rows are asked for
I32_MAX = 2147483647
HIDDEN_BIAS = 1 << 40        # `bias_tables`' bias of a key a query does not see (see `_lane_attention`)


@intrinsic
def _prefetch(typingctx, arr, offset):
    """A hint (llvm.prefetch: read, keep in all cache levels) for the element `offset` of a C-contiguous
    array, counted from its first element; it never faults and changes no value."""
    if not isinstance(arr, types.Array) or not isinstance(offset, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.void(arr, types.int64), codegen


if nb.config.DISABLE_JIT:                 # the plain-Python path (NUMBA_DISABLE_JIT=1, for tests): a hint is nothing
    def _prefetch(arr, offset):          # noqa: F811
        return None


@nb.njit(**_JIT)
def split_qkv(y, bias, scale, clamp, qk_clamp, v_clamp, q, k, v, r0, r1):
    """Rows [r0, r1) of the qkv linear's product y ((N, 3C) float64) + bias -> q ((N, C) int32: the
    clamp ±qk_clamp ≤ 2^25 fits), k, v ((N, C) int64), rounded, clamped by the linear, then q, k to
    ±qk_clamp and v to ±v_clamp."""
    C = q.shape[1]
    for n in range(r0, r1):
        for i in range(C):
            q[n, i] = int(min(max(_shift_clamp(y[n, i], bias[i], scale[i], clamp), -qk_clamp), qk_clamp))
            k[n, i] = int(min(max(_shift_clamp(y[n, C + i], bias[C + i], scale[C + i], clamp), -qk_clamp), qk_clamp))
            v[n, i] = int(min(max(_shift_clamp(y[n, 2 * C + i], bias[2 * C + i], scale[2 * C + i], clamp), -v_clamp),
                              v_clamp))


@nb.njit(**_JIT)
def bias_tables(s0, Q, ring_pos, slopes, window, shift, hidden):
    """ALiBi terms of the queries at slots s0 … s0+Q-1 over the ring's rows (their slots in ring_pos,
    -1: empty) and over the chunk's own slots: (Q, H, rows) and (Q, H, Q) int64, the bias subtracted
    from a visible key's score (the rule of `ExactPredictor._bias`), `hidden` (HIDDEN_BIAS) where the
    key is not seen."""
    H, rows = slopes.shape[0], ring_pos.shape[0]
    br = np.empty((Q, H, rows), np.int64)
    bc = np.empty((Q, H, Q), np.int64)
    half = 1 << (shift - 1)
    for t in range(Q):
        qp = s0 + t
        for j in range(rows + Q):
            kp = ring_pos[j] if j < rows else s0 + j - rows
            d = qp - kp
            sink = kp == 0
            vis = kp >= 0 and d >= 0 and (d <= window - 2 or sink)
            dist = min(qp, window - 1) if sink else d
            for h in range(H):
                val = (slopes[h] * dist + half) >> shift if vis else hidden
                if j < rows:
                    br[t, h, j] = val
                else:
                    bc[t, h, j - rows] = val
    return br, bc


@nb.njit(**_JIT)
def _head_l1(q, n, c0, hd):
    """Σ_d |q[n, c0 + d]| over one head: the bound that decides whether its dot products fit int32."""
    l1 = 0
    for d in range(hd):
        l1 += abs(np.int64(q[n, c0 + d]))
    return l1


@nb.njit(**_JIT)
def _ring_dots_i32(q, rk, h, n, c0, hd, s32, prefetch):
    """s32[j] = Σ_d q[n, c0 + d] · rk[h, d, j] in int32 for every ring row j (rk: (H, hd, rows), int16 or
    int8; the caller checked that every partial sum fits), keys read once, four dimensions at a time
    (per query; Q = 1 when decoding); `prefetch` asks for the rows after these (maybe the next lane's)."""
    rows = rk.shape[2]
    for j in range(rows):
        s32[j] = 0
    d = 0
    while d + 4 <= hd:
        if prefetch:
            base = (h * hd + d) * rows + PREFETCH_AHEAD
            for a in range(0, 4 * rows, 32):
                _prefetch(rk, base + a)
        q0, q1 = np.int32(q[n, c0 + d]), np.int32(q[n, c0 + d + 1])
        q2, q3 = np.int32(q[n, c0 + d + 2]), np.int32(q[n, c0 + d + 3])
        for j in range(rows):
            s32[j] = np.int32(s32[j] + q0 * np.int32(rk[h, d, j]) + q1 * np.int32(rk[h, d + 1, j])
                              + q2 * np.int32(rk[h, d + 2, j]) + q3 * np.int32(rk[h, d + 3, j]))
        d += 4
    while d < hd:
        qd = np.int32(q[n, c0 + d])
        for j in range(rows):
            s32[j] = np.int32(s32[j] + qd * np.int32(rk[h, d, j]))
        d += 1


@nb.njit(**_JIT)
def _own_slot_scores(q, kc, bc, sc, n, n0, c0, hd, t, h, rows, top):
    """Scores of query n (chunk slot t, head h at column c0) over the chunk's own keys kc (int64; lane
    rows from n0) into sc[rows:], hidden ones -2^62; returns the larger of top and the visible scores."""
    for u in range(bc.shape[2]):
        if bc[t, h, u] != HIDDEN_BIAS:
            acc = 0
            for d in range(hd):
                acc += np.int64(q[n, c0 + d]) * kc[n0 + u, c0 + d]
            s = ((acc + 8192) >> 14) - bc[t, h, u]
            top = max(top, s)
        else:
            s = -(1 << 62)
        sc[rows + u] = s
    return top


@nb.njit(**_JIT)
def _lane_attention(q, kc, vc, rk, rv, b, br, bc, table, hd, out, sc, s32, e, eh, el, narrow):
    """One lane b: Q queries over its ring (rk, rv: (H, hd, rows), transposed so that the sums over
    rows vectorise; int16 when `narrow`, else int32/int64) and the chunk's own keys/values (kc, vc:
    (N, C) int64, rows b·Q …). Scratch: sc (rows + Q,) int64, s32 (rows,) int32, e (rows + Q,) int32,
    eh, el (rows,) int16.

    The integers are those of int64 arithmetic; two narrower paths give them too, where bounds checked
    here, on this query's numbers, prove every partial sum fits int32 (16 lanes per 512-bit vector
    instead of 8, no 64-bit multiplies):
    - q·k in int32 when the ring is int16 (|k| ≤ 32767: `store` writes only such values, empty rows are
      0) and L1 = Σ_d |q_d| over the head satisfies L1 · 32767 ≤ 2^31 - 1: every partial sum over d is
      then at most L1 · 32767 in magnitude. Held-out text: L1 ≤ ~31 000, the limit is 65 538. Else int64.
    - Σ e·v with e = 256·eh + el (eh = e >> 8 ∈ [0, 256], el = e & 255): Σ eh·v and Σ el·v in int32 when
      the ring is int16 and 32767 · Σ eh ≤ 2^31 - 1 and 32767 · Σ el ≤ 2^31 - 1 (e ≥ 0, so each partial
      sum is bounded by the full sum of weights times 32767), then 256·Σ eh·v + Σ el·v in int64 (exact).
      Σ el ≤ 255 · rows always passes for rows ≤ 257 (the shipped model: 256); Σ eh ≤ Σ e / 256 passes
      unless Σ e > ~2^24, i.e. almost every key at full weight. Else int64 sums of int64 products.
    Both results equal the int64 sums exactly, so the path taken never changes a bit.
    Hidden keys: `bias_tables` gives them the bias HIDDEN_BIAS = 2^40, so their score is below -2^39
    (|q·k| < 2^51, so |(q·k + 2^13) >> 14| < 2^37) while a visible key's score is above -2^38 (bias
    < 2^30); every query sees itself, so the maximum is a visible score and a hidden key's distance to
    it exceeds the exp table's length: its weight is the table's last entry, 0 — what skipping it gives,
    with no branch in the loops."""
    H, rows = rk.shape[0], rk.shape[2]
    Q = br.shape[0]
    last = table.shape[0] - 1
    n0 = b * Q
    for h in range(H):
        c0 = h * hd
        for t in range(Q):
            n = n0 + t
            l1 = _head_l1(q, n, c0, hd)
            top = -(1 << 62)
            if narrow and l1 * I16_MAX <= I32_MAX:              # q·k in int32 (bound above)
                _ring_dots_i32(q, rk, h, n, c0, hd, s32, True)
                for j in range(rows):
                    s = ((np.int64(s32[j]) + 8192) >> 14) - br[t, h, j]
                    sc[j] = s
                    top = max(top, s)
            else:                                               # q·k in int64
                for j in range(rows):
                    sc[j] = 0
                d = 0
                while d + 4 <= hd:
                    base = (h * hd + d) * rows + PREFETCH_AHEAD
                    for a in range(0, 4 * rows, 32):
                        _prefetch(rk, base + a)
                    q0, q1 = np.int64(q[n, c0 + d]), np.int64(q[n, c0 + d + 1])
                    q2, q3 = np.int64(q[n, c0 + d + 2]), np.int64(q[n, c0 + d + 3])
                    for j in range(rows):
                        sc[j] += (q0 * np.int64(rk[h, d, j]) + q1 * np.int64(rk[h, d + 1, j])
                                  + q2 * np.int64(rk[h, d + 2, j]) + q3 * np.int64(rk[h, d + 3, j]))
                    d += 4
                while d < hd:
                    qd = np.int64(q[n, c0 + d])
                    for j in range(rows):
                        sc[j] += qd * np.int64(rk[h, d, j])
                    d += 1
                for j in range(rows):
                    s = ((sc[j] + 8192) >> 14) - br[t, h, j]
                    sc[j] = s
                    top = max(top, s)
            top = _own_slot_scores(q, kc, bc, sc, n, n0, c0, hd, t, h, rows, top)
            den, sh, sl = 0, 0, 0
            for j in range(rows):
                w = table[min(top - sc[j], last)]
                e[j] = w
                eh[j] = w >> 8
                el[j] = w & 255
                den += w
                sh += w >> 8
                sl += w & 255
            for u in range(Q):
                w = table[min(top - sc[rows + u], last)]
                e[rows + u] = w
                den += w
            dn = float(den)
            d = 0
            if narrow and sh * I16_MAX <= I32_MAX and sl * I16_MAX <= I32_MAX:    # Σ e·v in int32 halves
                while d + 2 <= hd:                              # values read once
                    base = (h * hd + d) * rows + PREFETCH_AHEAD
                    for a in range(0, 2 * rows, 32):
                        _prefetch(rv, base + a)
                    h0, l0, h1, l1 = np.int32(0), np.int32(0), np.int32(0), np.int32(0)
                    for j in range(rows):
                        v0, v1 = np.int32(rv[h, d, j]), np.int32(rv[h, d + 1, j])
                        h0 = np.int32(h0 + np.int32(eh[j]) * v0)
                        l0 = np.int32(l0 + np.int32(el[j]) * v0)
                        h1 = np.int32(h1 + np.int32(eh[j]) * v1)
                        l1 = np.int32(l1 + np.int32(el[j]) * v1)
                    a0 = (np.int64(h0) << 8) + np.int64(l0)
                    a1 = (np.int64(h1) << 8) + np.int64(l1)
                    for u in range(Q):
                        a0 += np.int64(e[rows + u]) * vc[n0 + u, c0 + d]
                        a1 += np.int64(e[rows + u]) * vc[n0 + u, c0 + d + 1]
                    out[n, c0 + d] = np.rint(float(a0) / dn)
                    out[n, c0 + d + 1] = np.rint(float(a1) / dn)
                    d += 2
                while d < hd:
                    h0, l0 = np.int32(0), np.int32(0)
                    for j in range(rows):
                        v0 = np.int32(rv[h, d, j])
                        h0 = np.int32(h0 + np.int32(eh[j]) * v0)
                        l0 = np.int32(l0 + np.int32(el[j]) * v0)
                    acc = (np.int64(h0) << 8) + np.int64(l0)
                    for u in range(Q):
                        acc += np.int64(e[rows + u]) * vc[n0 + u, c0 + d]
                    out[n, c0 + d] = np.rint(float(acc) / dn)
                    d += 1
            while d < hd:                                       # Σ e·v in int64: e ≤ 2^16 · value, exact
                base = (h * hd + d) * rows + PREFETCH_AHEAD
                for a in range(0, rows, 32):
                    _prefetch(rv, base + a)
                acc = 0
                for j in range(rows):
                    acc += np.int64(e[j]) * np.int64(rv[h, d, j])
                for u in range(Q):
                    acc += np.int64(e[rows + u]) * vc[n0 + u, c0 + d]
                out[n, c0 + d] = np.rint(float(acc) / dn)
                d += 1


@nb.njit(**_JIT)
def _scratch(rows, Q):
    return (np.empty(rows + Q, np.int64), np.empty(rows, np.int32), np.empty(rows + Q, np.int32),
            np.empty(rows, np.int16), np.empty(rows, np.int16))


@nb.njit(**_JIT)
def _one_lane(q, kc, vc, ring_k, ring_v, wide_k, wide_v, wide, br, bc, table, hd, out, b, scratch):
    sc, s32, e, eh, el = scratch
    if wide[b]:
        _lane_attention(q, kc, vc, wide_k[b], wide_v[b], b, br, bc, table, hd, out, sc, s32, e, eh, el, False)
    else:
        _lane_attention(q, kc, vc, ring_k[b], ring_v[b], b, br, bc, table, hd, out, sc, s32, e, eh, el, True)


@nb.njit(**_JIT)
def attention(q, kc, vc, ring_k, ring_v, wide_k, wide_v, wide, br, bc, table, hd, out, b0, b1):
    """Lanes [b0, b1): out ((N, C) float64, N = lanes · Q) = the attention outputs at ACT_BITS of the
    queries q ((N, C) int32) over each lane's ring (ring_k/v: (lanes, H, hd, rows) int16, or wide_k/v
    where wide[b]) and the chunk's keys kc / values vc ((N, C) int64). br, bc: from `bias_tables` with
    hidden = HIDDEN_BIAS."""
    scratch = _scratch(ring_k.shape[3], br.shape[0])
    for b in range(b0, b1):
        _one_lane(q, kc, vc, ring_k, ring_v, wide_k, wide_v, wide, br, bc, table, hd, out, b, scratch)


@nb.njit(**_JIT)
def store(kc, vc, ring_k, ring_v, wide_k, wide_v, wide, rows, src, hd, b0, b1):
    """Write the chunk's slots src (indices into its Q slots) into ring rows `rows` (the last axis of
    the (lanes, H, hd, rows) rings) of lanes [b0, b1)
    (wide[b] = 1: into wide_k/v). A lane not yet wide (wide[b] = 0) with a key or value that int16 does
    not hold is left unwritten and marked wide[b] = 2; returns how many such lanes there are (the
    caller widens them and stores again)."""
    H = ring_k.shape[1]
    Q = kc.shape[0] // ring_k.shape[0]
    bad = 0
    for b in range(b0, b1):
        if wide[b] == 0:
            fits = True
            for i in range(src.shape[0]):
                n = b * Q + src[i]
                for c in range(H * hd):
                    if abs(kc[n, c]) > I16_MAX or abs(vc[n, c]) > I16_MAX:
                        fits = False
            if not fits:
                wide[b] = 2
                bad += 1
                continue
        for i in range(src.shape[0]):
            n = b * Q + src[i]
            for h in range(H):
                for d in range(hd):
                    if wide[b] == 0:
                        ring_k[b, h, d, rows[i]] = kc[n, h * hd + d]
                        ring_v[b, h, d, rows[i]] = vc[n, h * hd + d]
                    else:
                        wide_k[b, h, d, rows[i]] = kc[n, h * hd + d]
                        wide_v[b, h, d, rows[i]] = vc[n, h * hd + d]
    return bad


@nb.njit(**_JIT)
def post_qkv(y, bias, scale, clamp, qk_clamp, v_clamp, q, k, v, ring_k, ring_v, wide_k, wide_v, wide, br, bc,
             table, hd, out, rows, src, b0, b1):
    """Lanes [b0, b1) of one layer after the qkv matmul, lane by lane: `split_qkv`, `attention` (into
    out), `store` — the ring rows a lane's new keys and values replace were just read by its attention,
    so they are still in cache. Returns the number of lanes that must be widened."""
    Q = br.shape[0]
    scratch = _scratch(ring_k.shape[3], Q)
    bad = 0
    for b in range(b0, b1):
        split_qkv(y, bias, scale, clamp, qk_clamp, v_clamp, q, k, v, b * Q, (b + 1) * Q)
        _one_lane(q, k, v, ring_k, ring_v, wide_k, wide_v, wide, br, bc, table, hd, out, b, scratch)
        bad += store(k, v, ring_k, ring_v, wide_k, wide_v, wide, rows, src, hd, b, b + 1)
    return bad


# ------------------------------------------------------------------ version 2: keys and values in int8

@nb.njit(**_JIT)
def round_heads(x, hd, shifts, r0, r1):
    """Version 2's rule for keys and values (`integers._round_heads`), in place on rows [r0, r1) of x
    ((N, C) int64): per head, s the least s ≥ 0 with max|x| >> s < 2^7, x = clamp((x + 2^s / 2) >> s,
    ±127) << s; shifts[n, h] = s ((N, H) int64)."""
    H = x.shape[1] // hd
    for n in range(r0, r1):
        for h in range(H):
            m = 0
            for d in range(hd):
                m = max(m, abs(x[n, h * hd + d]))
            s = 0
            while (m >> s) >= 128:
                s += 1
            half = (1 << s) >> 1
            for d in range(hd):
                x[n, h * hd + d] = min(max((x[n, h * hd + d] + half) >> s, -127), 127) << s
            shifts[n, h] = s


@nb.njit(**_JIT)
def _lane_attention8(q, kc, vc, rk, rv, rks, rvs, b, br, bc, table, hd, out, sc, s32, w64, wh, wl):
    """Version 2's attention of one lane b: Q queries over its ring, key j of head h being
    rk[h, :, j] << rks[h, j] and its value rv[h, :, j] << rvs[h, j] (rk, rv: (H, hd, rows) int8; rks,
    rvs: (H, rows) int8), and over the chunk's own keys/values (kc, vc: (N, C) int64, already rounded).
    Scratch: sc (rows + Q,) int64, s32 (rows,) int32, w64 (rows + Q,) int64, wh, wl (rows,) int32.

    The integers are those of int64 arithmetic on the keys and values x' · 2^s (the torch path's):
    - q·k = (Σ_d q_d · k'_d) << s: the sum in int32 when L1 = Σ_d |q_d| satisfies L1 · 127 ≤ 2^31 - 1
      (every partial sum is then at most that), else in int64; the shift in int64.
    - Σ_j e_j · v_j = Σ_j (e_j << s_j) · v'_j with w_j = e_j << s_j = 2^16 · wh_j + wl_j (wl_j < 2^16):
      2^16 · Σ wh·v' + Σ wl·v', both sums in int32 when Σ wh · 127 ≤ 2^31 - 1 and Σ wl · 127 ≤ 2^31 - 1
      (w ≥ 0, so these bound every partial sum; Σ wl ≤ 65 535 · rows passes for rows ≤ 257, the shipped
      model's 256; Σ wh passes unless the weights are large and the values' shifts above ~14), else one
      int64 sum of int64 products.
    Hidden keys get the bias HIDDEN_BIAS as in `_lane_attention`: their weight is the table's final 0."""
    H, rows = rk.shape[0], rk.shape[2]
    Q = br.shape[0]
    last = table.shape[0] - 1
    n0 = b * Q
    for h in range(H):
        c0 = h * hd
        for t in range(Q):
            n = n0 + t
            l1 = _head_l1(q, n, c0, hd)
            top = -(1 << 62)
            if l1 * 127 <= I32_MAX:                             # q·k' in int32 (bound above)
                _ring_dots_i32(q, rk, h, n, c0, hd, s32, True)
                for j in range(rows):
                    s = (((np.int64(s32[j]) << np.int64(rks[h, j])) + 8192) >> 14) - br[t, h, j]
                    sc[j] = s
                    top = max(top, s)
            else:                                               # q·k' in int64
                for j in range(rows):
                    sc[j] = 0
                for d in range(hd):
                    qd = np.int64(q[n, c0 + d])
                    for j in range(rows):
                        sc[j] += qd * np.int64(rk[h, d, j])
                for j in range(rows):
                    s = (((sc[j] << np.int64(rks[h, j])) + 8192) >> 14) - br[t, h, j]
                    sc[j] = s
                    top = max(top, s)
            top = _own_slot_scores(q, kc, bc, sc, n, n0, c0, hd, t, h, rows, top)
            den, sum_h, sum_l = 0, 0, 0
            for j in range(rows):
                e = table[min(top - sc[j], last)]
                den += e
                w = np.int64(e) << np.int64(rvs[h, j])
                w64[j] = w
                wh[j] = np.int32(w >> 16)
                wl[j] = np.int32(w & 65535)
                sum_h += w >> 16
                sum_l += w & 65535
            for u in range(Q):
                e = table[min(top - sc[rows + u], last)]
                w64[rows + u] = e
                den += e
            dn = float(den)
            if sum_h * 127 <= I32_MAX and sum_l * 127 <= I32_MAX:     # Σ w·v' as two int32 sums (bound above)
                d = 0
                while d + 2 <= hd:                              # values read once
                    base = (h * hd + d) * rows + PREFETCH_AHEAD
                    for a in range(0, 2 * rows, 64):            # (int8: 64 to a cache line)
                        _prefetch(rv, base + a)
                    h0, l0, h1, l1 = np.int32(0), np.int32(0), np.int32(0), np.int32(0)
                    for j in range(rows):
                        v0, v1 = np.int32(rv[h, d, j]), np.int32(rv[h, d + 1, j])
                        h0 = np.int32(h0 + wh[j] * v0)
                        l0 = np.int32(l0 + wl[j] * v0)
                        h1 = np.int32(h1 + wh[j] * v1)
                        l1 = np.int32(l1 + wl[j] * v1)
                    acc0 = (np.int64(h0) << 16) + np.int64(l0)
                    acc1 = (np.int64(h1) << 16) + np.int64(l1)
                    for u in range(Q):
                        acc0 += w64[rows + u] * vc[n0 + u, c0 + d]
                        acc1 += w64[rows + u] * vc[n0 + u, c0 + d + 1]
                    out[n, c0 + d] = np.rint(float(acc0) / dn)
                    out[n, c0 + d + 1] = np.rint(float(acc1) / dn)
                    d += 2
                while d < hd:
                    h0, l0 = np.int32(0), np.int32(0)
                    for j in range(rows):
                        v0 = np.int32(rv[h, d, j])
                        h0 = np.int32(h0 + wh[j] * v0)
                        l0 = np.int32(l0 + wl[j] * v0)
                    acc = (np.int64(h0) << 16) + np.int64(l0)
                    for u in range(Q):
                        acc += w64[rows + u] * vc[n0 + u, c0 + d]
                    out[n, c0 + d] = np.rint(float(acc) / dn)
                    d += 1
            else:                                               # Σ w·v' in int64
                for d in range(hd):
                    acc = 0
                    for j in range(rows):
                        acc += w64[j] * np.int64(rv[h, d, j])
                    for u in range(Q):
                        acc += w64[rows + u] * vc[n0 + u, c0 + d]
                    out[n, c0 + d] = np.rint(float(acc) / dn)


@nb.njit(**_JIT)
def store8(kc, vc, ks, vs, ring_k, ring_v, shift_k, shift_v, rows, src, hd, b0, b1):
    """Version 2: write the chunk's slots src into ring rows `rows` of lanes [b0, b1): k' = k >> s
    (exact: `round_heads` left every key a multiple of 2^s) as int8 and s, the same for values."""
    H = ring_k.shape[1]
    Q = kc.shape[0] // ring_k.shape[0]
    for b in range(b0, b1):
        for i in range(src.shape[0]):
            n = b * Q + src[i]
            for h in range(H):
                sk, sv = ks[n, h], vs[n, h]
                shift_k[b, h, rows[i]] = sk
                shift_v[b, h, rows[i]] = sv
                for d in range(hd):
                    ring_k[b, h, d, rows[i]] = kc[n, h * hd + d] >> sk
                    ring_v[b, h, d, rows[i]] = vc[n, h * hd + d] >> sv


@nb.njit(**_JIT)
def post_qkv8(y, bias, scale, clamp, qk_clamp, v_clamp, q, k, v, ks, vs, ring_k, ring_v, shift_k, shift_v, br, bc,
              table, hd, out, rows, src, b0, b1):
    """Version 2's `post_qkv`, lanes [b0, b1), lane by lane: `split_qkv`, `round_heads` of keys and
    values, `_lane_attention8` (into out), `store8`."""
    Q = br.shape[0]
    R = ring_k.shape[3]
    sc, s32 = np.empty(R + Q, np.int64), np.empty(R, np.int32)
    w64, wh, wl = np.empty(R + Q, np.int64), np.empty(R, np.int32), np.empty(R, np.int32)
    for b in range(b0, b1):
        split_qkv(y, bias, scale, clamp, qk_clamp, v_clamp, q, k, v, b * Q, (b + 1) * Q)
        round_heads(k, hd, ks, b * Q, (b + 1) * Q)
        round_heads(v, hd, vs, b * Q, (b + 1) * Q)
        _lane_attention8(q, k, v, ring_k[b], ring_v[b], shift_k[b], shift_v[b], b, br, bc, table, hd, out,
                         sc, s32, w64, wh, wl)
        store8(k, v, ks, vs, ring_k, ring_v, shift_k, shift_v, rows, src, hd, b, b + 1)
