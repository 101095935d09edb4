"""The embedded default: scikit-learn's bundled 8x8 digits (1,797 images, no download)."""

from __future__ import annotations

import torch

from ..extras import require


def load_digits(test_fraction: float = 0.2, seed: int = 0):
    """Return ``(x_train, y_train, x_test, y_test)``: ``x`` is ``[N, 1, 8, 8]`` in ``[0, 1]``.

    The split is a fixed random permutation (``seed``), so every run sees the same test set.
    Needs scikit-learn (``pip install spiketwin[data]``).
    """
    sk_load_digits = require("sklearn.datasets", "data", "load_digits").load_digits
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = sk_load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]
