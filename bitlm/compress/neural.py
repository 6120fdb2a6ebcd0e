"""Coding with the model: the `neural` and `neural+cm` methods of the container, and the fingerprint
that names the model in their headers.

The input is cut into `neural_lanes(n)` contiguous lanes, each predicted from its own context only;
the encoder runs teacher-forced chunks over all lanes at once, the decoder steps the lanes together,
and both code the bytes step by step (lane 0, 1, …). The exact predictor (`bitlm.compress.exact`)
gives each byte's 256 integer frequencies. `neural` hands them to a range coder, one symbol per byte
(the 256 data patterns; a parity model's parity bit is implied); `neural+cm` hands them to the context
mixer (`bitlm.compress.cm`) as one input among its online models, bit by bit. Encoding with both costs
one pass of the predictor: the frequencies of each chunk feed both coders.
"""
from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict

import constriction
import numpy as np
import torch

from bitlm.compress import cm
from bitlm.compress.exact import EXACT_VERSION, ExactPredictor, tables, tables_digest
from bitlm.compress.lane_state import LaneState
from bitlm.compress.header import DAMAGED, NeuralCodecError
from bitlm.model.transformer import BitTransformerLM

LANE_BYTES, MAX_LANES = 256, 64              # lanes: one per 256 bytes, at most 64
CHUNK_BUDGET = 1 << 22                       # attention scores per teacher-forced chunk (memory bound)
_PROGRESS_EVERY = 256                        # bytes between progress callbacks (8 KiB: ~32 updates)

Progress = Callable[[int, int], None]        # (bytes done, bytes in all)

_fingerprints: "weakref.WeakKeyDictionary[BitTransformerLM, tuple[tuple, bytes]]" = weakref.WeakKeyDictionary()


