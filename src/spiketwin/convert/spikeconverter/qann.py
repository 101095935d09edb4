"""ANN -> QANN for the iLIF SNN, on the conversion engine's traced graph (:mod:`spiketwin.convert.graph`).

The model is traced like any model (``torch.export``, dynamic batch), GELU-like activations become ReLUs
(``activation="relu"``, the default here, as SpikeZIP-TF does), every BatchNorm is folded into the Conv/Linear
before it (a bias must enter once per period, so no affine op may sit between a layer and its neuron), then
quantizers are placed by the engine's node kinds:

- a **ReLU network** (its only non-linear nodes are ReLUs and max pooling, no product of two signals): each ReLU
  becomes an unsigned quantizer (which clamps at 0, so it is the ReLU, quantized);
- **any other model** (transformers): SpikeZIP-TF's places (:func:`spiketwin.convert.qann.placement`), signed
  unless the value is non-negative; a ReLU whose output is quantized is absorbed by its quantizer.

Each quantizer's step comes from ``p``, the ``percentile``-th percentile of ``|value|`` in the float model on
``calibration``: ``p / L`` unsigned, ``p / (L/2)`` signed (``L = 2^T`` levels).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import fx, nn

from ...quant import Quantizer
from .. import graph as G
from ..qann import ACTIVATION_CHOICES, GraphModel, nonnegative, placement, swap_activations
from .ilif import ILIFSNN
from .rate import RateSNN
from .graph import MAX_POOLS, Recorder, module_type, owner

DEFAULT_PERCENTILE = 99.99
RELU_NETWORK = {G.aten.relu, *MAX_POOLS}
BATCH_NORMS = {G.aten._native_batch_norm_legit_no_training, G.aten.batch_norm}


def _percentile(x: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q``-th percentile of all elements of ``x`` (nearest rank)."""
    flat = x.detach().flatten()
    rank = min(flat.numel(), max(1, math.ceil(q / 100 * flat.numel())))
    return flat.kthvalue(rank).values


def described(node: fx.Node) -> str:
    """``'module.path' (Type)`` of the module a node was traced in, else the node's name and op."""
    path = G.module_path(node)
    return f"'{path}' ({module_type(node)})" if path else f"'{node.name}' ({G.packet(node)})"


