"""Run a converted SNN: ``simulate(snn, x, max_steps)`` -> summed output, running output, settle steps.

Each SNN family (SpikeZIP-TF ST-BIF networks, SpikeConverter iLIF networks) implements its own
``snn.simulate(x, max_steps=..., step_mode=...)`` returning a :class:`SimResult`; this function is the
one entry point users learn. :func:`evaluate_per_step` runs a whole test set batch by batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .utils import progress_bar


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


@dataclass
class StepEvaluation:
    """A test set simulated batch by batch (:func:`evaluate_per_step`).

    - ``accuracy``: ``[T]`` accuracy of the running prediction after each step, ``T`` the longest run (a batch
      that stopped earlier keeps its final answer);
    - ``settle_step``: ``[N]`` as in :class:`SimResult` (``-1``: not settled within ``max_steps``);
    - ``prediction``: ``[N]`` the class of the summed output at the end.
    """

    accuracy: torch.Tensor
    settle_step: torch.Tensor
    prediction: torch.Tensor


def evaluate_per_step(snn: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128,
                      max_steps: int | None = None, step_mode: str = "m", progress: bool = False,
                      steps: int | None = None) -> StepEvaluation:
    """Simulate ``snn`` on ``x`` in batches of ``batch_size`` (on the SNN's device, a progress bar when
    ``progress``) and score the running prediction after every step against the labels ``y``. Only counts
    are kept per batch, so memory does not grow with the number of classes. ``steps`` pads the curve to at
    least that length (e.g. ``max_steps``, to report accuracy at fixed T)."""
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"evaluate_per_step: x has {len(x)} samples, y {len(y)}; need as many, at least one")
    device = next(snn.parameters()).device
    correct, settle, prediction = [], [], []
    chunks = range(0, len(y), batch_size)
    for i in progress_bar(chunks, len(chunks), "SNN", progress):
        result = simulate(snn, x[i:i + batch_size].to(device), max_steps=max_steps, step_mode=step_mode)
        correct.append((result.per_step.argmax(-1).cpu() == y[i:i + batch_size]).sum(-1))
        settle.append(result.settle_step.cpu())
        prediction.append(result.output.argmax(-1).cpu())
    longest = max([len(c) for c in correct] + [steps or 0])
    total = sum(torch.cat([c, c[-1:].expand(longest - len(c))]) for c in correct)
    return StepEvaluation(total.double() / len(y), torch.cat(settle), torch.cat(prediction))
