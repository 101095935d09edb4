"""Learnable-step activation quantizer (LSQ), the ANN twin of the ST-BIF neuron.

``Q(x) = s * clamp(floor(x/s + 1/2), n_min, n_max)``: round half up, like the neuron (not
``torch.round``, which rounds half to even). ``L`` levels are ``[-L/2, L/2 - 1]`` when signed and
``[0, L - 1]`` when unsigned.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .kernels.quantize import quantize


def round_half_up_ste(x: torch.Tensor) -> torch.Tensor:
    """``floor(x + 1/2)`` forward, identity gradient (straight-through estimator)."""
    return x + (torch.floor(x + 0.5) - x).detach()


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` forward, gradient multiplied by ``scale``."""
    return x * scale + (x - x * scale).detach()


def level_range(levels: int, signed: bool) -> tuple[int, int]:
    """``(n_min, n_max)`` for ``levels`` quantization levels."""
    if signed:
        if levels < 4 or levels % 2:
            raise ValueError(f"a signed quantizer needs an even number of levels >= 4, got {levels}")
        return -levels // 2, levels // 2 - 1
    if levels < 2:
        raise ValueError(f"an unsigned quantizer needs levels >= 2, got {levels}")
    return 0, levels - 1


def _read_flag_again(quantizer: nn.Module, incompatible_keys) -> None:
    quantizer._ready = False


class Quantizer(nn.Module):
    """LSQ quantizer with ``levels`` levels and a learnable step ``s`` (``.step``).

    The step is initialised from the first batch it sees (``s = 2 mean|x| / sqrt(n_max)``, LSQ's rule),
    training or not; ``.initialized`` records that, and travels in the state dict. The flag is read once (then
    again after a ``load_state_dict``), not at every forward: on CUDA each read would wait for the device.
    Gradients: straight through ``floor`` inside ``[n_min, n_max]``, zero outside; the step's gradient is LSQ's,
    scaled by ``1/sqrt(numel * n_max)``. The output is contiguous whatever the input's layout (attention's q, k, v
    arrive as strided views): the layout the SNN's neurons give too, since a matrix product may round differently
    on another layout, and the one the next matrix product would copy its operand into anyway.
    """

    nir_refusal = "quantizer: this is a QANN; convert it to an SNN first"

    def __init__(self, levels: int = 16, signed: bool = False) -> None:
        super().__init__()
        self.levels, self.signed = int(levels), bool(signed)
        self.n_min, self.n_max = level_range(self.levels, self.signed)
        self.step = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(False))
        self._ready = False  # .initialized was read and found set
        self.register_load_state_dict_post_hook(_read_flag_again)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set the step from a batch: ``2 mean|x| / sqrt(n_max)`` (never zero)."""
        s = 2 * x.detach().abs().mean() / math.sqrt(self.n_max)
        tiny = torch.finfo(x.dtype).tiny if x.is_floating_point() else 1e-30
        self.step.copy_(s.clamp_min(tiny))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._ready:
            if not bool(self.initialized):
                self.initialize(x)
            self._ready = True
        s = self.step.to(x.dtype)
        if self.training and s.requires_grad:
            s = scale_grad(s, 1.0 / math.sqrt(x.numel() * self.n_max))
        else:  # inference on the CPU: one fused pass where the native kernel takes x
            fused = quantize(x, s, self.n_min, self.n_max)
            if fused is not None:
                return fused
        return (round_half_up_ste(x / s).clamp(self.n_min, self.n_max) * s).contiguous()

    def extra_repr(self) -> str:
        return f"levels={self.levels}, signed={self.signed}, step={self.step.item():.4g}"
