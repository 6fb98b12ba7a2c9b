"""Data-parallel training under ``torchrun``: the process group, each rank's share of a batch, reductions.

``torchrun`` (and Kubeflow Trainer's torch runtime, through it) starts one process per device and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. With
``WORLD_SIZE`` above 1, ``init_from_env`` joins the group: NCCL on GPUs (each process on the GPU of its local
rank), gloo on CPUs. A single process (no ``WORLD_SIZE``, or 1) needs none of this and is the default.

How ranks share the work (``fit`` in ``loop.py``): every rank holds the split and draws the same shuffled order
each epoch (same seed); each global batch of ``batch_size`` rows is cut into ``world_size`` contiguous slices and
rank ``r`` trains on slice ``r``: DistributedSampler's contract (disjoint rows per rank, all rows per epoch).
Each rank's loss is weighted by its slice's share of the batch, so DDP's gradient average is exactly the
gradient of the whole batch's mean loss: N ranks take the same steps one process would, up to float rounding.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

from kfops.components.contracts import KfopsError

log = logging.getLogger(__name__)

PROCESS_GROUP_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    backend: str  # nccl or gloo

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError as err:
        raise KfopsError(f"train: environment variable {name} must be an integer, got {value!r}") from err


def world_size_from_env() -> int:
    return _env_int("WORLD_SIZE", 1)


def init_from_env(device: str = "auto") -> DistContext | None:
    """Join the process group torchrun describes (None for a single process). ``device`` is the training
    device setting: cuda (or auto with a GPU) uses NCCL, cpu uses gloo."""
    import torch
    import torch.distributed as dist

    world = world_size_from_env()
    if world <= 1:
        return None
    if dist.is_initialized():
        return current()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise KfopsError("train: device 'cuda' was requested but no CUDA device is available")
        if local_rank >= torch.cuda.device_count():
            raise KfopsError(
                f"train: local rank {local_rank} has no GPU (this node has {torch.cuda.device_count()}); start "
                "at most one process per GPU (torchrun --nproc-per-node)"
            )
        torch.cuda.set_device(local_rank)  # "cuda" is now this process's own GPU
    backend = "nccl" if use_cuda else "gloo"
    if not os.environ.get("MASTER_ADDR"):
        raise KfopsError("train: WORLD_SIZE > 1 but MASTER_ADDR is not set; start distributed training with torchrun")
    dist.init_process_group(backend=backend, timeout=PROCESS_GROUP_TIMEOUT)
    context = current()
    log.info("rank %d of %d (local rank %d), backend %s", rank, world, local_rank, backend)
    return context


def current() -> DistContext | None:
    """The process group this process is in, or None (single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return None
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=_env_int("LOCAL_RANK", 0),
        local_world_size=_env_int("LOCAL_WORLD_SIZE", dist.get_world_size()),
        backend=dist.get_backend(),
    )


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def slice_of(lo: int, hi: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous part of rows [lo, hi): sizes differ by at most one, lower ranks larger."""
    size = hi - lo
    base, extra = divmod(size, world_size)
    start = lo + rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def all_sum(values: list[float], device: str) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64)."""
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_gather_rows(local, total: int, world_size: int):
    """Concatenate each rank's rows (split as ``slice_of`` splits ``total``) into the whole tensor, on every rank."""
    import torch
    import torch.distributed as dist

    longest = slice_of(0, total, 0, world_size)[1]
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    sizes = [b - a for a, b in (slice_of(0, total, r, world_size) for r in range(world_size))]
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


def any_rank(flag: bool, device: str) -> bool:
    """True on every rank if ``flag`` is true on any (a rank that stops must not leave the others waiting)."""
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def gather_objects(obj, world_size: int) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    import torch.distributed as dist

    out: list = [None] * world_size
    dist.all_gather_object(out, obj)
    return out
