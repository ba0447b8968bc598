"""Data-parallel training helpers, for runs launched with `torchrun` (or alone).

    info = setup_distributed()                 # reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*
    model = wrap_ddp(model.to(info.device), info)
    x, y = global_batch(...)[rank_slice(global_batch_size, info)]
    loss_for_logging = all_reduce_mean(loss.detach(), info)
    if is_main(): save(...)
    cleanup()

Without the torchrun variables (or with WORLD_SIZE=1) everything degrades to a single
process: no process group is created and every helper is a no-op.

Data sharding scheme (ours): every rank builds the *same* global batch from one generator
seeded with `global_batch_seed(seed, step)` (the rank does not enter the seed), then keeps
rows `rank_slice(global_batch_size, info)`: rank r of W takes rows [r * B/W, (r + 1) * B/W).
Since DDP averages gradients over ranks and each rank's loss is a mean over its equal-sized
slice, the averaged gradient equals the gradient of the mean loss over the whole global
batch: a W-process run and a 1-process run with the same global batch see the same samples
and take the same steps, up to the order of floating-point reductions. Generating the full
batch on every rank costs W times the data generation; for the synthetic tasks this is small
next to the forward/backward pass. `shard_generator_seed(seed, rank)` gives independent
per-rank streams for what must differ between ranks (e.g. dropout masks).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

# Odd 64-bit constants that decorrelate derived seeds (the SplitMix64 increment and multiplier).
_GOLDEN = 0x9E3779B97F4A7C15
_MIX = 0xBF58476D1CE4E5B9
_MASK = (1 << 63) - 1


@dataclass(frozen=True)
class DistInfo:
    """rank: this process's global rank; world_size: number of processes; local_rank: rank
    on this machine; device: the device this process uses; is_main: rank == 0."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from err


def setup_distributed(
    backend: str | None = None, device: str | torch.device | None = None, timeout_s: float = 600.0
) -> DistInfo:
    """Joins the process group that torchrun describes in the environment.

    Args:
        backend: "gloo", "nccl" or None to choose: NCCL when CUDA is available (and the
            device is not forced to CPU), gloo otherwise.
        device: force a device type ("cpu" or "cuda"); None: CUDA when available.
        timeout_s: collective timeout.

    Returns:
        a DistInfo. With WORLD_SIZE unset or 1, no process group is created.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"setup_distributed: RANK={rank} and WORLD_SIZE={world_size} are "
            "inconsistent; expected 0 <= RANK < WORLD_SIZE"
        )
    use_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank % max(1, torch.cuda.device_count()))
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    info = DistInfo(rank, world_size, local_rank, dev)
    if world_size == 1:
        return info
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(
                f"setup_distributed: WORLD_SIZE={world_size} but {name} is not set; "
                "launch with torchrun or set MASTER_ADDR and MASTER_PORT"
            )
    if backend is None:
        backend = "nccl" if use_cuda else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(
            f"setup_distributed: unknown backend {backend!r}; expected one of ('gloo', 'nccl')"
        )
    if not dist.is_initialized():
        dist.init_process_group(
            backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s)
        )
    return info


def current_info() -> DistInfo:
    """The DistInfo of the current process group (single-process when none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    rank = dist.get_rank()
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    return DistInfo(rank, dist.get_world_size(), _env_int("LOCAL_RANK", rank), device)


def is_main() -> bool:
    """True on rank 0 and in single-process runs: the process that logs and saves."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    """Waits for every rank (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup(wait: bool = True) -> None:
    """Leaves the process group, if any.

    With `wait` (the normal end of a run) every rank first meets at a barrier, so that no rank
    tears down its connections while a peer still has a collective in flight: gloo can then
    abort the peer ("terminate called without an active exception"). Pass `wait=False` on an
    error path, where a failed peer would never reach the barrier.
    """
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def _mix(x: int) -> int:
    x = (x + _GOLDEN) & ((1 << 64) - 1)
    x = ((x ^ (x >> 30)) * _MIX) & ((1 << 64) - 1)
    return (x ^ (x >> 31)) & _MASK


def global_batch_seed(seed: int, step: int) -> int:
    """Seed of the generator that draws the *global* batch of `step`: the same on every rank.

    Every rank draws the full global batch from `torch.Generator().manual_seed(this)` and
    keeps its `rank_slice` (see the module docstring), so the samples do not depend on the
    number of processes.
    """
    return _mix(_mix(int(seed)) ^ int(step))


def shard_generator_seed(seed: int, rank: int) -> int:
    """A per-rank seed, for randomness that must differ between ranks (dropout masks, or
    data when ranks draw independent shards instead of slicing one global batch)."""
    return _mix(_mix(int(seed) ^ 0x5EED) ^ int(rank))


def rank_slice(global_batch_size: int, info: DistInfo) -> slice:
    """The rows of the global batch this rank trains on: [r * B/W, (r + 1) * B/W).

    Raises ValueError when the global batch does not split evenly (unequal slices would
    weight samples differently from the 1-process run).
    """
    if global_batch_size % info.world_size:
        raise ValueError(
            f"global batch size {global_batch_size} does not split evenly over "
            f"{info.world_size} processes"
        )
    per_rank = global_batch_size // info.world_size
    return slice(info.rank * per_rank, (info.rank + 1) * per_rank)


def wrap_ddp(model: nn.Module, info: DistInfo, **ddp_kwargs: Any) -> nn.Module:
    """DistributedDataParallel around `model` (already on info.device); the model itself in a
    single-process run. Unwrap with `unwrap(model)` to save or inspect it."""
    if not info.distributed:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_mean(value: Tensor | float, info: DistInfo | None = None) -> Tensor | float:
    """The mean of `value` over ranks (a float in, a float out; a tensor in, a new tensor out).

    In a single process the value is returned unchanged.
    """
    info = current_info() if info is None else info
    if not info.distributed:
        return value
    is_tensor = isinstance(value, Tensor)
    t = value.detach().clone() if is_tensor else torch.tensor(float(value), dtype=torch.float64)
    t = t.to(info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t = t / info.world_size
    return t if is_tensor else float(t.item())


__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "barrier",
    "cleanup",
    "current_info",
    "is_main",
    "shard_generator_seed",
    "rank_slice",
    "setup_distributed",
    "global_batch_seed",
    "unwrap",
    "wrap_ddp",
]
