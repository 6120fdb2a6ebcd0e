"""Held-out evaluation: a model's bits per byte beside classic compressors on the same bytes,
and the word-level check of generated text.

`evaluate_model` scores every byte of a text exactly once. By default it uses consecutive,
non-overlapping windows of the model's block size (each window starts with an empty context,
so this overstates the loss of a model that could see the preceding text; it is what
training's validation reports). With `stride_bits` the windows slide: after the first
window, each window ends `stride_bits` later and scores only its bytes not scored before, so
every byte past the first window is predicted with at least block - stride bits of context
(stride = half the block: at least half a block), at block / stride times the cost.
`classic_bits_per_byte` gives zlib -9, bz2 -9 and lzma -9e on the same bytes.
`vocabulary` and `word_share` measure how much of a text is made of words of a reference text
(alphabetic runs, case-folded).

    python -m bitlm.cli.evaluate runs/x --corpus pydoc --max-bytes 100000 --stride 576
"""
from __future__ import annotations

import bz2
import lzma
import math
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from bitlm.bits.frames import bytes_to_bits, frame_bits
from bitlm.train.data import BitDataset
from bitlm.model.transformer import BitTransformerLM

WORD = re.compile(r"[A-Za-z]+")


def _sliding_windows(raw: bytes, window: int, stride: int, parity: bool,
                     batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Windows of `window` bytes ending at window, window + stride, ... (the last at the end of
    `raw`), each with a mask of the bits it scores: all of the first window, then the bytes past
    the previous window's end. Yields ((B, T) bits, (B, T) bool mask or None for all)."""
    if len(raw) <= window:
        yield bytes_to_bits(raw, parity=parity).unsqueeze(0), None
        return
    ends = torch.tensor(list(range(window, len(raw), stride)) + [len(raw)])         # (W,)
    scored_from = torch.cat([torch.zeros(1, dtype=ends.dtype), ends[:-1]])          # (W,) previous end
    data = torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy())              # (N,)
    frame = frame_bits(parity)
    positions = torch.arange(window * frame)                                         # (T,)
    for i in range(0, len(ends), batch_size):
        start = ends[i:i + batch_size] - window                                      # (B,)
        windows = data[start[:, None] + torch.arange(window)]                        # (B, window)
        bits = bytes_to_bits(windows.numpy().tobytes(), parity=parity).view(len(start), -1)
        first_scored = (scored_from[i:i + batch_size] - start) * frame               # (B,) in bits
        yield bits, positions >= first_scored[:, None]


