"""The SpikeConverter's front end: trace a model with ``torch.fx``, fold BatchNorm, say what converts.

Also the graph helpers the QANN and the SNNs share: a recording interpreter, call-site counts, constants.
"""

from __future__ import annotations

import copy
import operator
from collections import Counter

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.experimental.meta_tracer import MetaTracer
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ...models.vit import AddTokens, ViT
from ...ops import MatMul
from ...quant import Quantizer

DEFAULT_PERCENTILE = 99.99

LINEAR_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)
_PASSIVE = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity,
            nn.Dropout, AddTokens)
_RELU_FUNCTIONS = (F.relu, torch.relu)
ADD_FUNCTIONS = (operator.add, torch.add)
PERIOD_OPS = (nn.LayerNorm, nn.Softmax, nn.GELU, MatMul)
_SCALE_FUNCTIONS = (operator.mul, operator.truediv)
_SHAPE_FUNCTIONS = (torch.flatten, torch.cat, operator.getitem, getattr)
_SHAPE_METHODS = ("flatten", "view", "reshape", "size", "transpose", "unflatten", "unbind", "expand", "contiguous")
SUPPORTED = ("Conv1d/Conv2d/Linear, BatchNorm1d/2d right after one of them, ReLU (module, F.relu, torch.relu, "
             ".relu()), MaxPool2d right after a ReLU, AvgPool/AdaptiveAvgPool, Flatten/torch.flatten/.view/"
             ".reshape, Dropout/Identity, additions of two activations; for transformers: Quantizer modules already in "
             "the model (signed or unsigned), LayerNorm/Softmax/GELU/spiketwin.ops.MatMul, parameters with a "
             "leading dimension of 1 (class token, position embedding), torch.cat/.transpose/.unflatten/"
             ".expand/indexing that keep dimension 0 the batch, products with a number")




_LEAVES = (Quantizer, MatMul, AddTokens)


