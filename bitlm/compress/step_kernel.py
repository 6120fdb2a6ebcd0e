"""Numba kernels of the exact predictor's CPU path (`bitlm.compress.exact`, kernel="numba") for the
elementwise integer steps between its matmuls, other than attention (`bitlm.compress.attention_kernel`):
the layer norm, version 2's int8 pieces of a matmul's input (`split_rows`) and the join of their products
(`join_rows`), the linears' rounding shifts and clamps, residual adds, the GELU table and the byte
frequencies. Each repeats, operation for operation, what `ExactPredictor`'s torch path does (the
argument is `bitlm.compress.attention_kernel`'s docstring); each takes a row or lane range and releases
the GIL, so lanes can run on several threads.
"""
from __future__ import annotations

import math

import numba as nb
import numpy as np

_JIT = dict(cache=True, nogil=True)   # compiled once per machine (numba's cache), not at every start


@nb.njit(**_JIT)
def layer_norm(x, k, eps, out, r0, r1):
    """Rows [r0, r1) of x ((N, C) int64, residuals) -> out ((N, C) float64 holding integers): the integer
    layer norm of `ExactPredictor._layer_norm` (gain and shift folded into the next linear)."""
    C = x.shape[1]
    kf = float(k)
    c = np.empty(C, np.int64)
    for n in range(r0, r1):
        s = 0
        for i in range(C):
            s += x[n, i]
        mean = s // C                                  # floor, as torch.div(..., rounding_mode="floor")
        t = eps
        for i in range(C):
            c[i] = x[n, i] - mean
            t += c[i] * c[i]
        root = math.sqrt(float(t))
        for i in range(C):
            out[n, i] = np.rint(float(c[i]) * kf / root)


@nb.njit(**_JIT)
def _shift_clamp(y, b, scale, clamp):
    """`_fshift` of (y + b) then the clamp, as float64 (exact: integers below 2^52)."""
    v = math.floor((y + b) * scale + 0.5) if scale < 1.0 else (y + b) * scale
    return min(max(v, -clamp), clamp)


@nb.njit(**_JIT)
def split_rows(x, pieces, row_scale, r0, r1):
    """Version 2's input rule (`integers._row_split`) for rows [r0, r1) of x ((N, K) float64 holding
    integers below 2^53): s the least s ≥ 0 with max|x| >> s < 2^14, x' = (x + 2^s / 2) >> s clamped to
    ±(2^14 - 1), pieces[2n] = x' >> 7 and pieces[2n + 1] = x' - (x' >> 7) · 2^7 ((2N, K) int8),
    row_scale[n] = 2^s (float64)."""
    K = x.shape[1]
    for n in range(r0, r1):
        m = 0
        for i in range(K):
            m = max(m, abs(int(x[n, i])))
        s = 0
        while (m >> s) >= 16384:
            s += 1
        half = (1 << s) >> 1
        for i in range(K):
            xs = min(max((int(x[n, i]) + half) >> s, -16383), 16383)
            hi = xs >> 7
            pieces[2 * n, i] = hi
            pieces[2 * n + 1, i] = xs - (hi << 7)
        row_scale[n] = float(1 << s)


@nb.njit(**_JIT)
def join_rows(acc, row_scale, y, r0, r1):
    """Rows [r0, r1): y[n] = (acc[2n] · 2^7 + acc[2n + 1]) · row_scale[n], the int8 pieces' products
    ((2N, out) int32, or float32 holding integers) put back together in float64 — exact: integers
    below 2^52 by the bound the weights were checked against."""
    for n in range(r0, r1):
        for j in range(y.shape[1]):
            y[n, j] = (float(acc[2 * n, j]) * 128.0 + float(acc[2 * n + 1, j])) * row_scale[n]


@nb.njit(**_JIT)
def residual_add(x, y, bias, scale, clamp, res_clamp, r0, r1):
    """x[r] = clamp(x[r] + round-shift-clamp(y[r] + bias), ±res_clamp) for rows [r0, r1) (a linear's
    output added to the residual stream, in place)."""
    for n in range(r0, r1):
        for i in range(x.shape[1]):
            x[n, i] = min(max(x[n, i] + int(_shift_clamp(y[n, i], bias[i], scale[i], clamp)), -res_clamp), res_clamp)


@nb.njit(**_JIT)
def gelu(y, bias, scale, clamp, table, r, out, r0, r1):
    """The fc linear's rounding and clamp, then GELU from the table on [-r, r] (0 below, identity
    above: table[c + r] + max(u - c, 0) with c = clamp(u, ±r)), as float64 for the next matmul.
    Computed in float64 throughout (`_shift_clamp`'s value u and c are integers below 2^53, so the
    clamps, the sum and the conversions are exact: the integers of the int64 formula)."""
    rf = float(r)
    for n in range(r0, r1):
        for i in range(y.shape[1]):
            u = _shift_clamp(y[n, i], bias[i], scale[i], clamp)
            c = min(max(u, -rf), rf)
            out[n, i] = float(table[int(c) + r]) + max(u - c, 0.0)


@nb.njit(**_JIT)
def byte_frequencies(y, bias, scale, clamp, table, total, freq, r0, r1):
    """Rows [r0, r1) of the head's product y ((N, 256) float64) -> freq ((N, 256) int64): logits rounded
    and clamped, e = table[min(max - logit, last)], freq = floor(e·total / Σe), the remainder added to
    the first largest e (torch.argmax's choice)."""
    m = y.shape[1]
    last = table.shape[0] - 1
    lg = np.empty(m, np.int64)
    e = np.empty(m, np.int64)
    for n in range(r0, r1):
        top = -(1 << 62)
        for i in range(m):
            lg[i] = int(_shift_clamp(y[n, i], bias[i], scale[i], clamp))
            top = max(top, lg[i])
        s = 0
        best, arg = -1, 0
        for i in range(m):
            e[i] = table[min(top - lg[i], last)]
            s += e[i]
            if e[i] > best:
                best, arg = e[i], i
        acc = 0
        for i in range(m):
            f = (e[i] * total) // s
            freq[n, i] = f
            acc += f
        freq[n, arg] += total - acc


@nb.njit(**_JIT)
def post_residual(x, y, bias, scale, clamp, res_clamp, k, eps, ln_out, Q, b0, b1):
    """Lanes [b0, b1): `residual_add` of a linear's product, then the next `layer_norm` into ln_out."""
    residual_add(x, y, bias, scale, clamp, res_clamp, b0 * Q, b1 * Q)
    layer_norm(x, k, eps, ln_out, b0 * Q, b1 * Q)


@nb.njit(**_JIT)
def post_fc(y, bias, scale, clamp, table, r, out, Q, b0, b1):
    """Lanes [b0, b1): `gelu` of the fc matmul's product into out."""
    gelu(y, bias, scale, clamp, table, r, out, b0 * Q, b1 * Q)


@nb.njit(**_JIT)
def post_head(y, bias, scale, clamp, table, total, freq, Q, b0, b1):
    """Lanes [b0, b1): `byte_frequencies` of the head's product."""
    byte_frequencies(y, bias, scale, clamp, table, total, freq, b0 * Q, b1 * Q)


@nb.njit(**_JIT)
def pre_layer(x, k, eps, ln_out, Q, b0, b1):
    """Lanes [b0, b1): the first `layer_norm`."""
    layer_norm(x, k, eps, ln_out, b0 * Q, b1 * Q)