def model_fingerprint(model: BitTransformerLM) -> bytes:
    """First 8 bytes of sha256 over the model's config JSON and its state dict (names, dtypes,
    shapes, raw bytes, sorted by name). Cached per model; recomputed when any weight changed in
    place since (tensor version counters), e.g. after more training."""
    state = model.state_dict()
    versions = tuple((name, t._version, t.data_ptr()) for name, t in state.items())
    cached = _fingerprints.get(model)
    if cached is not None and cached[0] == versions:
        return cached[1]
    h = hashlib.sha256(json.dumps(asdict(model.config), sort_keys=True).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    fp = h.digest()[:8]
    _fingerprints[model] = (versions, fp)
    return fp


def neural_fingerprint(model: BitTransformerLM, version: int = EXACT_VERSION) -> bytes:
    """2 bytes naming the model for model-coded streams: sha256 over the float model's fingerprint
    (config and weights), the exact path's version and its lookup tables. A file written by an earlier
    version of the exact path names the same model with that version's fingerprint."""
    h = hashlib.sha256(model_fingerprint(model) + bytes([version]))
    h.update(tables_digest({k: v.numpy() for k, v in tables().items()}).encode())
    return h.digest()[:2]


# The neural fingerprints of models shipped in assets/ before the current one, and the commit that
# shipped each: a file one of them compressed decodes only with that model, which its commit still holds.
EARLIER_SHIPPED = {
    "fe5f": ("698a0ff", "BitLM base v2 after 100 minutes, shipped 2026-11-30 01:31"),
    "1e60": ("1ff0b1b", "BitLM base v2 after 195 minutes, shipped 2026-11-30 03:58"),
}


def earlier_model_hint(fingerprint: bytes) -> str:
    """Where to find the earlier shipped model with this neural fingerprint ("" when none is known)."""
    known = EARLIER_SHIPPED.get(fingerprint.hex())
    if known is None:
        return ""
    commit, name = known
    return (f" (model {fingerprint.hex()} matches {name}: `mkdir old && git show {commit}:assets/config.json > "
            f"old/config.json && git show {commit}:assets/model.safetensors > old/model.safetensors`, then "
            f"--model old)")


def neural_lanes(n: int) -> int:
    """Lanes an n-byte input is coded in: one per LANE_BYTES, 1 to MAX_LANES."""
    return max(1, min(MAX_LANES, n // LANE_BYTES))


def lane_layout(n: int, lanes: int) -> tuple[int, np.ndarray]:
    """(lane length L, (lanes,) real lengths): lane i holds bytes [i·L, min(n, (i+1)·L))."""
    L = -(-n // lanes)
    return L, np.clip(n - np.arange(lanes) * L, 0, L)


_FAMILY = constriction.stream.model.Categorical(perfect=False)


def _chunk_slots(pred: ExactPredictor, lanes: int) -> int:
    """Slots per teacher-forced chunk so that lanes · heads · chunk · (chunk + window) ≤ CHUNK_BUDGET."""
    q = 1
    while q < 4096 and lanes * pred.n_head * (2 * q) * (2 * q + pred.window) <= CHUNK_BUDGET:
        q *= 2
    return q


@contextmanager
def _own_threads(pred: ExactPredictor):
    """While coding with the numba kernel, the caller's own torch ops run on one thread: the predictor
    splits its lanes among its pool threads (told the caller's thread count), and an OpenMP worker of
    the caller's small tensor ops would otherwise spin on a core those threads need (measured: 8 000
    bytes decoded with two threads slower than with one)."""
    if pred.kernel != "numba":
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def model_encode(model: BitTransformerLM, data: bytes, coders: tuple[str, ...] = ("neural",),
                 chunk: int | None = None, on_progress: Progress | None = None,
                 device: str = "cpu", version: int = EXACT_VERSION) -> tuple[dict[str, bytes], float]:
    """Code data with the model's exact predictor for each of `coders` ("neural", "neural+cm") in one
    pass: returns ({coder: payload}, ideal bits of the neural method = Σ -log2 of the coded
    frequencies). chunk: slots per teacher-forced step (None: as CHUNK_BUDGET allows); device: where
    the predictor runs; neither changes a payload. version: the exact path's version (an earlier one
    only to reproduce its streams in tests). Raises UnsupportedModelError for a model the exact path
    cannot run."""
    pred = ExactPredictor.of(model, device, version=version)
    n = len(data)
    if n == 0:
        return {c: b"" for c in coders}, 0.0
    lanes = neural_lanes(n)
    L, lens = lane_layout(n, lanes)
    flat = np.zeros(lanes * L, dtype=np.uint8)               # bytes, widened per chunk (memory: n, not 8n)
    flat[:n] = np.frombuffer(data, dtype=np.uint8)
    arr = torch.from_numpy(flat.reshape(lanes, L))
    q = chunk or _chunk_slots(pred, lanes)
    state = LaneState(pred, lanes)
    encoder = constriction.stream.queue.RangeEncoder() if "neural" in coders else None
    mixer = cm.Encoder(flat, lanes, L, lens) if "neural+cm" in coders else None
    ideal = 0.0
    threads = torch.get_num_threads()
    with torch.no_grad(), _own_threads(pred):
        for s in range(0, L, q):
            e = min(s + q, L)
            freq = pred.frequencies(state, arr[:, max(s - 1, 0):e - 1].long(), e - s, threads).cpu()  # (lanes, e - s, 256)
            if encoder is not None:
                valid = torch.from_numpy(np.arange(s, e)[:, None] < lens[None, :])  # (e - s, lanes) step-major
                f = freq.transpose(0, 1)[valid]
                sym = arr[:, s:e].t()[valid].long()
                coded = f.gather(-1, sym.unsqueeze(-1)).squeeze(-1) + 1
                ideal += float((24 - torch.log2(coded.double())).sum())
                encoder.encode(sym.numpy().astype(np.int32), _FAMILY, f.double().numpy())
            if mixer is not None:
                mixer.code(s, e, cm.neural_cumulative(freq.numpy()))
            if on_progress is not None:
                on_progress(int(np.minimum(lens, e).sum()), n)
    out = {}
    if encoder is not None:
        out["neural"] = encoder.get_compressed().astype("<u4").tobytes()
    if mixer is not None:
        out["neural+cm"] = mixer.finish()
    return out, ideal


def model_decode(model: BitTransformerLM, payload: bytes, n: int, coder: str = "neural",
                 on_progress: Progress | None = None, device: str = "cpu", version: int = EXACT_VERSION) -> bytes:
    """Inverse of `model_encode` for one coder, an n-byte original and the exact path's `version` that
    wrote it (on any device). Raises NeuralCodecError when the payload cannot be what the coder wrote
    (the caller checks the CRC)."""
    if n == 0:
        if payload:
            raise NeuralCodecError(f"{DAMAGED}: {len(payload)} unexpected bytes after the header of an empty file")
        return b""
    if coder == "neural" and len(payload) % 4:
        raise NeuralCodecError(f"{DAMAGED} or truncated: the neural payload is {len(payload)} bytes, not whole "
                               f"32-bit words")
    pred = ExactPredictor.of(model, device, version=version)
    lanes = neural_lanes(n)
    L, lens = lane_layout(n, lanes)
    state = LaneState(pred, lanes)
    every = max(1, _PROGRESS_EVERY // lanes)
    if coder == "neural":
        decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
        out = np.zeros((lanes, L), dtype=np.uint8)
    else:
        mixer = cm.Decoder(payload, lanes, L, lens, coder)
        out = mixer.state.hist.reshape(lanes, L)
    prev = None
    threads = torch.get_num_threads()
    with torch.no_grad(), _own_threads(pred):
        for j in range(L):
            freq = pred.frequencies(state, prev, 1, threads)[:, 0].cpu()            # (lanes, 256)
            if coder == "neural":
                valid = j < lens
                try:
                    out[valid, j] = decoder.decode(_FAMILY, freq[torch.from_numpy(valid)].double().numpy())
                except Exception as e:      # constriction reports invalid data with its own exception types
                    raise NeuralCodecError(f"{DAMAGED} or truncated: the neural payload cannot be decoded "
                                           f"(at byte {j} of its lanes)") from e
            else:
                mixer.code(j, j + 1, cm.neural_cumulative(freq.numpy()[:, None]))
            prev = torch.from_numpy(out[:, j:j + 1].copy()).long()
            if on_progress is not None and ((j + 1) % every == 0 or j + 1 == L):
                on_progress(int(np.minimum(lens, j + 1).sum()), n)
    if coder == "neural" and not decoder.maybe_exhausted():
        raise NeuralCodecError(f"{DAMAGED}: the neural payload holds more data than its length needs")
    if coder != "neural":
        return mixer.finish()[:n]
    return out.reshape(-1)[:n].tobytes()