class _Tracer(fx.Tracer):
    """``torch.fx`` tracer that keeps quantizers, ``MatMul`` and ``AddTokens`` as modules (the conversion
    swaps or reuses them as they are)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


class _ViTTracer(_Tracer, MetaTracer):
    """Traces a :class:`ViT` on meta tensors, which lets ``q, k, v = (... for t in qkv.unbind(-3))`` unpack
    (the meta result says how many tensors ``unbind`` returns). Shapes the code reads become constants,
    which is safe here because only ``AddTokens`` reads them, and it stays a module. Keeps the same leaves
    as :class:`_Tracer`."""

    def iter(self, obj):
        meta = getattr(obj, "_tensor_meta", None)
        if isinstance(meta, (tuple, list)):
            return iter([obj[i] for i in range(len(meta))])
        return super().iter(obj)


def trace(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    model = copy.deepcopy(model).eval()
    try:
        if not isinstance(model, ViT):
            return fx.GraphModule(model, _Tracer().trace(model), type(model).__name__)
        meta = copy.deepcopy(model).to("meta")
        meta.check_input = lambda x: None  # input validation needs real tensors; the graph runs without it
        for name, m in list(meta.named_modules()):
            if isinstance(m, Quantizer):  # same shape, and no bool() of a meta tensor; the node keeps its path
                meta.set_submodule(name, nn.Identity())
        graph = _ViTTracer().trace(meta, meta_args={"x": example[:1].to("meta")})
        return fx.GraphModule(model, graph, type(model).__name__)
    except Exception as e:  # fx raises many types; say what failed and what would work
        raise TypeError(f"to_qann(neuron='ilif'): torch.fx cannot trace {type(model).__name__}: {e}. The "
                        "SpikeConverter conversion needs a traceable model without data-dependent control "
                        "flow built from: " + SUPPORTED) from e


def fold_batchnorm(gm: fx.GraphModule) -> None:
    """Fold every BatchNorm into the Conv/Linear that feeds it (in place)."""
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), _BATCHNORM):
            continue
        src = node.args[0]
        layer = gm.get_submodule(src.target) if src.op == "call_module" else None
        if not isinstance(layer, LINEAR_LAYERS) or len(src.users) != 1:
            raise ValueError(f"to_qann(neuron='ilif'): BatchNorm '{node.target}' does not directly follow a "
                             f"Conv/Linear used only by it (its input is {src.format_node()}); the conversion "
                             "folds BatchNorm into the layer before it, so place it right after a Conv/Linear")
        bn = gm.get_submodule(node.target)
        fused = fuse_linear_bn_eval(layer, bn) if isinstance(layer, nn.Linear) else fuse_conv_bn_eval(layer, bn)
        gm.add_submodule(src.target, fused)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        gm.delete_submodule(node.target)


def is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    return ((node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.ReLU))
            or (node.op == "call_function" and node.target in _RELU_FUNCTIONS)
            or (node.op == "call_method" and node.target == "relu"))


def constant_value(gm: fx.GraphModule, target: str):
    """The value a ``get_attr`` node reads: an attribute of ``gm``, or a parameter of a submodule."""
    return gm.get_parameter(target) if "." in target else getattr(gm, target)


def check_supported(gm: fx.GraphModule) -> None:
    """Raise naming every node the conversion cannot handle."""
    bad = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        bad.append(f"the model takes {len(placeholders)} inputs; exactly one image tensor is supported")
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output") or is_relu(gm, node):
            continue
        if node.op == "get_attr":
            value = constant_value(gm, node.target)
            if not isinstance(value, torch.Tensor) or value.dim() < 2 or value.shape[0] != 1:
                bad.append(f"'{node.target}': a constant must be a tensor with a leading dimension of 1 "
                           "(it enters every sample like a bias)")
        elif node.op == "call_module":
            module = gm.get_submodule(node.target)
            if isinstance(module, nn.MaxPool2d):
                if module.ceil_mode or module.return_indices:
                    bad.append(f"'{node.target}' (MaxPool2d): ceil_mode and return_indices are not supported")
                if not is_relu(gm, node.args[0]):
                    bad.append(f"'{node.target}' (MaxPool2d) takes {node.args[0].name}, not a ReLU output: max "
                               "pooling is exact only on iLIF spike trains; put it right after the ReLU "
                               "(max commutes with ReLU, the ANN is unchanged)")
            elif not isinstance(module, LINEAR_LAYERS + _PASSIVE + PERIOD_OPS + (Quantizer,)):
                bad.append(f"'{node.target}' ({type(module).__name__})")
        elif node.op == "call_function" and node.target in ADD_FUNCTIONS:
            operands = [a for a in node.args if isinstance(a, fx.Node)]
            if len(operands) != 2 or len(node.args) != 2 or node.kwargs:
                bad.append(f"'{node.name}' ({node.format_node()}): only the sum of two activations is "
                           "supported (a constant would have to enter like a bias)")
        elif node.op == "call_function" and node.target in _SCALE_FUNCTIONS:
            if len(node.args) != 2 or not isinstance(node.args[0], fx.Node) or not isinstance(node.args[1],
                                                                                              (int, float)):
                bad.append(f"'{node.name}' ({node.format_node()}): only an activation times a number is linear")
        elif not ((node.op == "call_function" and node.target in _SHAPE_FUNCTIONS)
                  or (node.op == "call_method" and node.target in _SHAPE_METHODS)):
            bad.append(f"'{node.name}' ({node.format_node()})")
    if bad:
        raise TypeError("to_qann(neuron='ilif'): cannot convert " + "; ".join(bad) + ". Supported: " + SUPPORTED)


class Recorder(fx.Interpreter):
    """Runs a graph module and keeps the values of the nodes named in ``names``."""

    def __init__(self, gm: fx.GraphModule, names) -> None:
        super().__init__(gm)
        self.names, self.values = set(names), {}

    def run_node(self, node: fx.Node):
        out = super().run_node(node)
        if node.name in self.names:
            self.values[node.name] = out
        return out


def call_sites(gm: fx.GraphModule) -> Counter:
    """How many nodes call each submodule (a module used twice must become two spiking modules)."""
    return Counter(n.target for n in gm.graph.nodes if n.op == "call_module")


