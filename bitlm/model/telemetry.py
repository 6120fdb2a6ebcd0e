"""K/C/S telemetry of a bit sequence and of a model's predictions on it (SPEC §4).

K (negentropy) measures order: of bits, K = 1 - H(mean(x)); of predictions, K_pred = 1 - mean H(p).
C (Lempel-Ziv complexity) measures novelty: the LZ76 phrase count c normalised as c·log2(n)/n, about 1
for random bits and near 0 for repetitive ones; C_pred is the same of the model's most likely bits.
S (symbiosis) is the geometric-mean probability the model gave to the bits that occurred,
exp(-mean CE in nats); `symbiosis_kl` is that mean cross-entropy in bits per bit. Attention entropy
is per layer and head, in bits, averaged over query positions. Every H here is in bits.
`compute_telemetry` bundles them for a batch; the model returns it from `forward`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from bitlm.bits.frames import as_bit_array

LN2 = math.log(2.0)
# LZ76 match lengths are found on 64-bit windows of the sequence; a longer match (only in very
# repetitive input, so there are few of them) is extended exactly by substring search.
_WINDOW = 64


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) in bits, elementwise, with 0·log 0 = 0."""
    p = p.double()
    return (torch.special.entr(p) + torch.special.entr(1.0 - p)) / LN2


