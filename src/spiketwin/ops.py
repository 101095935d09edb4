"""Operators shared by the models and the conversions.

``MatMul`` is an activation x activation product as a module (``a @ b``), so that conversions can swap
it (SpikeZIP-TF's SESA) and energy reports can count it by both operands' firing rates.
"""

from __future__ import annotations

import torch
from torch import nn


class MatMul(nn.Module):
    """``a @ b`` (batched over leading dimensions) as a module."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b
