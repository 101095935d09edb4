"""Walk a traced one-step network and build its NIR graph, in the dialect of one target (see nir_targets)."""

from __future__ import annotations

import operator

import numpy as np
import torch
from torch import fx, nn

from ..neurons import LIF
from . import nir_targets as targets

PASS_THROUGH = (nn.Identity, nn.Dropout)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)


class NIRExportError(ValueError):
    """The network (or part of it) cannot be expressed in NIR; the message lists each module and why."""


def _fold(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm):
    """Fold an eval-mode BatchNorm that follows a layer into the layer's weight and bias."""
    if not bn.track_running_stats or bn.running_mean is None:
        raise NIRExportError("a BatchNorm without running statistics cannot be folded; train it with "
                             "track_running_stats=True")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale + (bn.bias if bn.affine else 0)
    weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    bias = shift if bias is None else bias * scale + shift
    return weight, bias


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def _shape(node: fx.Node) -> tuple[int, ...]:
    """Per-sample shape of a node's output (batch dimension dropped)."""
    return tuple(node.meta["tensor_meta"].shape[1:])


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else "(the model's forward)"


def _weight_node(nir, layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, in_shape):
    if isinstance(layer, nn.Linear):
        if bias is None:
            return nir.Linear(weight=_array(weight))
        return nir.Affine(weight=_array(weight), bias=_array(bias))
    if bias is None:
        bias = torch.zeros(weight.shape[0], dtype=weight.dtype)
    conv = nir.Conv1d if isinstance(layer, nn.Conv1d) else nir.Conv2d
    return conv(input_shape=in_shape[1:] if len(in_shape) > 2 else in_shape[-1], weight=_array(weight),
                stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                bias=_array(bias))


def _pair(v) -> np.ndarray:
    return np.array(v if isinstance(v, (tuple, list)) else (v, v))


