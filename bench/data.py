"""Data pipeline costs: batched tensor augmentation versus the same ops applied image by image, and an
event sample read from the frame cache versus decoded and integrated from its AEDAT file.

    python -m bench.data [--batch 128] [--events 200000] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.common import median_seconds, print_table
from spiketwin.data.augment import spikformer_cifar_augmentation
from spiketwin.data.events import CIFAR10DVS


def fake_cifar10_dvs(root: Path, n_events: int, seed: int = 0) -> None:
    """One recording per class in AEDAT 2.0 (jAER DVS128 addresses), random pixels and polarities."""
    rng = np.random.default_rng(seed)
    for name in CIFAR10DVS.classes:
        (root / name).mkdir(parents=True)
        y, x, p = rng.integers(0, 128, n_events), rng.integers(0, 128, n_events), rng.integers(0, 2, n_events)
        pairs = np.empty((n_events, 2), ">u4")
        pairs[:, 0], pairs[:, 1] = (y << 8) | (x << 1) | p, np.arange(n_events) * 5
        (root / name / f"cifar10_{name}_0.aedat").write_bytes(b"#!AER-DAT2.0\r\n" + pairs.tobytes())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--events", type=int, default=200_000, help="events per CIFAR10-DVS-like recording")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1, as in a DataLoader worker; more threads stall on a busy machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    aug = spikformer_cifar_augmentation()
    x = torch.rand(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    batched = median_seconds(lambda: aug(x, g), args.repeats)
    per_image = median_seconds(lambda: [aug(img, g) for img in x], args.repeats)
    print_table(f"Spikformer CIFAR augmentation on [{args.batch}, 3, 32, 32] (CPU, {args.threads} thread(s), "
                f"median of {args.repeats})",
                ["path", "ms / batch", "images / s", "speed-up"],
                [["image by image", per_image * 1e3, args.batch / per_image, 1.0],
                 ["batched", batched * 1e3, args.batch / batched, per_image / batched]])

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "dvs"
        fake_cifar10_dvs(root, args.events)
        data = CIFAR10DVS(root, "all", frames=16, cache_dir=Path(tmp) / "cache")
        def cold():
            for f in (Path(tmp) / "cache").glob("*.npz"):
                f.unlink()
            return data[0]

        cold_times = median_seconds(cold, args.repeats)
        warm = median_seconds(lambda: data[0], args.repeats)
        print_table(f"CIFAR10-DVS-like sample, {args.events} events -> [16, 2, 128, 128] (median of {args.repeats})",
                    ["path", "ms / sample", "speed-up"],
                    [["decode + integrate + write cache", cold_times * 1e3, 1.0],
                     ["read from cache", warm * 1e3, cold_times / warm]])


if __name__ == "__main__":
    main()
