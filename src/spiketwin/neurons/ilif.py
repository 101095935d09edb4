"""The iLIF neuron of SpikeConverter: amplifying, soft reset, temporal separation (accumulate, then fire)."""

from __future__ import annotations

import torch

from ..base import StatefulModule
from .common import as_threshold


class ILIF(StatefulModule):
    """Inverse-leaky integrate-and-fire neuron of SpikeConverter, with temporal separation.

    Time runs in periods of ``phase_steps`` (T) steps. During a period the neuron *accumulates* its input,
    amplifying by ``k`` each step (``V_acc <- k V_acc + x``), so an input train ``x_1..x_T`` contributes
    ``Σ k^(T-t) x_t``. At the end of the period that potential (plus ``θ / (2 k^T)`` when ``round=True``)
    moves to the *firing* potential ``.v``, and during the next period the neuron fires: each step
    ``V <- k V``, spike if ``V >= θ``, soft reset ``V -= θ``. Both happen at once (double buffering), so a
    new input period can start while the last one fires: this is what makes layer pipelining possible.

    A spike is emitted with amplitude ``θ / k^T``: with ``k = 2`` the output train is the binary
    expansion (most significant first) of the accumulated potential, i.e. the period's summed,
    ``k``-weighted output is ``s · clamp(floor(P/s + 1/2), 0, 2^T - 1)`` with ``s = θ / 2^T``: a ReLU
    quantized to ``2^T`` levels. Output of the first period is zero (nothing accumulated yet).
    """

    nir_refusal = "iLIF neuron: amplification and temporal separation (accumulate, then fire) have no NIR neuron"

    state_names = ("v", "v_acc")

    def __init__(
        self,
        threshold: float | torch.Tensor,
        k: float = 2.0,
        phase_steps: int = 8,
        round: bool = True,
        step_mode: str = "m",
    ) -> None:
        super().__init__(step_mode)
        if not k > 1.0:
            raise ValueError(f"ILIF: the amplification k must be > 1, got {k}")
        if phase_steps < 1:
            raise ValueError(f"ILIF: phase_steps must be >= 1, got {phase_steps}")
        self.k, self.phase_steps, self.round = float(k), int(phase_steps), bool(round)
        self.register_buffer("threshold", as_threshold(threshold))
        self.t = 0

    @property
    def spike_amplitude(self) -> torch.Tensor:
        """``θ / k^T``: the value of one output spike, and the quantization step when ``k = 2``."""
        return self.threshold / self.k ** self.phase_steps

    def reset(self) -> None:
        super().reset()
        self.t = 0

    def single_step(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.threshold.to(x.dtype)
        if self.v_acc is None:
            self.v = torch.zeros_like(x)
            self.v_acc = torch.zeros_like(x)
        if self.t > 0 and self.t % self.phase_steps == 0:
            self.v = self.v_acc + self.spike_amplitude.to(x.dtype) / 2 if self.round else self.v_acc
            self.v_acc = torch.zeros_like(x)
        self.t += 1
        v = self.v * self.k
        fired = v >= theta
        self.v = torch.where(fired, v - theta, v)
        self.v_acc = self.v_acc * self.k + x
        return fired.to(x.dtype) * self.spike_amplitude.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"threshold={self.threshold.flatten()[:4].tolist()}, k={self.k}, phase_steps={self.phase_steps}, "
                f"round={self.round}, {super().extra_repr()}")
