"""An exact-by-construction predictor: the float `BitTransformerLM` re-expressed in integer arithmetic,
so the byte distribution handed to the entropy coder is the same on every machine, thread count, BLAS,
SIMD width, batch or lane layout and device.

Why it is exact. Every value is an integer (a fixed-point number with a known scale) held in an int64
tensor or an integer-valued float64 tensor. Additions, subtractions, products, sums, maxima, integer
floor divisions and arithmetic shifts of int64 tensors are exact, so their order cannot matter. Each
matmul runs on float64 tensors holding integers that are clamped to bounds checked when the predictor
is derived (inputs × largest row L1 norm of the weights + bias < 2^52), so every partial sum, in any
order, with or without FMA, blocked or not, is an integer below 2^53 and therefore exact. The only
non-integer steps are single IEEE-754 operations that are correctly rounded by the standard (a
division, a square root, an int-to-float conversion) applied elementwise to exactly known operands,
followed by round-half-even to an integer, and power-of-two scalings before a floor (exact): they give
the same bits everywhere (a hidden key's score, pushed down by 2^60, may round, but its weight is 0). Layer norm uses an
integer mean and variance, one sqrt and one division; softmax and GELU use lookup tables of integers
(exp and x·Φ(x)) computed by fixed-order series of correctly rounded float64 operations (no libm
call), checked against a pinned SHA-256 before use. Weights are quantised elementwise (w·2^k rounded,
with layer-norm gains folded in by exact float32×float32 products), biases folded in integers. The
next byte's 256 frequencies are integers summing to 2^24 - 256, which `constriction`'s lazy
categorical model turns into exactly freq + 1 out of 2^24 (its scale is then exactly 1.0 and every
partial sum below 2^24 is exact in float32), so the range coder sees the same integers too. Teacher-
forced chunks (encoding) and one-slot steps (decoding) compute each (query, key) term the same way and
only sum exact integers, so they agree to the bit. Supported: factorized ALiBi models (v2) with 8-bit
patches or 9-bit parity frames; anything else raises `UnsupportedModelError`.

Two kernels compute the same integers. kernel="torch" (any device; the reference) holds keys and
values in float64 tensors and runs the attention as float64 matmuls (exact by the bound above).
kernel="numba" (the CPU default, `bitlm.compress.attention_kernel`) keeps the float64 matmuls of the
linear layers (torch) and does everything between them in numba, with the same operations: q in int32
(|q| ≤ qk_clamp ≤ 2^25), keys and values of the ring in int16 — they are clamped to ±qk_clamp / ±v_clamp
(2^23 / 2^26 for the shipped model), which int16 cannot hold, and the bound the weights prove (up to
~51 000 for the shipped model) does not fit either, so a lane whose key or value leaves [-32767, 32767]
(observed maximum on held-out text ~22 400; never on the golden inputs) has that layer's ring copied to
int32 (int64 when a clamp exceeds int32) from then on, values unchanged. Dot products q·k and the sums
Σ e·v, Σ e are int64 sums of exact int64 products (|q·k| < 2^51, e ≤ 2^16, Σ e·v < 2^51 by the same
bounds), so their order does not matter (an int16 ring's sums run in int32 where bounds checked per query
prove they fit — the same integers; see `attention_kernel._lane_attention`); a score is (q·k + 2^13) >> 14, the same floor(x/2^14 + 1/2) as
`_fshift`; the ALiBi bias, the max subtraction, the exp table and the clamp to its last entry are the
same; an output is np.rint(float(Σ e·v) / float(Σ e)): two integers below 2^53 convert exactly, one
correctly rounded IEEE division (no fastmath), round half to even — what torch.round(num / den) gives.
The layer norm repeats the integer mean and variance, the int -> float conversion, sqrt, product and
division (each a single correctly rounded op, in the same order) and rint. A step's lanes are split among
threads (torch's thread count unless `threads` is given), each lane computed alone, so the split never
matters; tests/test_golden.py pins the streams of the shipped model and a tiny model's frequencies.

Two versions of the arithmetic (`EXACT_VERSION` = 2 writes; `VERSIONS` all decode, the container picks
the one whose model fingerprint the file's header names). Version 1 is the above with float64 weights of
up to 20 bits (`_Linear`) and int16 rings. Version 2 (issue 20) makes the two memory-bound parts cheap:
- linears (`_Linear8`): each weight row int8 at its own power of two; each input row held in 14 bits
  (`_row_split`: x' = round(x / 2^s), s the least that fits) as two int8 pieces hi · 2^7 + lo; the
  pieces' products with the weights are int32 sums of int8 products, |Σ| < 128 · 127 · K < 2^31, exact
  in any order: `torch._int_mm` (VNNI / AMX) where `_int8_engine`'s check finds it exact on inputs that
  would saturate a non-VNNI kernel, else a float32 (past K = 1032: float64) matmul of the same integers;
  joined in float64
  ((acc_hi · 2^7 + acc_lo) · 2^s + b < 2^52, the bound checked at derivation) and rounded by a power of
  two per output column.
- keys and values (`_round_heads`): per slot and head held to 8 significant bits, x' · 2^s with |x'| ≤ 127,
  so the rings hold int8 x' and an int8 s (`attention_kernel._lane_attention8`: q·k' in int32 then
  << s; Σ (e << s) · v' as two int32 sums; int64 where a bound checked per query does not hold). The
  rounding moves a value by at most 1/128 of its head's peak, so the attention sums' bounds above grow
  by that factor and stay below 2^52.
The torch path computes the same integers in float64 (every value below 2^53). On the first 20 000
held-out Shakespeare bytes the cross-entropy is 1.6914 bits/byte against version 1's 1.6912 (+0.01 %).
"""
from __future__ import annotations

