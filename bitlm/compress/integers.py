"""The integer building blocks of the exact predictor (`bitlm.compress.exact`): the fixed-point scales
and bounds its arithmetic keeps, the lookup tables (exp for attention and for the head, GELU) built by
fixed-order series of correctly rounded float64 operations and checked against a pinned SHA-256, the
rounding shifts of int64 and integer-valued float64 tensors, weight quantisation, and `_Linear`: a
quantised linear layer whose float64 matmul is exact because every partial sum is an integer below 2^52.
Why each is exact is argued in `bitlm.compress.exact`'s docstring; changing any constant or rule here
changes the frequencies, so it needs EXACT_VERSION bumped.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

RES_BITS = 16                 # residual stream: value · 2^16
NORM_BITS = 14                # layer-norm outputs
ACT_BITS = 12                 # q, k, v, attention outputs, GELU input and output
LOGIT_BITS = 10               # attention scores and pattern logits, in nats · 2^10
ATT_EXP_BITS = 16             # attention weights: round(2^16 · e^-d)
HEAD_EXP_BITS = 24            # pattern weights before normalising to frequencies
MAX_WEIGHT_BITS = 20          # weights are w · 2^k rounded, k ≤ 20 (less when a bound needs it)
SLOPE_BITS = 30               # ALiBi slopes are held to 2^-30 before the bias is rounded to LOGIT_BITS
GELU_RANGE = 8                # GELU is tabulated on [-8, 8]; gelu(x) = x above, 0 below
FREQ_TOTAL = (1 << 24) - 256  # the 256 frequencies of a byte sum to this; the coder adds 1 to each
RES_CLAMP = 1 << (RES_BITS + 8)
EXACT_VERSION = 2             # the version new streams are written in; bump when a constant or rule changes the frequencies
VERSIONS = (1, 2)             # versions this code computes: 1 (float64 weights of up to 20 bits) is kept to decode old files
W8_MAX = 127                  # v2: weights are int8 in [-W8_MAX, W8_MAX], each output row at its own power of two
ROW_BITS = 14                 # v2: a linear's input row is held as x' = round(x / 2^s) with |x'| < 2^14 (least s ≥ 0)
PIECE_BITS = 7                # v2: x' = hi · 2^7 + lo, hi in [-128, 127], lo in [0, 127]: two int8 matrices
KV_BITS = 7                   # v2: each head's key and value of a slot are held as x' · 2^s, |x'| ≤ 2^7 - 1 (int8)
_SAFE = 1 << 52               # bound on every partial sum of a float64 matmul
_HIDDEN = -(1 << 60)          # score term of a key a query cannot see (its weight is the exp table's 0)

# SHA-256 of the three lookup tables (exp for attention, exp for the head, GELU) as little-endian int64.
# A machine whose float64 arithmetic is not IEEE-754 round-to-nearest would build other tables: refused.
TABLES_SHA256 = "1fc2dd1240cf755d837b4e95932f581d0f8a6a1b5aff2e2aefbb00fa53184236"


class UnsupportedModelError(ValueError):
    """The model cannot be run exactly (learned positions, a transformer local model, another patch
    size, or sizes whose integer bounds do not fit); the message says which."""


class ExactnessError(RuntimeError):
    """This machine computed other lookup tables than the pinned ones: its float64 arithmetic is not
    IEEE-754 round-to-nearest, so streams could not be shared with other machines."""


# ------------------------------------------------------------------------------------ lookup tables

def _exp_neg_table(scale_bits: int, n: int) -> np.ndarray:
    """round(2^scale_bits · e^(-i / 2^LOGIT_BITS)) for i < n, the last entry 0. e^d is the series
    Σ d^j / j! (positive terms, fixed order, correctly rounded float64 ops), then 2^bits / e^d."""
    d = np.arange(n, dtype=np.float64) / (1 << LOGIT_BITS)
    term, total = np.ones(n), np.ones(n)
    for j in range(1, 160):
        term = term * d / j
        total = total + term
    out = np.rint((1 << scale_bits) / total).astype(np.int64)
    out[-1] = 0
    return out


def _gelu_table() -> np.ndarray:
    """round(2^ACT_BITS · gelu(u / 2^ACT_BITS)) for u in [-R, R], R = GELU_RANGE · 2^ACT_BITS, with
    gelu(x) = x·Φ(x) and Φ(x) = 1/2 + φ(x)·Σ x^(2j+1)/(2j+1)!! for x ≥ 0 (all terms positive),
    φ(x) = 1 / (e^(x²/2)·√(2π)) with e^(x²/2) as a series; Φ(-x) = 1 - Φ(x)."""
    r = GELU_RANGE << ACT_BITS
    x = np.arange(r + 1, dtype=np.float64) / (1 << ACT_BITS)
    x2 = x * x
    z = x2 / 2
    term, ez = np.ones_like(x), np.ones_like(x)
    for j in range(1, 200):
        term = term * z / j
        ez = ez + term
    term, series = x.copy(), x.copy()
    for j in range(1, 260):
        term = term * x2 / (2 * j + 1)
        series = series + term
    tail = series / (ez * math.sqrt(2 * math.pi))                  # Φ(x) - 1/2
    pos = np.rint(x * (0.5 + tail) * (1 << ACT_BITS)).astype(np.int64)
    neg = np.rint(-x * (0.5 - tail) * (1 << ACT_BITS)).astype(np.int64)
    return np.concatenate([neg[:0:-1], pos])


_TABLES: dict[str, torch.Tensor] = {}


def tables() -> dict[str, torch.Tensor]:
    """The lookup tables (built once per process, then checked against TABLES_SHA256).
    Raises ExactnessError when this machine builds other tables."""
    if not _TABLES:
        built = {"att_exp": _exp_neg_table(ATT_EXP_BITS, 12 << LOGIT_BITS),
                 "head_exp": _exp_neg_table(HEAD_EXP_BITS, 18 << LOGIT_BITS),
                 "gelu": _gelu_table()}
        digest = tables_digest(built)
        if digest != TABLES_SHA256:
            raise ExactnessError(f"this machine computes other lookup tables (sha256 {digest[:16]}…, expected "
                                 f"{TABLES_SHA256[:16]}…): its float64 arithmetic is not IEEE-754, so its "
                                 f"streams would not decode elsewhere")
        _TABLES.update({k: torch.from_numpy(v) for k, v in built.items()})
    return _TABLES


def tables_digest(built: dict[str, np.ndarray]) -> str:
    """SHA-256 (hex) of the tables, in name order, as little-endian int64."""
    h = hashlib.sha256()
    for name in sorted(built):
        h.update(name.encode())
        h.update(np.asarray(built[name], dtype="<i8").tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------ integer helpers

def _rshift(x: torch.Tensor, s: int) -> torch.Tensor:
    """x / 2^s rounded half up (an arithmetic shift: exact on int64); s < 0 shifts left."""
    if s <= 0:
        return x << -s
    return (x + (1 << (s - 1))) >> s


def _fshift(x: torch.Tensor, s: int) -> torch.Tensor:
    """`_rshift` on an integer-valued float64 tensor below 2^52, in place: x / 2^s + 1/2 is exact
    (a power-of-two scaling and an addition that fits 53 bits), then floor."""
    if s <= 0:
        return x.mul_(float(1 << -s))
    return x.mul_(2.0 ** -s).add_(0.5).floor_()


def _quantise(t: torch.Tensor, bits: int) -> torch.Tensor:
    """round(t · 2^bits) as int64 (multiplying by 2^bits is exact; round half to even)."""
    t = t.detach().cpu().double()
    return torch.round(t * (1 << bits) if bits >= 0 else t / (1 << -bits)).to(torch.int64)


def _round_pow2(num: int, den: int) -> int:
    """round(2^(num/den)) for num ≥ 0, den ≥ 1, in integers only (a binary-searched den-th root)."""
    target = 1 << num
    lo, hi = 0, 1 << (num // den + 1)
    while lo < hi:                       # largest r with r^den ≤ 2^num
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if mid ** den <= target else (lo, mid - 1)
    return lo + 1 if (2 * lo + 1) ** den <= target << den else lo


class _Bias:
    """The bias of a quantised linear (`b`, int64 below 2^52) as float64, for its matmul and the kernels."""
    b: torch.Tensor
    _bf: torch.Tensor | None

    @property
    def bf(self) -> torch.Tensor:
        """The bias as float64 (exact: |b| < 2^52)."""
        if self._bf is None or self._bf.device != self.b.device:
            self._bf = self.b.double()
        return self._bf

    @property
    def np_b(self) -> np.ndarray:
        """The bias as a float64 numpy array (exact: |b| < 2^52), for the numba kernels."""
        return self.bf.numpy()


@dataclass
class _Linear(_Bias):
    """y = round((x @ W^T + b) / 2^shift), clamped: x at in_bits, W at w_bits, y at out_bits."""
    w: torch.Tensor          # (out, in) float64 holding integers
    b: torch.Tensor          # (out,) int64 at in_bits + w_bits
    shift: int
    clamp: int
    in_bound: int            # |x| ≤ in_bound (the caller clamps); in_bound · max row L1 + max |b| < 2^52
    _bf: torch.Tensor | None = None
    _scale: np.ndarray | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x.double(), self.w.t()).add_(self.bf)      # exact: integers below 2^52
        return _fshift(y, self.shift).clamp_(-self.clamp, self.clamp).to(torch.int64)

    @property
    def scale(self) -> np.ndarray:
        """(out,) float64, each 2^-shift: `_fshift` multiplies by it (then adds 1/2 and floors when shift > 0)."""
        if self._scale is None:
            self._scale = np.full(self.w.size(0), 2.0 ** -self.shift)
        return self._scale


def _to_bits(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(…, K) int64 -> (x', s), per last axis: s (…, 1) the least s ≥ 0 with max|x| >> s < 2^bits, and
    x' = `_rshift`(x, s) clamped to ±(2^bits - 1) (version 2's rule for a linear's input rows and for
    keys and values)."""
    m = x.abs().amax(-1, keepdim=True)
    s = torch.zeros_like(m)
    while bool(((m >> s) >= (1 << bits)).any()):
        s += ((m >> s) >= (1 << bits)).long()
    half = torch.bitwise_left_shift(torch.ones_like(s), s) >> 1
    return ((x + half) >> s).clamp_(-(1 << bits) + 1, (1 << bits) - 1), s


