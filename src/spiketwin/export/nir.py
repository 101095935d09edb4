"""Export to NIR (the Neuromorphic Intermediate Representation), for what NIR can express.

``to_nir(snn, example_input, path)`` writes one time step of ``snn`` as an NIR graph (HDF5): Linear /
Conv1d / Conv2d (``Affine`` / ``Linear`` / ``Conv*d``, with a following BatchNorm folded into them), LIF and
IF neurons with hard reset, average pooling, flatten, and residual sums (several edges into one node:
NIR sums a node's inputs). Anything else (activation x activation products, softmax, LayerNorm, max
pooling, soft reset, ST-BIF bounds, iLIF, quantizers, analog activations) is refused with one message that
lists every offending module path and why. ``submodule="path"`` exports that part of the network alone
(its input is what it receives when ``snn`` runs on ``example_input``).

**Neuron mapping.** NIR's LIF is continuous: ``tau dv/dt = (v_leak - v) + r I``, spike when
``v > v_threshold``, then ``v = v_reset``. One forward-Euler step of length ``dt`` gives
``v <- v + (dt/tau) (v_leak - v + r I)``. SpikingJelly's (and our) LIF with ``decay_input=True`` is
``H = V + (X - (V - V_reset)) / tau_sj``, so ``tau = tau_sj * dt``, ``v_leak = V_reset``, ``r = 1``; with
``decay_input=False`` (``H = V - (V - V_reset)/tau_sj + X``) the input weight is 1, so ``r = tau_sj``.
NIR's IF is ``dv/dt = r I``: ``v <- v + dt r I`` equals ``H = V + X`` with ``r = 1/dt``. ``dt`` (default 1, one
time unit per step) is stored in the graph's metadata. Two differences remain: NIR fires on ``v > θ``,
we fire on ``v >= θ`` (they differ only when the potential lands exactly on the threshold), and NIR does
not say where ``v`` starts (ours starts at ``v_reset``; :func:`from_nir` does the same).

Needs ``nir`` (``pip install 'spiketwin[nir]'``); reading back with :func:`from_nir` needs ``nirtorch`` too.
"""

from __future__ import annotations

import copy
import operator
from pathlib import Path

import numpy as np
import torch
from torch import fx, nn

from ..base import StatefulModule, reset, set_step_mode
from ..checkpoint import atomic_write
from ..convert.spikeconverter import PeriodBias, SpikeMaxPool2d
from ..extras import require
from ..neurons import ILIF, LIF, STBIF
from ..ops import SESA, Accumulate, BiasOnce, MatMul, OffsetOnce
from ..quant import Quantizer

_PASS_THROUGH = (nn.Identity, nn.Dropout)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)
_LEAVES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.AvgPool2d, nn.Flatten, LIF, *_BATCHNORM, *_PASS_THROUGH)
_REASONS: tuple[tuple[type, str], ...] = (
    ((MatMul, SESA), "activation x activation product: NIR has no product of two signals"),
    (Accumulate, "accumulate-apply-difference of a non-linear function (softmax, LayerNorm, ...): NIR has none"),
    (BiasOnce, "bias added at the first step only: NIR's Affine / Conv add their bias at every step"),
    (OffsetOnce, "offsets (class token, position embedding) added at the first step only: NIR has no such node"),
    (STBIF, "ST-BIF neuron: bipolar spikes bounded by a spike count [n_min, n_max] have no NIR neuron"),
    (ILIF, "iLIF neuron: amplification and temporal separation (accumulate, then fire) have no NIR neuron"),
    (PeriodBias, "bias added once per period of T steps: NIR's Affine / Conv add their bias at every step"),
    (SpikeMaxPool2d, "max pooling of binary-coded spike trains: NIR 1.0 has only AvgPool2d and SumPool2d"),
    (Quantizer, "quantizer: this is a QANN; convert it to an SNN first"),
    (nn.Softmax, "softmax: NIR has no normalisation across neurons"),
    (nn.LayerNorm, "LayerNorm: NIR has no normalisation across neurons"),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d), "max pooling: NIR 1.0 has only AvgPool2d and SumPool2d"),
    ((nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid), "analog activation: NIR graphs carry spikes between neurons"),
)


class NIRExportError(ValueError):
    """The network (or part of it) cannot be expressed in NIR; the message lists each module and why."""


def _import_nir():
    return require("nir", "nir", "NIR export")


