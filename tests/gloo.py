"""The process group of the two-process tests (gloo over a file, in ``torch.multiprocessing.spawn`` workers)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist


@contextlib.contextmanager
def gloo_group(rank: int, world: int, init_file: str) -> Iterator[None]:
    """Join the group for the block; after it, a barrier (neither rank tears gloo down while the other may still use
    it), the group destroyed, and the worker's exit without the interpreter's teardown: there gloo's threads could
    abort the process ("terminate called without an active exception", SIGABRT), which the barrier made rarer but
    not impossible (once in a CI run of 2026-12-04). An exception in the block leaves as usual, for spawn to report."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)