def _row_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Version 2's input rule: (…, K) int64 rows -> (hi, lo, s): x' and s of `_to_bits`(x, ROW_BITS),
    hi = x' >> PIECE_BITS (floor) in [-128, 127] and lo = x' - hi · 2^PIECE_BITS in [0, 127], both int64."""
    xs, s = _to_bits(x, ROW_BITS)
    hi = xs >> PIECE_BITS
    return hi, xs - (hi << PIECE_BITS), s


def _round_heads(x: torch.Tensor) -> torch.Tensor:
    """Version 2's rule for the keys and values of a slot: (…, hd) int64, one head per last axis ->
    x' · 2^s with x' and s of `_to_bits`(x, KV_BITS): 8 significant bits, so the ring holds int8 x' and
    the shift s. |x' · 2^s| ≤ max|x| · (1 + 2^-KV_BITS), which keeps every attention sum of
    `bitlm.compress.exact` below 2^52."""
    xs, s = _to_bits(x, KV_BITS)
    return xs << s


def _shift_rows(y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`_fshift` with a power of two per output column: y · scale (exact), then + 1/2 and floor where
    scale < 1. y: (…, out) integer-valued float64 below 2^52; scale: (out,) float64."""
    y = y * scale
    return torch.where(scale < 1.0, torch.floor(y + 0.5), y)