def _reason(module: nn.Module) -> str | None:
    """Why ``module`` cannot be exported, or None when it can (or is a container traced through)."""
    if isinstance(module, LIF):
        if module.params.v_reset is None:
            return "soft reset (v -= threshold): NIR's LIF / IF reset the potential to v_reset"
        return None
    for types, why in _REASONS:
        if isinstance(module, types):
            return why
    if isinstance(module, nn.AvgPool2d) and (module.ceil_mode or module.divisor_override is not None):
        return "AvgPool2d with ceil_mode or divisor_override: NIR's AvgPool2d has neither"
    if isinstance(module, StatefulModule):
        return "a stateful spiking operator with no NIR node"
    return None


def unsupported(model: nn.Module, ran: set[nn.Module] | None = None) -> list[tuple[str, str]]:
    """``(module path, reason)`` for every module of ``model`` that NIR cannot express (children of an
    offending module are not listed again); with ``ran``, only modules that ran (a model may hold unused
    ones, like the official Spikformer's LayerNorms)."""
    found: list[tuple[str, str]] = []
    for name, module in model.named_modules():
        if any(name.startswith(bad + ".") for bad, _ in found) or (ran is not None and module not in ran):
            continue
        why = _reason(module)
        if why is not None:
            found.append((name or "(the model itself)", f"{type(module).__name__}: {why}"))
    return found


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (*_LEAVES, StatefulModule)) or super().is_leaf_module(m, qualname)


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else "(the model's forward)"


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


def _neuron(nir, m: LIF, shape: tuple[int, ...], dt: float):
    p = m.params
    full = lambda value: np.full(shape, value, dtype=np.float64)
    if p.tau is None:
        return nir.IF(r=full(1.0 / dt), v_threshold=full(p.v_threshold), v_reset=full(p.v_reset))
    r = 1.0 if p.decay_input else p.tau
    return nir.LIF(tau=full(p.tau * dt), r=full(r), v_leak=full(p.v_reset), v_threshold=full(p.v_threshold),
                   v_reset=full(p.v_reset))


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


def _target(snn: nn.Module, submodule: str | None) -> tuple[nn.Module, nn.Module]:
    """A private eval-mode copy of ``snn`` and the part of it to export."""
    model = copy.deepcopy(snn).eval()
    modules = dict(model.named_modules())
    if submodule is not None and submodule not in modules:
        raise KeyError(f"to_nir: {type(snn).__name__} has no submodule {submodule!r}; top-level ones: "
                       f"{', '.join(n for n, _ in model.named_children())}")
    return model, (model if submodule is None else modules[submodule])


def _target_io(model: nn.Module, target: nn.Module, example_input: torch.Tensor, submodule: str | None):
    """``(input, output, in_sequence, modules that ran)`` of ``target``'s first call when ``model`` runs
    ``example_input``."""
    seen: dict[str, torch.Tensor] = {}
    ran: set[nn.Module] = set()
    hooks = [target.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0] if a else None)),
             target.register_forward_hook(lambda m, a, o: seen.setdefault("y", o))]
    hooks += [m.register_forward_pre_hook(lambda m, a: ran.add(m)) for m in target.modules()]
    reset(model)
    with torch.no_grad():
        try:
            model(example_input.detach())
        finally:
            for h in hooks:
                h.remove()
            reset(model)
    if not isinstance(seen.get("x"), torch.Tensor) or not isinstance(seen.get("y"), torch.Tensor):
        raise NIRExportError(f"to_nir: {submodule or 'the model'} does not map a tensor to a tensor on the "
                             "example input")
    in_sequence = any(m.step_mode == "m" for m in target.modules() if isinstance(m, StatefulModule))
    return seen["x"], seen["y"], in_sequence, ran


def check(snn: nn.Module, graph, example_input: torch.Tensor, submodule: str | None = None) -> float:
    """Largest absolute difference, over every step of ``example_input`` (see :func:`to_nir`), between the
    output of the exported part of ``snn`` and the NIR ``graph`` (a path or an ``NIRGraph``) read back with
    :func:`from_nir` and run step by step. 0 means the file reproduces the network exactly."""
    model, target = _target(snn, submodule)
    x, y, in_sequence, _ = _target_io(model, target, example_input, submodule)
    steps, expected = (x, y) if in_sequence else (x.unsqueeze(0), y.unsqueeze(0))
    module = from_nir(graph, dtype=x.dtype).to(x.device)
    state, outputs = None, []
    with torch.no_grad():
        for x_t in steps:
            out, state = module(x_t, state)
            outputs.append(out)
    return float((torch.stack(outputs) - expected).abs().max())


