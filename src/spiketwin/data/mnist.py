"""MNIST from its published IDX files (``*-images-idx3-ubyte[.gz]``, ``*-labels-idx1-ubyte[.gz]``)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

_MAGIC = {3: 2051, 1: 2049}  # images, labels


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read one IDX file (gzip or plain) holding unsigned bytes with ``ndim`` dimensions."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MNIST file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"MNIST file {path} is not a readable (gzip) IDX file: {e}") from e
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"MNIST file {path} is truncated: {len(data)} bytes, the header alone needs {header}")
    magic, *dims = np.frombuffer(data[:header], dtype=">u4").tolist()
    if magic != _MAGIC[ndim]:
        raise ValueError(f"MNIST file {path}: magic number {magic}, expected {_MAGIC[ndim]} (ubyte, {ndim}-D)")
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise ValueError(f"MNIST file {path} is truncated or padded: {len(data) - header} data bytes for "
                         f"dimensions {dims} ({expected} expected)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"MNIST: neither {root / stem} nor {root / stem}.gz exists")


def load_mnist(root: str | Path, split: str = "t10k"):
    """Return ``(x, y)`` of an MNIST split (``"train"`` or ``"t10k"``): ``x`` ``[N, 1, 28, 28]`` in ``[0, 1]``."""
    root = Path(root)
    if split not in ("train", "t10k"):
        raise ValueError(f"MNIST split must be 'train' or 't10k', got {split!r}")
    images = read_idx(_find(root, f"{split}-images-idx3-ubyte"), 3)
    labels = read_idx(_find(root, f"{split}-labels-idx1-ubyte"), 1)
    if len(images) != len(labels):
        raise ValueError(f"MNIST {split} in {root}: {len(images)} images but {len(labels)} labels")
    x = torch.from_numpy(images.copy()).unsqueeze(1).float() / 255.0
    return x, torch.from_numpy(labels.astype(np.int64))


def mnist_split(root: str | Path, n_train: int = 8000):
    """The test split cut in two by index, as used by the benchmarks: first ``n_train`` to train, the rest
    to test. Returns ``(x_train, y_train, x_test, y_test)``."""
    x, y = load_mnist(root, "t10k")
    if not 0 < n_train < len(y):
        raise ValueError(f"n_train must be in (0, {len(y)}), got {n_train}")
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]