@dataclass
class _Linear8(_Bias):
    """Version 2's quantised linear: y = round((x'·2^s · W8^T + b) / 2^shift_j), clamped, where each
    input row is held in ROW_BITS bits (`_row_split`: x' and its shift s) and row j of W8 is int8 at its
    own power of two w_bits_j. The two int8 pieces of x' meet W8 in integer matmuls whose every partial
    sum is below 128 · 127 · K < 2^31 (K < 132 000, checked: exact in int32 and in float64), then
    (acc_hi · 2^7 + acc_lo) · 2^s + b is an integer below 2^52 (the bound checked at derivation), exact
    in float64."""
    w8: torch.Tensor         # (out, in) int8
    b: torch.Tensor          # (out,) int64 at in_bits + w_bits_j
    shifts: torch.Tensor     # (out,) int64: in_bits + w_bits_j - out_bits
    clamp: int
    in_bound: int            # |x| ≤ in_bound (the caller clamps); in_bound · max row L1 + max |b| < 2^52
    _bf: torch.Tensor | None = None
    _scale: torch.Tensor | None = None
    _w8t: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        hi, lo, s = _row_split(x)
        w = self.w8.double().t()
        acc = torch.matmul(hi.double(), w).mul_(1 << PIECE_BITS).add_(torch.matmul(lo.double(), w))
        y = acc.mul_(torch.bitwise_left_shift(torch.ones_like(s), s).double()).add_(self.bf)
        return _shift_rows(y, self.scale_t).clamp_(-self.clamp, self.clamp).to(torch.int64)

    @property
    def w8t(self) -> torch.Tensor:
        """(in, out) int8, contiguous: what `torch._int_mm` multiplies by (made once; measured alone on
        cold caches, a transposed view took 0.55 ms a call, this 0.25 ms)."""
        if self._w8t is None or self._w8t.device != self.w8.device:
            self._w8t = self.w8.t().contiguous()
        return self._w8t

    @property
    def scale_t(self) -> torch.Tensor:
        """(out,) float64 2^-shift_j."""
        if self._scale is None or self._scale.device != self.b.device:
            self._scale = torch.pow(2.0, -self.shifts.double()).to(self.b.device)
        return self._scale

    @property
    def scale(self) -> np.ndarray:
        """(out,) float64 2^-shift_j, for the numba kernels."""
        return self.scale_t.numpy()


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor | None, beta: torch.Tensor | None,
            in_bits: int, in_bound: int, out_bits: int, out_clamp: int,
            row_scale: torch.Tensor | None = None, version: int = EXACT_VERSION) -> _Linear | _Linear8:
    """Quantise a Linear for exact-path `version` (1: `_Linear`, 2: `_Linear8`), folding a preceding layer
    norm's gain (gamma) and shift (beta) into it and multiplying its rows by row_scale ((out,) float64,
    None: 1); version 1's weight precision is the largest ≤ MAX_WEIGHT_BITS for which in_bound · max row
    L1 + |bias| stays below 2^52. Raises UnsupportedModelError if none does."""
    w = weight.detach().cpu().double()
    if gamma is not None:
        w = w * gamma.detach().cpu().double()      # float32 × float32: exact in float64
    if row_scale is not None:
        w = w * row_scale.view(-1, 1)              # one correctly rounded product each
    if version >= 2:
        return _linear8(w, weight, bias, beta, in_bits, in_bound, out_bits, out_clamp, row_scale)
    for w_bits in range(MAX_WEIGHT_BITS, -1, -1):
        wi = _quantise(w, w_bits)
        acc = in_bits + w_bits
        b = torch.zeros(wi.size(0), dtype=torch.int64)
        if bias is not None:
            b = b + _quantise(bias.detach(), acc)
        if beta is not None:                       # b + W·beta, in integers
            b = b + (_quantise(weight.detach(), w_bits) * _quantise(beta.detach(), in_bits)).sum(-1)
        if row_scale is not None:
            b = torch.round(b.double() * row_scale).to(torch.int64)
        bound = in_bound * int(wi.abs().sum(-1).max()) + int(b.abs().max())
        if bound < _SAFE:
            return _Linear(wi.double(), b, acc - out_bits, out_clamp, in_bound)
    raise UnsupportedModelError("a layer's weights are too large for exact integer arithmetic")


