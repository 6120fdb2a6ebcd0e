"""BitTransformerLM: the bit-level language model, its config, compressed forward and generation.

Every input and output is a bit, but compute is paid per patch: p = patch_size consecutive bits
form a patch (p = 9 is one parity-framed byte) and a causal GLOBAL transformer runs over patches,
slot j reading [BOS, patch_0, ..., patch_{j-1}] to predict patch j. A LOCAL model turns slot j's
state into the p bits of patch j, each bit predicted from the patches before and the bits of patch j
already seen. The default local model ("factorized") is exact: a linear head gives a distribution
over all 2^p patterns of the patch, and P(b_i | b_<i) is that distribution summed over the patterns
consistent with the prefix, so the per-bit cross-entropies add up to the patch cross-entropy (chain
rule) and training uses the patch cross-entropy directly. "transformer" is the MEGABYTE-style
alternative: a small causal transformer over the p bits. p = 1 is a plain causal transformer over
bits. With parity framing the parity bit of each 9-bit frame is determined by its 8 data bits; the
model predicts it (near-)deterministically and generation sets it instead of sampling it.
"""
import json
import math
import os
import uuid
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin, constants, hf_hub_download
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from bitlm.bits import frame_bits, parity_of
from bitlm.codec import DEFAULT_MAX_BITS, CodecError, decompress_bits, stream_info
from bitlm.telemetry import (
    LN2, Telemetry, attention_entropy, compute_telemetry, lz_complexity, mean_over_queries, negentropy,
)

# Logit penalty on the 256 patterns whose parity bit is wrong: finite (no inf/NaN in losses), yet
# large enough that P(wrong parity) ~ e^-30 once the 8 data bits are known.
PARITY_MASK = 30.0
PARITY_OFFSET = 8        # the parity bit's offset in a 9-bit frame (= patch)
LOCALS = ("factorized", "transformer")
MAX_PATCH_SIZE = 12      # the pattern embedding has 2^patch_size rows


