"""Vision Transformer with timm's keywords and state-dict keys, written for exact SNN conversion.

``ViT(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio, act)`` has
timm's parameter names (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.i.norm1``,
``blocks.i.attn.qkv``, ``blocks.i.attn.proj``, ``blocks.i.norm2``, ``blocks.i.mlp.fc1``, ``blocks.i.mlp.fc2``,
``norm``, ``head``), so a timm checkpoint loads by key (:func:`load_timm_safetensors`).

The model is plain: the conversions trace it (:mod:`spiketwin.convert.graph`) and place their quantizers by the
traced graph's node kinds, so it has no quantizer slots. ``q @ kᵀ`` and ``attn @ v`` go through
:class:`~spiketwin.ops.MatMul` (energy reports count it as a product of two activations). Every forward indexes
from the end (``[..., N, D]``), so the same module tree runs a batch ``[B, C, H, W]`` or ``[T, B, C, H, W]``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..extras import require
from ..utils import load_state_dict_checked
from ..ops import MatMul
from .registry import register

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: ``[..., C, H, W] -> [..., N, D]`` with ``N = (H/p) (W/p)``."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"PatchEmbed: img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(-2).transpose(-2, -1)


class Attention(nn.Module):
    """Multi-head self-attention, ``[..., N, D] -> [..., N, D]``, timm's maths and key names.

    ``q`` is scaled by ``head_dim^-1/2`` before ``q @ kᵀ``, as the official SpikeZIP-TF code does.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.matmul_qk = MatMul()
        self.softmax = nn.Softmax(dim=-1)
        self.matmul_av = MatMul()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim))  # [..., N, 3, H, d]
        q, k, v = (t.transpose(-3, -2) for t in qkv.unbind(-3))  # [..., H, N, d]
        attn = self.softmax(self.matmul_qk(q * self.scale, k.transpose(-2, -1)))  # [..., H, N, N]
        out = self.matmul_av(attn, v)  # [..., H, N, d]
        return self.proj(out.transpose(-3, -2).flatten(-2))


class Mlp(nn.Module):
    """``fc2(act(fc1(x)))``, hidden width ``mlp_ratio * D``."""

    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = ACTIVATIONS[act]()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, act: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision Transformer (class-token pooling), timm's constructor keywords and state-dict keys.

    Input ``[B, C, H, W]`` (or with more leading dimensions); output logits ``[B, num_classes]``.
    ``act="gelu"`` is timm's default; SpikeZIP-TF needs ``"relu"`` (its conversion replaces GELU by ReLU).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"ViT: act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        if num_classes < 1 or depth < 1:
            raise ValueError(f"ViT: need num_classes >= 1 and depth >= 1, got {num_classes} and {depth}")
        self.num_classes, self.embed_dim, self.act = num_classes, embed_dim, act
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, act) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` unless ``x`` is ``[..., C, H, W]`` with this model's C, H, W."""
        pe = self.patch_embed
        expected = (pe.in_chans, pe.img_size, pe.img_size)
        if not isinstance(x, torch.Tensor) or x.dim() < 4 or tuple(x.shape[-3:]) != expected:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"ViT: expected images [B, {expected[0]}, {expected[1]}, {expected[2]}], got {got}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., C, H, W] -> [..., N + 1, D]``: tokens after the final norm."""
        self.check_input(x)
        x = self.patch_embed(x)
        cls = self.cls_token.expand(*x.shape[:-2], 1, x.shape[-1])
        x = torch.cat([cls, x], dim=-2) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., N + 1, D] -> [..., num_classes]`` from the class token."""
        return self.head(x[..., 0, :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def load_timm_safetensors(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a timm ViT checkpoint (a ``.safetensors`` file) into ``model`` by key; returns ``model``.

    Fails with a ``ValueError`` listing missing keys, unexpected keys and shape mismatches (the
    ``pos_embed`` shape encodes ``img_size / patch_size``). Needs ``safetensors`` (``pip install 'spiketwin[io]'``).
    """
    load_file = require("safetensors.torch", "io", "load_timm_safetensors").load_file
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_timm_safetensors: no such file {path}")
    return load_state_dict_checked(model, load_file(str(path)), f"load_timm_safetensors({path})")


def _config(**defaults):
    def factory(**overrides) -> ViT:
        return ViT(**{**defaults, **overrides})
    return factory


_TIMM_CONFIGS = {
    "vit_tiny_patch16_224": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16_224": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16_224": dict(embed_dim=1024, depth=24, num_heads=16),
}
for _name, _cfg in _TIMM_CONFIGS.items():
    register(_name)(_config(img_size=224, patch_size=16, in_chans=3, num_classes=1000, **_cfg))

# Small ReLU ViTs for the bundled digits (8x8) and MNIST (28x28): 16 and 49 patches plus the class token.
register("vit_digits")(_config(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=32, depth=2,
                               num_heads=2, mlp_ratio=2.0, act="relu"))
register("vit_mnist")(_config(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=2,
                              num_heads=4, mlp_ratio=2.0, act="relu"))
