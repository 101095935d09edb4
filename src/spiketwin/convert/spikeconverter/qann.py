"""ANN -> QANN for the iLIF SNN: each ReLU becomes a ``2^T``-level quantizer whose step is calibrated from a
percentile of its activations (quantizers already in the model get theirs the same way)."""

from __future__ import annotations

import copy
import math

import torch
from torch import fx, nn

from ...models.vit import ViT
from ...quant import Quantizer
from .front import DEFAULT_PERCENTILE, call_sites, check_supported, fold_batchnorm, is_relu, Recorder, trace
from .ilif import ILIFSNN
from .rate import RateSNN

def _percentile(x: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q``-th percentile of all elements of ``x`` (nearest rank)."""
    flat = x.detach().flatten()
    rank = min(flat.numel(), max(1, math.ceil(q / 100 * flat.numel())))
    return flat.kthvalue(rank).values


def _vit_with_quantizers(model: ViT, levels: int) -> ViT:
    """A copy of the ViT with quantizers in its ``*_quant`` slots (SpikeZIP-TF's places: signed after the patch
    embedding, norm1, q, k, v, attn @ v, proj, norm2, fc2 and the final norm; unsigned after softmax and after
    fc1, which absorbs the activation)."""
    qann = copy.deepcopy(model)
    param = next(qann.parameters())

    def quantizer(signed: bool) -> Quantizer:
        return Quantizer(levels, signed).to(device=param.device, dtype=param.dtype)

    qann.patch_embed.quant, qann.norm_quant = quantizer(True), quantizer(True)
    for block in qann.blocks:
        attn, mlp = block.attn, block.mlp
        block.norm1_quant, block.norm2_quant = quantizer(True), quantizer(True)
        attn.q_quant, attn.k_quant, attn.v_quant = quantizer(True), quantizer(True), quantizer(True)
        attn.attn_quant, attn.out_quant, attn.proj_quant = quantizer(False), quantizer(True), quantizer(True)
        mlp.act, mlp.act_quant, mlp.fc2_quant = nn.Identity(), quantizer(False), quantizer(True)
    return qann


def to_ilif_qann(model: nn.Module, levels: int, calibration: torch.Tensor | None = None,
                 percentile: float = DEFAULT_PERCENTILE) -> SpikeConverterQANN:
    """The QANN of ``model`` for an iLIF SNN with ``T = log2(levels)`` steps per phase.

    BatchNorms are folded, each ReLU becomes an unsigned ``levels``-level :class:`Quantizer` with step
    ``p / levels``, ``p`` the ``percentile``-th percentile of that ReLU's outputs on ``calibration``
    (``[N, C, H, W]``, a few hundred training images) in the float model. ``model`` is not modified.
    """
    levels = int(levels)
    if levels < 2 or levels & (levels - 1):
        raise ValueError(f"to_qann(neuron='ilif'): levels must be 2**T (T >= 1 steps per phase), got {levels}")
    if calibration is None or not isinstance(calibration, torch.Tensor):
        raise ValueError("to_qann(neuron='ilif') needs calibration=<tensor of a few hundred training inputs> "
                         "to set each quantizer's step from the activations")
    if not 0 < percentile <= 100:
        raise ValueError(f"to_qann(neuron='ilif'): percentile must be in (0, 100], got {percentile}")
    if isinstance(model, ViT):  # SpikeZIP-TF's quantizer places (GELU -> ReLU); steps are calibrated below
        model = _vit_with_quantizers(model, levels)
    gm = trace(model, calibration)
    fold_batchnorm(gm)
    check_supported(gm)
    relus = [n for n in gm.graph.nodes if is_relu(gm, n)]
    placed = [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), Quantizer)]
    for node in placed:
        if gm.get_submodule(node.target).levels != levels:
            raise ValueError(f"to_qann(neuron='ilif'): quantizer '{node.target}' has "
                             f"{gm.get_submodule(node.target).levels} levels, the conversion uses levels={levels}")
    with torch.no_grad():
        recorder = Recorder(gm, [n.name for n in relus] + [n.args[0].name for n in placed])
        recorder.run(calibration)
        for node in placed:  # step from the percentile of |input|: p / (L/2) signed, p / L unsigned
            quantizer = gm.get_submodule(node.target)
            p = _percentile(recorder.values[node.args[0].name].abs(), percentile)
            scale = levels // 2 if quantizer.signed else levels
            quantizer.step.copy_((p / scale).clamp_min(torch.finfo(quantizer.step.dtype).tiny))
            quantizer.initialized.fill_(True)
    ref = next(gm.parameters(), calibration)
    sites = call_sites(gm)
    for i, node in enumerate(relus):
        quantizer = Quantizer(levels, signed=False).to(device=ref.device, dtype=ref.dtype)
        p = _percentile(recorder.values[node.name], percentile)
        with torch.no_grad():
            quantizer.step.copy_((p / levels).clamp_min(torch.finfo(quantizer.step.dtype).tiny))
            quantizer.initialized.fill_(True)
        if node.op == "call_module" and sites[node.target] == 1:
            gm.add_submodule(node.target, quantizer)
            continue
        name = f"relu_quant_{i}"
        gm.add_submodule(name, quantizer)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return SpikeConverterQANN(gm, levels.bit_length() - 1)


class SpikeConverterQANN(nn.Module):
    """A ReLU CNN with BatchNorm folded and each ReLU replaced by a ``2^T``-level quantizer (``.net``).

    ``forward(x)``: ``[B, C, H, W] -> [B, classes]``. Train it like any model (QAT); then :meth:`to_snn`.
    """

    def __init__(self, net: fx.GraphModule, phase_steps: int) -> None:
        super().__init__()
        self.net, self.phase_steps = net, int(phase_steps)

    @property
    def levels(self) -> int:
        return 2 ** self.phase_steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def quantizers(self) -> dict[str, Quantizer]:
        """Node name -> quantizer, in graph order."""
        return {n.name: self.net.get_submodule(n.target) for n in self.net.graph.nodes
                if n.op == "call_module" and isinstance(self.net.get_submodule(n.target), Quantizer)}

    def to_snn(self, k: float = 2.0) -> ILIFSNN:
        """The iLIF SNN (amplification ``k``; exactly equivalent for ``k = 2``)."""
        return ILIFSNN(self, k)

    def to_rate_snn(self) -> RateSNN:
        """The classic rate-coded conversion: soft-reset IF neurons with threshold ``p = s 2^T``."""
        return RateSNN(self)