def build(nir, gm: fx.GraphModule, dt: float, target: str, dtype: torch.dtype, refusal) -> object:
    """Each fx node of ``gm`` becomes an NIR node, or an alias of the NIR nodes whose outputs sum to it.

    ``refusal(bad)`` words the error for a list of ``(where, why)``. For Norse, an NIR node's output may carry a
    pending factor (``gain``: the ``1 / k^2`` of an average pooling written as SumPool2d) that its consumers
    absorb: a weight layer into its weights, a neuron into its threshold."""
    modules = dict(gm.named_modules())
    nodes: dict[str, object] = {}
    sources: dict[fx.Node, list[str]] = {}  # fx node -> NIR node names whose outputs sum to its value
    gain: dict[str, float] = {}  # NIR node -> factor its output still has to be multiplied by (Norse pooling)
    layers: dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor | None]] = {}  # folding candidates
    edges: list[tuple[str, str]] = []
    bad: list[tuple[str, str]] = []

    def add(name: str, node_obj, inputs: list[fx.Node], out_gain: float = 1.0) -> None:
        nodes[name] = node_obj
        gain[name] = out_gain
        for inp in inputs:
            edges.extend((src, name) for src in sources[inp])
        sources[current] = [name]

    def refuse(where: str, why: str) -> None:  # note it, and pass the inputs through to keep walking
        bad.append((where, why))
        sources[current] = [src for inp in current.all_input_nodes for src in sources.get(inp, [])]

    def input_gain(where: str, inputs: list[fx.Node]) -> float | None:
        found = {gain[src] for inp in inputs for src in sources[inp]}
        if len(found) > 1:
            refuse(where, "sums an average pooling's output with another signal: Norse has no AvgPool2d and "
                          "the SumPool2d's 1/k^2 cannot be folded into one consumer")
            return None
        return found.pop() if found else 1.0

    for current in gm.graph.nodes:
        ins = list(current.all_input_nodes)
        if current.op == "placeholder":
            if nodes:
                refuse(current.name, "a second input: NIR graphs here take one input")
                continue
            nodes["input"], gain["input"] = nir.Input(input_type={"input": np.array(_shape(current))}), 1.0
            sources[current] = ["input"]
        elif current.op == "output":
            out = current.args[0]
            if not isinstance(out, fx.Node):
                refuse("(output)", "the forward returns a tuple or dict; NIR graphs here have one output")
                continue
            g = input_gain("(output)", [out])
            if g is None:
                continue
            if g != 1.0:
                refuse("(output)", "ends with an average pooling: Norse has no AvgPool2d, and the SumPool2d's 1/k^2 "
                                   "needs a following layer to fold into")
                continue
            srcs = sources.get(out, [])
            if len(srcs) > 1:  # a residual sum straight into the output: an explicit node sums it
                nodes["sum"] = targets.identity(nir, target, _shape(out))
                edges.extend((s, "sum") for s in srcs)
                srcs = ["sum"]
            nodes["output"] = nir.Output(output_type={"output": np.array(_shape(out))})
            edges.extend((s, "output") for s in srcs)
        elif current.op == "call_module":
            m = modules[current.target]
            name = current.target
            if isinstance(m, PASS_THROUGH):
                sources[current] = list(sources[ins[0]])
            elif isinstance(m, nn.Linear) and len(_shape(ins[0])) != 1:
                refuse(name, f"Linear on a per-sample input of shape {list(_shape(ins[0]))}: NIR's Affine maps "
                             "one vector (flatten the input first)")
            elif isinstance(m, nn.Conv1d) and target != "nir":
                refuse(name, f"Conv1d: {target}'s NIR importer has no Conv1d (use target='nir')")
            elif isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                g = input_gain(name, ins)
                if g is None:
                    continue
                layers[name] = (m, m.weight.detach() * g, None if m.bias is None else m.bias.detach())
                add(name, _weight_node(nir, m, *layers[name][1:], _shape(ins[0])), ins)
            elif isinstance(m, _BATCHNORM):
                prev = sources[ins[0]]
                if len(prev) != 1 or prev[0] not in layers or len(ins[0].users) != 1:
                    refuse(name, "BatchNorm that does not directly follow a Linear/Conv cannot be folded")
                    continue
                layer, weight, bias = layers.pop(prev[0])
                weight, bias = _fold(weight, bias, m)
                in_shape = tuple(ins[0].all_input_nodes[0].meta["tensor_meta"].shape[1:])
                nodes[prev[0]] = _weight_node(nir, layer, weight, bias, in_shape)
                sources[current] = prev
            elif isinstance(m, LIF):
                g = input_gain(name, ins)
                if g is not None:
                    add(name, targets.neuron(nir, target, m.params, _shape(current), dt, dtype, g), ins)
            elif isinstance(m, nn.AvgPool2d):
                g = input_gain(name, ins)
                kernel, stride, padding = _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)
                if g is None:
                    continue
                if target != "norse":
                    add(name, nir.AvgPool2d(kernel_size=kernel, stride=stride, padding=padding), ins)
                elif padding.any():
                    refuse(name, "AvgPool2d with padding: Norse writes it as SumPool2d, which it runs without padding")
                else:
                    add(name, nir.SumPool2d(kernel_size=kernel, stride=stride, padding=padding), ins,
                        g / float(np.prod(kernel)))
            elif isinstance(m, nn.Flatten):
                _flatten(nir, current, m.start_dim, m.end_dim, target, add, ins, input_gain)
            else:
                refuse(name, f"{type(m).__name__} has no NIR node")
        elif current.target in (operator.add, torch.add, "add") and len(ins) == 2 and len(current.args) == 2:
            sources[current] = sources[ins[0]] + sources[ins[1]]
        elif current.target in (torch.flatten, "flatten"):
            start = current.args[1] if len(current.args) > 1 else current.kwargs.get("start_dim", 0)
            end = current.args[2] if len(current.args) > 2 else current.kwargs.get("end_dim", -1)
            _flatten(nir, current, start, end, target, add, ins, input_gain, f"flatten_{current.name}")
        else:
            refuse(_module_path(current), f"operation {getattr(current.target, '__name__', current.target)!r} "
                                          "in its forward has no NIR node")
    if bad:
        raise NIRExportError(refusal(bad))
    order = {name: i for i, name in enumerate(nodes)}  # the fx order: topological
    edges = sorted(set(edges), key=lambda e: (order[e[0]], order[e[1]]))
    if target == "norse" and (late := targets.dfs_order_problem(edges)) is not None:
        raise NIRExportError(refusal([(late, "Norse runs the graph depth first from the input and would reach this "
                                             "node before one of its inputs (two parallel branches that rejoin); "
                                             "it would read that input from the previous step")]))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": dt, "producer": "spiketwin", "target": target})


def _flatten(nir, node: fx.Node, start: int, end: int, target: str, add, ins, input_gain, name=None) -> None:
    """NIR shapes have no batch dimension: torch's ``start_dim`` / ``end_dim`` are rewritten per target."""
    in_shape = tuple(node.all_input_nodes[0].meta["tensor_meta"].shape)
    start, end = start % len(in_shape), end % len(in_shape)
    if start == 0:
        raise NIRExportError(f"to_nir: {node.name} flattens the batch dimension; NIR graphs are per sample")
    g = input_gain(name or node.target, ins)
    if g is None:
        return
    start, end = targets.flatten_dims(target, in_shape, start, end)
    add(name or node.target, nir.Flatten(input_type={"input": np.array(in_shape[1:])}, start_dim=start,
                                         end_dim=end), ins, g)
