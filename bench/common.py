"""Timing helpers shared by the benchmarks: medians of repeated runs taken in turns, a plain-text table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from spiketwin.utils import atomic_write


@dataclass(frozen=True)
class Timing:
    """Median seconds of one call: wall clock, and CPU time of this process (all its threads)."""

    seconds: float
    cpu_seconds: float


def _wait_for_gpu() -> None:
    """Let queued CUDA work finish, so that it counts for the call that queued it (nothing without CUDA in use)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def round_robin(fns: Sequence[Callable[[], object]], repeats: int, warmup: int = 1) -> list[Timing]:
    """Time every function of ``fns`` in turns (fn 1, fn 2, ..., then fn 1 again), so that a change in machine
    load hits them alike: ``warmup`` untimed turns, then ``repeats`` timed ones. Returns, per function, the
    median (``statistics.median``: the mean of the middle two for an even count) of its calls' wall and CPU
    seconds."""
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for turn in range(warmup + repeats):
        for fn, w, c in zip(fns, wall, cpu):
            _wait_for_gpu()
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            _wait_for_gpu()
            if turn >= warmup:
                w.append(time.perf_counter() - wall_start)
                c.append(time.process_time() - cpu_start)
    return [Timing(statistics.median(w), statistics.median(c)) for w, c in zip(wall, cpu)]


def median_seconds(fn: Callable[[], object], repeats: int = 7, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs (CUDA synchronised)."""
    return round_robin([fn], repeats, warmup)[0].seconds


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Cache ``model``'s weights at ``path`` (safetensors, written atomically; folders created as needed)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))


def print_table(title: str, header: list[str], rows: list[list[object]]) -> None:
    cells = [header] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))
