"""A small directly trained spiking CNN (Conv-BN-LIF blocks, average pooling, a linear readout).

Everything in its per-step network (:attr:`SpikingCNN.step_network`) is expressible in NIR, so it is the
model the NIR export (``spiketwin export-nir``) and the energy report are shown on. The default size fits
scikit-learn's bundled 8x8 digits.
"""

from __future__ import annotations

import torch
from torch import nn

from ..base import TimeFold
from ..neurons import LIF
from .registry import register


class SpikingCNN(nn.Module):
    """``[B, C, H, W]`` images (repeated ``T`` times) or ``[T, B, C, H, W]`` sequences -> ``[B, classes]``.

    Per step: ``len(channels)`` x [Conv3x3 -> BN -> LIF -> AvgPool2d(2)], flatten, Linear; the logits are
    the readout averaged over the ``T`` steps.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, img_size: int = 8,
                 channels: tuple[int, ...] = (16, 32), T: int = 4, tau: float = 2.0) -> None:
        super().__init__()
        if T < 1:
            raise ValueError(f"SpikingCNN: T must be >= 1, got {T}")
        if img_size % 2 ** len(channels):
            raise ValueError(f"SpikingCNN: img_size {img_size} must be divisible by 2^{len(channels)} "
                             f"(one 2x2 pooling per block)")
        self.T, self.in_channels = int(T), int(in_channels)
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out in channels:
            layers += [TimeFold(nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                                              nn.BatchNorm2d(c_out))),
                       LIF(tau=tau), TimeFold(nn.AvgPool2d(2))]
            c_in = c_out
        side = img_size // 2 ** len(channels)
        layers += [TimeFold(nn.Flatten()), TimeFold(nn.Linear(c_in * side * side, num_classes))]
        self.step_network = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.unsqueeze(0).expand(self.T, *x.shape)
        elif x.dim() != 5:
            raise ValueError(f"SpikingCNN expects [B, C, H, W] or [T, B, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[2] != self.in_channels:
            raise ValueError(f"SpikingCNN: input has {x.shape[2]} channels, the model expects {self.in_channels}")
        return self.step_network(x).mean(0)


@register("scnn")
def scnn(**overrides) -> SpikingCNN:
    """The digits-sized spiking CNN: 1x8x8 input, 16 and 32 channels, T = 4."""
    return SpikingCNN(**overrides)
