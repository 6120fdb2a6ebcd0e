"""Per-lane state of the exact predictor (`bitlm.compress.exact`): each lane's ring of keys and values per
layer in the layout its kernel reads (torch: float64; numba version 2: int8 and a shift per head and row;
numba version 1: int16, widened per lane when a value outgrows it), the slots the ring's rows hold, and
the step buffers a predictor allocates once per chunk size — with the memory each takes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from bitlm.compress.exact import ExactPredictor


class LaneState:
    """The context of B lanes stepped together: per layer the keys/values of the last window - 1 slots
    (a ring: order never matters, every sum is exact) and, in the ring's last row, of BOS (the sink,
    slot 0); `ring_pos` holds each row's slot (-1: empty) and `pos` the next slot's index.

    Memory (`bytes_per_lane`, `nbytes()`, `scratch_bytes()`; checked by tests/test_exact.py). Version 2
    with the numba kernel (the CPU default): keys and values int8, (lanes, H, hd, window) per layer, and
    an int8 shift per head and row: 2 · layers · window · (n_embd + n_head) bytes a lane, 0.81 MB for the
    shipped 6 × 256 model with 8 heads and its 256-slot window, so 64 lanes hold 51.9 MB; besides
    `ring_pos` (window · 8 bytes) and the buffers of a chunk of Q slots: lanes · Q · 56 968 bytes for the
    shipped model (3.6 MB for a 64-lane decode step). Version 1: int16 rings, 1.57 MB a lane (100.7 MB
    for 64 lanes); a lane whose key or value leaves int16 (never seen on real input) gets an int32 copy
    of that layer's ring (int64 when a clamp exceeds int32), allocated for all lanes of that layer the
    first time, at most 3× that, plus one byte per lane and layer (`wide`). The torch path: float64
    rings, 6.3 MB a lane. The whole 64-lane decoder of the shipped model (version 2): 51.9 MB of rings,
    3.6 MB of buffers, the predictor's int8 weights and int64 biases (`ExactPredictor.weight_bytes`:
    4.9 MB; version 1's float64: 38.4 MB) and the float model it was derived from (20.0 MB).
    """

    def __init__(self, pred: "ExactPredictor", lanes: int) -> None:
        self.lanes, self.pos = lanes, 0
        H, hd, rows, L = pred.n_head, pred.head_dim, pred.ring + 1, len(pred.blocks)
        dev = pred.device
        self.kernel, self.version = pred.kernel, pred.version
        if self.kernel == "torch":
            self.ring_k = [torch.zeros(lanes, H, rows, hd, dtype=torch.float64, device=dev) for _ in range(L)]
            self.ring_v = [torch.zeros(lanes, H, rows, hd, dtype=torch.float64, device=dev) for _ in range(L)]
            self.ring_pos = torch.full((rows,), -1, dtype=torch.int64, device=dev)
            return
        self.ring_pos = np.full(rows, -1, dtype=np.int64)
        self._scratch: dict[int, dict[str, np.ndarray]] = {}
        if self.version >= 2:               # int8 keys/values, a shift per (head, row): x' << s
            self.ring_k = [np.zeros((lanes, H, hd, rows), dtype=np.int8) for _ in range(L)]
            self.ring_v = [np.zeros((lanes, H, hd, rows), dtype=np.int8) for _ in range(L)]
            self.shift_k = [np.zeros((lanes, H, rows), dtype=np.int8) for _ in range(L)]
            self.shift_v = [np.zeros((lanes, H, rows), dtype=np.int8) for _ in range(L)]
            return
        self.ring_k = [np.zeros((lanes, H, hd, rows), dtype=np.int16) for _ in range(L)]   # rows last: the
        self.ring_v = [np.zeros((lanes, H, hd, rows), dtype=np.int16) for _ in range(L)]   # kernel's sums run on it
        self.wide_k: list[np.ndarray | None] = [None] * L      # allocated when a lane of the layer outgrows int16
        self.wide_v: list[np.ndarray | None] = [None] * L
        self.wide = np.zeros((L, lanes), dtype=np.int8)          # 1: the lane's ring of that layer is wide_k/v
        self._wide_dtype = pred.wide_dtype
        self._none = np.zeros((1, 1, 1, 1), dtype=pred.wide_dtype)

    @staticmethod
    def bytes_per_lane(pred: "ExactPredictor") -> int:
        """Bytes of keys and values a lane holds (int16 rings; 4x that with the torch path's float64)."""
        per = 2 * len(pred.blocks) * (pred.ring + 1) * pred.n_head * pred.head_dim
        if pred.kernel == "torch":
            return per * 8
        if pred.version >= 2:                                  # int8, and an int8 shift per head and row
            return per + 2 * len(pred.blocks) * (pred.ring + 1) * pred.n_head
        return per * 2

    def nbytes(self) -> int:
        """Bytes the rings, their wide copies, ring_pos and the flags hold now (scratch buffers aside)."""
        if self.kernel == "torch":
            return sum(t.numel() * t.element_size() for t in [*self.ring_k, *self.ring_v, self.ring_pos])
        if self.version >= 2:
            return sum(a.nbytes for a in [*self.ring_k, *self.ring_v, *self.shift_k, *self.shift_v, self.ring_pos])
        arrays = [*self.ring_k, *self.ring_v, *(a for a in self.wide_k + self.wide_v if a is not None),
                  self.ring_pos, self.wide]
        return sum(a.nbytes for a in arrays)

    def scratch_bytes(self) -> int:
        """Bytes of the scratch buffers allocated so far (one set per chunk size)."""
        arrays = [a for sc in self._scratch.values() for v in sc.values()
                  for a in (v.values() if isinstance(v, dict) else [v]) if isinstance(a, np.ndarray)]
        return sum(a.nbytes for a in arrays)

    def _widen(self, i: int) -> None:
        """Give the lanes of layer i marked 2 (a key or value outside int16) a wide copy of their ring."""
        if self.wide_k[i] is None:
            self.wide_k[i] = np.zeros(self.ring_k[i].shape, dtype=self._wide_dtype)
            self.wide_v[i] = np.zeros(self.ring_v[i].shape, dtype=self._wide_dtype)
        for b in np.flatnonzero(self.wide[i] == 2):
            self.wide_k[i][b] = self.ring_k[i][b]
            self.wide_v[i][b] = self.ring_v[i][b]
            self.wide[i, b] = 1

    def _ring_double(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's keys and values as float64 tensors (lanes, H, rows, hd) (for checks and tests)."""
        if self.version >= 2:
            k = np.left_shift(self.ring_k[i].astype(np.int64), self.shift_k[i][:, :, None, :]).astype(np.float64)
            v = np.left_shift(self.ring_v[i].astype(np.int64), self.shift_v[i][:, :, None, :]).astype(np.float64)
        else:
            k, v = self.ring_k[i].astype(np.float64), self.ring_v[i].astype(np.float64)
            for b in np.flatnonzero(self.wide[i] == 1):
                k[b], v[b] = self.wide_k[i][b], self.wide_v[i][b]
        return (torch.from_numpy(k).transpose(-1, -2).contiguous(),
                torch.from_numpy(v).transpose(-1, -2).contiguous())