import math
import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from bitlm.compress.integers import (  # noqa: F401 (re-exported: the exact path's public constants and errors)
    RES_BITS, NORM_BITS, ACT_BITS, LOGIT_BITS, ATT_EXP_BITS, HEAD_EXP_BITS, MAX_WEIGHT_BITS, SLOPE_BITS,
    GELU_RANGE, FREQ_TOTAL, RES_CLAMP, EXACT_VERSION, VERSIONS, _SAFE, _HIDDEN, TABLES_SHA256, UnsupportedModelError,
    ExactnessError, _exp_neg_table, _gelu_table, tables, tables_digest, _rshift, _fshift, _quantise,
    _round_pow2, _Linear, _Linear8, _linear, _row_split, _round_heads, W8_MAX, ROW_BITS, PIECE_BITS, KV_BITS,
    _int8_engine, _int8_matmul)
from bitlm.compress.lane_state import LaneState
from bitlm.model.transformer import BitTransformerLM

DEFAULT_KERNEL = "numba"      # CPU predictors use the numba kernels unless told kernel="torch" (same integers)
SLOTS_PER_THREAD = 8          # a numba chunk uses at most one thread per this many lanes × slots (docs/compressor.md:
                              # decoding on 2 threads loses at 7 lanes, breaks even at 16, wins from 31)

# ------------------------------------------------------------------------------------ the predictor

@dataclass
class _Block:
    ln1: tuple[int, int]          # (K, eps) of the layer norm, its gain/shift folded into the next linear
    qkv: _Linear
    proj: _Linear
    ln2: tuple[int, int]
    fc: _Linear
    out: _Linear