@dataclass
class BitLMConfig:
    """Model hyper-parameters (serialised as config.json).

    patch_size: bits per patch (9 = a parity-framed byte; 1 = a plain transformer over bits).
    parity: the bits are 9-bit parity frames (stream type 0); requires patch_size 9.
    block_size: maximum context in bits, a multiple of patch_size.
    n_layer, n_head, n_embd, dropout: the global transformer.
    local: "factorized" (exact pattern distribution) or "transformer" (MEGABYTE-style local model,
    with local_layers blocks of width local_embd and n_head heads).
    n_stream_types: learned input-type embeddings (0 = raw bits, 1 = a compressed codec stream).
    Raises ValueError with the offending field when the combination is invalid."""
    patch_size: int = 9
    parity: bool = True
    block_size: int = 2304
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    local: str = "factorized"
    local_layers: int = 2
    local_embd: int = 64
    n_stream_types: int = 2

    def __post_init__(self) -> None:
        for f in fields(self):
            value, kind = getattr(self, f.name), f.type
            ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
            if not ok or (kind is not bool and isinstance(value, bool)):
                raise ValueError(f"BitLMConfig.{f.name} must be {kind.__name__}, got {value!r}")
        for name in ("patch_size", "block_size", "n_layer", "n_head", "n_embd", "local_layers", "local_embd", "n_stream_types"):
            if getattr(self, name) < 1:
                raise ValueError(f"BitLMConfig.{name} must be ≥ 1, got {getattr(self, name)}")
        if self.patch_size > MAX_PATCH_SIZE:
            raise ValueError(f"BitLMConfig.patch_size must be ≤ {MAX_PATCH_SIZE} (2^p pattern embeddings), got {self.patch_size}")
        if self.parity and self.patch_size != 9:
            raise ValueError(f"parity framing needs patch_size 9 (one frame per patch), got {self.patch_size}; set parity=False")
        if self.block_size % self.patch_size:
            raise ValueError(f"block_size {self.block_size} must be a multiple of patch_size {self.patch_size}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} must be divisible by n_head {self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.local not in LOCALS:
            raise ValueError(f"local must be one of {LOCALS}, got {self.local!r}")
        if self.local == "transformer" and self.local_embd % self.n_head:
            raise ValueError(f"local_embd {self.local_embd} must be divisible by n_head {self.n_head}")

    @property
    def n_patches(self) -> int:
        """Global positions (patch slots) in a full context."""
        return self.block_size // self.patch_size

    @classmethod
    def from_dict(cls, d: dict) -> "BitLMConfig":
        """Build from a dict (e.g. parsed config.json); unknown keys are a ValueError naming them."""
        if not isinstance(d, dict):
            raise ValueError(f"a BitLMConfig must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"keys unknown to BitLMConfig: {unknown}")
        return cls(**d)


def byte_level_config(config: BitLMConfig) -> BitLMConfig:
    """The byte-level twin of a bit model: the same global transformer over the same bytes of context,
    with `patch_size=8, parity=False` and the factorized local model, i.e. a plain byte-level
    transformer (a 256-row embedding and a tied 256-way softmax head).

    Takes: a BitLMConfig (its context in bytes is block_size // frame bits, 9 with parity, else 8).
    Returns: the twin's BitLMConfig (from a factorized p=9 model, the parameters differ only by the
    pattern table: 512 vs 256 rows of n_embd).
    Raises: ValueError when the context holds no whole byte."""
    context_bytes = config.block_size // frame_bits(config.parity)
    if context_bytes < 1:
        raise ValueError(f"block_size {config.block_size} holds no whole byte; a byte-level twin needs at least one")
    return replace(config, patch_size=8, parity=False, local="factorized", block_size=8 * context_bytes)


@dataclass
class LossStats:
    """Training-path result of `BitTransformerLM.loss`.

    loss: scalar with grad, mean next-bit cross-entropy in bits per bit over the real bits.
    Per sample (B,), detached: nll_bits (CE summed, in bits), n_bits (real bits, int64), correct
    (argmax-correct real bits, int64), data_nll_bits / parity_nll_bits (CE over data / parity
    positions; parity positions exist only with parity framing and stream type 0), n_bytes (data bits
    / 8, float; bits per byte = data_nll_bits.sum() / n_bytes.sum())."""
    loss: torch.Tensor
    nll_bits: torch.Tensor
    n_bits: torch.Tensor
    correct: torch.Tensor
    data_nll_bits: torch.Tensor
    parity_nll_bits: torch.Tensor
    n_bytes: torch.Tensor


@dataclass
class Generation:
    """Result of `BitTransformerLM.generate`.

    bits: the new bits only, 1-D uint8. probs: the model's P(bit=1) at each new position (before
    temperature/top-k/top-p), float32. parity_set: parity bits set from their frame's data bits
    instead of sampled. output: model_output_decompress(bits) when asked for, else None."""
    bits: torch.Tensor
    probs: torch.Tensor
    parity_set: int
    output: torch.Tensor | None = None


def model_output_decompress(output_bits: torch.Tensor, max_bits: int = DEFAULT_MAX_BITS) -> torch.Tensor:
    """Decompress a bit stream the model produced (a codec stream, e.g. generated with stream_type=1).

    Returns the decompressed 1-D uint8 bits. Raises CodecError saying the output is not a valid
    compressed stream (with the codec's reason) and what to do instead."""
    try:
        return decompress_bits(output_bits, max_bits=max_bits)
    except CodecError as e:
        raise CodecError(f"the model's output is not a valid compressed stream ({e}); generate raw bits "
                         f"(decompress_output=False) or use a model trained to write codec streams") from e


# ----------------------------------------------------------------------------------- modules

class _KVCache:
    """Keys and values of one attention layer over the slots processed so far (generation), in
    buffers allocated once for `capacity` slots, so a step writes its slot instead of copying the
    whole cache (torch.cat) again."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.n = capacity, 0
        self.k: torch.Tensor | None = None      # (B, H, capacity, hd)
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add (B, H, N, hd) keys and values; returns views of all keys and values so far."""
        if self.k is None:
            shape = (*k.shape[:2], self.capacity, k.size(3))
            self.k, self.v = k.new_empty(shape), v.new_empty(shape)
        end = self.n + k.size(2)
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} slots > capacity {self.capacity}")
        self.k[:, :, self.n:end], self.v[:, :, self.n:end] = k, v
        self.n = end
        return self.k[:, :, :end], self.v[:, :, :end]


class _AttentionProbe:
    """Collects per-layer attention entropy (and, if asked, the maps) during a forward, for the
    batch rows `rows`, beside scaled_dot_product_attention, so outputs are the same with or without it.

    Without maps on CPU the entropy costs one fused attention pass: row i's entropy is
    lse_i - Σ_j a_ij s_ij, and Σ_j a_ij s_ij = scale · q_i · (Σ_j a_ij k_j), attention with V = K;
    torch's CPU flash kernel returns lse beside it. Otherwise the maps are built explicitly."""

    def __init__(self, rows: slice, keep_maps: bool, query_mask: torch.Tensor | None) -> None:
        self.rows, self.keep_maps = rows, keep_maps
        self.query_mask = None if query_mask is None else query_mask[rows]
        self.entropy: list[torch.Tensor] = []
        self.maps: list[torch.Tensor] = []

    def __call__(self, q: torch.Tensor, k: torch.Tensor) -> None:
        q, k = q[self.rows].detach(), k[self.rows].detach()
        b, H, n, hd = q.shape
        scale = 1.0 / math.sqrt(hd)
        if not self.keep_maps and q.device.type == "cpu":
            y, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, k, 0.0, True, scale=scale)[:2]
            ent = (lse - scale * (q * y).sum(-1)) / LN2                                # (b, H, n) bits
            self.entropy.append(mean_over_queries(ent, self.query_mask))
            return
        # a finite mask: masked keys get exactly 0 weight and 0·log 0 stays 0
        bias = torch.full((n, n), -1e30, device=q.device).triu(1)
        scores = torch.baddbmm(bias, q.reshape(b * H, n, hd), k.reshape(b * H, n, hd).transpose(1, 2), alpha=scale)
        att = scores.softmax(dim=-1).view(b, H, n, n)
        self.entropy.append(attention_entropy(att, self.query_mask)[0])
        if self.keep_maps:
            self.maps.append(att)


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: _KVCache | None = None, probe: _AttentionProbe | None = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, N, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, N, hd)
        if cache is not None:
            k, v = cache.append(k, v)
        nq, nk = q.size(2), k.size(2)
        if nq == nk:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
            if probe is not None:
                probe(q, k)
        else:   # new slots after cached ones: each sees every cached slot and the new ones before it
            mask = torch.ones(nq, nk, dtype=torch.bool, device=x.device).tril(nk - nq)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
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

    def forward(self, x: torch.Tensor, cache: _KVCache | None = None, probe: _AttentionProbe | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, probe)
        return x + self.mlp(self.ln_2(x))


