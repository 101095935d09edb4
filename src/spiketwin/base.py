"""Stateful spiking modules: the two clocks (one step / whole sequence), lazy state, reset.

A spiking module keeps named state tensors (membrane potential, spike counts, running sums) that are
created lazily from the first input and cleared by :func:`reset`. ``step_mode="s"`` means one call is one
time step (``[B, ...]``); ``step_mode="m"`` means one call is a whole sequence (``[T, B, ...]``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

STEP_MODES = ("s", "m")


def check_step_mode(step_mode: str) -> str:
    if step_mode not in STEP_MODES:
        raise ValueError(f"step_mode must be 's' (one step, [B, ...]) or 'm' (sequence, [T, B, ...]), "
                         f"got {step_mode!r}")
    return step_mode


def keep_samples(value: torch.Tensor, dim: int, index: torch.Tensor, batch: int | None = None) -> torch.Tensor:
    """The samples ``index`` of ``value``, whose dimension ``dim`` holds the ``batch`` samples alone or folded
    sample-major with other dimensions (``[B*L, H]``: a longer dimension; ``batch=None``: alone)."""
    if batch is None or value.shape[dim] == batch:
        return value.index_select(dim, index)
    return value.unflatten(dim, (batch, -1)).index_select(dim, index).flatten(dim, dim + 1)


class StatefulModule(nn.Module):
    """Base of every module that keeps state across time steps.

    Subclasses list their state in ``state_names``; each state attribute is ``None`` until the first input
    creates it, and :meth:`reset` sets it back to ``None``. :meth:`keep` drops samples from the batch
    (dimension 0 of every state tensor), which is how simulators stop samples that have settled.
    """

    state_names: tuple[str, ...] = ()
    batch_dim: int | None = 0
    """The dimension of the state tensors that indexes samples (``None``: unknown, samples cannot leave)."""
    #: Why NIR (``spiketwin.export.to_nir``) cannot express this module, or None when it can.
    nir_refusal: str | None = "a stateful spiking operator with no NIR node"

    def __init__(self, step_mode: str = "m") -> None:
        super().__init__()
        self.step_mode = check_step_mode(step_mode)
        for name in self.state_names:
            setattr(self, name, None)

    def reset(self) -> None:
        for name in self.state_names:
            setattr(self, name, None)

    def keep(self, index: torch.Tensor, batch: int | None = None) -> None:
        """Keep only the samples ``index`` (a 1-D index into the batch of ``batch`` samples, along ``batch_dim``,
        where they may be folded with other dimensions: :func:`keep_samples`) in every state tensor."""
        if self.batch_dim is None:
            raise RuntimeError(f"{type(self).__name__}.keep: the batch dimension of its state is unknown; run the "
                               "whole batch")
        for name in self.state_names:
            value = getattr(self, name)
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                setattr(self, name, keep_samples(value, self.batch_dim, index, batch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step_mode == "s":
            return self.single_step(x)
        if x.dim() < 1:
            raise ValueError(f"{type(self).__name__} in step_mode 'm' expects [T, B, ...], got a scalar")
        return self.multi_step(x)

    def single_step(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def multi_step(self, x_seq: torch.Tensor) -> torch.Tensor:
        """Default sequence path: the step path, step by step. Subclasses override it with a faster one."""
        return torch.stack([self.single_step(x) for x in x_seq])

    def extra_repr(self) -> str:
        return f"step_mode={self.step_mode!r}"


def stateful_modules(module: nn.Module) -> Iterable[StatefulModule]:
    return (m for m in module.modules() if isinstance(m, StatefulModule))


def reset(module: nn.Module) -> nn.Module:
    """Clear the state of every spiking module inside ``module`` (call it between samples). Returns it."""
    for m in stateful_modules(module):
        m.reset()
    return module


def set_step_mode(module: nn.Module, step_mode: str) -> nn.Module:
    """Switch every spiking module inside ``module`` to ``step_mode`` ('s' or 'm'). Returns it."""
    check_step_mode(step_mode)
    for m in module.modules():
        if hasattr(m, "step_mode"):
            m.step_mode = step_mode
    return module


class TimeFold(nn.Module):
    """Run a stateless layer on a sequence by folding time into the batch: ``[T, B, ...] -> [T*B, ...]``.

    In ``step_mode="s"`` the layer sees the ``[B, ...]`` step input unchanged.
    """

    def __init__(self, layer: nn.Module, step_mode: str = "m") -> None:
        super().__init__()
        self.layer = layer
        self.step_mode = check_step_mode(step_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step_mode == "s":
            return self.layer(x)
        y = self.layer(x.flatten(0, 1))
        return y.unflatten(0, x.shape[:2])
