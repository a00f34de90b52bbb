"""Inference on several processes started by torchrun: which process this is, its share of
the work, and putting the shares' results back together.

``torchrun --nproc_per_node N --no-python lte-sr upscale IN_DIR OUT_DIR ...`` gives each of N
processes every N-th file; ``lte-sr test`` under torchrun gives each every N-th image and
rebuilds the per-image PSNRs on every process, in dataset order, so the mean is the one a
single process computes, to the bit. Where there are GPUs, process ``LOCAL_RANK`` uses GPU
``LOCAL_RANK`` (:func:`use_local_gpu`). Outside torchrun (no ``WORLD_SIZE``) everything here
is the identity: one process does all the work.

Only the results exchange needs a process group; it uses gloo on CPU tensors (a handful of
float64 numbers), so it works the same with or without GPUs. Training (:class:`DistEnv`)
starts its own group for DistributedDataParallel, which the exchange then reuses.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from .inference import resolve_device

T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def world_size() -> int:
    """How many processes share the work (torchrun's ``WORLD_SIZE``; 1 outside torchrun)."""
    size = _env_int("WORLD_SIZE", 1)
    if size < 1:
        raise ValueError(f"environment variable WORLD_SIZE must be >= 1, got {size}")
    return size


def rank() -> int:
    """This process's index among them (torchrun's ``RANK``; 0 outside torchrun)."""
    index = _env_int("RANK", 0)
    if not 0 <= index < world_size():
        raise ValueError(
            f"environment variable RANK must be in [0, WORLD_SIZE={world_size()}), got {index}"
        )
    return index


def local_rank() -> int | None:
    """This process's index on its machine (torchrun's ``LOCAL_RANK``; None outside torchrun)."""
    return _env_int("LOCAL_RANK", -1) if "LOCAL_RANK" in os.environ else None


def is_main() -> bool:
    """True on the process that reports (rank 0)."""
    return rank() == 0


def use_local_gpu() -> None:
    """Under torchrun on a machine with GPUs, make GPU ``LOCAL_RANK`` this process's current
    device, so ``"cuda"`` and ``"auto"`` mean one GPU per process. Otherwise does nothing."""
    if world_size() == 1 or not torch.cuda.is_available():
        return
    torch.cuda.set_device(local_gpu())


def local_gpu() -> int:
    """The index of this process's own GPU: ``LOCAL_RANK`` (0 outside torchrun), checked
    against the GPUs this machine has."""
    index = local_rank() or 0
    gpus = torch.cuda.device_count()
    if index >= gpus:
        raise ValueError(
            f"process with LOCAL_RANK={index} has no GPU of its own: this machine has {gpus}; "
            "start at most that many processes per node (--nproc_per_node)"
        )
    return index


def shard(items: Sequence[T]) -> list[T]:
    """This process's share of ``items``: every ``world_size()``-th one from ``rank()``, so
    each item goes to exactly one process and the shares differ in size by at most one."""
    return list(items[rank() :: world_size()])


def gather_in_order(values: Sequence[float], indices: Sequence[int], total: int) -> list[float]:
    """All processes' ``values`` as one list of ``total`` in index order, on every process.

    ``values[k]`` is this process's result for item ``indices[k]`` (its :func:`shard` of
    ``range(total)``). The exchange is a float64 all-reduce in which every slot holds one
    process's value and zeros from the rest, so each value arrives exactly; any sum or mean
    of the list then equals the one-process figure bit for bit.
    """
    if len(values) != len(indices):
        raise ValueError(
            f"values and indices must have the same length, got {len(values)} and {len(indices)}"
        )
    slots = torch.zeros(total, dtype=torch.float64)
    filled = torch.zeros(total, dtype=torch.float64)
    if len(indices):
        slots[list(indices)] = torch.tensor(list(values), dtype=torch.float64)
        filled[list(indices)] = 1.0
    if world_size() > 1:
        started_here = not dist.is_initialized()
        if started_here:
            dist.init_process_group("gloo")
        try:
            both = torch.stack((slots, filled))
            dist.all_reduce(both)
            slots, filled = both[0], both[1]
        finally:
            if started_here:
                dist.destroy_process_group()
    if not torch.equal(filled, torch.ones(total, dtype=torch.float64)):
        missing = (filled != 1).nonzero().flatten().tolist()[:5]
        raise ValueError(
            f"items {missing} were done by no process or by several (world size {world_size()})"
        )
    return slots.tolist()


def rank_device(name: str | None, local_rank: int | None) -> torch.device:
    """This process's device: ``name`` as :func:`resolve_device` reads it (None: CUDA if
    present); under torchrun (``local_rank`` set) a bare ``cuda`` is this rank's own GPU."""
    if name == "cuda" and local_rank is not None:
        device = torch.device("cuda")  # checked against this rank's GPU below
    else:
        device = resolve_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_gpu())
    return device


class DistEnv:
    """A training process's place in its group: rank, world size and device, with the
    process group started (NCCL on GPUs, gloo on CPUs) when there are several processes;
    one process is rank 0 of 1 and everything here is local."""

    def __init__(self, device: str | None) -> None:
        self.world_size = world_size()
        self.rank = rank()
        self.device = rank_device(device, local_rank())
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.enabled = self.world_size > 1
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, device_id=self.device if backend == "nccl" else None)

    @property
    def main(self) -> bool:
        """True on the process that writes files and reports (rank 0)."""
        return self.rank == 0

    def sum(self, *values: float) -> list[float]:
        """Sum numbers over the ranks."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.enabled:
            dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on one (ranks must stop together)."""
        return self.sum(float(flag))[0] > 0 if self.enabled else flag

    def close(self) -> None:
        """End the process group this process started."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
