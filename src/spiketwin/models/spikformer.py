"""Spikformer (Zhou et al., ICLR 2023): a spiking transformer trained directly with surrogate gradients.

Faithful to the official code (github.com/ZK-Zhou/spikformer, on SpikingJelly 0.0.0.0.12):

- every neuron is the foundation :class:`~spiketwin.neurons.LIF` (tau 2, V_th 1, hard reset to 0, detached
  reset, sigmoid surrogate alpha 4); the attention neuron fires at V_th 0.5;
- **SPS** (spiking patch splitting): 4 x [Conv3x3 (no bias) -> BN -> LIF] with D/8, D/4, D/2, D channels and
  MaxPool(3, 2, 1) on the spikes after the stages listed in ``pool_after``; **RPE**: Conv3x3 -> BN -> LIF added
  to its input;
- **SSA**: Q, K, V each Linear -> BN -> LIF; ``attn = Q Kᵀ · scale`` (no softmax); ``attn V``; attention LIF;
  Linear -> BN -> LIF. **MLP**: Linear -> BN -> LIF -> Linear -> BN -> LIF. Block: ``x += SSA(x); x += MLP(x)``;
- **head**: mean over tokens, mean over T, Linear. A static image ``[B, C, H, W]`` is repeated T times; a
  sequence ``[T, B, C, H, W]`` (event frames) is used as it is.

Tensors are time-major. Convolutions, batch norms and pooling see ``T*B`` rows (:class:`~spiketwin.base.TimeFold`);
token-wise Linear -> BN sees ``T*B*N`` rows; only the LIF neurons scan over T. The official code's quirks (Linear
layers written as 1x1 convolutions, LayerNorms and a position embedding that the forward never uses) and how
this module handles each are listed in ``docs/spikformer.md``. The model is plain PyTorch: what autograd keeps
in training is made small from outside, by :func:`spiketwin.memory.pack` (which ``fit`` applies by default).
"""

from __future__ import annotations

import torch
from torch import nn

from ..base import TimeFold
from ..neurons import LIF
from ..ops import MatMul
from . import register

#: Parameter groups that the official code creates but never uses in its forward pass (see the docs).
UNUSED_GROUPS = ("block_norms", "pos_embed", "final_norm")