def _linear8(w: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, beta: torch.Tensor | None,
             in_bits: int, in_bound: int, out_bits: int, out_clamp: int, row_scale: torch.Tensor | None) -> _Linear8:
    """`_linear` for version 2: w (out, in) float64 (gain and row_scale folded in) -> int8 rows, row j at the
    largest power of two w_bits_j ≤ MAX_WEIGHT_BITS that keeps round(w_j · 2^w_bits_j) within ±W8_MAX;
    biases (and the folded layer-norm shift, W·beta) at in_bits + w_bits_j."""
    peak = w.abs().amax(-1)
    k = torch.full_like(peak, MAX_WEIGHT_BITS, dtype=torch.int64)
    while True:                                    # lower each row's power until its rounded peak fits int8
        over = torch.round(peak * torch.pow(2.0, k.double())) > W8_MAX
        if not bool(over.any()):
            break
        k -= over.long()
    pow_k = torch.pow(2.0, k.double()).view(-1, 1)
    w8 = torch.round(w * pow_k).to(torch.int64)
    b = torch.zeros(w.size(0), dtype=torch.int64)
    if bias is not None:
        b = b + torch.round(bias.detach().cpu().double() * torch.pow(2.0, (k + in_bits).double())).to(torch.int64)
    if beta is not None:                           # b + W·beta, in integers
        wq = torch.round(weight.detach().cpu().double() * pow_k).to(torch.int64)
        b = b + (wq * _quantise(beta.detach(), in_bits)).sum(-1)
    if row_scale is not None:
        b = torch.round(b.double() * row_scale).to(torch.int64)
    bound = in_bound * int(w8.abs().sum(-1).max()) + int(b.abs().max())
    if bound >= _SAFE or w.size(1) * 128 * W8_MAX >= 1 << 31:
        raise UnsupportedModelError("a layer's weights are too large for exact integer arithmetic")
    return _Linear8(w8.to(torch.int8), b, k + in_bits - out_bits, out_clamp, in_bound)


