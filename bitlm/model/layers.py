"""The transformer's building blocks: ALiBi attention over a sliding window, its rolling KV cache,
the attention-entropy probe, the pre-norm block and the factorized bit readout.

Positions (why ALiBi over a window). Slot i attends to slots j with 0 ≤ i - j < W (W =
`attn_window`), with the score bias -m_h · (i - j) of ALiBi (Press et al., 2022; m_h = 2^(-8h/H)).
Nothing in a key depends on its absolute position, so the same cached key serves every later
query: a cache of the last W slots per layer *rolls* (one new slot in, the oldest out) and a new
patch always costs one cached step, at any length, with no re-reading. Learned absolute embeddings
(the v1 model, `pos="learned"`) cannot slide: at the end of the table the context must restart and
re-read. Rotary embeddings could slide too, but their keys carry angle t·θ for an absolute t that
grows without bound (a 1 MB file is ~10^6 slots, where float32 angles lose ~0.06 rad), and the
integer-exact predictor the neural codec needs is simpler with an additive integer-friendly bias.
The model is trained on sequences longer than W (block_size = 2 W patches in the shipped preset),
so it sees slots whose window no longer contains BOS, exactly what sliding generation shows it.
The measurement behind the choice is in the README (model v2 section).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from bitlm.model.telemetry import LN2, attention_entropy, mean_over_queries

# Logit penalty on the 256 patterns whose parity bit is wrong: finite (no inf/NaN in losses), yet
# large enough that P(wrong parity) ~ e^-30 once the 8 data bits are known.
PARITY_MASK = 30.0
PARITY_OFFSET = 8        # the parity bit's offset in a 9-bit frame (= patch)


def alibi_slopes(n_head: int) -> torch.Tensor:
    """(H,) ALiBi slopes 2^(-8h/H), h = 1..H: steep heads look near, shallow heads far."""
    return 2.0 ** (-8.0 * torch.arange(1, n_head + 1, dtype=torch.float32) / n_head)


def attention_bias(q_pos: torch.Tensor, k_pos: torch.Tensor, slopes: torch.Tensor, window: int) -> torch.Tensor:
    """(H, Nq, Nk) additive attention bias of queries at absolute slots q_pos (Nq,) over keys at
    k_pos (Nk,); slopes (H,) (zeros: plain causal attention).

    Slot i sees BOS (slot 0) and the window - 1 slots up to itself, i - window + 2 ≤ j ≤ i: window
    keys, the most any slot of a window-long training sequence sees. BOS stays visible as an
    attention sink at distance min(i, window - 1), so a slot far into a sliding context sees the same
    distances as the last slot of a training sequence. Bias -slope·distance where visible, -inf
    elsewhere (keys at negative positions, padding rows of a cache, are never visible)."""
    q, k = q_pos.view(-1, 1), k_pos.view(1, -1)
    d = q - k                                                                      # (Nq, Nk)
    sink = k == 0
    visible = (k >= 0) & (d >= 0) & ((d <= window - 2) | sink)
    d = torch.where(sink, q.clamp(max=window - 1), d).to(slopes.dtype)
    return torch.where(visible, -slopes.view(-1, 1, 1) * d, float("-inf"))


class KVCache:
    """Keys and values of every layer for BOS and the last window - 1 slots: a rolling context.

    Buffers are allocated once; row 0 keeps BOS (the sink), new slots are written after the others,
    and when more than 64 rows have fallen out of the window the last window - 2 rows move up behind
    BOS (a copy every 64 steps, never a torch.cat of the whole cache per step). `row_pos` holds each
    row's absolute slot (-1: empty), so rows that fell out of the window are masked by
    `attention_bias`, and a query's view is one contiguous slice [0, n + m)."""

    SLACK = 64

    def __init__(self, n_layer: int, window: int) -> None:
        self.window, self.capacity = window, 2 * window + self.SLACK
        self.k: list[torch.Tensor | None] = [None] * n_layer          # each (B, H, capacity, hd)
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.row_pos = torch.full((self.capacity,), -1, dtype=torch.long)
        self.n = 0                     # rows in use
        self.pos = 0                   # slots added so far (= absolute position of the next one)
        self.m = 0                     # slots reserved by the current step
        self.last = 0                  # slots the last committed step added (what rollback may drop)

    def begin(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Reserve m ≤ window new slots; returns (query positions (m,), key positions (n + m,)) of the
        step: the positions of every row the step's queries attend over (-1 for none)."""
        if not 1 <= m <= self.window:
            raise ValueError(f"a cached step takes 1..{self.window} slots, got {m}")
        if self.n + m > self.window + self.SLACK and self.n > self.window - 1:
            keep = self.window - 2                      # all a new query sees besides BOS
            src = slice(self.n - keep, self.n)
            for buf in (*self.k, *self.v):
                if buf is not None:
                    buf[:, :, 1:keep + 1] = buf[:, :, src].clone()
            self.row_pos[1:keep + 1] = self.row_pos[src].clone()
            self.row_pos[keep + 1:] = -1
            self.n = keep + 1
        q_pos = torch.arange(self.pos, self.pos + m)
        self.row_pos[self.n:self.n + m] = q_pos
        self.m = m
        return q_pos, self.row_pos[:self.n + m]

    def add(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one layer's (B, H, m, hd) keys/values of the step; returns the (B, H, n + m, hd)
        views the step's queries attend over."""
        if self.k[layer] is None:
            shape = (*k.shape[:2], self.capacity, k.size(3))
            self.k[layer], self.v[layer] = k.new_zeros(shape), v.new_zeros(shape)
        end = self.n + self.m
        self.k[layer][:, :, self.n:end], self.v[layer][:, :, self.n:end] = k, v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def commit(self) -> None:
        """End the step: its slots become part of the cached context."""
        self.n += self.m
        self.pos += self.m
        self.last, self.m = self.m, 0

    def rollback(self, r: int) -> None:
        """Forget the last r slots, all from the last step (speculative slots whose guessed input was
        wrong). The last step's rows are the last rows of the buffers (`begin` compacts before a step
        writes, never after), so forgetting them is moving the end back."""
        if not 0 <= r <= self.last:
            raise ValueError(f"can roll back at most the {self.last} slots of the last step, not {r}")
        self.last -= r
        self.n -= r
        self.pos -= r
        self.row_pos[self.n:self.n + r] = -1


class AttentionProbe:
    """Collects per-layer attention entropy (and, if asked, the maps) during a forward, for the
    batch rows `rows`, beside scaled_dot_product_attention, so outputs are the same with or without it.

    Without maps on CPU the entropy costs one fused attention pass: row i's entropy is
    lse_i - Σ_j a_ij s_ij with s_ij = scale·q_i·k_j + b_ij; attention with values [k_j, j, 1{j=0}]
    gives Σ_j a_ij k_j, Σ_j a_ij j and BOS's weight, and the ALiBi bias is linear in j but for BOS
    (see `attention_bias`). torch's CPU flash kernel returns lse beside it. Otherwise the maps are built explicitly."""

    def __init__(self, rows: slice, keep_maps: bool, query_mask: torch.Tensor | None, window: int) -> None:
        self.rows, self.keep_maps, self.window = rows, keep_maps, window
        self.query_mask = None if query_mask is None else query_mask[rows]
        self.entropy: list[torch.Tensor] = []
        self.maps: list[torch.Tensor] = []

    def __call__(self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, slopes: torch.Tensor | None) -> None:
        q, k = q[self.rows].detach(), k[self.rows].detach()
        b, H, n, hd = q.shape
        scale = 1.0 / math.sqrt(hd)
        if not self.keep_maps and q.device.type == "cpu":
            pos = torch.arange(n, dtype=q.dtype, device=q.device)
            # values [k_j, j, 1{j = 0}] give Σ a k, Σ a j and BOS's weight; the kernel wants one head
            # size, so two zero columns in q and k leave the scores unchanged
            cols = torch.stack([pos, (pos == 0).to(q.dtype)], dim=-1).expand(b, H, n, 2)
            q1, k1 = (F.pad(t, (0, 2)) for t in (q, k))
            kv = torch.cat([k, cols], dim=-1)                                                # (b, H, n, hd + 2)
            mask = None if bias is None else bias.unsqueeze(0).expand(b, -1, -1, -1)
            y, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                q1, k1, kv, 0.0, bias is None, attn_mask=mask, scale=scale)[:2]
            ent = lse - scale * (q * y[..., :hd]).sum(-1)
            if slopes is not None:     # - Σ_j a_ij b_ij, b_ij = -m (i - j) but -m min(i, W - 1) for BOS
                far = (pos - pos.clamp(max=self.window - 1)) * y[..., hd + 1]
                ent = ent + slopes.view(1, H, 1) * (pos - y[..., hd] - far)
            ent = ent / LN2                                                                  # (b, H, n) bits
            self.entropy.append(mean_over_queries(ent, self.query_mask))
            return
        if bias is None:   # a finite mask: masked keys get exactly 0 weight and 0·log 0 stays 0
            bias = torch.full((n, n), -1e30, device=q.device).triu(1)
        bias = bias.clamp(min=-1e30).expand(H, n, n).repeat(b, 1, 1)
        scores = torch.baddbmm(bias, q.reshape(b * H, n, hd), k.reshape(b * H, n, hd).transpose(1, 2), alpha=scale)
        att = scores.softmax(dim=-1).view(b, H, n, n)
        self.entropy.append(attention_entropy(att, self.query_mask)[0])
        if self.keep_maps:
            self.maps.append(att)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention; `bias` (H or 1, Nq, Nk) carries ALiBi and the causal window (None:
    plain causal attention over the whole input, the learned-position model's forward). Dropout acts
    on the output only: dropout on the attention weights sends SDPA's CPU kernels to their unfused
    path, 3x slower per training step (measured, 8 x 256 model, bf16)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None, slopes: torch.Tensor | None = None,
                probe: AttentionProbe | None = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, N, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, N, hd)
        if bias is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # SDPA's CPU kernels are ~5x faster with a mask expanded to the batch than broadcast from (H, ...)
            mask = bias.unsqueeze(0).expand(B, self.n_head, -1, -1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if probe is not None:
            probe(q, k, bias, slopes)
        y = y.transpose(1, 2).contiguous().view(B, N, C)
        return self.resid_drop(self.c_proj(y))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None, slopes: torch.Tensor | None = None,
                probe: AttentionProbe | None = None) -> torch.Tensor:
        """A forward over whole sequences (training, evaluation, telemetry); cached steps use `step`."""
        x = x + self.attn(self.ln_1(x), bias, slopes, probe)
        return x + self.mlp(self.ln_2(x))

    def step_weights(self) -> tuple[torch.Tensor, ...]:
        """The block's matrices transposed to (in, out), contiguous, with their biases, for `step`:
        with a row-major (in, out) operand, MKL's small-batch GEMM streams the weights once without
        repacking them, so a step of 5 slots costs about what a step of 1 does (F.linear's (out, in)
        weights cost 1.3-1.8x; measured in the README's generation section). A copy, taken when a
        decoder starts: later weight updates need a new decoder."""
        att, (fc, _, proj, _) = self.attn, self.mlp
        return tuple(t for lin in (att.c_attn, att.c_proj, fc, proj) for t in (lin.weight.detach().t().contiguous(),
                                                                               lin.bias.detach()))

    def step(self, x: torch.Tensor, bias: torch.Tensor, cache: KVCache, layer: int,
             weights: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """`forward` for cached inference steps (eval mode, no grad) with `step_weights()`: the same
        arithmetic in about a third of the kernel launches, which is what a few-slot step at batch 1
        pays for: no module calls, no dropout, weights read as (in, out). (B, m, C) -> (B, m, C);
        `cached = recompute` tests hold it to `forward`."""
        w_qkv, b_qkv, w_o, b_o, w_fc, b_fc, w_proj, b_proj = weights
        B, N, C = x.shape
        H = self.attn.n_head
        h = F.layer_norm(x, (C,), self.ln_1.weight, self.ln_1.bias, self.ln_1.eps).view(B * N, C)
        q, k, v = torch.addmm(b_qkv, h, w_qkv).view(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
        k, v = cache.add(layer, k, v)                                                  # (B, H, n, hd)
        mask = bias.unsqueeze(0).expand(B, -1, -1, -1)                                 # (B, H, m, n)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B * N, C)
        x = x + torch.addmm(b_o, y, w_o).view(B, N, C)
        h = F.layer_norm(x, (C,), self.ln_2.weight, self.ln_2.bias, self.ln_2.eps).view(B * N, C)
        return x + torch.addmm(b_proj, F.gelu(torch.addmm(b_fc, h, w_fc)), w_proj).view(B, N, C)


def bit_conditionals(lp: torch.Tensor, p: int) -> torch.Tensor:
    """Per-bit conditionals of pattern log-probs lp (..., 2^p), patterns indexed MSB-first.

    Returns (..., 2^p - 1, 2): row 2^i - 1 + v holds log P(b_i = 0/1 | b_<i = prefix v), for every
    depth i < p and prefix value v. A prefix is a contiguous block of patterns, so one logsumexp
    tree (bottom-up over pairs) gives all of them in O(2^p)."""
    levels = []
    level = lp                                                      # log P(prefix of length i+1)
    for i in reversed(range(p)):
        pairs = level.unflatten(-1, (2 ** i, 2))                    # (..., 2^i, 2)
        parent = torch.logaddexp(pairs[..., 0], pairs[..., 1])      # (..., 2^i)
        levels.append(pairs - parent.unsqueeze(-1))
        level = parent
    return torch.cat(levels[::-1], dim=-2)


def gather_bits(cond: torch.Tensor, patterns: torch.Tensor, p: int) -> torch.Tensor:
    """(..., 2^p - 1, 2) conditionals and (...) patterns -> (..., p, 2) log-probs of each bit given
    the pattern's own earlier bits."""
    i = torch.arange(p, device=patterns.device)
    node = (1 << i) - 1 + (patterns.unsqueeze(-1) >> (p - i))        # (..., p)
    return cond.gather(-2, node.unsqueeze(-1).expand(*node.shape, 2))
