"""SpikingJelly 2.0's sides of ``bench.gpu`` (imported only when ``spikingjelly`` is importable; not a benchmark).

- :func:`sj_spikezip_vit`: the ViT of a spiketwin ANN (same weights, read by timm's keys) as a QANN in the form that
  SpikingJelly's ``SpikeZIPTFQANNRecipe(model_family="vit")`` converts (quantizers with ``s``, ``sym``,
  ``pos_max``, ``neg_min``, ``level``; attention with ``quan_q``, ..., ``quan_proj``), its quantizers calibrated
  here by the LSQ rule spiketwin uses, then converted by SpikingJelly. :func:`run_sj_snn` runs it as SpikingJelly's
  recipe does: the image at the first of ``T`` steps, zeros after, one multi-step call, outputs summed over steps.
- :func:`sj_spikformer`: SpikingJelly's built-in Spikformer (ImageNet-style stem; a variant of the official code,
  see docs/spikformer.md), per-step logits averaged over time.

SpikingJelly picks its neuron implementation itself (native CUDA, else Triton, else torch: its own order of speed).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LSQ(nn.Module):
    """A quantizer with the attributes SpikingJelly's recipe reads; its step is set from the first batch it sees
    (``2 mean|x| / sqrt(pos_max)``, as ``spiketwin.quant.Quantizer``); rounds half up."""

    def __init__(self, level: int, sym: bool) -> None:
        super().__init__()
        self.level, self.sym = level, sym
        self.pos_max, self.neg_min = (level // 2 - 1, -level // 2) if sym else (level - 1, 0)
        self.register_buffer("s", torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(self.s) == 0.0:
            self.s.copy_((2 * x.abs().mean() / math.sqrt(self.pos_max)).clamp_min(1e-12))
        return torch.floor(x / self.s + 0.5).clamp(self.neg_min, self.pos_max) * self.s


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, level: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.quan_q, self.quan_k, self.quan_v = LSQ(level, True), LSQ(level, True), LSQ(level, True)
        self.attn_quan, self.after_attn_quan, self.quan_proj = LSQ(level, False), LSQ(level, True), LSQ(level, True)
        self.attn_drop, self.proj_drop = nn.Identity(), nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the QANN (calibration and the reference logits)
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k, v = self.quan_q(q) * self.scale, self.quan_k(k), self.quan_v(v)
        attn = self.attn_quan((q @ k.transpose(-2, -1)).softmax(-1))
        out = self.after_attn_quan(attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.quan_proj(self.proj(out))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, level: int) -> None:
        super().__init__()
        self.fc1, self.act_quan = nn.Linear(dim, hidden), LSQ(level, False)  # the unsigned quantizer is the ReLU
        self.fc2, self.quan_fc2 = nn.Linear(hidden, dim), LSQ(level, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quan_fc2(self.fc2(self.act_quan(self.fc1(x))))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, level: int) -> None:
        super().__init__()
        self.norm1, self.quan_norm1 = nn.LayerNorm(dim, eps=1e-6), LSQ(level, True)
        self.attn = Attention(dim, heads, level)
        self.norm2, self.quan_norm2 = nn.LayerNorm(dim, eps=1e-6), LSQ(level, True)
        self.mlp = Mlp(dim, hidden, level)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.quan_norm1(self.norm1(x)))
        return x + self.mlp(self.quan_norm2(self.norm2(x)))


class ViTQANN(nn.Module):
    """The QANN in SpikingJelly's expected layout; the patch quantizer sits in ``patch_embed.norm`` (the slot
    SpikingJelly's patched forward applies after the patch projection), the final one after ``norm``."""

    def __init__(self, state: dict[str, torch.Tensor], heads: int, level: int) -> None:
        super().__init__()
        dim, chans, patch, _ = state["patch_embed.proj.weight"].shape
        depth = len([k for k in state if k.startswith("blocks.") and k.endswith(".norm1.weight")])
        hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(chans, dim, patch, patch)
        self.patch_embed.norm = LSQ(level, True)
        self.cls_token = nn.Parameter(state["cls_token"].clone())
        self.pos_embed = nn.Parameter(state["pos_embed"].clone())
        self.blocks = nn.Sequential(*(Block(dim, heads, hidden, level) for _ in range(depth)))
        self.norm = nn.Sequential(nn.LayerNorm(dim, eps=1e-6), LSQ(level, True))
        self.head = nn.Linear(dim, state["head.weight"].shape[0])
        state = {("norm.0." + k[5:] if k.startswith("norm.") else k): v for k, v in state.items()}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected or any(not k.endswith(".s") for k in missing):
            raise ValueError(f"sj_spikezip_vit: the ANN's keys do not map (missing {missing}, unexpected {unexpected})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.norm(self.patch_embed.proj(x).flatten(2).transpose(1, 2))
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


@torch.no_grad()
def sj_spikezip_vit(ann: nn.Module, heads: int, level: int, calibration: torch.Tensor,
                    T: int) -> tuple[nn.Module, nn.Module]:
    """``(qann, snn)``: SpikingJelly's SpikeZIP-TF QANN of the ViT ``ann`` (read by timm's state-dict keys; ``heads``
    attention heads), calibrated on ``calibration``, and its SNN."""
    from spikingjelly.activation_based.ann2snn import ModuleConverter, SpikeZIPTFQANNRecipe

    state = {k: v.detach().float() for k, v in ann.state_dict().items()}
    qann = ViTQANN(state, heads, level).to(calibration.device).eval()
    qann(calibration)
    snn = ModuleConverter(recipe=SpikeZIPTFQANNRecipe(time_steps=T, model_family="vit"),
                          device=calibration.device).convert(qann).eval()
    return qann, snn


@torch.no_grad()
def run_sj_snn(snn: nn.Module, x: torch.Tensor, T: int) -> torch.Tensor:
    """Summed logits of SpikingJelly's SNN over ``T`` steps: the image at the first step, zeros after."""
    from spikingjelly.activation_based import functional

    functional.set_step_mode(snn, "m")
    functional.reset_net(snn)
    seq = x.new_zeros((T, *x.shape))
    seq[0] = x
    return snn(seq).sum(0)


class _MeanOverTime(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).mean(0)


def sj_spikformer(T: int, img_size: int, dim: int, depth: int, heads: int, num_classes: int) -> nn.Module:
    """SpikingJelly's built-in Spikformer, logits averaged over the T steps."""
    from spikingjelly.activation_based.model.spikformer import Spikformer

    return _MeanOverTime(Spikformer(T=T, img_size_h=img_size, img_size_w=img_size, num_classes=num_classes,
                                    embed_dims=dim, num_heads=heads, depths=depth))


def reset_net(model: nn.Module) -> None:
    from spikingjelly.activation_based import functional

    functional.reset_net(model)
