"""Where training runs: the device, and the process group of a multi-process (DDP) run.

`setup()` reads the environment `torchrun` gives each process (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) and joins the process group (backend `nccl` on CUDA, `gloo` on CPU);
without those variables, or with WORLD_SIZE=1, it joins nothing and the run is a plain
single-process one. The returned `DistContext` is what the `Trainer` needs to know: the rank,
the number of ranks, this rank's device, its share of a batch's rows (`rows`), and collectives
(`all_reduce`, `barrier`, `wrap` for DistributedDataParallel) bounded by a timeout. Every
collective that fails, because a peer died, hung past the timeout or became unreachable, raises
`DistributedError` naming this rank and what it was doing, so one killed process ends the
whole run with a message instead of leaving the others waiting forever.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

DEFAULT_TIMEOUT_S = 300.0


class DistributedError(RuntimeError):
    """A collective operation failed: another rank died, hung past the timeout, or is unreachable."""


def resolve_device(name: str | None = None, local_rank: int = 0) -> torch.device:
    """The device a rank trains on.

    Takes: `None` or `"auto"` (this rank's CUDA GPU when PyTorch sees one, else the CPU),
    `"cpu"`, `"cuda"` (GPU number `local_rank`, i.e. one GPU per process on a node) or
    `"cuda:N"`, and the rank's index on its node.
    Returns: a `torch.device`.
    Raises: `ValueError` for another name, or a GPU that is not there.
    """
    name = "auto" if name is None else name
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if name not in ("auto", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: PyTorch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                         "use --device cpu")
    try:
        device = torch.device(name) if name.startswith("cuda:") else torch.device("cuda", local_rank)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from e
    if device.index >= torch.cuda.device_count():
        raise ValueError(f"device {device} does not exist: PyTorch sees {torch.cuda.device_count()} GPU(s); "
                         "start at most that many processes per node (torchrun --nproc_per_node) or use --device cpu")
    return device


@dataclass(frozen=True)
class DistContext:
    """One rank's view of the run: `rank` of `world_size`, `local_rank` on its node, its `device`,
    and the `timeout_s` bounding every collective. `world_size == 1` is a single-process run,
    in which every method is a no-op (no process group is needed)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def distributed(self) -> bool:
        """Whether several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes metrics, checkpoints and the progress bar."""
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This rank's contiguous share of a batch of `batch_size` rows (sizes differ by at most one).

        Raises: `ValueError` when there are fewer rows than ranks.
        """
        if batch_size < self.world_size:
            raise ValueError(f"batch size {batch_size} is smaller than the {self.world_size} processes; "
                             "every process needs at least one sequence per step")
        return slice(self.rank * batch_size // self.world_size, (self.rank + 1) * batch_size // self.world_size)

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Turn a communication failure inside the block into a `DistributedError` saying `what` failed.

        Out-of-memory errors pass through unchanged: they are this rank's own, not a peer's.
        """
        try:
            yield
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as e:
            if not self.distributed:
                raise
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} failed. Another training process probably "
                f"died, was killed or hung for more than {self.timeout_s:.0f} s, or the network between them "
                f"failed; see its output. The run folder keeps its last complete checkpoint: continue with "
                f"--resume RUN_DIR. ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            ) from e

    def all_reduce(self, values: torch.Tensor, op: str = "sum", what: str = "an all-reduce") -> torch.Tensor:
        """Element-wise `op` ("sum" or "max") of `values` over all ranks; `values` itself when single-process.

        Takes: a tensor (moved to this rank's device for the collective). Returns: a new tensor
        on that device. Raises: `ValueError` for another op, `DistributedError`.
        """
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
        if op not in ops:
            raise ValueError(f"op must be one of {', '.join(ops)}, got {op!r}")
        if not self.distributed:
            return values
        out = values.to(self.device, copy=True)
        with self.guard(what):
            dist.all_reduce(out, op=ops[op])
        return out

    def barrier(self, what: str = "a barrier") -> None:
        """Wait until every rank gets here. Raises: `DistributedError`."""
        if self.distributed:
            with self.guard(what):
                dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """`module` under DistributedDataParallel (gradients averaged over ranks in `backward`), or as is."""
        if not self.distributed:
            return module
        with self.guard("wrapping the model in DistributedDataParallel (it broadcasts rank 0's weights)"):
            # The model's buffers are constants (bit weights, the parity penalty): no need to re-sync them.
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(module, device_ids=device_ids, forward_sync_buffers=False)


def setup(device: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """This process's `DistContext`, joining the process group that torchrun's variables describe.

    Takes: the device name (see `resolve_device`) and the timeout in seconds for joining and
    for every later collective. A process group initialised beforehand by the caller is used as is.
    Returns: a `DistContext`; single-process (nothing joined) without WORLD_SIZE > 1 in the environment.
    Raises: `ValueError` for a bad device or environment, `DistributedError` when the group
    cannot be formed within the timeout.
    """
    if timeout_s <= 0:
        raise ValueError(f"the distributed timeout must be a positive number of seconds, got {timeout_s}")
    try:
        world_size = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
        rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as e:
        raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them): {e}") from e
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world_size} do not describe a rank of a run")
    ctx = DistContext(rank, world_size, local_rank, resolve_device(device, local_rank), timeout_s)
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)
    if ctx.distributed and not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise ValueError(f"WORLD_SIZE={world_size} but {' and '.join(missing)} unset: "
                             "start multi-process runs with torchrun, which sets them")
        with ctx.guard(f"joining the process group at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"):
            dist.init_process_group("nccl" if ctx.device.type == "cuda" else "gloo",
                                    timeout=datetime.timedelta(seconds=timeout_s),
                                    rank=rank, world_size=world_size,
                                    device_id=ctx.device if ctx.device.type == "cuda" else None)
    return ctx


def teardown() -> None:
    """Leave the process group, if this process joined one (call once, when training is over)."""
    if dist.is_initialized():
        dist.destroy_process_group()