def _bit_conditionals(lp: torch.Tensor, p: int) -> torch.Tensor:
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


def _gather_bits(cond: torch.Tensor, patterns: torch.Tensor, p: int) -> torch.Tensor:
    """(..., 2^p - 1, 2) conditionals and (...) patterns -> (..., p, 2) log-probs of each bit given
    the pattern's own earlier bits."""
    i = torch.arange(p, device=patterns.device)
    node = (1 << i) - 1 + (patterns.unsqueeze(-1) >> (p - i))        # (..., p)
    return cond.gather(-2, node.unsqueeze(-1).expand(*node.shape, 2))


class BitTransformerLM(nn.Module, PyTorchModelHubMixin, library_name="bitlm", tags=["bit-level", "language-model"]):
    """Bit-level causal LM over patches of bits (see the module docstring).

    BitTransformerLM(config) with a BitLMConfig (or its dict). save_pretrained(dir) writes
    config.json + model.safetensors; from_pretrained(dir or Hub id) reads them (never unpickles)."""

    def __init__(self, config: BitLMConfig) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = BitLMConfig.from_dict(config)
        if not isinstance(config, BitLMConfig):
            raise ValueError(f"config must be a BitLMConfig, got {type(config).__name__}")
        self.config = config
        self._hub_mixin_config = config
        c, p = config, config.patch_size
        self.register_buffer("bit_weights", 2 ** torch.arange(p - 1, -1, -1), persistent=False)   # MSB first
        self.patch_emb = nn.Embedding(2 ** p, c.n_embd)
        self.stream_emb = nn.Embedding(c.n_stream_types, c.n_embd)
        self.pos_emb = nn.Embedding(c.n_patches, c.n_embd)
        self.bos = nn.Parameter(torch.zeros(c.n_embd))
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c.n_embd, c.n_head, c.dropout) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd)
        if c.local == "factorized":
            self.head = nn.Linear(c.n_embd, 2 ** p, bias=False)
            self.head.weight = self.patch_emb.weight        # the same 2^p patterns in and out
            if c.parity:
                pats = torch.arange(2 ** p).unsqueeze(-1)
                frames = ((pats & self.bit_weights) > 0).to(torch.uint8)               # (512, 9)
                wrong = parity_of(frames[:, :PARITY_OFFSET]) != frames[:, PARITY_OFFSET]
                self.register_buffer("parity_penalty", PARITY_MASK * wrong.float(), persistent=False)
        else:
            self.local_in = nn.Linear(c.n_embd, c.local_embd)
            self.local_bit_emb = nn.Embedding(3, c.local_embd)        # bit 0, bit 1, patch start
            self.local_pos_emb = nn.Embedding(p, c.local_embd)
            self.local_blocks = nn.ModuleList(Block(c.local_embd, c.n_head, c.dropout) for _ in range(c.local_layers))
            self.local_ln = nn.LayerNorm(c.local_embd)
            self.local_head = nn.Linear(c.local_embd, 2)
        self.apply(self._init_weights)
        nn.init.normal_(self.bos, std=0.02)
        for name, param in self.named_parameters():    # GPT-2 scaled init of residual projections
            if name.endswith("attn.c_proj.weight") or name.endswith("mlp.2.weight"):
                depth = c.local_layers if name.startswith("local_") else c.n_layer
                nn.init.normal_(param, std=0.02 / math.sqrt(2 * depth))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def num_params(self) -> int:
        """Number of parameters (tied weights counted once, position embeddings included)."""
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------------------- inputs

    @property
    def _device(self) -> torch.device:
        return self.pos_emb.weight.device

    def _check_bits(self, bits: torch.Tensor) -> torch.Tensor:
        """(B, T) or (T,) 0/1 tensor -> (B, T) int64 on the model's device; ValueError otherwise."""
        if not isinstance(bits, torch.Tensor):
            raise ValueError(f"bits must be a torch.Tensor of 0/1, got {type(bits).__name__}")
        if bits.dim() == 1:
            bits = bits.unsqueeze(0)
        if bits.dim() != 2:
            raise ValueError(f"bits must be (B, T), got shape {tuple(bits.shape)}")
        T = bits.size(1)
        if not 1 <= T <= self.config.block_size:
            raise ValueError(f"sequence length {T} must be between 1 and block_size={self.config.block_size} bits; "
                             f"crop longer inputs to their last {self.config.block_size} bits")
        if bits.is_floating_point() or bits.is_complex() or not ((bits == 0) | (bits == 1)).all():
            raise ValueError("bits must hold only the values 0 and 1 (bool or integer dtype)")
        return bits.to(self._device, torch.long)

    def _stream_ids(self, stream_type: int | torch.Tensor, B: int) -> torch.Tensor:
        """stream_type (an int, or (B,) per sample) -> (B,) int64, checked against n_stream_types."""
        if isinstance(stream_type, torch.Tensor) and stream_type.dim() > 0:
            st = stream_type.to(self._device, torch.long)
        else:
            st = torch.full((B,), int(stream_type), dtype=torch.long, device=self._device)
        if st.shape != (B,):
            raise ValueError(f"stream_type must be an int or a ({B},) tensor, got shape {tuple(st.shape)}")
        if ((st < 0) | (st >= self.config.n_stream_types)).any():
            raise ValueError(f"stream_type must be in [0, {self.config.n_stream_types}) "
                             f"(0 = raw bits, 1 = a compressed stream read directly), got {st.tolist()}")
        return st

    def _patches(self, bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) bits -> (B, n, p) bits zero-padded to whole patches and (B, n) MSB-first patterns."""
        p = self.config.patch_size
        B, T = bits.shape
        n = -(-T // p)
        bp = F.pad(bits, (0, n * p - T)).view(B, n, p)
        return bp, (bp * self.bit_weights).sum(-1)

    # ------------------------------------------------------------------------------- global model

    def _embed(self, prev: torch.Tensor, start: int, stream: torch.Tensor, with_bos: bool) -> torch.Tensor:
        """Global inputs for slots start.. : [BOS if with_bos] + embeddings of the previous patches."""
        x = self.patch_emb(prev)                                              # (B, m, C)
        if with_bos:
            x = torch.cat([self.bos.expand(x.size(0), 1, -1), x], dim=1)
        pos = torch.arange(start, start + x.size(1), device=x.device)
        return self.drop(x + self.pos_emb(pos) + self.stream_emb(stream).unsqueeze(1))

    def _run_global(self, x: torch.Tensor, caches: list[_KVCache] | None = None,
                    probe: _AttentionProbe | None = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i], probe)
        return self.ln_f(x)

    def _global(self, patterns: torch.Tensor, stream: torch.Tensor, probe: _AttentionProbe | None = None) -> torch.Tensor:
        """(B, n) patterns -> (B, n, C) states; slot j has seen patches < j only."""
        return self._run_global(self._embed(patterns[:, :-1], 0, stream, with_bos=True), probe=probe)

    # ------------------------------------------------------------------------------- local models

    def _pattern_logprobs(self, h: torch.Tensor, parity_rows: torch.Tensor) -> torch.Tensor:
        """Factorized local: (B, n, C) states -> (B, n, 2^p) pattern log-probs, wrong-parity patterns
        penalised in parity-framed rows."""
        logits = self.head(h)
        if self.config.parity:
            logits = logits - self.parity_penalty * parity_rows.view(-1, 1, 1)
        return F.log_softmax(logits, dim=-1)

    def _parity_logprobs(self, data_bits: torch.Tensor) -> torch.Tensor:
        """(..., 8) data bits -> (..., 2) log-probs of the parity bit: the right value gets all
        but ~e^-PARITY_MASK of the mass (the factorized model's mask gives the same)."""
        right = parity_of(data_bits).long()
        logits = torch.stack([right == 0, right == 1], dim=-1).float() * PARITY_MASK
        return F.log_softmax(logits, dim=-1)

    def _local_logprobs(self, h: torch.Tensor, bp: torch.Tensor, parity_rows: torch.Tensor) -> torch.Tensor:
        """Transformer local: (B, n, C) states and (B, n, k) bits of each patch (k ≤ p; only bits
        before each position are used) -> (B, n, k, 2) per-bit log-probs."""
        B, n, k = bp.shape
        prev = torch.cat([torch.full_like(bp[..., :1], 2), bp[..., :-1]], dim=-1)     # (B, n, k) shifted right
        x = self.local_in(h).unsqueeze(2) + self.local_bit_emb(prev) + self.local_pos_emb.weight[:k]
        x = self.drop(x).view(B * n, k, -1)
        for block in self.local_blocks:
            x = block(x)
        lp = F.log_softmax(self.local_head(self.local_ln(x)), dim=-1).view(B, n, k, 2)
        if self.config.parity and k > PARITY_OFFSET:
            forced = self._parity_logprobs(bp[..., :PARITY_OFFSET])                   # (B, n, 2)
            lp = torch.cat([lp[..., :PARITY_OFFSET, :],
                            torch.where(parity_rows.view(-1, 1, 1), forced, lp[..., PARITY_OFFSET, :]).unsqueeze(2),
                            lp[..., PARITY_OFFSET + 1:, :]], dim=2)
        return lp

    def _bit_logprobs(self, h: torch.Tensor, bp: torch.Tensor, patterns: torch.Tensor, parity_rows: torch.Tensor) -> torch.Tensor:
        """(B, n, p, 2) log-probs of every bit given everything before it."""
        if self.config.local == "factorized":
            cond = _bit_conditionals(self._pattern_logprobs(h, parity_rows), self.config.patch_size)
            return _gather_bits(cond, patterns, self.config.patch_size)
        return self._local_logprobs(h, bp, parity_rows)

    # ------------------------------------------------------------------------------- public API

    def forward(self, bits: torch.Tensor, stream_type: int | torch.Tensor = 0, telemetry: bool = True,
                return_attention: bool = False) -> tuple[torch.Tensor, Telemetry | None]:
        """Next-bit predictions for every position.

        bits: (B, T) 0/1 (bool or integer; a 1-D tensor is one sequence), 1 ≤ T ≤ block_size.
        stream_type: 0 raw bits, 1 a compressed stream read directly (an int or (B,) tensor).
        telemetry: also compute K/C/S (`bitlm.telemetry`). K, K_pred, S, p and entropy cover the
        whole batch; C, C_pred and attention entropy (the costly ones) describe the first sequence
        only, unless return_attention, which computes them on the whole batch and keeps the
        (B, H, n, n) attention maps over patch slots in telemetry.attention (with telemetry only).
        Returns (logits, telemetry): logits (B, T, 2) float log-probabilities, logits[:, t] predicting
        bit t from bits < t only; telemetry is a Telemetry or None.
        Raises ValueError for bad bits, lengths or stream types."""
        return self._forward(self._check_bits(bits), stream_type, telemetry, return_attention)

    def _forward(self, bits: torch.Tensor, stream_type: int | torch.Tensor, telemetry: bool, return_attention: bool,
                 mask: torch.Tensor | None = None, on: str = "stream") -> tuple[torch.Tensor, Telemetry | None]:
        B, T = bits.shape
        stream = self._stream_ids(stream_type, B)
        parity_rows = (stream == 0) & self.config.parity
        bp, patterns = self._patches(bits)
        probe = None
        if telemetry:
            slot_mask = None if mask is None else self._patches(mask.long())[0].any(-1)      # (B, n)
            first = 0 if mask is None else int(mask.any(1).nonzero()[0, 0])   # first row with real bits
            probe = _AttentionProbe(slice(None) if return_attention else slice(first, first + 1),
                                    return_attention, slot_mask)
        h = self._global(patterns, stream, probe)
        logits = self._bit_logprobs(h, bp, patterns, parity_rows).flatten(1, 2)[:, :T]    # (B, T, 2)
        tel = None
        if telemetry:
            tel = compute_telemetry(bits, logits, attention=probe.maps or None, on=on, mask=mask,
                                    att_entropy=torch.stack(probe.entropy), lz_rows=None if return_attention else 1)
        return logits, tel

    def loss(self, bits: torch.Tensor, stream_type: int | torch.Tensor = 0, mask: torch.Tensor | None = None) -> LossStats:
        """The training objective and its per-sample statistics (see LossStats).

        bits: (B, T) 0/1; mask: (B, T) bool marking real bits (padding of unequal-length streams),
        None = all real. The factorized local model uses the patch cross-entropy for whole real
        patches (equal, by the chain rule, to the sum of their per-bit cross-entropies) and the per-bit
        conditionals only for partially real patches. Raises ValueError for bad inputs or an empty mask."""
        bits = self._check_bits(bits)
        B, T = bits.shape
        p = self.config.patch_size
        real = torch.ones_like(bits, dtype=torch.bool) if mask is None else mask.to(self._device, torch.bool)
        if real.shape != bits.shape:
            raise ValueError(f"mask {tuple(real.shape)} must have the bits' shape {tuple(bits.shape)}")
        n_real = real.sum(1)
        if n_real.sum() == 0:
            raise ValueError("mask selects no bits; there is nothing to train on")
        stream = self._stream_ids(stream_type, B)
        parity_rows = (stream == 0) & self.config.parity
        bp, patterns = self._patches(bits)
        realp = self._patches(real.long())[0].bool()                       # (B, n, p)
        h = self._global(patterns, stream)
        if self.config.local == "factorized":
            lp = self._pattern_logprobs(h, parity_rows)                        # (B, n, 2^p)
            full = realp.all(-1)
            ce_patch = -lp.gather(-1, patterns.unsqueeze(-1)).squeeze(-1)      # (B, n) nats
            nll = torch.where(full, ce_patch, 0.0).sum(1)
            part = realp.any(-1) & ~full
            if part.any():
                lp_part = _gather_bits(_bit_conditionals(lp[part], p), patterns[part], p)     # (k, p, 2)
                ce_part = -(lp_part.gather(-1, bp[part].unsqueeze(-1)).squeeze(-1) * realp[part]).sum(-1)
                nll = nll.index_add(0, part.nonzero()[:, 0], ce_part)
            with torch.no_grad():
                bit_lp = _gather_bits(_bit_conditionals(lp.detach(), p), patterns, p)
        else:
            bit_lp = self._local_logprobs(h, bp, parity_rows)                   # (B, n, p, 2)
            ce = -bit_lp.gather(-1, bp.unsqueeze(-1)).squeeze(-1)
            nll = torch.where(realp, ce, 0.0).sum((1, 2))
        loss = nll.sum() / n_real.sum() / LN2
        with torch.no_grad():
            bit_lp = bit_lp.detach().flatten(1, 2)[:, :T]                       # (B, T, 2)
            ce_bits = -bit_lp.gather(-1, bits.unsqueeze(-1)).squeeze(-1) / LN2
            correct = ((bit_lp[..., 1] > bit_lp[..., 0]).long() == bits) & real
            is_parity = parity_rows.view(-1, 1) & (torch.arange(T, device=bits.device) % p == PARITY_OFFSET)
            parity_pos = real & is_parity
            data_pos = real & ~is_parity
            return LossStats(
                loss=loss,
                nll_bits=nll.detach() / LN2,
                n_bits=n_real,
                correct=correct.sum(1),
                data_nll_bits=torch.where(data_pos, ce_bits, 0.0).sum(1),
                parity_nll_bits=torch.where(parity_pos, ce_bits, 0.0).sum(1),
                n_bytes=data_pos.sum(1).float() / 8,
            )

    def forward_compressed(self, streams: torch.Tensor | list[torch.Tensor], stream_type: int | torch.Tensor = 0,
                           telemetry: bool = True, return_attention: bool = False,
                           on: str = "decompressed") -> tuple[torch.Tensor, Telemetry | None]:
        """Decompress codec streams and run `forward` on the bits: identical logits and telemetry.

        streams: one 1-D stream, a (B, S) tensor of equal-length streams, or a list of 1-D streams.
        Unequal decompressed lengths give a right-padded (B, T_max) batch: positions at or past a
        row's length hold zero-bit padding and their logits/p/entropy are meaningless (causality keeps
        the real positions exact); telemetry scalars count real bits only. on: "decompressed" (K and C
        of the decompressed bits, which the model read) or "stream" (K and C of the compressed streams).
        Returns (logits (B, T_max, 2), telemetry) as `forward`.
        Raises CodecError for a malformed stream, ValueError for one longer than block_size once
        decompressed, for no bits, or for an unknown `on`."""
        if on not in ("decompressed", "stream"):
            raise ValueError(f"on must be 'decompressed' or 'stream', got {on!r}")
        if isinstance(streams, torch.Tensor):
            streams = [streams] if streams.dim() == 1 else list(streams)
        if not streams:
            raise ValueError("forward_compressed needs at least one stream")
        decoded = []
        for i, s in enumerate(streams):
            n = stream_info(s).original_bits
            if n > self.config.block_size:
                raise ValueError(f"stream {i} decompresses to {n} bits, more than block_size={self.config.block_size}; "
                                 f"compress shorter chunks")
            decoded.append(decompress_bits(s, max_bits=self.config.block_size))
        lengths = torch.tensor([d.numel() for d in decoded])
        T = int(lengths.max())
        if T == 0:
            raise ValueError("the streams decompress to no bits; there is nothing to predict")
        bits = torch.zeros(len(decoded), T, dtype=torch.long)
        for row, d in zip(bits, decoded):
            row[:d.numel()] = d
        bits = self._check_bits(bits)
        mask = None if bool((lengths == T).all()) else (torch.arange(T) < lengths.unsqueeze(1)).to(self._device)
        logits, tel = self._forward(bits, stream_type, telemetry, return_attention, mask=mask, on=on)
        if tel is not None and on == "stream":
            tel = replace(tel, K=negentropy(list(streams)), C=lz_complexity(list(streams)))
        return logits, tel

    # ------------------------------------------------------------------------------- generation

    @torch.no_grad()
    def generate(self, prompt_bits: torch.Tensor, n_bits: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, stream_type: int = 0,
                 decompress_output: bool = False, use_cache: bool = True) -> Generation:
        """Sample n_bits new bits after prompt_bits.

        prompt_bits: 1-D 0/1 tensor (may be empty, may end mid-patch; a longer-than-context prompt
        is cropped to its last whole patches). temperature: scales each bit's 2-way logits; 0 is
        greedy. top_k: 1 is greedy, ≥ 2 keeps both bits. top_p: the more likely bit alone when its
        probability is ≥ top_p, else both. seed: makes sampling reproducible. stream_type: 0 raw
        bits (parity bits are then set from their frame's 8 data bits, never sampled), 1 codec stream.
        decompress_output: run model_output_decompress on the new bits into `.output`.
        use_cache: a key/value cache in the global transformer, one global step per completed patch
        (False recomputes the full forward for every bit; same results, for reference/benchmarks).
        When the context would exceed block_size it restarts from its last 3/4 of whole patches.
        Returns a Generation. Raises ValueError for bad arguments, CodecError when decompress_output
        and the new bits are not a valid stream."""
        if isinstance(n_bits, bool) or not isinstance(n_bits, int) or n_bits < 0:
            raise ValueError(f"n_bits must be an int ≥ 0, got {n_bits!r}")
        if not isinstance(temperature, (int, float)) or not temperature >= 0 or math.isinf(temperature):
            raise ValueError(f"temperature must be a finite number ≥ 0, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be None or an int ≥ 1, got {top_k!r}")
        if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")
        if not isinstance(stream_type, int) or isinstance(stream_type, bool):
            raise ValueError(f"stream_type must be an int, got {stream_type!r}")
        if not isinstance(prompt_bits, torch.Tensor):
            raise ValueError(f"prompt_bits must be a 1-D torch.Tensor of 0/1, got {type(prompt_bits).__name__}")
        if prompt_bits.dim() == 2 and prompt_bits.size(0) == 1:
            prompt_bits = prompt_bits[0]
        if prompt_bits.dim() != 1:
            raise ValueError(f"prompt_bits must be 1-D, got shape {tuple(prompt_bits.shape)}")
        if prompt_bits.is_floating_point() or not ((prompt_bits == 0) | (prompt_bits == 1)).all():
            raise ValueError("prompt_bits must hold only the values 0 and 1 (bool or integer dtype)")
        stream = self._stream_ids(stream_type, 1)
        set_parity = self.config.parity and stream_type == 0
        gen = torch.Generator()
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)
        seq = prompt_bits.long().tolist()
        decoder = _BitDecoder(self, stream, use_cache)
        p = self.config.patch_size
        new, probs, parity_set = [], [], 0
        was_training = self.training
        self.eval()
        try:
            for _ in range(n_bits):
                lp0, lp1 = decoder.next_logprobs(seq)
                t = len(seq)
                if set_parity and t % p == PARITY_OFFSET:
                    bit = int(parity_of(torch.tensor(seq[t - PARITY_OFFSET:t])))
                    parity_set += 1
                else:
                    bit = _sample_bit(lp0, lp1, temperature, top_k, top_p, gen)
                seq.append(bit)
                new.append(bit)
                probs.append(math.exp(lp1))
        finally:
            self.train(was_training)
        bits = torch.tensor(new, dtype=torch.uint8)
        output = model_output_decompress(bits) if decompress_output else None
        return Generation(bits=bits, probs=torch.tensor(probs, dtype=torch.float32), parity_set=parity_set, output=output)

    def bit_decoder(self, stream_type: int = 0, lanes: int = 1) -> "_BitDecoder":
        """The KV-cached incremental next-bit predictor that `generate` uses, for callers that
        choose the bits themselves (e.g. an arithmetic coder: the same calls on the same bits give
        bit-identical probabilities at encode and decode time).

        Returns a decoder whose `next_logprobs(seq)` gives (log P(0), log P(1)) of the bit after the
        list of ints `seq`, and whose `next_logprobs_lanes(seqs)` does so for `lanes` independent
        sequences of equal length in one batched step; sequences must only grow between calls.
        Call it in eval mode under torch.no_grad(). Raises ValueError for a bad stream_type or lanes."""
        if not isinstance(stream_type, int) or isinstance(stream_type, bool):
            raise ValueError(f"stream_type must be an int, got {stream_type!r}")
        if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be an int ≥ 1, got {lanes!r}")
        return _BitDecoder(self, self._stream_ids(stream_type, lanes), use_cache=True)

    # ------------------------------------------------------------------------------- saving / loading

    def _save_pretrained(self, save_directory: Path) -> None:
        """Write model.safetensors and config.json atomically (temp file, then os.replace)."""
        def atomic(name: str, write) -> None:
            tmp = save_directory / f".{name}.{uuid.uuid4().hex}.tmp"  # unique: concurrent saves never share it
            try:
                # safetensors writes owner-only (0600) files; give ours the permissions the user's umask
                # gives any new file, read from a file created the ordinary way.
                tmp.touch(exist_ok=False)
                mode = tmp.stat().st_mode & 0o777
                write(tmp)
                os.chmod(tmp, mode)
                os.replace(tmp, save_directory / name)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        atomic(constants.SAFETENSORS_SINGLE_FILE, lambda f: save_model(self, f))
        atomic(constants.CONFIG_NAME, lambda f: Path(f).write_text(json.dumps(asdict(self.config), indent=2, sort_keys=True)))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> "BitTransformerLM":
        """Load a checkpoint written by save_pretrained: a local folder or a Hub model id.

        Reads config.json and model.safetensors only (never a pickle). Returns the model in eval mode.
        Raises FileNotFoundError naming a missing file, ValueError naming the file that is not
        valid JSON, not a BitLM config, or not matching weights."""
        path = Path(pretrained_model_name_or_path)
        if path.is_dir():
            config_file = path / constants.CONFIG_NAME
            if not config_file.is_file():
                raise FileNotFoundError(f"{config_file} not found: not a BitLM checkpoint folder "
                                        f"(save_pretrained writes config.json and model.safetensors)")
            read_config(config_file)
            weights = path / constants.SAFETENSORS_SINGLE_FILE
            if not weights.is_file():
                raise FileNotFoundError(f"{weights} not found: the checkpoint has no weights")
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | Path | None, force_download: bool,
                         local_files_only: bool, token: str | bool | None, map_location: str = "cpu",
                         strict: bool = True, **model_kwargs) -> "BitTransformerLM":
        if "config" not in model_kwargs:
            raise ValueError(f"{model_id}: no {constants.CONFIG_NAME} found; not a BitLM checkpoint")
        if os.path.isdir(model_id):
            model_file = os.path.join(model_id, constants.SAFETENSORS_SINGLE_FILE)
        else:   # only the safetensors file: no fallback to pickled pytorch_model.bin
            model_file = hf_hub_download(repo_id=model_id, filename=constants.SAFETENSORS_SINGLE_FILE, revision=revision,
                                         cache_dir=cache_dir, force_download=force_download, token=token,
                                         local_files_only=local_files_only)
        model = cls(**model_kwargs)
        try:
            load_model(model, model_file, strict=strict, device=map_location)
        except (SafetensorError, RuntimeError, OSError) as e:
            raise ValueError(f"{model_file} does not hold weights for this BitLM config "
                             f"(corrupted, or a different model): {e}") from e
        return model.eval()