def evaluate_model(model: BitTransformerLM, data: str | bytes, batch_size: int = 8,
                   block_bits: int | None = None, stride_bits: int | None = None) -> dict:
    """Next-bit metrics of `model` on `data`, every byte scored exactly once.

    Takes: the model, text (UTF-8 encoded) or bytes, windows per forward, the window
    length in bits (default: the model's block size, rounded down to whole frames), and
    the stride in bits (rounded down to whole frames; default None: non-overlapping
    windows, as training's validation). With a stride every byte after the first window is
    scored with at least window - stride bits of context (see the module docstring).
    Returns: `bits_per_byte` (cross-entropy summed over the 8 data bits of each byte,
    per byte), `parity_loss` (bits per parity bit; NaN without parity framing),
    `accuracy` (argmax-correct next bits, scored positions), `loss` (bits per bit, scored
    positions), `n_bytes`, `n_bits` (scored).
    Raises: `ValueError` for empty data, or a stride shorter than one frame or longer than
    the window.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if not raw:
        raise ValueError("nothing to evaluate: the text is empty")
    parity = model.config.parity
    frame = frame_bits(parity)
    block_bits = block_bits or model.config.block_size
    if stride_bits is None:
        batches = ((bits, None) for bits in BitDataset([raw], parity=parity).iter_windows(block_bits, batch_size))
    else:
        window, stride = block_bits // frame, stride_bits // frame
        if not 1 <= stride <= window:
            raise ValueError(f"stride_bits={stride_bits} must hold between one {frame}-bit frame and the "
                             f"window ({window * frame} bits); half the window is the usual choice")
        batches = _sliding_windows(raw, window, stride, parity, batch_size)
    totals = dict(nll=0.0, data_nll=0.0, parity_nll=0.0, bits=0.0, correct=0.0, bytes=0.0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for bits, mask in batches:
                stats = model.loss(bits, mask=mask)
                totals["nll"] += stats.nll_bits.sum().item()
                totals["data_nll"] += stats.data_nll_bits.sum().item()
                totals["parity_nll"] += stats.parity_nll_bits.sum().item()
                totals["bits"] += stats.n_bits.sum().item()
                totals["correct"] += stats.correct.sum().item()
                totals["bytes"] += stats.n_bytes.sum().item()
    finally:
        model.train(was_training)
    return {"bits_per_byte": totals["data_nll"] / totals["bytes"],
            "parity_loss": totals["parity_nll"] / totals["bytes"] if parity else math.nan,
            "accuracy": totals["correct"] / totals["bits"], "loss": totals["nll"] / totals["bits"],
            "n_bytes": int(totals["bytes"]), "n_bits": int(totals["bits"])}


def can_slide(model: BitTransformerLM) -> bool:
    """Whether the model reads a stream of any length with its attention window sliding (v2: ALiBi positions
    and the factorized local model); a v1 model (learned positions) reads one block at most."""
    return model.config.pos != "learned" and model.config.local == "factorized"


def sliding_logprobs(model: BitTransformerLM, bits: torch.Tensor, stream_type: int = 0) -> torch.Tensor:
    """Per-bit log-probabilities of `model` reading rows of bits of any length, its attention window sliding
    (no block boundaries: every patch after the first window has a full window of context), stepped in
    batched chunks of one window with a rolling KV cache, as generation and the neural codec read.

    Takes: a v2 model (`can_slide`), bits (B, T) or (T,) 0/1 (T need not be whole patches: the last patch is
    padded with zeros, which no real bit's prediction sees), and the stream type (0 raw bits, 1 a compressed
    stream). Returns: (B, T, 2) float log-probabilities (a (T, 2) for 1-D bits), [t] predicting bit t from
    the bits before it. Raises: `ValueError` for no bits or a model that cannot slide."""
    from bitlm.model.layers import KVCache, bit_conditionals, gather_bits

    if not can_slide(model):
        raise ValueError("sliding needs a v2 model (ALiBi positions, factorized local model); this one reads one "
                         f"block of {model.config.block_size} bits at most")
    one = bits.dim() == 1
    bits = bits[None] if one else bits
    B, T = bits.shape
    if T == 0:
        raise ValueError("no bits to read")
    c = model.config
    p = c.patch_size
    n = -(-T // p)
    bp = torch.zeros(B, n * p, dtype=torch.long)
    bp[:, :T] = bits.long()
    bp = bp.view(B, n, p)                                                                          # (B, n, p)
    patterns = (bp * model.bit_weights).sum(-1)                                                    # (B, n)
    stream = torch.full((B,), stream_type, dtype=torch.long)
    parity_rows = (stream == 0) & c.parity
    out = torch.empty(B, n, p, 2)
    cache = KVCache(c.n_layer, c.window)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            weights = model.step_weights()
            for lo in range(0, n, c.window):
                hi = min(lo + c.window, n)                                # slots [lo, hi) predict patches lo..hi-1
                x = model._embed(patterns[:, max(lo - 1, 0):hi - 1], lo, stream, with_bos=lo == 0)
                h = model._global_step(x, cache, weights)                 # (B, m, C)
                lp = bit_conditionals(model._pattern_logprobs(h, parity_rows), p)
                out[:, lo:hi] = gather_bits(lp, patterns[:, lo:hi], p)    # (B, m, p, 2)
    finally:
        model.train(was_training)
    out = out.flatten(1, 2)[:, :T]                                                                 # (B, T, 2)
    return out[0] if one else out


def stream_logprobs(model: BitTransformerLM, data: str | bytes, lanes: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bit log-probabilities of `model` reading `data` as a stream, its attention window sliding
    over it (`sliding_logprobs`): what generation and the neural codec see.

    Takes: a v2 model (sliding positions, factorized local model), text or bytes, and the number of
    lanes: the data is cut into that many contiguous pieces of whole bytes, each read from its own
    start (a cold start per lane, as in the codec), stepped together.
    Returns: bits (B, L·frame) int64 0/1, log-probs (B, L·frame, 2) of each bit given everything
    before it in its lane, and real (B, L) bool marking bytes of data (the last lane is padded).
    Raises: `ValueError` for empty data, a learned-position (v1) model, which cannot slide, or the
    transformer local model."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if not raw:
        raise ValueError("nothing to evaluate: the text is empty")
    if not can_slide(model):
        raise ValueError("streaming evaluation needs a sliding-window model with the factorized local model; "
                         "use evaluate_model (windows) for this one")
    if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
        raise ValueError(f"lanes must be an int ≥ 1, got {lanes!r}")
    c = model.config
    lanes = min(lanes, len(raw))
    per_lane = -(-len(raw) // lanes)
    pieces = [raw[i * per_lane:(i + 1) * per_lane] for i in range(lanes)]
    real = torch.tensor([[j < len(piece) for j in range(per_lane)] for piece in pieces])           # (B, L) bytes
    bits = bytes_to_bits(b"".join(piece.ljust(per_lane, b" ") for piece in pieces), parity=c.parity)
    bits = bits.view(lanes, -1).long()                                                             # (B, L·frame)
    return bits, sliding_logprobs(model, bits), real


def evaluate_stream(model: BitTransformerLM, data: str | bytes, lanes: int = 16) -> dict:
    """Bits per byte of `model` reading `data` as a stream (see `stream_logprobs`).

    Returns: `bits_per_byte` (the 8 data bits of every byte), `parity_loss` (bits per parity bit;
    NaN without parity framing), `n_bytes`. Raises: as `stream_logprobs`."""
    bits, logp, real = stream_logprobs(model, data, lanes)
    frame = frame_bits(model.config.parity)
    ce = -logp.gather(-1, bits.unsqueeze(-1)).squeeze(-1) / math.log(2)                            # (B, L·frame)
    ce = ce.view(*real.shape, frame) * real.unsqueeze(-1)
    n_bytes = int(real.sum())
    return {"bits_per_byte": ce[..., :8].sum().item() / n_bytes,
            "parity_loss": ce[..., 8:].sum().item() / n_bytes if model.config.parity else math.nan,
            "n_bytes": n_bytes}


def gate_windows(model: BitTransformerLM, texts: Sequence[str], windows: Sequence[int], lanes: int = 16) -> dict:
    """K, C and S (`bitlm.generate.gate`) of consecutive windows of the texts as the model streams them, for
    each window size: {window: bitlm.generate.gate.Calibration}. Windows never cross a lane.
    Raises: as `stream_logprobs`."""
    from bitlm.generate.gate import METRICS, Calibration, window_values

    bits, logp, real = stream_logprobs(model, "".join(texts), lanes)
    frame = frame_bits(model.config.parity)
    probs = logp[..., 1].exp()                                                             # (B, L·frame)
    out = {w: Calibration(w, {m: [] for m in METRICS}) for w in windows}
    for lane in range(bits.size(0)):
        n = int(real[lane].sum()) * frame
        b, p = bits[lane, :n].numpy(), probs[lane, :n].double().numpy()
        for w in windows:
            cal = window_values(b, p, w, frame)
            for m in METRICS:
                out[w].values[m] += cal.values[m]
    return out


def words(text: str) -> list[str]:
    """The alphabetic words of `text` (maximal runs of A-Z / a-z), case-folded, in order."""
    return [w.casefold() for w in WORD.findall(text)]


def vocabulary(texts: Iterable[str]) -> set[str]:
    """Every case-folded alphabetic word (see `words`) of the texts."""
    return {w for text in texts for w in words(text)}


def word_share(text: str, vocab: set[str]) -> dict:
    """How many of the words of `text` (see `words`) are in `vocab` (case-folded words).

    Returns: `words` (count), `known` (count in `vocab`), `share` (known / words, NaN when
    the text has no word).
    """
    found = words(text)
    known = sum(w in vocab for w in found)
    return {"words": len(found), "known": known, "share": known / len(found) if found else math.nan}


def classic_bits_per_byte(data: bytes) -> dict[str, float]:
    """Bits per byte (8 x compressed size / original size) of zlib -9, bz2 -9 and lzma -9e.

    Raises: `ValueError` for empty data.
    """
    if not data:
        raise ValueError("nothing to compress: the data is empty")
    sizes = {"zlib -9": len(zlib.compress(data, 9)),
             "bz2 -9": len(bz2.compress(data, 9)),
             "lzma -9e": len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))}
    return {name: 8 * size / len(data) for name, size in sizes.items()}
