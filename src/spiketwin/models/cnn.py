"""Small ReLU CNNs (VGG- and ResNet-style) for the SpikeConverter conversion.

Both are plain PyTorch (Conv2d, BatchNorm, ReLU, max/average pooling, flatten, residual additions) so that
``torch.fx`` traces them and :func:`spiketwin.convert.to_qann` (``neuron="ilif"``) can convert them.
Registered configurations: ``vgg_small`` / ``resnet_small`` (8x8 digits) and ``vgg_mnist`` /
``resnet_mnist`` (28x28 MNIST). Input ``[B, C, H, W]``, output logits ``[B, num_classes]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .registry import register

POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    """3x3 convolution (no bias, padding 1), BatchNorm, ReLU."""
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


def _pool(kind: str | None, where: str) -> list[nn.Module]:
    if kind is None:
        return []
    if kind not in POOLS:
        raise ValueError(f"{where}: pooling must be 'max', 'avg' or None, got {kind!r}")
    return [POOLS[kind](2)]


class VGGSmall(nn.Module):
    """VGG-style CNN: stages of ``[conv3x3-BN-ReLU] x convs_per_stage`` then a 2x2 pooling, then an MLP head.

    ``pools[i]`` is the pooling after stage ``i`` (``"max"``, ``"avg"`` or ``None``); ``image_size`` must
    stay divisible through the poolings. Head: flatten, Linear-BN-ReLU (``hidden``), Linear.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 8,
                 channels: Sequence[int] = (16, 32), pools: Sequence[str | None] = ("max", "avg"),
                 convs_per_stage: int = 1, hidden: int = 64) -> None:
        super().__init__()
        if len(pools) != len(channels):
            raise ValueError(f"VGGSmall: one pooling per stage is needed, got {len(pools)} pools for "
                             f"{len(channels)} stages")
        layers: list[nn.Module] = []
        c_in, size = in_channels, image_size
        for i, (c, pool) in enumerate(zip(channels, pools)):
            for j in range(convs_per_stage):
                layers += conv_bn_relu(c_in if j == 0 else c, c)
            layers += _pool(pool, f"VGGSmall stage {i}")
            if pool is not None:
                if size % 2:
                    raise ValueError(f"VGGSmall: image_size {image_size} is odd ({size}) before the pooling "
                                     f"of stage {i}; use a size divisible by 2^(number of poolings)")
                size //= 2
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * size * size, hidden), nn.BatchNorm1d(hidden),
                                  nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    The shortcut is the identity, or a strided 1x1 conv + BN when the shape changes.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """ResNet-style CNN: stem conv3x3-BN-ReLU (+ optional stem pooling), stages of basic blocks (the first
    block of every stage after the first has stride 2), global average pooling, Linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, channels: Sequence[int] = (16, 32),
                 blocks_per_stage: int = 1, stem_pool: str | None = None) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn_relu(in_channels, channels[0]), *_pool(stem_pool, "ResNetSmall stem"))
        blocks: list[nn.Module] = []
        c_in = channels[0]
        for i, c in enumerate(channels):
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(c_in, c, 2 if (i > 0 and j == 0) else 1))
                c_in = c
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


@register("vgg_small")
def vgg_small(**overrides) -> VGGSmall:
    """8x8 digits: 2 stages (16, 32 channels), max then average pooling, hidden 64."""
    return VGGSmall(**{"image_size": 8, "channels": (16, 32), "pools": ("max", "avg"), **overrides})


@register("vgg_mnist")
def vgg_mnist(**overrides) -> VGGSmall:
    """28x28 MNIST: 2 stages (16, 32 channels), max then average pooling (28 -> 14 -> 7), hidden 128."""
    return VGGSmall(**{"image_size": 28, "channels": (16, 32), "pools": ("max", "avg"), "hidden": 128,
                       **overrides})


@register("resnet_small")
def resnet_small(**overrides) -> ResNetSmall:
    """8x8 digits: stem 16 channels, two stages of one basic block (16, 32 channels)."""
    return ResNetSmall(**{"channels": (16, 32), **overrides})


@register("resnet_mnist")
def resnet_mnist(**overrides) -> ResNetSmall:
    """28x28 MNIST: stem 16 channels with 2x2 max pooling (28 -> 14), stages (16, 32) of one basic block."""
    return ResNetSmall(**{"channels": (16, 32), "stem_pool": "max", **overrides})