def read_config(path: str | Path) -> BitLMConfig:
    """Read and validate a config.json written by save_pretrained.

    Returns the BitLMConfig. Raises ValueError naming the file when it is not UTF-8 JSON, not an
    object, has keys BitLMConfig does not know, or holds invalid values; OSError if unreadable."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return BitLMConfig.from_dict(data)
    except (UnicodeDecodeError, ValueError, TypeError) as e:
        raise ValueError(f"{path} is not a BitLM config.json: {e}") from e


def _sample_bit(lp0: float, lp1: float, temperature: float, top_k: int | None, top_p: float | None,
                gen: torch.Generator) -> int:
    """Sample a bit from its 2-way log-probs. top_k ≥ 2 keeps both bits; top_p keeps the likelier
    bit alone once its probability reaches top_p (the smallest set with that much mass)."""
    if temperature == 0 or top_k == 1:
        return int(lp1 > lp0)
    d = max(min((lp1 - lp0) / temperature, 700.0), -700.0)
    q1 = 1.0 / (1.0 + math.exp(-d))
    if top_p is not None and max(q1, 1.0 - q1) >= top_p:
        return int(q1 > 0.5)
    return int(torch.rand(1, generator=gen).item() < q1)


class _BitDecoder:
    """Next-bit log-probs of B growing bit sequences ("lanes", stepped together) for generation
    and the neural codec.

    The context window starts at a patch boundary (`start`); when the current patch's slot would
    pass the last position embedding, the window restarts from its last 3/4 of whole patches. With
    the cache, the global transformer runs once per completed patch (a prefill after each restart);
    the factorized local model then reads all of the patch's bit conditionals from one table, the
    transformer local model reruns over the ≤ p bits seen so far in the patch. Without the cache,
    every bit recomputes the full forward over the window (the reference the cache must match).
    Lanes never see each other: they only share the batched matrix products of each step."""

    def __init__(self, model: BitTransformerLM, stream: torch.Tensor, use_cache: bool) -> None:
        self.m, self.stream, self.use_cache = model, stream, use_cache     # stream: (B,)
        self.p, self.n_slots = model.config.patch_size, model.config.n_patches
        self.keep = 3 * self.n_slots // 4
        self.parity_rows = (stream == 0) & model.config.parity
        self.start = 0
        self.caches: list[_KVCache] | None = None
        self.slot = -1                       # window slot whose state is held
        self.h: torch.Tensor | None = None   # (B, 1, C) that slot's global state
        self.table: np.ndarray | None = None

    def _patterns(self, seqs: list[list[int]], lo: int, hi: int) -> torch.Tensor:
        b = torch.tensor([seq[lo:hi] for seq in seqs], dtype=torch.long, device=self.m._device)
        return (b.view(len(seqs), -1, self.p) * self.m.bit_weights).sum(-1)  # (B, m)

    def _advance(self, seqs: list[list[int]], j: int, w: int) -> None:
        """Bring the cached global state to window slot w (patch j)."""
        p = self.p
        if self.caches is None or self.slot > w:
            self.caches = [_KVCache(self.n_slots) for _ in self.m.blocks]
            x = self.m._embed(self._patterns(seqs, self.start * p, j * p), 0, self.stream, with_bos=True)
        else:
            x = self.m._embed(self._patterns(seqs, (j - 1) * p, j * p), w, self.stream, with_bos=False)
        self.h = self.m._run_global(x, self.caches)[:, -1:]
        self.slot = w
        if self.m.config.local == "factorized":
            lp = self.m._pattern_logprobs(self.h, self.parity_rows)[:, 0]    # (B, 2^p)
            self.table = _bit_conditionals(lp, p).cpu().numpy()             # (B, 2^p - 1, 2); few rows get read

    def next_logprobs(self, seq: list[int]) -> tuple[float, float]:
        """(log P(0), log P(1)) of the bit after seq (a decoder of one lane)."""
        return self.next_logprobs_lanes([seq])[0]

    def next_logprobs_lanes(self, seqs: list[list[int]]) -> list[tuple[float, float]]:
        """(log P(0), log P(1)) of the bit after each lane's sequence; all have the same length."""
        p, t = self.p, len(seqs[0])
        j, off = divmod(t, p)
        if j - self.start >= self.n_slots:
            self.start, self.caches = j - self.keep, None
        w = j - self.start
        if not self.use_cache:
            window = torch.tensor([seq[self.start * p:] + [0] for seq in seqs], device=self.m._device)
            logits, _ = self.m._forward(window, self.stream, telemetry=False, return_attention=False)
            return [tuple(row) for row in logits[:, -1].tolist()]
        if self.caches is None or self.slot != w:
            self._advance(seqs, j, w)
        if self.m.config.local == "factorized":
            row = (1 << off) - 1
            return [tuple(table[row + _prefix_value(seq, j * p, t)].tolist()) for table, seq in zip(self.table, seqs)]
        bp = torch.tensor([seq[j * p:t] + [0] for seq in seqs], device=self.m._device).view(len(seqs), 1, -1)
        return [tuple(row) for row in self.m._local_logprobs(self.h, bp, self.parity_rows)[:, 0, off].tolist()]


def _prefix_value(seq: list[int], lo: int, hi: int) -> int:
    """The bits seq[lo:hi] as an MSB-first integer (0 for none)."""
    v = 0
    for bit in seq[lo:hi]:
        v = 2 * v + bit
    return v
