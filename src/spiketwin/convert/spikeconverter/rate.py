"""The classic rate-coded IF conversion of a SpikeConverter QANN, for comparison (ReLU CNNs)."""

from __future__ import annotations

import torch
from torch import nn

from ...neurons import IF
from ...quant import Quantizer
from ...simulate import SimResult
from .graph import TimeFoldedSNN
from .operators import Clock, Clocked


class RateSNN(TimeFoldedSNN):
    """Classic rate-coded conversion of the same QANN: soft-reset IF neurons (``IF(v_reset=None)``) with
    threshold ``p = s 2^T`` (the calibrated activation), spikes of amplitude ``p``, the image as a constant
    input current and biases at every step, per-step max pooling. The output is the mean readout."""

    def __init__(self, qann: nn.Module) -> None:
        T = qann.phase_steps

        def neuron(quantizer: Quantizer, clock: Clock) -> nn.Module:
            if quantizer.signed:
                raise TypeError("RateSNN: the rate-coded baseline converts ReLU CNNs only, not signed quantizers")
            theta = float(quantizer.step.detach() * 2 ** T)
            return Clocked(IF(v_threshold=theta, v_reset=None), clock, scale=theta)

        super().__init__(qann, neuron, spiking=False)

    @torch.no_grad()
    def simulate(self, x: torch.Tensor, max_steps: int | None = None, step_mode: str = "m") -> SimResult:
        """Run ``max_steps`` steps (default: the iLIF latency ``(depth + 1) T``); ``per_step[t]`` is the mean
        readout over the first ``t + 1`` steps. Rate coding never settles exactly: ``settle_step`` is -1."""
        self._check_input(x)
        steps = self._steps(max_steps)
        train = self._run(lambda start, n: x.expand(n, *x.shape), steps, step_mode, [self.readout])[self.readout]
        count = torch.arange(1, steps + 1, device=x.device, dtype=train.dtype).view(-1, *[1] * (train.dim() - 1))
        per_step = train.cumsum(0) / count
        return SimResult(per_step[-1], per_step, torch.full((len(x),), -1, dtype=torch.int64, device=x.device))