def _flat_bits(bits: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    if isinstance(bits, (list, tuple)):
        bits = torch.cat([b.reshape(-1) for b in bits]) if bits else torch.zeros(0)
    if bits.numel() == 0:
        raise ValueError("telemetry of an empty bit sequence is undefined; pass at least one bit")
    return bits.reshape(-1).double()


def negentropy(bits: torch.Tensor | list[torch.Tensor]) -> float:
    """K = 1 - H(mean(bits)) over all bits given (any shape, or a list of 1-D tensors).

    Returns a float in [0, 1]: 1 when all bits are equal, 0 with as many ones as zeros.
    Raises ValueError for an empty input."""
    return float(1.0 - _binary_entropy(_flat_bits(bits).mean()))


def negentropy_pred(p: torch.Tensor) -> float:
    """K_pred = 1 - mean_t H(p_t) for predictions p_t = P(bit=1) of any shape.

    Returns a float in [0, 1] (1: the model is certain at every step). Raises ValueError if empty."""
    return float(1.0 - _binary_entropy(_flat_bits(p)).mean())


def _common_prefix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Leading bits two uint64 arrays share (64 where equal)."""
    d = x ^ y
    hi = (d >> np.uint64(32)).astype(np.float64)       # halves are exact in float64, so frexp
    lo = (d & np.uint64(0xFFFFFFFF)).astype(np.float64)  # gives their exact bit lengths
    return 64 - np.where(hi > 0, 32 + np.frexp(hi)[1], np.frexp(lo)[1])


def _jump_to_smaller(g: np.ndarray, lcp: np.ndarray, items: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """For each index in items: the nearest index on one side (step -1 left, +1 right) whose g is
    smaller, and the minimum of `lcp` between them, by pointer jumping: an index whose target is not
    smaller takes over that target's target (everything in between is larger), so chains shorten
    geometrically on random input (about 2 log2 n steps per index on the structured inputs tried).
    g must be -1 at the array's ends (stops). lcp[i]: between i and i+1."""
    ptr = np.clip(np.arange(g.size) + step, 0, g.size - 1)
    common = lcp[np.minimum(np.arange(g.size), ptr)].copy()      # lcp with the direct neighbour
    active = items[g[ptr[items]] > g[items]]
    while active.size:
        nxt = ptr[active]
        common[active] = np.minimum(common[active], common[nxt])
        ptr[active] = ptr[nxt]
        active = active[g[ptr[active]] > g[active]]
    return ptr, common


def _longest_copies(rows: list[np.ndarray]) -> np.ndarray:
    """M[r, i] = the longest l (capped at _WINDOW) such that row r's bits [i, i+l) also start at some
    k < i (LZ76's copy condition: x[i:i+l] is a substring of x[:i+l-1]).

    Vectorised over all rows and positions: sort the 64-bit windows starting at each position; the
    best earlier k is the nearest sorted neighbour, on either side, with a smaller position, and the
    common prefix with it is the minimum of the adjacent common prefixes in between."""
    R, n = len(rows), max(len(r) for r in rows)
    w = np.zeros((R, n + _WINDOW), np.uint64)
    for r, row in enumerate(rows):
        w[r, :row.size] = row
    span = 1
    while span < _WINDOW:                                # window doubling: 1, 2, 4, ..., 64 bits
        w = (w[:, :-span] << np.uint64(span)) | w[:, span:]
        span *= 2
    lengths = np.array([row.size for row in rows])
    # positions past a row's end sort last and are never "earlier"; a stable sort keeps equal
    # windows (periodic input) in position order, which keeps the pointer-jumping chains short
    w = np.where(np.arange(n) < lengths[:, None], w[:, :n], np.uint64(2**64 - 1))
    order = np.argsort(w, axis=1, kind="stable")          # (R, n) positions in window order
    ws = np.take_along_axis(w, order, axis=1)
    # flat layout: a -1 stop before every row and at the end; row r's sorted item a at 1 + r(n+1) + a
    g = np.full(R * (n + 1) + 1, -1, np.int64)
    g[1:].reshape(R, n + 1)[:, :n] = order
    lcp = np.zeros(g.size, np.int64)
    lcp[1:].reshape(R, n + 1)[:, :n - 1] = _common_prefix(ws[:, 1:], ws[:, :-1])
    items = (1 + np.arange(R)[:, None] * (n + 1) + np.arange(n)).reshape(-1)
    best = np.zeros(items.size, np.int64)
    for step in (-1, 1):
        ptr, common = _jump_to_smaller(g, lcp, items, step)
        best = np.maximum(best, np.where(g[ptr[items]] >= 0, common[items], 0))
    m = np.empty((R, n), np.int64)
    np.put_along_axis(m, order, np.minimum(best.reshape(R, n), _WINDOW), axis=1)
    return m


def _extend_copy(s: bytes, i: int, lo: int) -> int:
    """Exact longest copy length at i, known to be ≥ lo, by exponential then binary search
    (the copy condition is monotone in the length)."""
    n = len(s)
    ok = lambda l: s.find(s[i:i + l], 0, i + l - 1) != -1  # noqa: E731
    hi = lo + 1
    while i + hi <= n and ok(hi):
        lo, hi = hi, 2 * hi
    hi = min(hi, n - i + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def lz76_phrases(rows: list[np.ndarray]) -> list[int]:
    """LZ76 (Kaspar-Schuster) phrase counts of 1-D uint8 0/1 arrays: each phrase is the longest
    prefix of the rest that already occurs earlier (overlap allowed) plus one new bit."""
    rows = [np.ascontiguousarray(r, dtype=np.uint8) for r in rows]
    counts = [0] * len(rows)
    live = [j for j, r in enumerate(rows) if r.size]
    if not live:
        return counts
    m = _longest_copies([rows[j] for j in live])
    for row_m, j in zip(m, live):
        n, copies, s = rows[j].size, row_m.tolist(), None
        i = c = 0
        while i < n:
            l = copies[i]
            if l >= _WINDOW:
                s = rows[j].tobytes() if s is None else s
                l = _extend_copy(s, i, l)
            c += 1
            i += l + 1
        counts[j] = c
    return counts


def _lz_normalised(groups: list[list[torch.Tensor]]) -> list[float]:
    """Mean normalised LZ76 complexity of each group of 1-D bit tensors, all parsed in one pass."""
    arrays = [[a for a in (as_bit_array(r.reshape(-1)) for r in g) if a.size] for g in groups]
    if not all(arrays):
        raise ValueError("LZ complexity of an empty bit sequence is undefined; pass at least one bit")
    counts = iter(lz76_phrases([a for g in arrays for a in g]))
    return [float(np.mean([next(counts) * math.log2(a.size) / a.size for a in g])) for g in arrays]


def lz_complexity(bits: torch.Tensor | list[torch.Tensor]) -> float:
    """Normalised LZ76 complexity C = c·log2(n)/n of a 1-D bit tensor.

    A 2-D (R, n) tensor or a list of 1-D tensors gives the mean C over the rows (empty rows skipped).
    Returns about 1 for random bits and near 0 for repetitive ones (0 for a single bit).
    Raises ValueError for no bits at all or values other than 0/1."""
    if isinstance(bits, torch.Tensor):
        rows = [bits] if bits.dim() == 1 else list(bits.reshape(-1, bits.shape[-1]))
    else:
        rows = list(bits)
    return _lz_normalised([rows])[0]


def _cross_entropy_nats(p: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    if p.shape != bits.shape:
        raise ValueError(f"p {tuple(p.shape)} and bits {tuple(bits.shape)} must have the same shape")
    p, x = p.double(), bits.double()
    if p.numel() == 0:
        raise ValueError("symbiosis of an empty sequence is undefined; pass at least one bit")
    return -(torch.xlogy(x, p) + torch.xlogy(1.0 - x, 1.0 - p))


def symbiosis(p: torch.Tensor, bits: torch.Tensor) -> float:
    """S = exp(-mean_t CE_t) with CE in nats of the observed bits under p_t = P(bit=1).

    The geometric-mean probability given to the bits that occurred: 1 perfect, 0.5 chance.
    Takes p and bits of the same shape. Raises ValueError on a shape mismatch or empty input."""
    return float(torch.exp(-_cross_entropy_nats(p, bits).mean()))


def symbiosis_kl(p: torch.Tensor, bits: torch.Tensor) -> float:
    """Mean cross-entropy of the observed bits under p in bits per bit (inf where p gave 0 to one)."""
    return float(_cross_entropy_nats(p, bits).mean() / LN2)


def mean_over_queries(entropy: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, N) per-query attention entropies -> (H,) their mean over the batch and the real queries
    (query_mask (B, N) bool; None = all)."""
    if query_mask is None:
        return entropy.mean(dim=(0, 2))
    w = query_mask[:entropy.shape[0], None, :entropy.shape[2]].to(entropy.dtype)
    return (entropy * w).sum(dim=(0, 2)) / w.sum(dim=(0, 2)).clamp_min(1.0)


def attention_entropy(att: torch.Tensor | list[torch.Tensor], query_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy in bits of each attention row, averaged over batch and query positions.

    Takes one (B, H, N, N) map or a list of them (one per layer); query_mask (B, N) bool limits the
    average to real queries (padding excluded). Returns (L, H) float32 (L = 1 for a single map)."""
    maps = [att] if isinstance(att, torch.Tensor) else list(att)
    out = []
    for a in maps:
        if a.dim() != 4:
            raise ValueError(f"attention maps must be (B, H, N, N), got shape {tuple(a.shape)}")
        out.append(mean_over_queries(torch.special.entr(a.float()).sum(-1) / LN2, query_mask))
    return torch.stack(out)


@dataclass
class Telemetry:
    """K/C/S of one batch (SPEC §4).

    K, C: of the input bits (or of the compressed stream when `on == "stream"` for a compressed input);
    K_pred, C_pred: of the predictions p and of the model's most likely bits; S, symbiosis_kl: how well
    p predicted the bits. Scalars cover the real bits of all rows (C: the mean over rows).
    p, entropy: (B, T) P(bit=1) and H(p) in bits per position. attention_entropy: (L, H) in bits, or
    None; attention: per-layer (B, H, N, N) maps over patch positions when asked for, else None.
    on: "stream" (the bits the model read) or "decompressed"."""
    K: float
    K_pred: float
    C: float
    C_pred: float
    S: float
    symbiosis_kl: float
    p: torch.Tensor
    entropy: torch.Tensor
    attention_entropy: torch.Tensor | None
    attention: list[torch.Tensor] | None
    on: str

    def scalars(self) -> dict[str, float]:
        """The scalar fields as a dict (for tables and logs)."""
        d = asdict(self)
        return {k: v for k, v in d.items() if isinstance(v, float)}


def _real_rows(x: torch.Tensor, mask: torch.Tensor | None, limit: int | None) -> list[torch.Tensor]:
    """The first `limit` rows of x that hold real bits, each cut to its real bits."""
    rows = list(x) if mask is None else [row[m] for row, m in zip(x, mask)]
    return [r for r in rows if r.numel()][:limit]


def compute_telemetry(bits: torch.Tensor, logits: torch.Tensor, attention: list[torch.Tensor] | None = None,
                      on: str = "stream", mask: torch.Tensor | None = None,
                      att_entropy: torch.Tensor | None = None, lz_rows: int | None = None) -> Telemetry:
    """Telemetry of (B, T) 0/1 bits under (B, T, 2) logits (logits[:, t] predicts bit t).

    attention: per-layer (B, H, N, N) maps, kept in the result and used for attention entropy unless
    att_entropy (L, H) is given (the model computes it on the fly). mask (B, T) bool marks real bits
    (padded batches); padding is excluded from every scalar. on: "stream" or "decompressed" (a label
    for which bits K and C describe). lz_rows: compute C and C_pred from the first lz_rows non-empty
    sequences only (LZ parsing is the costly part; None = all rows).
    Raises ValueError for mismatched shapes, an unknown `on`, or no real bits."""
    if on not in ("stream", "decompressed"):
        raise ValueError(f"on must be 'stream' or 'decompressed', got {on!r}")
    if bits.dim() == 1 and logits.dim() == 2:
        bits, logits = bits[None], logits[None]
    if logits.shape != bits.shape + (2,):
        raise ValueError(f"logits {tuple(logits.shape)} must be bits {tuple(bits.shape)} + (2,)")
    with torch.no_grad():
        l0, l1 = logits.detach().float().unbind(-1)
        lp0, lp1 = -F.softplus(l1 - l0), -F.softplus(l0 - l1)                    # 2-way log-softmax
        p = lp1.exp()
        entropy = (torch.special.entr(p) + torch.special.entr(1.0 - p)) / LN2
        x = bits.to(torch.uint8)
        ce = torch.where(x == 1, -lp1, -lp0).double()                           # (B, T) nats
        guess = (lp1 > lp0).to(torch.uint8)
        if mask is None:
            x_real, ce_real, h_real = x, ce, entropy
        else:
            mask = mask.bool()
            if not mask.any():
                raise ValueError("telemetry needs at least one real bit; the mask selects none")
            x_real, ce_real, h_real = x[mask], ce[mask], entropy[mask]
        mean_ce = ce_real.mean()
        c, c_pred = _lz_normalised([_real_rows(x, mask, lz_rows), _real_rows(guess, mask, lz_rows)])
        if att_entropy is None and attention is not None:
            att_entropy = attention_entropy(attention)
        return Telemetry(
            K=negentropy(x_real),
            K_pred=float(1.0 - h_real.double().mean()),
            C=c, C_pred=c_pred,
            S=float(torch.exp(-mean_ce)),
            symbiosis_kl=float(mean_ce / LN2),
            p=p, entropy=entropy, attention_entropy=att_entropy, attention=attention, on=on,
        )
