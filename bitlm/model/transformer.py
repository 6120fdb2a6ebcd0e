"""BitTransformerLM: the bit-level language model, its losses, compressed forward, generation API and files.

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

Positions: ALiBi over a sliding window of `attn_window` slots (see `bitlm.model.layers`), so generation and
the neural codec roll their KV cache and never re-read; v1 checkpoints with learned absolute
position embeddings (`pos="learned"`) still load and run. Incremental prediction and sampling live in
`bitlm.generate.decoder`, the attention blocks and cache in `bitlm.model.layers`, the hyper-parameters in
`bitlm.model.config`.
"""
import json
import math
import os
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin, constants, hf_hub_download
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from bitlm.bits.frames import parity_of
from bitlm.bits.codec import DEFAULT_MAX_BITS, CodecError, decompress_bits, stream_info
from bitlm.model.config import BitLMConfig, read_config
from bitlm.model.layers import (
    PARITY_MASK, PARITY_OFFSET, AttentionProbe, Block, KVCache, alibi_slopes, attention_bias,
    bit_conditionals as _bit_conditionals, gather_bits as _gather_bits,
)
from bitlm.model.telemetry import LN2, Telemetry, compute_telemetry, lz_complexity, negentropy

if TYPE_CHECKING:   # generation sits a layer above the model: see `generate` for the one upward import
    from bitlm.generate.decoder import BitDecoder, Generation
    from bitlm.generate.draft import NGramDraft
    from bitlm.generate.gate import GateConfig

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