class LinearBN(nn.Module):
    """Token-wise Linear then BatchNorm over features: ``[..., C_in] -> [..., C_out]``.

    The official code's ``BatchNorm1d`` on ``[T*B, C, N]`` (and ``BatchNorm2d`` on ``[T*B, C, H, W]``) normalises
    each channel over all ``T*B*N`` positions; folding every leading dimension into rows does the same thing
    without transposes.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.bn = nn.BatchNorm1d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.linear(x.reshape(-1, x.shape[-1])))
        return y.view(*x.shape[:-1], y.shape[-1])


class ConvBNLIF(nn.Module):
    """Conv3x3 (no bias) -> BN on ``T*B`` rows -> LIF: ``[T, B, C_in, H, W] -> [T, B, C_out, H, W]`` spikes."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv_bn = TimeFold(nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
                                              nn.BatchNorm2d(out_channels)))
        self.lif = LIF(tau=2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lif(self.conv_bn(x))


class SPS(nn.Module):
    """Spiking patch splitting with relative position embedding: ``[T, B, C, H, W] -> [T, B, N, D]``.

    ``pool_after`` lists the stages (0..3) whose spikes go through MaxPool(3, 2, 1): ``(2, 3)`` for CIFAR
    (32 -> 8, 64 tokens), ``(0, 1, 2, 3)`` for ImageNet (224 -> 14) and DVS (128 -> 8).
    """

    def __init__(self, in_channels: int, dim: int, pool_after: tuple[int, ...]) -> None:
        super().__init__()
        if dim % 8:
            raise ValueError(f"SPS: the embedding dim must be divisible by 8 (channels D/8..D), got {dim}")
        if not set(pool_after) <= {0, 1, 2, 3}:
            raise ValueError(f"SPS: pool_after lists stages 0..3, got {pool_after}")
        channels = [in_channels, dim // 8, dim // 4, dim // 2, dim]
        self.stages = nn.ModuleList(ConvBNLIF(channels[i], channels[i + 1]) for i in range(4))
        self.pool_after = tuple(sorted(pool_after))
        self.pool = TimeFold(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.rpe = ConvBNLIF(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.pool_after:
                x = self.pool(x)
        x = x + self.rpe(x)
        return x.flatten(-2).transpose(-1, -2).contiguous()  # token-major once, so that Linear folds need no copy


class SSA(nn.Module):
    """Spiking self-attention: ``[T, B, N, D] -> [T, B, N, D]`` spikes, no softmax.

    Q, K, V are binary, so ``attn = Q Kᵀ · scale`` counts coincident spikes per head; ``attn V`` feeds the
    attention LIF (threshold 0.5), then Linear -> BN -> LIF projects back.
    """

    def __init__(self, dim: int, num_heads: int, scale: float, qkv_bias: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"SSA: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.scale = num_heads, float(scale)
        self.q, self.k, self.v = (LinearBN(dim, dim, qkv_bias) for _ in range(3))
        self.q_lif, self.k_lif, self.v_lif = (LIF(tau=2.0) for _ in range(3))
        self.qk, self.av = MatMul(), MatMul()
        self.attn_lif = LIF(tau=2.0, v_threshold=0.5)
        self.proj = LinearBN(dim, dim, True)
        self.proj_lif = LIF(tau=2.0)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, N, D] -> [T, B, heads, N, D/heads]``."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(-2, -3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (lif(lbn(x)) for lbn, lif in ((self.q, self.q_lif), (self.k, self.k_lif), (self.v, self.v_lif)))
        q, k, v = (self._heads(t).contiguous() for t in (q, k, v))  # head-major: the products fold without copies
        attn = self.qk(q, k.transpose(-2, -1)) * self.scale
        x = self.attn_lif(self.av(attn, v).transpose(-2, -3).flatten(-2))
        return self.proj_lif(self.proj(x))


class MLP(nn.Module):
    """Linear -> BN -> LIF -> Linear -> BN -> LIF: ``[T, B, N, D] -> [T, B, N, D]`` spikes."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc1_lif = LinearBN(dim, hidden), LIF(tau=2.0)
        self.fc2, self.fc2_lif = LinearBN(hidden, dim), LIF(tau=2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2_lif(self.fc2(self.fc1_lif(self.fc1(x))))


class Block(nn.Module):
    """``x = x + SSA(x); x = x + MLP(x)`` on ``[T, B, N, D]``.

    ``norm1`` / ``norm2`` exist only with ``unused_norms=True``: the official code builds these LayerNorms and
    never calls them; they are kept so that parameter counts and state dicts match it.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, scale: float, qkv_bias: bool,
                 unused_norms: bool) -> None:
        super().__init__()
        if unused_norms:  # trainable as in the official code, never in the graph: they get no gradient
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SSA(dim, num_heads, scale, qkv_bias)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class Spikformer(nn.Module):
    """Spikformer-``depth``-``dim``: ``[B, C, H, W]`` images (repeated ``T`` times) or ``[T, B, C, H, W]``
    sequences -> ``[B, num_classes]`` logits.

    Args:
        img_size: input height = width; the tokens are ``(img_size / 2^len(pool_after))^2``.
        in_channels, num_classes, dim, depth, num_heads, mlp_ratio: the architecture.
        T: time steps a static image is repeated for.
        pool_after: SPS stages followed by max pooling (see :class:`SPS`).
        attn_scale: the fixed scale of ``Q Kᵀ`` (0.125; 0.25 in the DVS code).
        qkv_bias: bias on the Q, K, V projections (the CIFAR code's ``nn.Linear`` has one, the ImageNet and DVS
            codes' ``Conv1d(bias=False)`` do not).
        token_init: ``"trunc_normal"`` (std 0.02, zero bias: the CIFAR code's ``nn.Linear`` init) or
            ``"default"`` (PyTorch's, which the ImageNet / DVS 1x1 convolutions keep) for token-wise layers.
        unused: which of the official code's unused parameter groups to build (:data:`UNUSED_GROUPS`):
            ``"block_norms"`` (two LayerNorms per block), ``"pos_embed"`` (``[1, N, D]``) and ``"final_norm"``.
            They are trainable, as in the official code (so its trainable-parameter count, 9,330,874 for CIFAR-10,
            is ours), and never receive a gradient, there as here (:meth:`unused_parameter_names`).
    """

    def __init__(
        self,
        img_size: int = 32,
        in_channels: int = 3,
        num_classes: int = 10,
        dim: int = 384,
        depth: int = 4,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        T: int = 4,
        pool_after: tuple[int, ...] = (2, 3),
        attn_scale: float = 0.125,
        qkv_bias: bool = True,
        token_init: str = "trunc_normal",
        unused: tuple[str, ...] = ("block_norms",),
    ) -> None:
        super().__init__()
        if T < 1:
            raise ValueError(f"Spikformer: T must be >= 1, got {T}")
        if not set(unused) <= set(UNUSED_GROUPS):
            raise ValueError(f"Spikformer: unused must be a subset of {UNUSED_GROUPS}, got {unused}")
        if token_init not in ("trunc_normal", "default"):
            raise ValueError(f"Spikformer: token_init must be 'trunc_normal' or 'default', got {token_init!r}")
        self.T, self.img_size, self.in_channels = int(T), int(img_size), int(in_channels)
        self.num_tokens = (img_size // 2 ** len(pool_after)) ** 2
        self.patch_embed = SPS(in_channels, dim, pool_after)
        if "pos_embed" in unused:
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.block = nn.ModuleList(Block(dim, num_heads, mlp_ratio, attn_scale, qkv_bias, "block_norms" in unused)
                                   for _ in range(depth))
        if "final_norm" in unused:
            self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear) and (token_init == "trunc_normal" or m is self.head):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def unused_parameter_names(self) -> list[str]:
        """Names of the official code's parameters that the forward never uses (see ``unused``): trainable, so
        they count as in the official code, but they never get a gradient (``fit`` tells DDP so)."""
        return [n for n, _ in self.named_parameters() if n == "pos_embed" or n.startswith("norm.")
                or ".norm1." in n or ".norm2." in n]

    def _as_sequence(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return x.unsqueeze(0).expand(self.T, *x.shape)
        if x.dim() == 5:
            return x
        raise ValueError(f"Spikformer expects images [B, C, H, W] or sequences [T, B, C, H, W], "
                         f"got shape {tuple(x.shape)}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` or ``[T, B, C, H, W]`` -> block output ``[T, B, N, D]`` (sums of spikes)."""
        x = self._as_sequence(x)
        if x.shape[2] != self.in_channels:
            raise ValueError(f"Spikformer: input has {x.shape[2]} channels (shape {tuple(x.shape)}), "
                             f"the model expects {self.in_channels}")
        x = self.patch_embed(x)
        for blk in self.block:
            x = blk(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """``[T, B, N, D]`` -> logits ``[B, classes]``: mean over tokens, mean over T, Linear."""
        return self.head(features.mean(2).mean(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_CIFAR = dict(img_size=32, in_channels=3, dim=384, depth=4, num_heads=12, T=4, pool_after=(2, 3),
              attn_scale=0.125, qkv_bias=True, token_init="trunc_normal", unused=("block_norms",))
_IMAGENET = dict(img_size=224, in_channels=3, num_classes=1000, T=4, pool_after=(0, 1, 2, 3), attn_scale=0.125,
                 qkv_bias=False, token_init="default", unused=("block_norms",))


@register("spikformer_cifar10")
def spikformer_cifar10(**overrides) -> Spikformer:
    """Spikformer-4-384 for CIFAR-10 (32x32, T = 4): 9,330,874 parameters."""
    return Spikformer(**{**_CIFAR, "num_classes": 10, **overrides})


@register("spikformer_cifar100")
def spikformer_cifar100(**overrides) -> Spikformer:
    """Spikformer-4-384 for CIFAR-100: 9,365,524 parameters."""
    return Spikformer(**{**_CIFAR, "num_classes": 100, **overrides})


@register("spikformer_dvs")
def spikformer_dvs(**overrides) -> Spikformer:
    """Spikformer-2-256 for CIFAR10-DVS (``[16, B, 2, 128, 128]`` event frames, 16 heads, scale 0.25)."""
    config = dict(img_size=128, in_channels=2, num_classes=10, dim=256, depth=2, num_heads=16, T=16,
                  pool_after=(0, 1, 2, 3), attn_scale=0.25, qkv_bias=False, token_init="default",
                  unused=UNUSED_GROUPS)
    return Spikformer(**{**config, **overrides})


def _imagenet(depth: int, dim: int, num_heads: int):
    def factory(**overrides) -> Spikformer:
        return Spikformer(**{**_IMAGENET, "depth": depth, "dim": dim, "num_heads": num_heads, **overrides})
    factory.__doc__ = f"Spikformer-{depth}-{dim} for ImageNet (224x224, T = 4, {num_heads} heads)."
    return factory


for _depth, _dim, _heads in ((8, 384, 12), (8, 512, 8), (10, 512, 8), (8, 768, 12)):
    register(f"spikformer_{_depth}_{_dim}")(_imagenet(_depth, _dim, _heads))
