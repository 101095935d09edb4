"""A SpikeConverter QANN's ATen graph rewritten by node kind (:func:`spiketwin.convert.graph.classify`) into a
time-folded SNN: every tensor is ``[T' B, ...]`` (``T'`` steps of a chunk, step-major), which works because the
graph was exported with a dynamic batch dimension. For the iLIF schedule (``spiking=True``):

- a quantizer becomes a neuron (the caller's ``neuron``);
- the source (the image) needs nothing: the simulation feeds it once, at the last step of the first period;
- a weighted op with a bias, and any linear op with a constant part (a concatenated class token, an added position
  embedding), adds that part once per period, at its last step (:class:`PeriodBias`, :class:`PerPeriod`);
- every maximal non-linear region (LayerNorm, softmax, ...) and every product of two signals becomes a period
  operator (:class:`PeriodOp`: decode, apply, encode; one period of latency); max pooling of a neuron's output
  (unsigned) becomes :class:`SpikeMaxPool2d`;
- operands from different depths (lags) are aligned by :class:`Delay`.

With ``spiking=False`` (the rate-coded baseline) only the quantizers are swapped and every op runs at every step.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable

import torch
from torch import fx, nn

from ...base import check_step_mode, reset
from ...ops import MatMul
from ...quant import Quantizer
from .. import graph as G
from ..events import constant_part
from ..samples import batch_sizes
from .operators import Clock, Clocked, Delay, PerPeriod, PeriodBias, PeriodOp, SpikeMaxPool2d

LAYERS = {G.aten.linear: nn.Linear, G.aten.conv1d: nn.Conv1d, G.aten.conv2d: nn.Conv2d}
MAX_POOLS = {G.aten.max_pool2d: nn.MaxPool2d}
PERIOD, SPIKE_POOL = "period", "spike pool"


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


def module_type(node: fx.Node) -> str:
    """The class name of the innermost module a node was traced in (``"Conv2d"``), ``""`` for the root."""
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][1]).rsplit(".", 1)[-1].rstrip("'>") if stack else ""


def is_quantizer(node) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_module" and str(node.target).startswith("quantizers.")


def kind_name(node: fx.Node) -> str:
    """A node's operation for reports: ``"Quantizer"``, else the ATen op (``"conv2d"``, ``"layer_norm"``)."""
    if is_quantizer(node):
        return "Quantizer"
    op = G.packet(node)
    return getattr(op, "__name__", str(op)).split(".")[-1]


def owner(gm: fx.GraphModule, target: str) -> tuple[nn.Module, str]:
    """The module that holds the attribute ``target`` (``"blocks.0.norm1.weight"``) of ``gm``, and its name there."""
    path, _, name = target.rpartition(".")
    return (gm.get_submodule(path) if path else gm), name


