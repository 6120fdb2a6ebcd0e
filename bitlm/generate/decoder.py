"""Incremental prediction and sampling: the cached next-bit predictor (`BitDecoder`) that generation
and the neural codec share, and the sampling loop behind `BitTransformerLM.generate`.

The global transformer runs once per completed patch, on one new slot, against a rolling KV cache
of the last `attn_window` slots (`bitlm.model.layers.KVCache`); the factorized local model then reads
all of the patch's bit conditionals from one (2^p - 1, 2) table, the transformer local model reruns
over the ≤ p bits seen so far in the patch. A v1 checkpoint (learned positions, `pos="learned"`)
cannot slide: at the end of its position table the context restarts from its last 3/4 of whole
patches and re-reads them. Without the cache, every bit recomputes the full forward over the whole
sequence (the reference the cache must match). Lanes (B sequences stepped together) never see each
other: they only share the batched matrix products of each step.

Speculation (with a `bitlm.generate.draft.NGramDraft`). At batch 1 a step is bound by reading the weights
and the cache (~21 MB a step for the shipped model), so a step over 1 + k slots costs little more
than one over 1. After patch j - 1 is sampled, the step takes it and k guessed patches, giving the
states of slots j..j + k; slot j + i is right exactly when the i guesses before it came true. The
sampler reads slot j as usual, samples patch j bit by bit with the same random numbers as without a
draft, and moves to slot j + 1 only if patch j equals its guess; at the first wrong guess the cache
forgets the slots that read it (`KVCache.rollback`) and the next step starts from the true patch.
Every probability the sampler reads therefore comes from the true context: the bits are those of
plain generation with the same seed (the probabilities agree within float rounding: a batched
product sums in another order), and only the count of steps changes.
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from bitlm.bits.frames import frame_bits
from bitlm.generate.draft import NGramDraft
from bitlm.generate.gate import Gate, GateConfig, GateEvent
from bitlm.model.layers import PARITY_OFFSET, KVCache, bit_conditionals

if TYPE_CHECKING:
    from bitlm.model.transformer import BitTransformerLM

# Guessed patches a speculative step checks after the true one: 3 to 5 generate at the same speed on the
# 195-minute v2 model (799 / 798 / 789 bytes/s, one thread, the other core training), 6 and 8 slower
# (779 / 646): a wrong guess wastes its slots.
LOOKAHEAD = 4


@dataclass
class Generation:
    """Result of `BitTransformerLM.generate` (and each yield of `generate_stream`).

    bits: the new bits only, 1-D uint8. probs: the model's P(bit=1) at each new position (before
    temperature/top-k/top-p), float32. parity_set: parity bits set from their frame's data bits
    instead of sampled. output: model_output_decompress(bits) when asked for, else None.
    gate_events: what the gate saw and did (`bitlm.generate.gate.GateEvent`s); gate_stopped: it ended the
    generation early (`bitlm.generate.gate.describe` puts both in words); gate_trace: (output bytes, K, C, S)
    of each window the gate checked, for a live chart."""
    bits: torch.Tensor
    probs: torch.Tensor
    parity_set: int
    output: torch.Tensor | None = None
    gate_events: list[GateEvent] = field(default_factory=list)
    gate_stopped: bool = False
    gate_trace: list[tuple[int, float, float, float]] = field(default_factory=list)


def check_sampling(n_bits: int, temperature: float, top_k: int | None, top_p: float | None,
                   stream_type: int, prompt_bits: torch.Tensor) -> torch.Tensor:
    """Validate generation arguments; returns the prompt as a 1-D tensor. Raises ValueError naming
    the bad argument."""
    if isinstance(n_bits, bool) or not isinstance(n_bits, int) or n_bits < 0:
        raise ValueError(f"n_bits must be an int ≥ 0, got {n_bits!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0 or math.isinf(temperature):
        raise ValueError(f"temperature must be a finite number ≥ 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int ≥ 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and not isinstance(top_p, bool) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")
    if not isinstance(stream_type, int) or isinstance(stream_type, bool):
        raise ValueError(f"stream_type must be an int, got {stream_type!r}")
    if not isinstance(prompt_bits, torch.Tensor):
        raise ValueError(f"prompt_bits must be a 1-D torch.Tensor of 0/1, got {type(prompt_bits).__name__}")
    if prompt_bits.dim() == 2 and prompt_bits.size(0) == 1:
        prompt_bits = prompt_bits[0]
    if prompt_bits.dim() != 1:
        raise ValueError(f"prompt_bits must be 1-D, got shape {tuple(prompt_bits.shape)}")
    if prompt_bits.is_floating_point() or prompt_bits.is_complex() or not ((prompt_bits == 0) | (prompt_bits == 1)).all():
        raise ValueError("prompt_bits must hold only the values 0 and 1 (bool or integer dtype)")
    return prompt_bits


def sample_bit(lp0: float, lp1: float, temperature: float, top_k: int | None, top_p: float | None,
               rng: random.Random) -> int:
    """Sample a bit from its 2-way log-probs. temperature scales the 2-way logits (0: greedy);
    top_k ≥ 2 keeps both bits (1: greedy); top_p keeps the likelier bit alone once its probability
    reaches top_p (the smallest set with that much mass)."""
    if temperature == 0 or top_k == 1:
        return int(lp1 > lp0)
    d = max(min((lp1 - lp0) / temperature, 700.0), -700.0)
    q1 = 1.0 / (1.0 + math.exp(-d))
    if top_p is not None and max(q1, 1.0 - q1) >= top_p:
        return int(q1 > 0.5)
    return int(rng.random() < q1)


@torch.no_grad()   # on a generator torch enters no_grad at every resume and at close(), in whichever thread
def generate_stream(model: "BitTransformerLM", prompt_bits: torch.Tensor, n_bits: int, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                    stream_type: int = 0, use_cache: bool = True, chunk_bits: int | None = None,
                    gate: GateConfig | None = None, draft: NGramDraft | None = None) -> Iterator[Generation]:
    """Sample n_bits after prompt_bits, yielding the cumulative `Generation` every chunk_bits new bits
    (None: once, at the end) and always once complete. With a `gate` (`bitlm.generate.gate`), the output is
    checked as it grows; a retry rolls the output back (a later yield can be shorter than an earlier
    one) and a stop ends it early. See `BitTransformerLM.generate`."""
    prompt_bits = check_sampling(n_bits, temperature, top_k, top_p, stream_type, prompt_bits)
    if chunk_bits is not None and (isinstance(chunk_bits, bool) or not isinstance(chunk_bits, int) or chunk_bits < 1):
        raise ValueError(f"chunk_bits must be None or an int ≥ 1, got {chunk_bits!r}")
    if gate is not None and not isinstance(gate, GateConfig):
        raise ValueError(f"gate must be a bitlm.generate.gate.GateConfig or None, got {type(gate).__name__}")
    if draft is not None and not isinstance(draft, NGramDraft):
        raise ValueError(f"draft must be a bitlm.generate.draft.NGramDraft or None, got {type(draft).__name__}")
    if draft is not None and draft.parity != model.config.parity:
        raise ValueError(f"the draft was built for {'frames with' if draft.parity else 'bytes without'} a parity bit; "
                         f"this model's bytes have {'one' if model.config.parity else 'none'}")
    if gate is not None and gate.mode != "off" and stream_type != 0:
        raise ValueError("the gate reads text: use it with stream_type 0 only")
    stream = model._stream_ids(stream_type, 1)
    set_parity = model.config.parity and stream_type == 0
    # Python's Mersenne Twister: one call per sampled bit costs ~50 ns, a torch.rand(1) ~2 µs.
    rng = random.Random(seed)
    seq = prompt_bits.long().tolist()
    n_prompt = len(seq)
    decoder = BitDecoder(model, stream, use_cache, draft)
    p = model.config.patch_size
    frame = frame_bits(model.config.parity)
    watch = Gate(gate, frame) if gate is not None and gate.mode != "off" else None
    first_frame = -n_prompt % frame            # output bits before the first whole output byte
    new: list[int] = []
    probs: list[float] = []
    every = chunk_bits or max(n_bits, 1)
    next_yield = every
    stopped = False

    def result() -> Generation:
        parity_set = sum(1 for t in range(n_prompt, len(seq)) if t % p == PARITY_OFFSET) if set_parity else 0
        return Generation(bits=torch.tensor(new, dtype=torch.uint8), probs=torch.tensor(probs, dtype=torch.float32),
                          parity_set=parity_set, gate_events=list(watch.events) if watch else [], gate_stopped=stopped,
                          gate_trace=list(watch.trace) if watch else [])

    was_training = model.training      # models the app shares between visitors are in eval mode: no switch
    model.eval()
    try:
        while len(new) < n_bits:
            lp0, lp1 = decoder.next_logprobs(seq)
            t = len(seq)
            if set_parity and t % p == PARITY_OFFSET:
                bit = sum(seq[t - PARITY_OFFSET:t]) & 1
            else:
                bit = sample_bit(lp0, lp1, temperature, top_k, top_p, rng)
            seq.append(bit)
            new.append(bit)
            probs.append(math.exp(lp1))
            done = len(new) - first_frame
            if watch and done > 0 and done % frame == 0 and watch.due(done // frame):
                n_bytes = done // frame
                hit = watch.check(new[first_frame:], probs[first_frame:], n_bytes)
                if hit is not None:
                    metric, value = hit
                    start = watch.span_start(metric, n_bytes)
                    action = gate.mode
                    if action == "retry" and watch.retries >= gate.max_retries:
                        action = "stop"
                    if action == "warn":
                        watch.record(start, n_bytes, metric, value, "warn")
                    else:       # roll back to the window's start: resample it, or end before it
                        cut = first_frame + start * frame
                        del new[cut:], probs[cut:], seq[n_prompt + cut:]
                        decoder = BitDecoder(model, stream, use_cache, draft)
                        watch.reset(start)
                        if action == "retry":
                            watch.retries += 1
                            temperature = watch.retry_temperature(metric, temperature)
                            rng = random.Random(rng.getrandbits(64))
                            watch.record(start, n_bytes, metric, value, "retry", temperature)
                        else:
                            watch.record(start, n_bytes, metric, value, "stop")
                            stopped = True
                            break
            if len(new) >= next_yield and len(new) < n_bits:
                next_yield = len(new) + every
                model.train(was_training)
                yield result()
                model.eval()
    finally:
        model.train(was_training)
    yield result()


class BitDecoder:
    """Next-bit log-probs of B growing bit sequences ("lanes", stepped together); see the module
    docstring. Sequences must only grow between calls, all lanes by the same bits count."""

    def __init__(self, model: "BitTransformerLM", stream: torch.Tensor, use_cache: bool,
                 draft: NGramDraft | None = None, lookahead: int = LOOKAHEAD) -> None:
        self.m, self.stream, self.use_cache = model, stream, use_cache     # stream: (B,)
        self.p, self.window = model.config.patch_size, model.config.window
        self.sliding = model.config.pos != "learned"
        self.parity_rows = (stream == 0) & model.config.parity
        self.start = 0                       # first patch of the context (moves only on v1 restarts)
        self.cache: KVCache | None = None
        self.slot = -1                       # absolute slot (patch index) whose state is held
        self.h: torch.Tensor | None = None   # (B, 1, C) that slot's state, for the transformer local model
                                             # (which never speculates: guessed slots do not update it)
        self.table: list | None = None       # per lane: (2^p - 1) rows of (log P(0), log P(1))
        self.weights = model.step_weights() if use_cache else None
        # Speculation: one lane of text (a patch is a byte's frame), a cache that slides, the factorized
        # readout (its tables need no rerun); elsewhere the draft is not used.
        speculate = (draft is not None and lookahead > 0 and use_cache and self.sliding and stream.tolist() == [0]
                     and self.p == frame_bits(model.config.parity) and model.config.local == "factorized")
        self.draft, self.lookahead = (draft, min(lookahead, self.window - 1)) if speculate else (None, 0)
        self.first = -1                      # the slot fed the last step's one certain patch
        self.guessed: list[int] = []         # the guessed patches fed to slots first + 1, first + 2, ...
        self.ahead = None                    # (1 + guesses, 2^p - 1, 2) numpy conditionals of those slots

    def _patterns(self, seqs: list[list[int]], lo: int, hi: int) -> torch.Tensor:
        b = torch.tensor([seq[lo:hi] for seq in seqs], dtype=torch.long, device=self.m._device)
        return (b.view(len(seqs), -1, self.p) * self.m.bit_weights).sum(-1)  # (B, m)

    def _take_guess(self, seq: list[int], j: int) -> bool:
        """Slot j from the last step's guesses when the patch they guessed for j - 1 came true; else
        forget the slots from j on (they read a wrong patch) and return False."""
        i = j - self.first
        if not 1 <= i <= len(self.guessed):
            return False
        if _prefix_value(seq, (j - 1) * self.p, j * self.p) == self.guessed[i - 1]:
            self.slot = j
            self.table = [self.ahead[i].tolist()]
            return True
        self.cache.rollback(len(self.guessed) - i + 1)
        self.guessed, self.ahead = [], None
        return False

    def _advance(self, seqs: list[list[int]], j: int) -> None:
        """Bring the cached global state to slot j (the one predicting patch j)."""
        p, m = self.p, self.m
        if self.guessed and self._take_guess(seqs[0], j):
            return
        if self.cache is not None and self.slot == j - 1:        # one cached step
            prev = self._patterns(seqs, (j - 1) * p, j * p)       # (B, 1)
            if self.draft is not None:                            # + guessed patches after it
                known = [_prefix_value(seqs[0], q * p, (q + 1) * p) for q in range(max(0, j - self.draft.max_order), j)]
                self.guessed = self.draft.guess(known, self.lookahead)
                self.first = j
                prev = torch.cat([prev, torch.tensor([self.guessed], dtype=prev.dtype, device=prev.device)], 1)
            h = m._global_step(m._embed(prev, j - self.start, self.stream, with_bos=False), self.cache, self.weights)
        else:                                                     # prefill slots start..j in chunks
            self.cache, self.guessed = KVCache(len(m.blocks), self.window), []
            prev = self._patterns(seqs, self.start * p, j * p)   # (B, j - start)
            chunk = self.window
            for lo in range(0, j - self.start + 1, chunk):
                hi = min(lo + chunk, j - self.start + 1)          # slots [lo, hi) of the context
                x = m._embed(prev[:, max(lo - 1, 0):hi - 1], lo, self.stream, with_bos=lo == 0)
                h = m._global_step(x, self.cache, self.weights)
        self.slot = j
        if self.guessed and self.first == j:                     # slots j, j + 1, ... (one lane)
            self.h = h[:, :1]
            lp = m._pattern_logprobs(h, self.parity_rows)[0]                   # (1 + guesses, 2^p)
            self.ahead = bit_conditionals(lp, p).cpu().numpy()
            self.table = [self.ahead[0].tolist()]
            return
        self.h = h[:, -1:]
        if m.config.local == "factorized":
            lp = m._pattern_logprobs(self.h, self.parity_rows)[:, 0]          # (B, 2^p)
            self.table = bit_conditionals(lp, p).cpu().numpy().tolist()        # few rows get read

    def next_logprobs(self, seq: list[int]) -> tuple[float, float]:
        """(log P(0), log P(1)) of the bit after seq (a decoder of one lane)."""
        return self.next_logprobs_lanes([seq])[0]

    def next_logprobs_lanes(self, seqs: list[list[int]]) -> list[tuple[float, float]]:
        """(log P(0), log P(1)) of the bit after each lane's sequence; all have the same length."""
        p, t = self.p, len(seqs[0])
        j, off = divmod(t, p)
        if not self.sliding and j - self.start >= self.window:   # v1: restart from the last 3/4
            self.start, self.cache = j - 3 * self.window // 4, None
        if not self.use_cache:
            bits = torch.tensor([seq[self.start * p:] + [0] for seq in seqs], device=self.m._device)
            logits, _ = self.m._forward(bits, self.stream, telemetry=False, return_attention=False)
            return [tuple(row) for row in logits[:, -1].tolist()]
        if self.slot != j or self.cache is None:
            self._advance(seqs, j)
        if self.m.config.local == "factorized":
            row = (1 << off) - 1
            return [tuple(table[row + _prefix_value(seq, j * p, t)]) for table, seq in zip(self.table, seqs)]
        bp = torch.tensor([seq[j * p:t] + [0] for seq in seqs], device=self.m._device).view(len(seqs), 1, -1)
        return [tuple(row) for row in self.m._local_logprobs(self.h, bp, self.parity_rows)[:, 0, off].tolist()]


def _prefix_value(seq: list[int], lo: int, hi: int) -> int:
    """The bits seq[lo:hi] as an MSB-first integer (0 for none)."""
    v = 0
    for bit in seq[lo:hi]:
        v = 2 * v + bit
    return v
