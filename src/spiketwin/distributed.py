"""Several processes (``torchrun``): the process group, sums over all processes, and gathering per-batch results.

Training (:func:`spiketwin.train.fit`) and evaluation of SNNs (:func:`spiketwin.simulate.evaluate_per_step`) run
unchanged under ``torchrun``: :func:`process_group` initialises ``torch.distributed`` from the variables torchrun
sets (NCCL on CUDA, Gloo on CPU) and returns ``(rank, world_size)``; without torchrun it is ``(0, 1)`` and
nothing here communicates.
"""

from __future__ import annotations

import os

import torch


def process_group(device: torch.device) -> tuple[int, int]:
    """``(rank, world_size)``; initialises the default process group when ``torchrun`` asked for several
    processes (``WORLD_SIZE`` > 1) and none exists yet. On CUDA the process's current device becomes ``device``
    (NCCL's collectives use the current device)."""
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return 0, 1
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size()


def all_sum(values: torch.Tensor, world_size: int) -> torch.Tensor:
    """``values`` summed over all processes (in place; unchanged in a single process)."""
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(values)
    return values


def gather_objects(value: object, world_size: int) -> list[object]:
    """Every process's ``value`` (picklable; tensors on the CPU), in rank order, on every process."""
    if world_size == 1:
        return [value]
    import torch.distributed as dist

    gathered: list[object] = [None] * world_size
    dist.all_gather_object(gathered, value)
    return gathered