def to_nir(snn: nn.Module, example_input: torch.Tensor, path: str | Path | None = None,
           submodule: str | None = None, dt: float = 1.0):
    """Export one time step of ``snn`` (or of its ``submodule``) to an NIR graph; write it to ``path``
    (HDF5, ``nir.write``) when given. Returns the ``nir.NIRGraph``.

    ``example_input`` is what ``snn`` takes in one call in its current step mode: a sequence
    ``[T, B, ...]`` in sequence mode, one step ``[B, ...]`` in step mode. The input that the exported part
    receives at the first step fixes the NIR shapes. BatchNorm is folded with its running statistics.
    Raises :class:`NIRExportError` listing every module that NIR cannot express.
    """
    nir = _import_nir()
    if not dt > 0:
        raise ValueError(f"to_nir: dt must be positive, got {dt}")
    model, target = _target(snn, submodule)
    x, _, in_sequence, ran = _target_io(model, target, example_input, submodule)
    bad = unsupported(target, ran)
    if bad:
        raise NIRExportError(_refusal(bad, snn, submodule))
    x = x[0] if in_sequence else x
    model = target
    set_step_mode(model, "s")
    try:
        graph = _Tracer().trace(model)
    except Exception as e:
        raise NIRExportError(f"to_nir: {type(model).__name__}'s forward cannot be traced by torch.fx ({e}); "
                             "export a traceable submodule with submodule=...") from e
    gm = fx.GraphModule(model, graph)
    from torch.fx.passes.shape_prop import ShapeProp

    with torch.no_grad():
        ShapeProp(gm).propagate(x)
    reset(model)
    nir_graph = _build(nir, gm, dt, snn, submodule)
    if path is not None:
        atomic_write(path, lambda tmp: nir.write(tmp, nir_graph))
    return nir_graph


def _refusal(bad: list[tuple[str, str]], snn: nn.Module, submodule: str | None) -> str:
    where = type(snn).__name__ + (f".{submodule}" if submodule else "")
    lines = [f"to_nir: {where} has {len(bad)} module(s) NIR cannot express:"]
    lines += [f"  {name}: {why}" for name, why in bad]
    lines.append("Export a part without them with to_nir(..., submodule='path') (spiketwin export-nir --submodule).")
    return "\n".join(lines)


def _build(nir, gm: fx.GraphModule, dt: float, snn: nn.Module, submodule: str | None):
    """Walk the traced graph: each fx node becomes an NIR node, or an alias of the NIR nodes feeding it."""
    modules = dict(gm.named_modules())
    nodes: dict[str, object] = {}
    sources: dict[fx.Node, list[str]] = {}  # fx node -> NIR node names whose outputs sum to its value
    layers: dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor | None]] = {}  # folding candidates
    edges: list[tuple[str, str]] = []
    bad: list[tuple[str, str]] = []

    def add(name: str, node_obj, inputs: list[fx.Node]) -> None:
        nodes[name] = node_obj
        for inp in inputs:
            edges.extend((src, name) for src in sources[inp])
        sources[current] = [name]

    def refuse(where: str, why: str) -> None:  # note it, and pass the inputs through to keep walking
        bad.append((where, why))
        sources[current] = [src for inp in current.all_input_nodes for src in sources.get(inp, [])]

    for current in gm.graph.nodes:
        ins = list(current.all_input_nodes)
        if current.op == "placeholder":
            if nodes:
                refuse(current.name, "a second input: NIR graphs here take one input")
                continue
            nodes["input"] = nir.Input(input_type={"input": np.array(_shape(current))})
            sources[current] = ["input"]
        elif current.op == "output":
            out = current.args[0]
            if not isinstance(out, fx.Node):
                refuse("(output)", "the forward returns a tuple or dict; NIR graphs here have one output")
                continue
            srcs = sources.get(out, [])
            if len(srcs) > 1:  # a residual sum straight into the output: an explicit element-wise node sums it
                nodes["sum"] = nir.Scale(scale=np.ones(_shape(out)))
                edges.extend((s, "sum") for s in srcs)
                srcs = ["sum"]
            nodes["output"] = nir.Output(output_type={"output": np.array(_shape(out))})
            edges.extend((s, "output") for s in srcs)
        elif current.op == "call_module":
            m = modules[current.target]
            name = current.target
            if isinstance(m, _PASS_THROUGH):
                sources[current] = list(sources[ins[0]])
            elif isinstance(m, nn.Linear) and len(_shape(ins[0])) != 1:
                refuse(name, f"Linear on a per-sample input of shape {list(_shape(ins[0]))}: NIR's Affine maps "
                             "one vector (flatten the input first)")
            elif isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                layers[name] = (m, m.weight.detach(), None if m.bias is None else m.bias.detach())
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
                add(name, _neuron(nir, m, _shape(current), dt), ins)
            elif isinstance(m, nn.AvgPool2d):
                pair = lambda v: np.array(v if isinstance(v, (tuple, list)) else (v, v))
                add(name, nir.AvgPool2d(kernel_size=pair(m.kernel_size), stride=pair(m.stride),
                                        padding=pair(m.padding)), ins)
            elif isinstance(m, nn.Flatten):
                add(name, _flatten(nir, current, m.start_dim, m.end_dim), ins)
            else:
                refuse(name, f"{type(m).__name__} has no NIR node")
        elif current.target in (operator.add, torch.add, "add") and len(ins) == 2 and len(current.args) == 2:
            sources[current] = sources[ins[0]] + sources[ins[1]]
        elif current.target in (torch.flatten, "flatten"):
            start = current.args[1] if len(current.args) > 1 else current.kwargs.get("start_dim", 0)
            end = current.args[2] if len(current.args) > 2 else current.kwargs.get("end_dim", -1)
            add(f"flatten_{current.name}", _flatten(nir, current, start, end), ins)
        else:
            refuse(_module_path(current), f"operation {getattr(current.target, '__name__', current.target)!r} "
                                          "in its forward has no NIR node")
    if bad:
        raise NIRExportError(_refusal(bad, snn, submodule))
    return nir.NIRGraph(nodes=nodes, edges=sorted(set(edges)), metadata={"dt": dt, "producer": "spiketwin"})