class ExactPredictor:
    """Integer re-expression of a factorized ALiBi `BitTransformerLM` (see the module docstring).

    `ExactPredictor.of(model)` derives it (cached per model, device and kernel); `frequencies(state, prev)`
    advances lanes by a chunk of slots and returns each slot's 256 integer byte frequencies. kernel:
    "numba" (the CPU default, DEFAULT_KERNEL) or "torch" (the float64 reference; any device); both give
    the same integers. threads: how many threads a numba step splits its lanes among (None: torch's
    thread count at each call); never changes a result."""

    def __init__(self, model: BitTransformerLM, device: str | torch.device = "cpu", kernel: str | None = None,
                 threads: int | None = None, version: int = EXACT_VERSION) -> None:
        c = model.config
        if version not in VERSIONS:
            raise ValueError(f"exact-path version {version} is not one of {VERSIONS}")
        self.version = version
        self.device = torch.device(device)
        if kernel not in (None, "numba", "torch"):
            raise ValueError(f"kernel must be 'numba', 'torch' or None (the default), got {kernel!r}")
        self.threads = threads
        self._rates: dict[int, list[float]] = {}      # per thread count: each thread's lanes per second
        if c.local != "factorized":
            raise UnsupportedModelError(f"the exact path needs the factorized local model, not {c.local!r}")
        if c.pos != "alibi":
            raise UnsupportedModelError(f"the exact path needs an ALiBi (v2) model; this one has pos={c.pos!r}")
        if not ((c.patch_size == 9 and c.parity) or (c.patch_size == 8 and not c.parity)):
            raise UnsupportedModelError(f"the exact path codes bytes: patch_size 9 with parity or 8 without, "
                                        f"got {c.patch_size} (parity={c.parity})")
        C, H = c.n_embd, c.n_head
        if C > 4096:
            raise UnsupportedModelError(f"n_embd {C} > 4096 would overflow the integer layer norm")
        t = tables()
        self.att_exp, self.head_exp, self.gelu = t["att_exp"], t["head_exp"], t["gelu"]
        self.att_exp_f = self.att_exp.double()
        self.n_head, self.head_dim, self.window = H, C // H, c.window
        self.ring = max(self.window - 1, 0)        # slots a query can see besides BOS, itself included
        qk_bits = (51 - math.ceil(math.log2(self.head_dim))) // 2
        v_bits = 51 - ATT_EXP_BITS - math.ceil(math.log2(self.window + 2))
        if qk_bits < ACT_BITS + 4 or v_bits < ACT_BITS + 4:
            raise UnsupportedModelError("head size or window too large for exact integer attention")
        self.qk_clamp, self.v_clamp = 1 << qk_bits, 1 << v_bits
        self.slopes = torch.tensor([_round_pow2(SLOPE_BITS * H - 8 * h, H) for h in range(1, H + 1)], dtype=torch.int64)
        ln_k = math.isqrt(C << (2 * NORM_BITS))
        norm_bound = ln_k + 2
        act_clamp = 1 << (ACT_BITS + 12)

        def ln(mod: torch.nn.LayerNorm) -> tuple[int, int]:
            return ln_k, round(mod.eps * C * float(1 << (2 * RES_BITS)))

        with torch.no_grad():
            st = model.stream_emb.weight[0].detach().cpu().double()
            self.emb = _quantise(model.patch_emb.weight.detach().cpu().double() + st, RES_BITS).clamp_(-RES_CLAMP, RES_CLAMP)
            self.bos = _quantise(model.bos.detach().cpu().double() + st, RES_BITS).clamp_(-RES_CLAMP, RES_CLAMP)
            inv = 1.0 / math.sqrt(self.head_dim)
            self.blocks = []
            for blk in model.blocks:
                a, (fc, _, proj, _) = blk.attn, blk.mlp
                scale = torch.cat([torch.full((C,), inv, dtype=torch.float64), torch.ones(2 * C, dtype=torch.float64)])
                qkv = _linear(a.c_attn.weight, a.c_attn.bias, blk.ln_1.weight, blk.ln_1.bias,
                              NORM_BITS, norm_bound, ACT_BITS, max(self.qk_clamp, self.v_clamp), row_scale=scale,
                              version=version)
                self.blocks.append(_Block(
                    ln1=ln(blk.ln_1), qkv=qkv,
                    proj=_linear(a.c_proj.weight, a.c_proj.bias, None, None, ACT_BITS, self.v_clamp, RES_BITS, RES_CLAMP,
                                 version=version),
                    ln2=ln(blk.ln_2),
                    fc=_linear(fc.weight, fc.bias, blk.ln_2.weight, blk.ln_2.bias, NORM_BITS, norm_bound, ACT_BITS,
                               act_clamp, version=version),
                    out=_linear(proj.weight, proj.bias, None, None, ACT_BITS, act_clamp, RES_BITS, RES_CLAMP,
                                version=version)))
            self.ln_f = ln(model.ln_f)
            b = torch.arange(256)
            pats = (2 * b + _parity(b)) if c.parity else b             # the pattern of each byte value
            self.byte_pattern = pats
            self.head = _linear(model.patch_emb.weight.detach().cpu()[pats], None, model.ln_f.weight, model.ln_f.bias,
                                NORM_BITS, norm_bound, LOGIT_BITS, 1 << (LOGIT_BITS + 24), version=version)
        cpu_ok = self.device.type == "cpu" and self.ring > 0 and _kernels() is not None
        if kernel == "numba" and not cpu_ok:
            raise ValueError("the numba kernel runs on the CPU, with numba installed, for windows of 2 slots or more")
        self.kernel = kernel or (DEFAULT_KERNEL if cpu_ok else "torch")
        # a clamp that int32 cannot hold widens overflowing lanes to int64 (both exact)
        self.wide_dtype = np.int32 if max(self.qk_clamp, self.v_clamp) <= np.iinfo(np.int32).max else np.int64
        if self.kernel == "numba":
            self._np = {"att_exp": self.att_exp.numpy(), "head_exp": self.head_exp.numpy(), "gelu": self.gelu.numpy(),
                        "slopes": self.slopes.numpy(), "emb": self.emb.numpy(), "bos": self.bos.numpy(),
                        "pattern": self.byte_pattern.numpy()}
        if self.device.type != "cpu":
            for name in ("att_exp", "att_exp_f", "head_exp", "gelu", "slopes", "emb", "bos", "byte_pattern"):
                setattr(self, name, getattr(self, name).to(self.device))
            for lin in self._linears():
                for name in ("w", "w8", "b", "shifts"):
                    if hasattr(lin, name):
                        setattr(lin, name, getattr(lin, name).to(self.device))

    def _linears(self) -> list:
        """Every quantised linear layer: the blocks' qkv, proj, fc and out, and the head."""
        return [self.head, *(x for b in self.blocks for x in (b.qkv, b.proj, b.fc, b.out))]

    def weight_bytes(self) -> int:
        """Bytes of the quantised linear layers' weights and biases (int8 weights in version 2, float64 in 1)."""
        return sum((lin.w8 if self.version >= 2 else lin.w).nbytes + lin.b.nbytes for lin in self._linears())

    _cache: "weakref.WeakKeyDictionary[BitTransformerLM, dict[tuple, tuple[tuple, ExactPredictor]]]" = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, model: BitTransformerLM, device: str | torch.device = "cpu", kernel: str | None = None,
           version: int = EXACT_VERSION) -> "ExactPredictor":
        """The predictor of `model` on `device` for exact-path `version` (its integers are the same on any
        device and kernel), derived once and re-derived when a weight changed in place. Raises
        UnsupportedModelError (see the class)."""
        key = (str(device), kernel or DEFAULT_KERNEL, version)
        versions = tuple((n, t._version, t.data_ptr()) for n, t in model.state_dict().items())
        preds = cls._cache.setdefault(model, {})
        hit = preds.get(key)
        if hit is not None and hit[0] == versions:
            return hit[1]
        pred = cls(model, device, kernel, version=version)
        preds[key] = (versions, pred)
        return pred

    # ------------------------------------------------------------------------------- arithmetic

    @staticmethod
    def _layer_norm(x: torch.Tensor, k_eps: tuple[int, int]) -> torch.Tensor:
        """Integer layer norm of (…, C) residuals at RES_BITS -> (x - mean) / std at NORM_BITS (gain and
        shift are folded into the next linear): integer mean and variance, one sqrt, one division."""
        k, eps = k_eps
        C = x.size(-1)
        c = x - torch.div(x.sum(-1, keepdim=True), C, rounding_mode="floor")
        t = (c * c).sum(-1, keepdim=True) + eps
        return torch.round(c.double() * k / torch.sqrt(t.double())).to(torch.int64)

    def _bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """(H, Q, K) int64 term added to the scores of queries at slots q_pos over keys at k_pos: -ALiBi
        bias at LOGIT_BITS where visible (the rule of `bitlm.model.layers.attention_bias`), HIDDEN elsewhere."""
        W = self.window
        d = q_pos.view(-1, 1) - k_pos.view(1, -1)
        sink = k_pos.view(1, -1) == 0
        visible = (k_pos.view(1, -1) >= 0) & (d >= 0) & ((d <= W - 2) | sink)
        dist = torch.where(sink, q_pos.view(-1, 1).clamp(max=W - 1), d)
        bias = _rshift(self.slopes.view(-1, 1, 1) * dist, SLOPE_BITS - LOGIT_BITS)
        return torch.where(visible, -bias, _HIDDEN).double()

    def _attention(self, q: torch.Tensor, groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """(B, H, Q, hd) int64 queries over key groups (keys, values: (B, H, K, hd) int-valued float64;
        bias: (H, Q, K) from `_bias`) -> (B, H, Q, hd) outputs at ACT_BITS: scores at LOGIT_BITS, weights
        from the exp table, then Σ e·v / Σ e (exact integer sums, one correctly rounded division). Held
        in float64, every value here is an integer below 2^52 (hidden keys aside), so each op is exact."""
        qf = q.double()
        scores = [_fshift(torch.matmul(qf, kk.transpose(-1, -2)), 2 * ACT_BITS - LOGIT_BITS).add_(bias)
                  for kk, _, bias in groups]
        top = torch.stack([s.amax(-1) for s in scores]).amax(0).unsqueeze(-1)
        last = self.att_exp.numel() - 1
        num, den = 0, 0
        for s, (_, vv, _) in zip(scores, groups):
            e = self.att_exp_f[s.neg_().add_(top).clamp_(max=last).to(torch.int64)]   # hidden keys: the final 0
            den = den + e.sum(-1, keepdim=True)
            num = num + torch.matmul(e, vv)
        return torch.round(num / den).to(torch.int64)

    def frequencies(self, state: LaneState, prev: torch.Tensor | None, n_slots: int,
                    threads: int | None = None) -> torch.Tensor:
        """Advance the lanes by n_slots slots and return (B, n_slots, 256) int64 frequencies of the byte
        each slot predicts (each row sums to FREQ_TOTAL; the coder gives byte b the weight freq + 1 of 2^24).

        prev: (B, m) int64 byte values that feed the slots: slot s reads byte s - 1, slot 0 reads BOS,
        so m = n_slots - 1 when the chunk starts at slot 0, else n_slots. The state must come from a
        predictor with the same kernel (`LaneState(pred, lanes)`). threads: how many threads the numba
        kernel may split the lanes among (None: the predictor's `threads`, else torch's thread count); it
        uses one per SLOTS_PER_THREAD lanes × slots at most, since a thread costs more than it gives below.
        Never changes a result."""
        if state.kernel != self.kernel:
            raise ValueError(f"a LaneState of the {state.kernel} kernel given to a predictor of the {self.kernel} one")
        if self.kernel == "numba":
            return self._frequencies_numba(state, prev, n_slots, threads)
        return self._frequencies_torch(state, prev, n_slots)

    def _frequencies_torch(self, state: LaneState, prev: torch.Tensor | None, n_slots: int) -> torch.Tensor:
        """`frequencies` in float64 torch ops (any device; the reference the numba kernel is checked against)."""
        B, s0 = state.lanes, state.pos
        dev = self.device
        x = (self.emb[self.byte_pattern[prev.to(dev)]] if prev is not None and prev.numel()
             else torch.zeros(B, 0, self.bos.numel(), dtype=torch.int64, device=dev))
        if s0 == 0:
            x = torch.cat([self.bos.expand(B, 1, -1), x], dim=1)
        if x.size(1) != n_slots:
            raise ValueError(f"{n_slots} slots from slot {s0} need {n_slots - (s0 == 0)} input bytes per lane")
        q_pos = torch.arange(s0, s0 + n_slots, device=dev)
        H, hd = self.n_head, self.head_dim
        C, r = H * hd, GELU_RANGE << ACT_BITS
        keep = q_pos[q_pos > 0][-self.ring:] if self.ring else q_pos[:0]       # slots that join the ring
        rows = (keep - 1) % max(self.ring, 1)
        if s0 == 0:                                                              # BOS: the ring's last row
            keep, rows = torch.cat([q_pos[:1], keep]), torch.cat([q_pos.new_full((1,), self.ring), rows])
        one = n_slots == 1          # a step: its slot joins the ring first, and the ring is all it attends to
        if one:
            state.ring_pos[rows] = keep
        bias_ring = self._bias(q_pos, state.ring_pos)
        bias_chunk = None if one else self._bias(q_pos, q_pos)
        sel = keep - s0
        for i, blk in enumerate(self.blocks):
            qkv = blk.qkv(self._layer_norm(x, blk.ln1)).view(B, n_slots, 3, H, hd).permute(2, 0, 3, 1, 4)
            q, k = qkv[0].clamp(-self.qk_clamp, self.qk_clamp), qkv[1].clamp(-self.qk_clamp, self.qk_clamp)
            v = qkv[2].clamp(-self.v_clamp, self.v_clamp)
            if self.version >= 2:                    # 8 significant bits per head: the ring's int8 and shift
                k, v = _round_heads(k), _round_heads(v)
            kf, vf = k.double(), v.double()
            if one:
                state.ring_k[i][:, :, rows], state.ring_v[i][:, :, rows] = kf, vf
                y = self._attention(q, [(state.ring_k[i], state.ring_v[i], bias_ring)])
            else:
                y = self._attention(q, [(state.ring_k[i], state.ring_v[i], bias_ring), (kf, vf, bias_chunk)])
                state.ring_k[i][:, :, rows], state.ring_v[i][:, :, rows] = kf[:, :, sel], vf[:, :, sel]
            x = (x + blk.proj(y.transpose(1, 2).reshape(B, n_slots, C))).clamp_(-RES_CLAMP, RES_CLAMP)
            u = blk.fc(self._layer_norm(x, blk.ln2))
            c = u.clamp(-r, r)                      # gelu = 0 below -r (the table's first entry), u above r
            x = (x + blk.out(self.gelu[c + r] + (u - c).clamp_(min=0))).clamp_(-RES_CLAMP, RES_CLAMP)
        if not one:
            state.ring_pos[rows] = keep
        state.pos += n_slots
        logits = self.head(self._layer_norm(x, self.ln_f))                            # (B, Q, 256)
        e = self.head_exp[(logits.amax(-1, keepdim=True) - logits).clamp_(max=self.head_exp.numel() - 1)]
        freq = torch.div(e * FREQ_TOTAL, e.sum(-1, keepdim=True), rounding_mode="floor")
        rest = FREQ_TOTAL - freq.sum(-1, keepdim=True)
        return freq.scatter_add_(-1, e.argmax(-1, keepdim=True), rest)


    # ------------------------------------------------------------------------------- numba path

    def _scratch(self, state: LaneState, Q: int) -> dict:
        """The step's buffers for chunks of Q slots (allocated once per state and chunk size) and torch
        views of those the matmuls read and write."""
        sc = state._scratch.get(Q)
        if sc is None:
            N, C = state.lanes * Q, self.n_head * self.head_dim
            F = self.blocks[0].fc.b.numel()
            f, i = np.float64, np.int64
            sc = {"x": np.empty((N, C), i), "ln": np.empty((N, C), f), "y3": np.empty((N, 3 * C), f),
                  "q": np.empty((N, C), np.int32), "k": np.empty((N, C), i), "v": np.empty((N, C), i),
                  "att": np.empty((N, C), f), "yc": np.empty((N, C), f),
                  "u": np.empty((N, F), f), "g": np.empty((N, F), f),
                  "logit": np.empty((N, 256), f)}
            sc["t"] = {k: torch.from_numpy(v) for k, v in sc.items() if v.dtype == f}
            if self.version >= 2:       # int8 pieces of a matmul's input per width, its products per width
                sc["ks"], sc["vs"] = np.empty((N, self.n_head), i), np.empty((N, self.n_head), i)
                acc_dtype = np.int32 if _int8_engine() == "int_mm" else np.float64
                widths = {C, F}
                sc["pieces"] = {w: np.empty((2 * N, w), np.int8) for w in widths}
                sc["acc"] = {w: np.empty((2 * N, w), acc_dtype) for w in widths | {3 * C, 256}}
                sc["row_scale"] = np.empty(N, f)
                sc["t8"] = {k: {w: torch.from_numpy(a) for w, a in sc[k].items()} for k in ("pieces", "acc")}
            state._scratch[Q] = sc
        return sc

    def _matmul(self, sc: dict, src: str, lin, dst: str, r0: int, r1: int) -> None:
        """Rows [r0, r1) of sc[dst] = sc[src] @ lin's weights, exact: v1 a float64 matmul (integers below
        2^52), v2 the input's int8 pieces (`split_rows`) times the int8 weights (`_int8_matmul`), joined
        in float64 (`join_rows`)."""
        T = sc["t"]
        if self.version == 1:
            torch.matmul(T[src][r0:r1], lin.w.t(), out=T[dst][r0:r1])
            return
        S = _kernels()[1]
        x, y = sc[src], sc[dst]
        pieces, acc = sc["pieces"][x.shape[1]], sc["acc"][y.shape[1]]
        S.split_rows(x, pieces, sc["row_scale"], r0, r1)
        t8 = sc["t8"]
        _int8_matmul(t8["pieces"][x.shape[1]][2 * r0:2 * r1], lin.w8t, t8["acc"][y.shape[1]][2 * r0:2 * r1])
        S.join_rows(acc, sc["row_scale"], y, r0, r1)

    def _run(self, fn, args: tuple, B: int, T: int) -> None:
        """fn(*args, b0, b1) over T contiguous lane ranges covering B lanes, each on a pool thread. The
        ranges follow each thread's measured speed (lanes per second, smoothed over steps), so a thread
        the machine keeps busy elsewhere gets fewer lanes instead of holding the step up. Lanes are
        independent (and write disjoint rows of the shared buffers): any split gives the same bits."""
        rates = self._rates.get(T)
        if rates is None:
            rates = self._rates[T] = [1.0] * T
        sizes = [max(1, int(B * r / sum(rates))) for r in rates]
        sizes[0] = B - sum(sizes[1:])
        if sizes[0] < 1:
            sizes = [B // T + (i < B % T) for i in range(T)]
        cuts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        took = [0.0] * T

        def block(i: int) -> None:
            t0 = time.perf_counter()
            fn(*args, cuts[i], cuts[i + 1])
            took[i] = time.perf_counter() - t0
        pool = _pool(T)             # every block on a pool thread: the caller's torch thread count is left
        for f in [pool.submit(block, i) for i in range(T)]:      # alone (setting it costs ~1 ms each time)
            f.result()
        for i in range(T):                  # lanes per second, smoothed
            rates[i] = 0.7 * rates[i] + 0.3 * sizes[i] / max(took[i], 1e-6) if rates[i] != 1.0 else \
                sizes[i] / max(took[i], 1e-6)

    def _lanes(self, ctx: tuple, l0: int, l1: int) -> None:
        """The whole stack for lanes [l0, l1) (rows l0·Q … l1·Q of the buffers): per layer the exact
        matmuls (`_matmul`) and the numba kernels between them, then the head's byte frequencies."""
        (K, S), state, sc, Q, rows, src, br, bc, freq = ctx
        t, hd = self._np, self.head_dim
        x, ln, r0, r1 = sc["x"], sc["ln"], l0 * Q, l1 * Q
        first = self.blocks[0]
        S.pre_layer(x, first.ln1[0], first.ln1[1], ln, Q, l0, l1)
        for i, blk in enumerate(self.blocks):
            self._matmul(sc, "ln", blk.qkv, "y3", r0, r1)
            if self.version >= 2:
                K.post_qkv8(sc["y3"], blk.qkv.np_b, blk.qkv.scale, float(blk.qkv.clamp), self.qk_clamp, self.v_clamp,
                            sc["q"], sc["k"], sc["v"], sc["ks"], sc["vs"], state.ring_k[i], state.ring_v[i],
                            state.shift_k[i], state.shift_v[i], br, bc, t["att_exp"], hd, sc["att"], rows, src, l0, l1)
            else:
                self._post_qkv_v1(K, state, sc, i, blk, br, bc, rows, src, l0, l1)
            self._matmul(sc, "att", blk.proj, "yc", r0, r1)
            S.post_residual(x, sc["yc"], blk.proj.np_b, blk.proj.scale, float(blk.proj.clamp), RES_CLAMP,
                            blk.ln2[0], blk.ln2[1], ln, Q, l0, l1)
            self._matmul(sc, "ln", blk.fc, "u", r0, r1)
            S.post_fc(sc["u"], blk.fc.np_b, blk.fc.scale, float(blk.fc.clamp), t["gelu"], GELU_RANGE << ACT_BITS,
                      sc["g"], Q, l0, l1)
            self._matmul(sc, "g", blk.out, "yc", r0, r1)
            nxt = self.blocks[i + 1].ln1 if i + 1 < len(self.blocks) else self.ln_f
            S.post_residual(x, sc["yc"], blk.out.np_b, blk.out.scale, float(blk.out.clamp), RES_CLAMP,
                            nxt[0], nxt[1], ln, Q, l0, l1)
        self._matmul(sc, "ln", self.head, "logit", r0, r1)
        S.post_head(sc["logit"], self.head.np_b, self.head.scale, float(self.head.clamp), t["head_exp"],
                    FREQ_TOTAL, freq, Q, l0, l1)

    def _post_qkv_v1(self, K, state: LaneState, sc: dict, i: int, blk: _Block, br, bc, rows, src,
                     l0: int, l1: int) -> None:
        """Version 1's attention of layer i for lanes [l0, l1): int16 rings, a lane widened when a key or
        value outgrows int16 (`LaneState._widen`)."""
        wide_k = state.wide_k[i] if state.wide_k[i] is not None else state._none
        wide_v = state.wide_v[i] if state.wide_v[i] is not None else state._none
        if K.post_qkv(sc["y3"], blk.qkv.np_b, blk.qkv.scale, float(blk.qkv.clamp), self.qk_clamp, self.v_clamp,
                      sc["q"], sc["k"], sc["v"], state.ring_k[i], state.ring_v[i], wide_k, wide_v, state.wide[i],
                      br, bc, self._np["att_exp"], self.head_dim, sc["att"], rows, src, l0, l1):
            with _WIDEN_LOCK:                                            # a lane outgrew int16: widen it
                state._widen(i)
            K.store(sc["k"], sc["v"], state.ring_k[i], state.ring_v[i], state.wide_k[i], state.wide_v[i],
                    state.wide[i], rows, src, self.head_dim, l0, l1)

    def _frequencies_numba(self, state: LaneState, prev: torch.Tensor | None, n_slots: int,
                           threads: int | None = None) -> torch.Tensor:
        """`frequencies` on the CPU: exact matmuls (`_matmul`) between numba kernels (see
        `bitlm.compress.attention_kernel` and `step_kernel`), keys and values in the rings of `LaneState`."""
        kernels = _kernels()
        K = kernels[0]
        B, s0, Q = state.lanes, state.pos, n_slots
        H, hd = self.n_head, self.head_dim
        C, W = H * hd, self.window
        m = 0 if prev is None or not prev.numel() else prev.size(1)
        if m + (s0 == 0) != Q:
            raise ValueError(f"{n_slots} slots from slot {s0} need {n_slots - (s0 == 0)} input bytes per lane")
        t = self._np
        sc = self._scratch(state, Q)
        xv = sc["x"].reshape(B, Q, C)
        if s0 == 0:
            xv[:, 0] = t["bos"]
        if m:
            xv[:, Q - m:] = t["emb"][t["pattern"][prev.cpu().numpy()]]
        slots = np.arange(s0, s0 + Q)
        keep = slots[slots > 0][-self.ring:]                                 # slots that join the ring
        rows = (keep - 1) % self.ring
        if s0 == 0:                                                          # BOS: the ring's last row
            keep, rows = np.concatenate([[0], keep]), np.concatenate([[self.ring], rows])
        src = (keep - s0).astype(np.int64)
        rows = rows.astype(np.int64)
        br, bc = K.bias_tables(s0, Q, state.ring_pos, t["slopes"], W, SLOPE_BITS - LOGIT_BITS, K.HIDDEN_BIAS)
        freq = np.empty((B * Q, 256), dtype=np.int64)
        ctx = (kernels, state, sc, Q, rows, src, br, bc, freq)
        T = max(1, min(threads or self.threads or torch.get_num_threads(), B, B * Q // SLOTS_PER_THREAD))
        if T <= 1:
            self._lanes(ctx, 0, B)
        else:                       # lanes split among T pool threads, each running torch on one thread
            self._run(self._lanes, (ctx,), B, T)
        state.ring_pos[rows] = keep
        state.pos += Q
        return torch.from_numpy(freq.reshape(B, Q, 256))


_POOL: list = []
_WIDEN_LOCK = threading.Lock()


def _pool(workers: int):
    """A thread pool of at least `workers` threads (shared, grown on demand), each running torch on one
    thread (the pool's threads are the parallelism)."""
    from concurrent.futures import ThreadPoolExecutor
    if not _POOL or _POOL[0]._max_workers < workers:
        _POOL[:] = [ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bitlm-exact",
                                       initializer=torch.set_num_threads, initargs=(1,))]
    return _POOL[0]


_KERNELS: list = []


def _kernels():
    """The numba kernel modules (imported on first use) as (attention_kernel, step_kernel), None when
    numba is not installed."""
    if not _KERNELS:
        try:
            from bitlm.compress import attention_kernel, step_kernel
            kernels = (attention_kernel, step_kernel)
        except ImportError:
            kernels = None
        _KERNELS.append(kernels)
    return _KERNELS[0]


def _parity(b: torch.Tensor) -> torch.Tensor:
    """Even-parity bit of byte values (the 9th bit of a parity frame)."""
    p = torch.zeros_like(b)
    for i in range(8):
        p ^= (b >> i) & 1
    return p
