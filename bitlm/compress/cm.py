"""Online context mixing, exact by construction: the `cm` and `neural+cm` methods of the container.

Every byte is coded as 8 binary decisions (MSB first) by a binary arithmetic coder whose probability
comes from models that learn from the file while it is coded, in the manner of lpaq1 and paq8px:

- fifteen context models: orders 0-6 and 8 of the preceding bytes, the current word (letters), the
  word before and the current one, the column with the byte above it, two sparse contexts (bytes 2-3
  back; bytes 2 and 4 back) and two indirect ones (the two bytes that last followed the last one and
  two bytes). Each context hashes to a 16-slot bucket per nibble in one shared table; a slot holds an
  adaptive counter (16-bit p, 6-bit count: p += (y - p) / (n + 1.5), n capped) and the slot's last 9
  bits, which an adaptive map per context model turns into a second probability (as bit histories
  do in lpaq: what usually follows this pattern of bits here);
- a match model: the latest earlier occurrence of the last 6 bytes (a hash table, verified backwards
  up to 32 bytes) predicts the bit that followed it, through a counter indexed by the match length
  and that bit;
- for `neural+cm`, the model's exact probability of the bit given the bits of the byte so far: a ratio
  of integer sums of the exact predictor's 256 byte frequencies (`bitlm.compress.exact`);
- four logistic mixers (stretch → weighted sum → squash) whose weights follow the coding error (faster
  while little is known: rate × (1 + 2048 / (bytes coded + 256))), each with its weight set chosen by
  another small context (the partial byte × the model's recent error, where a set starts trusting the
  model as far as that error says; match length × the model's confidence × bit position; how many
  contexts were seen before × bit position; the last byte × bit position), a final mixer of the four
  and the model's input by bit position × the model's recent error, then two APM/SSE stages (by
  partial byte, and by partial byte × the last byte) blended with it as (p + a1 + 2·a2) / 4.

Every constant and rate in PARAMS and above was chosen by measuring on `bench/test_files.py`'s files
(the numbers beside each say what else was tried); changing one changes every stream, so it needs a
new container version.

Why it is exact: every quantity is an integer (int64 arithmetic on values whose bounds are stated
beside them, no overflow; tables stored as uint32/int32 and widened on read); stretch and squash are
lpaq1's integer tables (squash interpolates 33 integers, stretch is its integer inverse); the neural
probability is one integer division of exact sums. There is no float anywhere the coder depends on,
so a stream decodes to the same bytes on any machine, thread count, compiler or device, compiled by
numba or run as plain Python (`NUMBA_DISABLE_JIT=1`), which the tests compare byte for byte.

Lanes: `neural+cm` codes the bytes in the order the neural decoder produces them (step j of every
lane, lane 0 first). The tables, mixers and APMs are shared by all lanes; each lane keeps its own
byte history (the contexts), and the match model may point into any lane at a byte already coded.

Memory: the context models share one table of 2^(table_bits + 4) uint32 (`table_bits(n)`: from 16
for inputs under 2 KiB up to TABLE_BITS_MAX = 20 from 16 KiB on: 4 MiB to 64 MiB), the match table
2^(table_bits - 1) int32 (≤ 2 MiB), mixers, APMs and the rest < 10 MiB, the bytes themselves: all fixed by the
stated length (capped), never by the payload (`CMState.nbytes` adds them up; a test checks the cap).
Time is linear in the length: 2-3 µs a byte on one core (see `bench/neural_codec.py`).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bitlm.compress.header import DAMAGED, NeuralCodecError

try:
    import numba
    _jit = numba.njit(cache=True, nogil=True)
except ImportError:                                    # the plain-Python path (slow, same bytes)
    def _jit(f):
        return f

NCTX = 15                      # context models: orders 0-6 and 8, word, two words, column, 2 sparse, 2 indirect
N_IN = 2 * NCTX + 3            # mixer inputs: per context its counter and its history's map; the match model,
I_MATCH, I_NEURAL, I_BIAS = 2 * NCTX, 2 * NCTX + 1, 2 * NCTX + 2      # the neural model, a bias
HIST_BITS = 10                 # a slot's recent bits in its context: a 1, then up to 9 bits (oldest first)
MINLEN = 6                     # bytes a match must share before it predicts
MAXLEN = 65535
TABLE_BITS_MIN, TABLE_BITS_MAX = 16, 20
SHARED_BITS = 4                # the context models share one table of 2^(table_bits + 4) slots
APM2_BITS = 16                 # APM 2 contexts: partial byte × previous byte
SETS2 = 4 * 4 * 8              # mixer 2 weight sets: match bucket × neural confidence × bit position
SETS3 = (NCTX + 1) * 8         # mixer 3 weight sets: contexts seen before × bit position (mixer 4: last byte × bit)
_STEP = 1 << 16                # bytes a call of the compiled coder codes alone (progress, buffer growth)
Progress = Callable[[int, int], None]
LANE_FIELDS = 9                # per lane: c4 (last 4 bytes), c8 (the 4 before), word hash, match ptr, match len,
#                                previous word hash, start of this line, start of the line before, the
#                                model's recent error (a moving average of |y - p|, 12 bits)

# Tunables that define the stream (changing one changes every file: bump the container's format).
PARAMS = np.array([
    32,        # 0: mixer learning rate: Δw = stretch · (y - p) · rate >> 16 (lpaq1 uses 7; 32 measured best)
    30,        # 1: counter count limit (contexts): adapts at 1/31.5 at least, for files that change
    255,       # 2: counter count limit (match model)
    8192,      # 3: initial weight of a context input (16.16 fixed point: 1/8)
    16384,     # 4: initial weight of the neural input (1/4: measured better than 1 on code, prose and Folio)
    5,         # 5: APM rate (shift; 6 and 7 measured worse)
    1023,      # 6: counter count limit (history maps)
    8,         # 7: final mixer's learning rate (measured: 2 and 24 worse)
], dtype=np.int64)

_SQUASH33 = np.array([1, 2, 3, 6, 10, 16, 27, 45, 73, 120, 194, 310, 488, 747, 1101, 1546, 2047, 2549, 2994,
                      3348, 3607, 3785, 3901, 3975, 4024, 4050, 4068, 4079, 4085, 4089, 4092, 4093, 4094],
                     dtype=np.int64)


@_jit
def _squash(d):
    """4096 / (1 + e^-(d/256)) in integers (lpaq1): d in stretch units, result 1…4095."""
    if d > 2047:
        return 4095
    if d < -2047:
        return 1
    w = d & 127
    i = (d >> 7) + 16
    return (_SQUASH33[i] * (128 - w) + _SQUASH33[i + 1] * w + 64) >> 7


def _stretch_table() -> np.ndarray:
    """stretch(p) = ln(p / (1 - p)) · 256 for 12-bit p: the integer inverse of `_squash` (lpaq1)."""
    t = np.zeros(4096, dtype=np.int64)
    pi = 0
    for x in range(-2047, 2048):
        v = int(_squash(x))
        t[pi:v + 1] = x
        pi = v + 1
    t[pi:] = 2047
    return t


STRETCH = _stretch_table()
DT = np.array([131072 // (2 * n + 3) for n in range(1024)], dtype=np.int64)   # 65536 / (n + 1.5)


def table_bits(n: int) -> int:
    """log2 of the context table's size for an n-byte input, before SHARED_BITS (fixed by n, so by the header)."""
    return int(min(TABLE_BITS_MAX, max(TABLE_BITS_MIN, int(n).bit_length() + 5)))