# ------------------------------------------------------------------------------------ int8 products

_ENGINE: list = []
F32_EXACT_K = 1032            # 128 · 127 · K < 2^24 up to this K: the int8 products' sums are exact in float32


def _int8_engine() -> str:
    """How this process multiplies version 2's int8 matrices: "int_mm" (torch._int_mm, int32 sums) when
    it gives the exact products here, else "float64" (a float32 or float64 matmul of the same integers,
    exact too: see `_int8_matmul`; measured on this machine with oneDNN held to AVX2 or AVX-512 without
    VNNI, `ONEDNN_MAX_CPU_ISA=AVX2`: _int_mm saturates there, the check says so, and the fallback's
    streams are the same). Integer sums are exact in any order; the
    one known way an int8 GEMM is not exact is a CPU without VNNI whose kernel sums pairs of u8·s8
    products in saturating int16 (vpmaddubsw): the check multiplies matrices that saturate it, of
    every lane count a step may have, and falls back on any difference or error."""
    if not _ENGINE:
        engine = "float64"
        try:
            ok = True
            for M in (1, 2, 5, 64, 128):
                for Kd in (256, 1024):
                    g = torch.Generator().manual_seed(M * Kd)
                    a = torch.randint(-128, 128, (M, Kd), generator=g, dtype=torch.int64)
                    a[:, ::2] = 127                                       # u8 255 after a +128 shift
                    w = torch.randint(-127, 128, (256, Kd), generator=g, dtype=torch.int64)
                    w[:, ::3] = 127
                    w[:128] = torch.where(a[0] > 0, 127, -127)            # sums at the int16 edges
                    out = torch._int_mm(a.to(torch.int8), w.to(torch.int8).t())
                    ok = ok and out.dtype == torch.int32 and torch.equal(out.long(), a @ w.t())
            engine = "int_mm" if ok else engine
        except (RuntimeError, AttributeError, NotImplementedError):
            pass
        _ENGINE.append(engine)
    return _ENGINE[0]


def _int8_matmul(a: torch.Tensor, w8t: torch.Tensor, out: torch.Tensor) -> None:
    """out = a @ w8t, exact: a (M, K) int8, w8t (K, N) int8, out (M, N) int32 or float64 as
    `_int8_engine` chose (the scratch buffers are made to match); the float64 fallback multiplies in
    float32 where K ≤ F32_EXACT_K (twice as fast, and exact: every partial sum is an integer below 2^24)."""
    if out.dtype == torch.int32:
        torch._int_mm(a, w8t, out=out)
    elif a.size(1) <= F32_EXACT_K:            # every partial sum below 128 · 127 · 1032 < 2^24: exact in float32
        out.copy_(torch.matmul(a.float(), w8t.float()))
    else:
        torch.matmul(a.double(), w8t.double(), out=out)
