"""Surrogate gradients: a Heaviside step forward, a smooth derivative backward.

Each surrogate is a small module: calling it on ``x = H - V_th`` gives spikes ``Θ(x)`` (1 where ``x >= 0``)
whose gradient is :meth:`Surrogate.grad` ``(x)``, the analytic derivative of the smooth function it
stands for. The fused neuron scans call :meth:`grad` directly.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
        if x.requires_grad:
            ctx.save_for_backward(x)
            ctx.surrogate = surrogate
        return heaviside(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.grad(x), None


def heaviside(x: torch.Tensor) -> torch.Tensor:
    """``Θ(x)``: 1 where ``x >= 0``, else 0, in ``x``'s dtype."""
    return (x >= 0).to(x.dtype)


class Surrogate(nn.Module):
    """Base class: ``forward`` is the spike function, ``grad`` the surrogate derivative."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"{type(self).__name__}: alpha must be positive, got {alpha}")
        self.alpha = float(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Spike.apply(x, self)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class Sigmoid(Surrogate):
    """Derivative of ``σ(αx)``: ``α σ(αx) (1 − σ(αx))``. Spikformer uses α = 4."""

    def __init__(self, alpha: float = 4.0) -> None:
        super().__init__(alpha)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.mul(x, self.alpha).sigmoid_()
        one_minus = 1 - s
        return s.mul_(self.alpha).mul_(one_minus)  # (α σ) (1 − σ), in place: two temporaries, not four


class ATan(Surrogate):
    """Derivative of ``arctan(π α x / 2) / π + 1/2``: ``(α/2) / (1 + (π α x / 2)²)``."""

    def __init__(self, alpha: float = 2.0) -> None:
        super().__init__(alpha)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return (self.alpha / 2) / (1 + (math.pi / 2 * self.alpha * x).square())