def model_output_decompress(output_bits: torch.Tensor, max_bits: int = DEFAULT_MAX_BITS) -> torch.Tensor:
    """Decompress a bit stream the model produced (a codec stream, e.g. generated with stream_type=1).

    Returns the decompressed 1-D uint8 bits. Raises CodecError saying the output is not a valid
    compressed stream (with the codec's reason) and what to do instead."""
    try:
        return decompress_bits(output_bits, max_bits=max_bits)
    except CodecError as e:
        raise CodecError(f"the model's output is not a valid compressed stream ({e}); generate raw bits "
                         f"(decompress_output=False) or use a model trained to write codec streams") from e


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
        if c.pos == "learned":
            self.pos_emb = nn.Embedding(c.n_patches, c.n_embd)
            self.slopes = None
        else:
            self.register_buffer("slopes", alibi_slopes(c.n_head), persistent=False)
        self._bias_cache: dict = {}
        self._step_weights: tuple | None = None      # (weights' versions, step_weights()), see step_weights
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
        return self.patch_emb.weight.device

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
        x = x + self.stream_emb(stream).unsqueeze(1)
        if self.config.pos == "learned":
            x = x + self.pos_emb(torch.arange(start, start + x.size(1), device=x.device))
        return self.drop(x)

    def _bias(self, n: int) -> torch.Tensor | None:
        """(H, n, n) ALiBi + window bias of an n-slot forward from slot 0 (None: plain causal)."""
        if self.slopes is None:
            return None
        key = (n, self.slopes.device)
        if key not in self._bias_cache:
            if len(self._bias_cache) > 8:
                self._bias_cache.clear()
            pos = torch.arange(n, device=self.slopes.device)
            self._bias_cache[key] = attention_bias(pos, pos, self.slopes, self.config.window)
        return self._bias_cache[key]

    def _global(self, patterns: torch.Tensor, stream: torch.Tensor, probe: AttentionProbe | None = None) -> torch.Tensor:
        """(B, n) patterns -> (B, n, C) states; slot j has seen patches < j only."""
        x = self._embed(patterns[:, :-1], 0, stream, with_bos=True)
        bias = self._bias(x.size(1))
        for block in self.blocks:
            x = block(x, bias, self.slopes, probe=probe)
        return self.ln_f(x)

    def step_weights(self) -> list[tuple[torch.Tensor, ...]]:
        """Each block's `step_weights()`, for `_global_step` (a decoder takes them once). One copy per
        model, shared by every decoder (visitors generating at once, gate retries) and taken again
        only when a weight changed since (tensor version counters and addresses: training, `to()`,
        `load_state_dict`; writes through `.data` bypass the counters and are not seen). Callers must
        not write to it."""
        key = tuple((t._version, t.data_ptr()) for block in self.blocks for t in block.parameters())
        cached = self._step_weights
        if cached is None or cached[0] != key:
            cached = self._step_weights = (key, [block.step_weights() for block in self.blocks])
        return cached[1]

    def _global_step(self, x: torch.Tensor, cache: KVCache, weights: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        """(B, m, C) inputs of the next m slots -> (B, m, C) states, attending to the cached slots
        within the window; the new slots join the cache. `weights`: `step_weights()`. Inference only
        (eval mode, no grad)."""
        q_pos, k_pos = cache.begin(x.size(1))
        slopes = self.slopes if self.slopes is not None else torch.zeros(1, device=x.device)
        bias = attention_bias(q_pos.to(x.device), k_pos.to(x.device), slopes, cache.window)
        for i, (block, w) in enumerate(zip(self.blocks, weights)):
            x = block.step(x, bias, cache, i, w)
        cache.commit()
        return self.ln_f(x)

    # ------------------------------------------------------------------------------- local models

    def _pattern_logprobs(self, h: torch.Tensor, parity_rows: torch.Tensor) -> torch.Tensor:
        """Factorized local: (B, n, C) states -> (B, n, 2^p) pattern log-probs, wrong-parity patterns
        penalised in parity-framed rows. The head runs in float32 even under bf16 autocast: bf16 logits
        (3 significant digits) would blur the probabilities that the loss and the codec read."""
        with torch.autocast(h.device.type, enabled=False):
            logits = F.linear(h.float(), self.head.weight.float())
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
        telemetry: also compute K/C/S (`bitlm.model.telemetry`). K, K_pred, S, p and entropy cover the
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
            probe = AttentionProbe(slice(None) if return_attention else slice(first, first + 1),
                                    return_attention, slot_mask, self.config.window)
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

    def generate(self, prompt_bits: torch.Tensor, n_bits: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, stream_type: int = 0,
                 decompress_output: bool = False, use_cache: bool = True, gate: "GateConfig | None" = None,
                 draft: "NGramDraft | None" = None) -> "Generation":
        """Sample n_bits new bits after prompt_bits.

        prompt_bits: 1-D 0/1 tensor (may be empty, may end mid-patch, may be longer than the window:
        it is read in full). temperature: scales each bit's 2-way logits; 0 is greedy. top_k: 1 is
        greedy, ≥ 2 keeps both bits. top_p: the more likely bit alone when its probability is ≥ top_p,
        else both. seed: makes sampling reproducible. stream_type: 0 raw bits (parity bits are then
        set from their frame's 8 data bits, never sampled), 1 codec stream.
        decompress_output: run model_output_decompress on the new bits into `.output`.
        use_cache: one cached global step per completed patch (False recomputes the full forward for
        every bit; same results, for reference/benchmarks).
        gate: a `bitlm.generate.gate.GateConfig` checking K/C/S over the last window of output against
        calibrated floors (warn, retry or stop; see `bitlm.generate.gate`); None or mode "off": no gate.
        draft: a `bitlm.generate.draft.NGramDraft` whose guesses let one cached step settle several patches
        (speculation; the same bits for the same seed, only faster when the guesses come true).
        Returns a Generation. Raises ValueError for bad arguments, CodecError when decompress_output
        and the new bits are not a valid stream."""
        # The sampling machinery (`bitlm.generate`) reads the model only through its methods, so it sits a layer
        # above; these three front doors import it when called: the package's one upward import, allowed by name
        # in tests/test_layout.py.
        from bitlm.generate.decoder import generate_stream
        *_, result = generate_stream(self, prompt_bits, n_bits, temperature, top_k, top_p, seed, stream_type, use_cache,
                                     gate=gate, draft=draft)
        if decompress_output:
            result.output = model_output_decompress(result.bits)
        return result

    def generate_stream(self, prompt_bits: torch.Tensor, n_bits: int, temperature: float = 1.0,
                        top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                        stream_type: int = 0, chunk_bits: int = 72, gate: "GateConfig | None" = None,
                        draft: "NGramDraft | None" = None) -> "Iterator[Generation]":
        """`generate` as it goes: yields the cumulative Generation (new bits and probabilities so far)
        every chunk_bits new bits, the last yield complete (bit-identical to `generate` with the same
        seed). Closing the iterator stops the generation. With a gate, a retry can make a yield
        shorter than the one before. Raises ValueError for bad arguments (on the first next())."""
        from bitlm.generate.decoder import generate_stream
        return generate_stream(self, prompt_bits, n_bits, temperature, top_k, top_p, seed, stream_type,
                               chunk_bits=chunk_bits, gate=gate, draft=draft)

    def bit_decoder(self, stream_type: int = 0, lanes: int = 1) -> "BitDecoder":
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
        from bitlm.generate.decoder import BitDecoder
        return BitDecoder(self, self._stream_ids(stream_type, lanes), use_cache=True)

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
        def file(name: str) -> str:     # only these two files: no fallback to a pickled pytorch_model.bin
            if os.path.isdir(model_id):
                return os.path.join(model_id, name)
            return hf_hub_download(repo_id=model_id, filename=name, revision=revision, cache_dir=cache_dir,
                                   force_download=force_download, token=token, local_files_only=local_files_only)
        model_file = file(constants.SAFETENSORS_SINGLE_FILE)
        # the mixin builds the config without BitLMConfig.from_dict, which reads v1 files (no `pos`) right
        model_kwargs["config"] = read_config(file(constants.CONFIG_NAME))
        model = cls(**model_kwargs)
        try:
            load_model(model, model_file, strict=strict, device=map_location)
        except (SafetensorError, RuntimeError, OSError) as e:
            raise ValueError(f"{model_file} does not hold weights for this BitLM config "
                             f"(corrupted, or a different model): {e}") from e
        return model.eval()
