"""What the neurons share: checking and storing a firing threshold."""

from __future__ import annotations

import torch


def as_threshold(threshold: float | torch.Tensor) -> torch.Tensor:
    """``threshold`` as a tensor buffer (a Python number as float64); it must be positive and finite."""
    if isinstance(threshold, (int, float)):  # a Python number keeps its full (float64) precision
        t = torch.tensor(float(threshold), dtype=torch.float64)
    else:
        t = torch.as_tensor(threshold).detach().clone()
    if not bool((t > 0).all()) or not bool(torch.isfinite(t).all()):
        raise ValueError(f"threshold must be positive and finite, got {threshold}")
    return t