def layer_of(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The ``nn.Linear`` / ``nn.ConvNd`` a weighted node computes (sharing its parameters), or None."""
    op = G.packet(node)
    args = list(node.args) + [None] * (7 - len(node.args))
    if op not in LAYERS or node.kwargs or not all(a is None or (isinstance(a, fx.Node) and a.op == "get_attr")
                                                  for a in args[1:3]):
        return None
    weight, bias = (None if a is None else getattr(*owner(gm, a.target)) for a in args[1:3])
    if op is G.aten.linear:
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    else:
        stride, padding, dilation, groups = (a if a is not None else d for a, d in zip(args[3:7], (1, 0, 1, 1)))
        layer = LAYERS[op](weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride, padding,
                           dilation, groups, bias=bias is not None, device="meta")
    layer.weight = weight
    if bias is not None:
        layer.bias = bias
    return layer


def _check_batch_first(gm: fx.GraphModule, kinds: dict) -> None:
    """Time folding needs dimension 0 of every signal to hold the batch (dynamic in the traced graph)."""
    symbols = [re.compile(rf"\b{re.escape(s)}\b") for s in batch_sizes(gm)]
    for node, kind in kinds.items():
        val = node.meta.get("val")
        if kind in (G.CONST, G.OUTPUT) or not isinstance(val, torch.Tensor):
            continue
        if not (val.dim() and any(s.search(str(val.shape[0])) for s in symbols)):
            raise G.ConversionError(f"to_snn: node '{node.name}' ({G.packet(node)}, {G.where(node)}) does not keep "
                                    "the batch in dimension 0; the iLIF SNN folds time into it")


class TimeFoldedSNN(nn.Module):
    """A QANN graph rewritten into a time-folded SNN (module docstring), run chunk by chunk of time steps."""

    def __init__(self, qann: nn.Module, neuron: Callable[[Quantizer, Clock], nn.Module], spiking: bool) -> None:
        super().__init__()
        if not (isinstance(getattr(qann, "net", None), fx.GraphModule) and hasattr(qann, "phase_steps")):
            raise TypeError(f"expected a QANN made by to_qann(..., neuron='ilif'), got {type(qann).__name__}")
        self.phase_steps = T = qann.phase_steps
        self.clock = Clock(T)
        gm = copy.deepcopy(qann.net)
        kinds = G.classify(gm)
        _check_batch_first(gm, kinds)
        gm.add_module("spiking", nn.ModuleList())
        for node in gm.graph.nodes:
            if kinds.get(node) == G.NONLINEAR and G.packet(node) in MAX_POOLS and is_quantizer(node.args[0]) and (
                    not gm.get_submodule(node.args[0].target).signed):
                kinds[node] = SPIKE_POOL
        if spiking:
            self._period_regions(gm, kinds)
        lags: dict[str, int | None] = {}  # None: a constant, present in every period
        for node in list(gm.graph.nodes):
            kind = kinds.get(node, G.SOURCE)
            if kind in (G.CONST, G.OUTPUT) or node.op == "placeholder":
                lags[node.name] = None if kind == G.CONST else 0
                continue
            inputs = [a for a in G.tensor_args(node) if lags[a.name] is not None]
            lag = max((lags[a.name] for a in inputs), default=0)
            if spiking:
                for a in dict.fromkeys(inputs):  # operands of one operation must arrive in the same period
                    if lags[a.name] < lag:
                        with gm.graph.inserting_before(node):
                            delayed = gm.graph.call_module(self._add(gm, Clocked(Delay((lag - lags[a.name]) * T),
                                                                                 self.clock)), (a,))
                        lags[delayed.name] = lag
                        node.replace_input_with(a, delayed)
            lag += self._rewrite(gm, node, kind, kinds, neuron, spiking)
            lags[node.name] = lag
        gm.graph.lint()
        gm.recompile()
        self.net, self.lags = gm, lags
        (out,) = [n for n in gm.graph.nodes if n.op == "output"]
        results = G.tensor_args(out)
        if len(results) != 1:
            raise G.ConversionError(f"to_snn: the model must return one tensor, it returns {len(results)}")
        self.readout = results[0].name
        self.depth = lags[self.readout]

    @staticmethod
    def _add(gm: fx.GraphModule, module: nn.Module) -> str:
        gm.spiking.append(module)
        return f"spiking.{len(gm.spiking) - 1}"

    def _call(self, gm: fx.GraphModule, node: fx.Node, module: nn.Module, args: tuple) -> None:
        """Turn ``node`` (keeping its name) into a call of ``module`` on ``args``."""
        node.op, node.target, node.args, node.kwargs = "call_module", self._add(gm, module), tuple(args), {}

    def _rewrite(self, gm: fx.GraphModule, node: fx.Node, kind: str, kinds: dict, neuron, spiking: bool) -> int:
        """Rewrite one node by its kind; returns the lag it adds (1 for a neuron or a period operator)."""
        T = self.phase_steps
        if kind == G.QUANT:
            index = int(str(node.target).split(".")[1])
            gm.quantizers[index] = neuron(gm.quantizers[index], self.clock)
            return 1
        if kind == PERIOD:
            return 1
        if kind == SPIKE_POOL:
            if spiking:
                x, kernel, stride, padding, dilation, ceil = (list(node.args) + [None] * 6)[:6]
                pool = MAX_POOLS[G.packet(node)](kernel, stride or None, padding or 0, dilation or 1, bool(ceil))
                self._call(gm, node, Clocked(SpikeMaxPool2d(pool, T), self.clock), (x,))
            return 0
        if not spiking:
            if kind in (G.BILINEAR, G.NONLINEAR):
                raise TypeError(f"RateSNN: the rate-coded baseline converts ReLU CNNs only, not node '{node.name}' "
                                f"({kind_name(node)})")
            return 0
        if kind == G.BILINEAR:
            if node.kwargs or len(node.args) != 2:
                raise G.ConversionError(f"node '{node.name}' ({G.where(node)}): a product with extra arguments")
            fn = MatMul() if G.packet(node) is G.aten.matmul else G.OpModule(node.target)
            self._call(gm, node, Clocked(PeriodOp(fn, T), self.clock), node.args)
            return 1
        if kind in (G.WEIGHTED, G.LINEAR) and node.op == "call_function":
            layer = layer_of(gm, node)
            if layer is not None:
                wrapped = Clocked(PeriodBias(layer, T), self.clock) if layer.bias is not None else layer
                self._call(gm, node, wrapped, node.args[:1])
            else:
                self._constants_once_per_period(gm, node, kinds)
        return 0

    def _constants_once_per_period(self, gm: fx.GraphModule, node: fx.Node, kinds: dict) -> None:
        """An affine op with a constant part becomes :class:`PerPeriod`."""
        part = constant_part(node, kinds)
        if part is not None:
            fn, args, later = part
            self._call(gm, node, PerPeriod(fn, dict(node.kwargs), later, self.clock), args)

    def _period_regions(self, gm: fx.GraphModule, kinds: dict) -> None:
        """Each output of each non-linear region becomes a :class:`PeriodOp` of the region's graph up to it."""
        groups: dict[int, list[fx.Node]] = {}
        for node, rid in G.regions(gm, kinds).items():
            groups.setdefault(rid, []).append(node)
        for members in groups.values():
            inside = set(members)
            outputs = [n for n in members if any(u not in inside for u in n.users)]
            built = [(out, *self._region_graph(gm, out, inside, kinds)) for out in outputs]
            for out, externals, fn in built:
                self._call(gm, out, Clocked(PeriodOp(fn, self.phase_steps), self.clock), externals)
                kinds[out] = PERIOD
            for node in reversed(members):
                if node not in outputs and not node.users:
                    gm.graph.erase_node(node)

    @staticmethod
    def _region_graph(gm: fx.GraphModule, out: fx.Node, inside: set, kinds: dict) -> tuple[list, fx.GraphModule]:
        """The signal inputs of the part of a region that computes ``out``, and that part as a graph module."""
        needed, stack = set(), [out]
        while stack:
            node = stack.pop()
            if node not in needed:
                needed.add(node)
                stack.extend(a for a in G.tensor_args(node) if a in inside)
        order = [n for n in gm.graph.nodes if n in needed]
        externals = list(dict.fromkeys(a for n in order for a in G.tensor_args(n)
                                       if a not in inside and kinds.get(a) != G.CONST))
        graph, env = fx.Graph(), {}
        for e in externals:
            env[e] = graph.placeholder(e.name)
        for node in order:
            for a in G.tensor_args(node):
                if a not in env and a not in inside:
                    if a.op != "get_attr":
                        raise G.ConversionError(f"to_snn: node '{node.name}' ({G.where(node)}) in a non-linear "
                                                f"region reads '{a.name}', computed from shapes or constants; the "
                                                "period operator takes parameters and signals only")
                    env[a] = graph.get_attr(a.target)
            env[node] = graph.node_copy(node, lambda a: env[a])
        graph.output(env[out])
        return externals, fx.GraphModule(gm, graph)

    @property
    def latency(self) -> int:
        """Steps from a sample's input to its decoded output: ``(depth + 1) · T``."""
        return (self.depth + 1) * self.phase_steps

    @torch.no_grad()
    def _run(self, inputs: Callable[[int, int], torch.Tensor], total: int, step_mode: str,
             record: list[str]) -> dict[str, torch.Tensor]:
        """Run ``total`` steps from a reset state; ``inputs(start, steps)`` gives ``[steps, B, ...]``. Returns
        the ``[total, B, ...]`` trains of the nodes in ``record``."""
        check_step_mode(step_mode)  # "s": one step per call; "m": one period per call
        reset(self.net)
        chunk = 1 if step_mode == "s" else self.phase_steps
        trains: dict[str, list[torch.Tensor]] = {name: [] for name in record}
        for start in range(0, total, chunk):
            steps = min(chunk, total - start)
            self.clock.steps, self.clock.start = steps, start
            recorder = Recorder(self.net, record)
            recorder.run(inputs(start, steps).flatten(0, 1))
            for name in record:
                trains[name].append(recorder.values[name].unflatten(0, (steps, -1)))
        reset(self.net)
        return {name: torch.cat(chunks) for name, chunks in trains.items()}

    def _steps(self, max_steps: int | None) -> int:
        """The number of steps :meth:`simulate` runs: ``max_steps``, by default the latency."""
        steps = self.latency if max_steps is None else int(max_steps)
        if steps < 1:
            raise ValueError(f"simulate: max_steps must be >= 1, got {max_steps}")
        return steps

    @staticmethod
    def _check_input(x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
            raise ValueError(f"simulate: x must be a floating-point tensor [B, C, ...], got "
                             f"{type(x).__name__} {getattr(x, 'shape', '')}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("simulate: x contains NaN or inf")