@_jit
def _hash(a, b):
    """A 32-bit hash of two values below 2^32 (int64 arithmetic: every product < 2^62)."""
    h = (a * 0x1F0F3A4B + b * 0x0E5D3B21 + 0x12345677) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
    h ^= h >> 13
    return h


class CMState:
    """The coder's whole state for one stream of `lanes` lanes of up to L bytes (lengths `lens`).
    Both the encoder and the decoder build it the same way from the header's length."""

    def __init__(self, n: int, lanes: int, L: int, lens: np.ndarray, params: np.ndarray = PARAMS) -> None:
        """n: the original's length (it sizes the tables); lanes of L bytes, `lens` (lanes,) their lengths."""
        tb = table_bits(n)
        self.lanes, self.L = lanes, L
        self.lens = np.asarray(lens, dtype=np.int64)
        self.hist = np.zeros(lanes * L, dtype=np.uint8)                 # (lanes · L,) the bytes, lane-major
        # a slot: p (16 bits) | n (6 bits) | history (10 bits); starts at p = 1/2, n = 0, no history
        self.tables = np.full((1, 1 << (tb + SHARED_BITS)), (1 << 31) | 1, dtype=np.uint32)
        self.history_maps = np.full(NCTX << HIST_BITS, 1 << 31, dtype=np.uint32)     # history -> p22 | n10
        self.match_table = np.zeros(1 << (tb - 1), dtype=np.int32)        # flat index + 1 of a byte that followed
        self.match_sm = np.full(2 * 64, 1 << 31, dtype=np.uint32)
        self.lane = np.zeros((lanes, LANE_FIELDS), dtype=np.int64)
        self.params = np.array(params, dtype=np.int64)                 # a copy: never the module's PARAMS
        w1 = np.zeros((4 * 256, N_IN), dtype=np.int32)          # (sets, inputs): recent error × partial byte
        w1[:, :NCTX] = params[3]                                 # the counters (the history maps start at 0)
        w1[:, I_MATCH] = params[3]
        w1[:, I_NEURAL] = params[4]
        self.w1 = w1.copy()
        for b in range(4):                       # mixer 1 trusts the model as far as its recent error says
            self.w1[b * 256:(b + 1) * 256, I_NEURAL] = (4 * params[4]) >> b
        self.w2 = np.ascontiguousarray(np.broadcast_to(w1[:1], (SETS2, N_IN)))
        self.w3 = np.ascontiguousarray(np.broadcast_to(w1[:1], (SETS3, N_IN)))
        self.w4 = np.ascontiguousarray(np.broadcast_to(w1[:1], (256 * 8, N_IN)))
        # the 2 bytes that last followed each 1-byte and each 2-byte context
        self.indirect = np.zeros(256 + 65536, dtype=np.int64)
        # the final mixer: the four mixers (1/4 each) and the model's input (0 at first), by bit position ×
        # the model's recent error
        self.wf = np.full((32, 5), 65536 // 4, dtype=np.int32)
        self.wf[:, 4] = 0
        ramp = np.array([_squash((j - 16) * 128) * 16 for j in range(33)], dtype=np.int32)
        self.apm1 = np.tile(ramp, 256)
        self.apm2 = np.tile(ramp, 1 << APM2_BITS)
        self.coder = np.array([0, 0xFFFFFFFF, 0, 0], dtype=np.int64)     # x1, x2, x (decoder), byte position

    def run(self, j0: int, j1: int, cum: np.ndarray, decode: bool, buf: np.ndarray) -> None:
        """Code steps j0…j1-1 of every lane: encode from `hist` into `buf`, or decode from `buf` into
        `hist` (one compiled kernel does both, so the two cannot drift apart)."""
        _code(self.lanes, self.L, self.lens, self.hist, j0, j1, cum, cum.shape[1] > 0, decode, buf, self.coder,
              self.tables, self.history_maps, self.match_table, self.match_sm, self.lane, self.w1, self.w2, self.w3,
              self.w4, self.wf, self.indirect, self.apm1, self.apm2, self.params, STRETCH, DT)

    @property
    def nbytes(self) -> int:
        """Bytes held by the state's arrays (the coder's memory besides its payload buffer)."""
        return sum(a.nbytes for a in vars(self).values() if isinstance(a, np.ndarray))


NO_MODEL = np.zeros((1, 0, 257), dtype=np.int64)   # `cum` for the online models alone


class Encoder:
    """Codes the bytes of `lanes` lanes (flat, lane-major: lane i at [i·L, i·L + lens[i])) step by step.
    `code(j0, j1, cum)` codes steps j0…j1-1 of every lane; `finish()` returns the payload."""

    def __init__(self, flat: np.ndarray, lanes: int, L: int, lens: np.ndarray) -> None:
        self.n = int(np.sum(lens))
        self.state = CMState(self.n, lanes, L, lens)
        self.state.hist[:] = flat
        self.buf = np.zeros(1024, dtype=np.uint8)

    def code(self, j0: int, j1: int, cum: np.ndarray = NO_MODEL) -> None:
        """cum: (lanes, j1 - j0, 257) cumulative neural frequencies (`neural_cumulative`), or NO_MODEL."""
        st = self.state
        room = int(st.coder[3]) + 13 * st.lanes * (j1 - j0) + 16     # ≤ 12 bits a bit (p is within 1…4095)
        if room > len(self.buf):
            self.buf = np.concatenate([self.buf, np.zeros(max(room, 2 * len(self.buf)) - len(self.buf), np.uint8)])
        st.run(j0, j1, cum, False, self.buf)

    def finish(self) -> bytes:
        """The payload: what was coded, then x1's top byte (followed by the decoder's 0xFF padding it
        lies in the final interval, so one byte ends the stream)."""
        pos = int(self.state.coder[3])
        self.buf[pos] = int(self.state.coder[0]) >> 24
        return self.buf[:pos + 1].tobytes()


class Decoder:
    """The inverse of `Encoder`: `code(j0, j1, cum)` decodes steps j0…j1-1 into `state.hist`; the
    payload is read as if padded with 0xFF, so damage yields other bytes, never a longer loop. The
    decoder never reads more than 3 bytes past what the encoder had written at the same point, so
    `code` stops a payload that runs out early (a truncated or damaged file claiming a long original
    costs about as much work as its payload, not its claim), and `finish()` insists that exactly the
    payload was consumed. name: the method, for messages."""

    def __init__(self, payload: bytes, lanes: int, L: int, lens: np.ndarray, name: str = "cm") -> None:
        self.n, self.name = int(np.sum(lens)), name
        self.state = CMState(self.n, lanes, L, lens)
        self.payload = np.frombuffer(payload, dtype=np.uint8).copy()   # writable: one compiled kernel codes both ways
        x = 0
        for i in range(4):
            x = (x << 8) | (int(self.payload[i]) if i < len(self.payload) else 255)
        self.state.coder[2], self.state.coder[3] = x, 4

    def code(self, j0: int, j1: int, cum: np.ndarray = NO_MODEL) -> None:
        """Decode steps j0…j1-1. Raises NeuralCodecError once the payload has run out."""
        self.state.run(j0, j1, cum, True, self.payload)
        if int(self.state.coder[3]) - 3 > len(self.payload):
            raise NeuralCodecError(f"{DAMAGED} or truncated: the {self.name} payload ran out at byte {j1} of its lanes")

    def finish(self) -> bytes:
        """The decoded bytes (lane-major). Raises NeuralCodecError when the decoder did not read exactly
        the payload (it reads 3 bytes past the encoder's last write)."""
        used = int(self.state.coder[3]) - 3
        if used != len(self.payload):
            what = "is truncated" if used > len(self.payload) else f"has {len(self.payload) - used} bytes too many"
            raise NeuralCodecError(f"{DAMAGED}: the {self.name} payload {what}")
        return self.state.hist.tobytes()


def cm_encode(data: bytes, on_progress: Progress | None = None) -> bytes:
    """The `cm` method: the online models alone, one lane. on_progress(bytes done, bytes in all)."""
    n = len(data)
    enc = Encoder(np.frombuffer(data, dtype=np.uint8), 1, n, np.array([n]))
    for s in range(0, n, _STEP):
        enc.code(s, min(s + _STEP, n))
        if on_progress is not None:
            on_progress(min(s + _STEP, n), n)
    return enc.finish()


def cm_decode(payload: bytes, n: int, on_progress: Progress | None = None) -> bytes:
    """Inverse of `cm_encode` for an n-byte original. Raises NeuralCodecError (see `Decoder.finish`)."""
    dec = Decoder(payload, 1, n, np.array([n]))
    for s in range(0, n, _STEP):
        dec.code(s, min(s + _STEP, n))
        if on_progress is not None:
            on_progress(min(s + _STEP, n), n)
    return dec.finish()


def neural_cumulative(freq: np.ndarray) -> np.ndarray:
    """(…, 256) integer byte frequencies -> (…, 257) int64 cumulative sums of freq + 1 (what the coder
    of the neural method gives each byte), starting at 0."""
    f = np.asarray(freq, dtype=np.int64) + 1
    out = np.zeros(f.shape[:-1] + (257,), dtype=np.int64)
    np.cumsum(f, axis=-1, out=out[..., 1:])
    return out


@_jit
def _apm(t, ctx, s):
    """APM/SSE: (index of the lower bucket, weight of the upper, refined 12-bit p) for stretch s."""
    u = s + 2048                              # 1…4095
    lo = u >> 7                               # 0…31
    w = u & 127
    i = ctx * 33 + lo
    p = (np.int64(t[i]) * (128 - w) + np.int64(t[i + 1]) * w) >> 11
    return i, w, p


@_jit
def _code(lanes, L, lens, hist, j0, j1, cum, has_neural, decode, buf, coder, tables, history_maps, match_table,
          match_sm, lane_state, w1, w2, w3, w4, wf, indirect, apm1, apm2, params, stretch, dt):
    """The coder's loop over steps j0…j1-1 of every lane (see `CMState.run`); every array is updated in place."""
    tmask = tables.shape[1] - 1
    mmask = match_table.shape[0] - 1
    lr, limit, mlimit, apm_rate, hlimit = params[0], params[1], params[2], params[5], params[6]
    x1, x2, x, pos = coder[0], coder[1], coder[2], coder[3]
    nbuf = buf.shape[0]
    h = np.zeros(NCTX, dtype=np.int64)
    base = np.zeros(NCTX, dtype=np.int64)
    slot = np.zeros(NCTX, dtype=np.int64)
    hslot = np.zeros(NCTX, dtype=np.int64)
    xs = np.zeros(N_IN, dtype=np.int64)
    for j in range(j0, j1):
        for lane in range(lanes):
            if j >= lens[lane]:
                continue
            here = lane * L + j
            c4, c8, word = lane_state[lane, 0], lane_state[lane, 1], lane_state[lane, 2]
            mptr, mlen = lane_state[lane, 3], lane_state[lane, 4]
            word1, line0, line1 = lane_state[lane, 5], lane_state[lane, 6], lane_state[lane, 7]
            nerr = lane_state[lane, 8]
            col = j - line0
            above = np.int64(hist[lane * L + line1 + col]) if line1 + col < line0 else np.int64(0)
            h[0] = 0
            h[1] = _hash(c4 & 0xFF, 1)
            h[2] = _hash(c4 & 0xFFFF, 2)
            h[3] = _hash(c4 & 0xFFFFFF, 3)
            h[4] = _hash(c4, 4)
            h[5] = _hash(c4, _hash(c8 & 0xFF, 5))
            h[6] = _hash(c4, _hash(c8 & 0xFFFF, 6))
            h[7] = _hash(c4, _hash(c8, 8))
            h[8] = _hash(word, _hash(c4 & 0xFF, 9))
            h[9] = _hash(word, _hash(word1, 10))
            h[10] = _hash(above | (min(col, 255) << 8), _hash(c4 & 0xFF, 11))
            h[11] = _hash(c4 & 0xFFFF00, 12)                 # bytes 2-3 back, skipping the last
            h[12] = _hash(c4 & 0xFF00FF00, 13)               # bytes 2 and 4 back
            h[13] = _hash(indirect[c4 & 0xFF] | ((c4 & 0xFF) << 16), 14)
            h[14] = _hash(indirect[256 + (c4 & 0xFFFF)] | ((c4 & 0xFFFF) << 16), 15)
            byte = np.int64(hist[here]) if not decode else np.int64(0)
            c0 = np.int64(1)
            node = np.int64(1)
            for bit in range(8):
                if bit == 0 or bit == 4:
                    for i in range(NCTX):
                        base[i] = (_hash(h[i], c0 + (i << 9)) << 4) & tmask
                    node = 1
                # ---- inputs, all in stretch units (±2047)
                seen = 0
                for i in range(NCTX):
                    slot[i] = base[i] + node
                    e = np.int64(tables[0, slot[i]])
                    xs[i] = stretch[e >> 20]
                    hslot[i] = (i << HIST_BITS) | (e & 1023)
                    xs[NCTX + i] = stretch[np.int64(history_maps[hslot[i]]) >> 20]
                    if (e >> 10) & 63:
                        seen += 1
                mctx = -1
                if mlen > 0:
                    expected = np.int64(hist[mptr])
                    if ((expected | 256) >> (8 - bit)) == c0:
                        ebit = (expected >> (7 - bit)) & 1
                        mctx = (min(mlen, 31) << 1) | ebit
                        xs[I_MATCH] = stretch[np.int64(match_sm[mctx]) >> 20]
                    else:
                        mlen = 0
                if mctx < 0:
                    xs[I_MATCH] = 0
                conf = 0
                pn = 2048
                if has_neural:
                    lo = (c0 << (8 - bit)) - 256
                    half = 1 << (7 - bit)
                    c_lo = cum[lane, j - j0, lo]
                    c_mid = cum[lane, j - j0, lo + half]
                    c_hi = cum[lane, j - j0, lo + 2 * half]
                    pn = ((c_hi - c_mid) * 4096 + ((c_hi - c_lo) >> 1)) // (c_hi - c_lo)
                    pn = min(max(pn, 1), 4095)
                    xs[I_NEURAL] = stretch[pn]
                    a = abs(xs[I_NEURAL])
                    conf = 1 if a < 256 else (2 if a < 1024 else 3)
                else:
                    xs[I_NEURAL] = 0
                xs[I_BIAS] = 256
                # ---- two mixers, averaged
                s1 = c0 | (0 if not has_neural else min(nerr >> 9, 3) << 8)
                mb = 0 if mctx < 0 else (1 if mlen < 16 else (2 if mlen < 32 else 3))
                s2 = ((mb * 4 + conf) << 3) | bit
                s3 = (seen << 3) | bit
                d1 = np.int64(0)
                d2 = np.int64(0)
                d3 = np.int64(0)
                d4 = np.int64(0)
                s4 = ((c4 & 0xFF) << 3) | bit
                for i in range(N_IN):
                    d1 += xs[i] * np.int64(w1[s1, i])
                    d2 += xs[i] * np.int64(w2[s2, i])
                    d3 += xs[i] * np.int64(w3[s3, i])
                    d4 += xs[i] * np.int64(w4[s4, i])
                d1 = min(max(d1 >> 16, -2047), 2047)
                d2 = min(max(d2 >> 16, -2047), 2047)
                d3 = min(max(d3 >> 16, -2047), 2047)
                d4 = min(max(d4 >> 16, -2047), 2047)
                p4 = _squash(d4)
                p1 = _squash(d1)
                p2 = _squash(d2)
                p3 = _squash(d3)
                sf = bit | ((0 if not has_neural else min(nerr >> 9, 3)) << 3)
                sm = (d1 * np.int64(wf[sf, 0]) + d2 * np.int64(wf[sf, 1]) + d3 * np.int64(wf[sf, 2])
                      + d4 * np.int64(wf[sf, 3])
                      + xs[I_NEURAL] * np.int64(wf[sf, 4])) >> 16
                sm = min(max(sm, -2047), 2047)
                pm = _squash(sm)
                # ---- two APM stages
                a1i, a1w, pa1 = _apm(apm1, c0, sm)
                ctx2 = (c0 | ((c4 & 0xFF) << 8)) & ((1 << APM2_BITS) - 1)
                a2i, a2w, pa2 = _apm(apm2, ctx2, sm)
                p = (pm + pa1 + 2 * pa2 + 2) >> 2
                p = min(max(p, 1), 4095)
                # ---- the binary arithmetic coder (lpaq1), P(bit = 1) = p / 4096
                xmid = x1 + ((x2 - x1) >> 12) * p
                if decode:
                    y = 1 if x <= xmid else 0
                else:
                    y = (byte >> (7 - bit)) & 1
                if y:
                    x2 = xmid
                else:
                    x1 = xmid + 1
                while ((x1 ^ x2) & 0xFF000000) == 0:
                    if decode:
                        nxt = np.int64(buf[pos]) if pos < nbuf else np.int64(255)
                        x = ((x << 8) & 0xFFFFFFFF) | nxt
                    else:
                        buf[pos] = x2 >> 24
                    pos += 1
                    x1 = (x1 << 8) & 0xFFFFFFFF
                    x2 = ((x2 << 8) & 0xFFFFFFFF) | 255
                # ---- learn
                lr_t = lr + (lr * 2048) // (j * lanes + lane + 256)     # faster while little is known
                e1 = ((y << 12) - p1) * lr_t
                e2 = ((y << 12) - p2) * lr_t
                e3 = ((y << 12) - p3) * lr_t
                ef = ((y << 12) - pm) * params[7]
                wf[sf, 0] = np.int32(min(max(np.int64(wf[sf, 0]) + ((d1 * ef) >> 16), -(1 << 22)), 1 << 22))
                wf[sf, 1] = np.int32(min(max(np.int64(wf[sf, 1]) + ((d2 * ef) >> 16), -(1 << 22)), 1 << 22))
                wf[sf, 2] = np.int32(min(max(np.int64(wf[sf, 2]) + ((d3 * ef) >> 16), -(1 << 22)), 1 << 22))
                wf[sf, 3] = np.int32(min(max(np.int64(wf[sf, 3]) + ((d4 * ef) >> 16), -(1 << 22)), 1 << 22))
                wf[sf, 4] = np.int32(min(max(np.int64(wf[sf, 4]) + ((xs[I_NEURAL] * ef) >> 16), -(1 << 22)), 1 << 22))
                e4 = ((y << 12) - p4) * lr_t
                for i in range(N_IN):
                    w4[s4, i] = np.int32(min(max(np.int64(w4[s4, i]) + ((xs[i] * e4) >> 16), -(1 << 22)), 1 << 22))
                    w3[s3, i] = np.int32(min(max(np.int64(w3[s3, i]) + ((xs[i] * e3) >> 16), -(1 << 22)), 1 << 22))
                    w1[s1, i] = np.int32(min(max(np.int64(w1[s1, i]) + ((xs[i] * e1) >> 16), -(1 << 22)), 1 << 22))
                    w2[s2, i] = np.int32(min(max(np.int64(w2[s2, i]) + ((xs[i] * e2) >> 16), -(1 << 22)), 1 << 22))
                target = y << 22
                for i in range(NCTX):
                    e = np.int64(tables[0, slot[i]])
                    n = (e >> 10) & 63
                    q = e >> 16
                    q += (((y << 16) - q) * dt[n]) >> 16
                    hh = ((e & 1023) << 1) | y
                    if hh >= 1024:
                        hh = (hh & 511) | 512
                    tables[0, slot[i]] = (q << 16) | (min(n + 1, limit) << 10) | hh
                    e = np.int64(history_maps[hslot[i]])
                    n = e & 1023
                    q = e >> 10
                    q += ((target - q) * dt[n]) >> 16
                    history_maps[hslot[i]] = (q << 10) | min(n + 1, hlimit)
                if mctx >= 0:
                    e = np.int64(match_sm[mctx])
                    n = e & 1023
                    q = e >> 10
                    q += ((target - q) * dt[n]) >> 16
                    match_sm[mctx] = (q << 10) | min(n + 1, mlimit)
                g = (y << 16) + (y << apm_rate) - y - y
                k = a1i + (a1w >> 6)
                apm1[k] = np.int32(np.int64(apm1[k]) + ((g - np.int64(apm1[k])) >> apm_rate))
                k = a2i + (a2w >> 6)
                apm2[k] = np.int32(np.int64(apm2[k]) + ((g - np.int64(apm2[k])) >> apm_rate))
                if has_neural:
                    nerr += (abs((y << 12) - pn) - nerr) >> 5
                c0 = (c0 << 1) | y
                node = (node << 1) | y
            byte = c0 & 0xFF
            hist[here] = byte
            # ---- the lane's contexts move on by one byte
            indirect[c4 & 0xFF] = ((indirect[c4 & 0xFF] << 8) | byte) & 0xFFFF
            indirect[256 + (c4 & 0xFFFF)] = ((indirect[256 + (c4 & 0xFFFF)] << 8) | byte) & 0xFFFF
            c8 = ((c8 << 8) | (c4 >> 24)) & 0xFFFFFFFF
            c4 = ((c4 << 8) | byte) & 0xFFFFFFFF
            if (byte >= 65 and byte <= 90) or (byte >= 97 and byte <= 122) or byte >= 128:
                word = _hash(word, byte | 32)
            elif word != 0:
                word1 = word
                word = 0
            if byte == 10:
                line1 = line0
                line0 = j + 1
            # ---- the match model: follow the match, or look one up (bytes known: step < j, or step j
            # of an earlier lane)
            if mlen > 0:
                mptr += 1
                mj = mptr % L
                if mlen < MAXLEN:
                    mlen += 1
                if mj == 0 or mj >= lens[mptr // L] or not (mj <= j + 1 and (mj <= j or mptr // L < lane)):
                    mlen = 0
            if j + 1 >= MINLEN:
                mh = _hash(c4, c8 & 0xFFFF) & mmask
                if mlen == 0:
                    cand = np.int64(match_table[mh]) - 1
                    if cand >= 0:
                        cl = cand // L
                        cj = cand % L
                        if cj < lens[cl] and (cj <= j or (cj == j + 1 and cl < lane)):
                            k = 0
                            while k < 32 and cj - 1 - k >= 0 and j - k >= 0 \
                                    and hist[cl * L + cj - 1 - k] == hist[here - k]:
                                k += 1
                            if k >= MINLEN:
                                mptr, mlen = cand, k
                match_table[mh] = here + 2
            lane_state[lane, 0], lane_state[lane, 1], lane_state[lane, 2] = c4, c8, word
            lane_state[lane, 3], lane_state[lane, 4] = mptr, mlen
            lane_state[lane, 5], lane_state[lane, 6], lane_state[lane, 7] = word1, line0, line1
            lane_state[lane, 8] = nerr
    coder[0], coder[1], coder[2], coder[3] = x1, x2, x, pos