def _flatten(nir, node: fx.Node, start: int, end: int):
    """NIR shapes have no batch dimension: torch's ``start_dim`` / ``end_dim`` shift down by one."""
    in_shape = tuple(node.all_input_nodes[0].meta["tensor_meta"].shape)
    start, end = start % len(in_shape), end % len(in_shape)
    if start == 0:
        raise NIRExportError(f"to_nir: {node.name} flattens the batch dimension; NIR graphs are per sample")
    return nir.Flatten(input_type={"input": np.array(in_shape[1:])}, start_dim=start - 1, end_dim=end - 1)


class _NIRNeuron(nn.Module):
    """One forward-Euler step of NIR's LIF (``tau`` given) or IF (``tau=None``); state: the potential."""

    def __init__(self, node, dt: float) -> None:
        super().__init__()
        for key in ("r", "v_threshold", "v_reset") + (("tau", "v_leak") if hasattr(node, "tau") else ()):
            self.register_buffer(key, torch.as_tensor(np.asarray(getattr(node, key))))
        self.leaky, self.dt = hasattr(node, "tau"), dt

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        v = self.v_reset.to(x.dtype).expand_as(x) if state is None else state
        if self.leaky:
            v = v + self.dt / self.tau * (self.v_leak - v + self.r * x)
        else:
            v = v + self.dt * self.r * x
        spikes = v > self.v_threshold
        return spikes.to(x.dtype), torch.where(spikes, self.v_reset.to(x.dtype), v)


def from_nir(source, dt: float | None = None, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Read an NIR graph (a path or a ``nir.NIRGraph``) into an executable module with ``nirtorch``.

    The module runs one time step per call: ``out, state = m(x)``, then ``m(x, state)``. Neurons are
    integrated with forward Euler over ``dt`` (default: the graph's ``metadata["dt"]``, else 1).
    """
    nir = _import_nir()
    nirtorch = require("nirtorch", "nir", "reading NIR back")
    graph = nir.read(str(source)) if isinstance(source, (str, Path)) else source
    if dt is None:
        dt = float(np.asarray(graph.metadata.get("dt", 1.0)))

    def affine(node):  # nirtorch's own Affine mapping drops the bias (it sets weight.bias)
        layer = nn.Linear(node.weight.shape[-1], node.weight.shape[-2])
        layer.weight.data, layer.bias.data = torch.from_numpy(node.weight), torch.from_numpy(node.bias)
        return layer

    def flatten(node):  # NIR dims exclude the batch
        return nn.Flatten(int(node.start_dim) + 1, int(node.end_dim) + 1 if node.end_dim >= 0 else -1)

    def scale(node):
        return _Scale(torch.from_numpy(np.asarray(node.scale)))

    node_map = {nir.Affine: affine, nir.Flatten: flatten, nir.LIF: lambda n: _NIRNeuron(n, dt),
                nir.IF: lambda n: _NIRNeuron(n, dt), nir.Scale: scale}
    return nirtorch.nir_to_torch(graph, node_map, dtype=dtype)


class _Scale(nn.Module):
    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale
