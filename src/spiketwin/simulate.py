"""Run a converted SNN: ``simulate(snn, x, max_steps)`` -> summed output, running output, settle steps.

Each SNN family (SpikeZIP-TF ST-BIF networks, SpikeConverter iLIF networks) implements its own
``snn.simulate(x, max_steps=..., step_mode=...)`` returning a :class:`SimResult`; this function is the
one entry point users learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class SimResult:
    """What a simulation returns.

    - ``output``: ``[B, ...]`` the summed (decoded) output at the last step run: the logits.
    - ``per_step``: ``[T, B, ...]`` the running output after each step (``per_step[t]`` is the prediction if
      the simulation stopped after step ``t + 1``); steps after a sample settled repeat its final value.
    - ``settle_step``: ``[B]`` int64, the number of steps a sample needed to reach its exact final output,
      ``-1`` where ``max_steps`` ran out first.
    """

    output: torch.Tensor
    per_step: torch.Tensor
    settle_step: torch.Tensor

    @property
    def settled(self) -> torch.Tensor:
        return self.settle_step >= 0

    def accuracy_per_step(self, labels: torch.Tensor) -> torch.Tensor:
        """``[T]`` accuracy of the running prediction after each step."""
        return (self.per_step.argmax(-1) == labels.to(self.per_step.device)).double().mean(-1)


def simulate(snn: nn.Module, x, max_steps: int | None = None, step_mode: str = "m", **kwargs) -> SimResult:
    """Simulate ``snn`` on input ``x`` (a tensor, or a dict of tensors passed as keyword arguments).

    ``step_mode="m"`` runs whole chunks of time steps at once (fast); ``"s"`` runs step by step (the
    reference). Both give identical results.
    """
    run = getattr(snn, "simulate", None)
    if run is None:
        raise TypeError(f"simulate: {type(snn).__name__} is not a converted SNN (it has no .simulate); "
                        "build one with spiketwin.convert.to_snn(qann)")
    return run(x, max_steps=max_steps, step_mode=step_mode, **kwargs)