def fold_batchnorm(gm: fx.GraphModule) -> None:
    """Fold every eval-mode batch norm into the convolution / linear layer that feeds it (in place)."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or G.packet(node) not in BATCH_NORMS:
            continue
        layer = node.args[0]
        op = G.packet(layer) if isinstance(layer, fx.Node) else None
        if op not in (G.aten.conv1d, G.aten.conv2d, G.aten.linear) or len(layer.users) != 1 or len(
                layer.args[1].users) != 1:
            raise ValueError(f"to_qann(neuron='ilif'): BatchNorm '{G.module_path(node) or node.name}' does not "
                             f"directly follow a Conv/Linear used only by it (its input is {layer}); the conversion "
                             "folds BatchNorm into the layer before it, so place it right after a Conv/Linear")
        gamma, beta, mean, var = (None if a is None else getattr(*owner(gm, a.target)).detach()
                                  for a in node.args[1:5])
        eps = node.args[6] if G.packet(node) is G.aten._native_batch_norm_legit_no_training else node.args[7]
        scale = (1.0 if gamma is None else gamma) / torch.sqrt(var + eps)
        beta = torch.zeros_like(mean) if beta is None else beta
        weight = layer.args[1]
        w = gm.get_parameter(weight.target).detach()
        b = gm.get_parameter(layer.args[2].target).detach() if len(layer.args) > 2 and layer.args[2] is not None \
            else torch.zeros_like(mean)
        holder, name = owner(gm, weight.target)
        setattr(holder, name, nn.Parameter(w * scale.view(-1, *[1] * (w.dim() - 1))))
        bias_target = weight.target.rpartition(".")[0] + ".bias" if "." in weight.target else f"{name}_bias"
        holder, bias_name = owner(gm, bias_target)
        setattr(holder, bias_name, nn.Parameter((b - mean) * scale + beta))
        with gm.graph.inserting_before(layer):
            bias = gm.graph.get_attr(bias_target)
        args = list(layer.args) + [None] * (3 - len(layer.args))
        old_bias, args[2] = args[2], bias
        layer.args = tuple(args)
        value = next(iter(node.users)) if G.packet(node) is not G.aten.batch_norm else node
        value.replace_all_uses_with(layer)
        for dead in [value, node, old_bias, *node.args[1:5]]:
            if isinstance(dead, fx.Node) and not dead.users:
                gm.graph.erase_node(dead)
                if dead.op == "get_attr" and dead.target != bias_target:
                    holder, attr = owner(gm, dead.target)
                    if hasattr(holder, attr):
                        delattr(holder, attr)
    gm.graph.lint()
    gm.recompile()


def relu_network(kinds: dict) -> bool:
    """Whether the only non-linear nodes are ReLUs and max pooling, and no product of two signals."""
    return all(k != G.BILINEAR and (k != G.NONLINEAR or G.packet(n) in RELU_NETWORK) for n, k in kinds.items())


def _places(gm: fx.GraphModule, kinds: dict) -> list[tuple[fx.Node, bool]]:
    """``(value, signed)`` for each quantizer, in graph order (the rules in the module docstring)."""
    if relu_network(kinds):
        for node in gm.graph.nodes:
            if kinds.get(node) == G.NONLINEAR and G.packet(node) in MAX_POOLS and G.packet(node.args[0]) is not \
                    G.aten.relu:
                raise G.ConversionError(
                    f"to_qann(neuron='ilif'): {described(node)} takes {node.args[0].name}, not a ReLU output: max "
                    "pooling is exact only on iLIF spike trains; put it right after the ReLU (max commutes with "
                    "ReLU, the ANN is unchanged)")
        return [(n, False) for n in gm.graph.nodes if kinds.get(n) == G.NONLINEAR and G.packet(n) is G.aten.relu]
    memo: dict = {}
    return [(v, not nonnegative(v, memo)) for v in placement(gm, kinds, G.regions(gm, kinds))]


def to_ilif_qann(model: nn.Module, levels: int, calibration: torch.Tensor | None = None,
                 percentile: float = DEFAULT_PERCENTILE, activation: str | None = None,
                 dynamic: str = "all", output: str | int | None = None) -> SpikeConverterQANN:
    """The QANN of ``model`` for an iLIF SNN with ``T = log2(levels)`` steps per phase (the module docstring says
    where its quantizers go). ``calibration``: a few hundred training inputs ``[N, ...]``; ``dynamic``: which input
    dimensions may vary (:data:`spiketwin.convert.graph.DYNAMIC_CHOICES`); ``output``: which of several outputs the
    QANN returns (``"logits"`` of a Hugging Face model, :func:`spiketwin.convert.graph.keep_output`). ``model`` is not
    modified."""
    levels = int(levels)
    if levels < 2 or levels & (levels - 1):
        raise ValueError(f"to_qann(neuron='ilif'): levels must be 2**T (T >= 1 steps per phase), got {levels}")
    if calibration is None or not isinstance(calibration, torch.Tensor):
        raise ValueError("to_qann(neuron='ilif') needs calibration=<tensor of a few hundred training inputs> "
                         "to set each quantizer's step from the activations, got "
                         f"{type(calibration).__name__}; the iLIF SNN takes one input tensor, the model's first "
                         "argument (a Hugging Face vision model's pixel_values, with output='logits')")
    if not 0 < percentile <= 100:
        raise ValueError(f"to_qann(neuron='ilif'): percentile must be in (0, 100], got {percentile}")
    activation = "relu" if activation is None else activation
    if activation not in ACTIVATION_CHOICES:
        raise ValueError(f"to_qann: activation must be one of {ACTIVATION_CHOICES}, got {activation!r}")
    placed = [name for name, m in model.named_modules() if isinstance(m, Quantizer)]
    if placed:
        raise G.ConversionError(f"to_qann(neuron='ilif'): {type(model).__name__} already holds quantizers "
                                f"({', '.join(placed[:4])}); pass the float model, the conversion places its own")
    gm, fixed = G.trace(copy.deepcopy(model), calibration, dynamic, output)
    if fixed:
        raise G.ConversionError("to_qann(neuron='ilif'): the model must take one tensor (the image)")
    if activation == "relu":
        swap_activations(gm)
    fold_batchnorm(gm)
    kinds = G.classify(gm)
    places = _places(gm, kinds)
    if not places:
        nonlinear = [described(n) for n, k in kinds.items() if k == G.NONLINEAR]
        raise G.ConversionError(
            f"to_qann(neuron='ilif'): nothing to quantize in {type(model).__name__}: no ReLU, and no weighted op or "
            "product whose input is not the model's input" + (f"; its non-linear ops: {', '.join(nonlinear)}"
                                                             if nonlinear else ""))
    with torch.no_grad():
        recorder = Recorder(gm, [v.name for v, _ in places])
        recorder.run(calibration)
    param = next(gm.parameters(), calibration)
    gm.add_module("quantizers", nn.ModuleList())
    region = {} if relu_network(kinds) else G.regions(gm, kinds)
    for i, (value, signed) in enumerate(places):
        quantizer = Quantizer(levels, signed).to(device=param.device, dtype=param.dtype)
        p = _percentile(recorder.values[value.name].abs(), percentile)
        with torch.no_grad():
            quantizer.step.copy_((p / (levels // 2 if signed else levels)).clamp_min(
                torch.finfo(quantizer.step.dtype).tiny))
            quantizer.initialized.fill_(True)
        gm.quantizers.append(quantizer)
        relu = G.packet(value) is G.aten.relu  # the unsigned quantizer clamps at 0: it absorbs the ReLU
        with gm.graph.inserting_after(value):
            qnode = gm.graph.create_node("call_module", f"quantizers.{i}", (value.args[0] if relu else value,),
                                         name=G.module_path(value).replace(".", "_") or f"quant_{value.name}")
        qnode.meta = {k: v for k, v in value.meta.items() if k in ("val", "stack_trace", "nn_module_stack")}
        home = None if relu else region.get(value)
        value.replace_all_uses_with(qnode, delete_user_cb=lambda u, q=qnode, h=home: u is not q and (
            h is None or region.get(u) != h))
        if relu and not value.users:
            gm.graph.erase_node(value)
    gm.graph.lint()
    gm.recompile()
    qann = SpikeConverterQANN(gm, levels.bit_length() - 1)
    qann.recipe = {"levels": levels, "neuron": "ilif", "activation": activation, "dynamic": dynamic,
                   "output": output}
    return qann


class SpikeConverterQANN(GraphModel):
    """A model's traced graph (``.net``, an ATen :class:`torch.fx.GraphModule`) with BatchNorm folded and
    ``2^T``-level quantizers (``.net.quantizers``), made by :func:`to_ilif_qann`.

    ``forward(x)`` is the model's. Train it like any model (QAT); then :meth:`to_snn`.
    """

    graph_attribute = "net"

    def __init__(self, net: fx.GraphModule, phase_steps: int) -> None:
        super().__init__()
        self.net, self.phase_steps = net, int(phase_steps)
        self.recipe: dict = {}

    @property
    def levels(self) -> int:
        return 2 ** self.phase_steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def quantizers(self) -> dict[str, Quantizer]:
        """Node name -> quantizer, in graph order."""
        return {n.name: self.net.get_submodule(n.target) for n in self.net.graph.nodes
                if n.op == "call_module" and str(n.target).startswith("quantizers.")}

    def to_snn(self, k: float = 2.0) -> ILIFSNN:
        """The iLIF SNN (amplification ``k``; exactly equivalent for ``k = 2``)."""
        return ILIFSNN(self, k)

    def to_rate_snn(self) -> RateSNN:
        """The classic rate-coded conversion: soft-reset IF neurons with threshold ``p = s 2^T``."""
        return RateSNN(self)
