"""Energy of a converted graph SNN (``spiketwin.convert.to_snn`` of any traced model): its counted ops are graph nodes.

A graph SNN (:class:`~spiketwin.convert.snn.GraphSNN`) computes its weight layers and products as nodes of a
``torch.fx`` graph (``aten.linear``, ``aten.conv2d``, ``aten.addmm``, ``aten.matmul`` ...), not as ``nn.Linear``
modules. :func:`instrument` copies the SNN (parameters and buffers shared) and makes every counted node a call of a
module that :class:`GraphRun` hooks; the node kinds are those of :func:`spiketwin.convert.graph.classify`:

- weighted (linear, convolution, ``addmm``, a matmul with a constant operand); in the events state those with a
  constant part are :class:`~spiketwin.convert.events.ConstantsOnce` modules;
- products of two signals outside a non-linear region (``q @ kᵀ``, ``attn @ v``, a gated MLP's elementwise
  product); in the events state :class:`~spiketwin.convert.events.SESA` modules.

FLOPs come from the op and its shapes (linear: ``out.numel() * in_features``, convolution: ``out.numel() *
C_in/groups * prod(kernel)``, matmul: ``out.numel() * K``, elementwise product: ``out.numel()``). What an operand
carries at a step is its increment: in the events state the operand itself; in the exact state, where it is the
accumulated value, its change since the previous step, read as a count change (``round(Δ/θ) θ``) when it is a
neuron's output or a view of one, so that both states count the same bits. A neuron's graded spike ``k θ`` is
``|k|`` spikes (SOPs) and one event.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import fx, nn

from ..convert import graph as G
from ..convert.events import SESA, ConstantsOnce
from ..convert.snn import _batch, _split
from ..neurons import ExactSTBIF
from .collect import Call, Needs, Operand, Run, Stats, conv_uses

COUNTED = G.WEIGHT_OPS | G.PRODUCT_OPS
MOVES = {G.aten.view, G.aten._unsafe_view, G.aten.reshape, G.aten.permute, G.aten.transpose, G.aten.t,
         G.aten.movedim, G.aten.unsqueeze, G.aten.squeeze, G.aten.flatten, G.aten.unflatten, G.aten.expand,
         G.aten.repeat, G.aten.repeat_interleave, G.aten.slice, G.aten.select, G.aten.narrow, G.aten.clone,
         G.aten.contiguous, G.aten.alias, G.aten.detach, G.aten.split, G.aten.split_with_sizes, G.aten.chunk,
         G.aten.unbind, operator.getitem}
"""Ops that only move or copy a tensor's values: an operand computed by them from a neuron carries its spikes."""
CONV_OPS = {G.aten.conv1d, G.aten.conv2d, G.aten.conv3d}
TRANSPOSED = {G.aten.conv_transpose1d, G.aten.conv_transpose2d, G.aten.conv_transpose3d}


def is_graph_snn(model: nn.Module) -> bool:
    """A converted graph SNN: its ``.model`` is a ``torch.fx.GraphModule`` whose neurons are ``.model.quantizers``."""
    return isinstance(getattr(model, "model", None), fx.GraphModule) and hasattr(model.model, "quantizers")


@dataclass
class Counted:
    """One counted op of the graph: its row name, kind, aten op, signal operand positions and their neurons' θ."""

    name: str
    kind: str  # "linear", "conv" or "product"
    op: object  # the aten op packet (aten.linear ...)
    operands: tuple[int, ...]
    thetas: tuple[torch.Tensor | None, ...]
    fn: Callable | None = None  # products: the op, applied to the operands' non-zero masks for coincident pairs

    def flops(self, args: tuple, out: torch.Tensor) -> float:
        """The ANN's multiply-accumulates of one call (all samples)."""
        op = self.op
        if op is G.aten.mul:
            return float(out.numel())
        if op in G.PRODUCT_OPS:
            return float(out.numel() * args[0].shape[-1])
        if op is G.aten.addmm:
            return float(out.numel() * args[1].shape[-1])
        weight = args[1]
        if op is G.aten.linear:
            return float(out.numel() * weight.shape[-1])
        transposed = op in TRANSPOSED or (op is G.aten.convolution and args[6])
        return float((args[0].numel() if transposed else out.numel()) * weight[0].numel())

    def bias(self, args: tuple, out: torch.Tensor) -> tuple[int, int]:
        """Output elements that get a bias, and syops-counter's bias count of the call (a Linear's out_features)."""
        if self.kind == "product":
            return 0, 0
        if self.op is G.aten.addmm:
            return out.numel(), args[2].shape[-1]
        if self.op in G.PRODUCT_OPS or len(args) < 3 or args[2] is None:
            return 0, 0
        return out.numel(), (args[1].shape[0] if self.op is G.aten.linear else out.numel())

    def uses(self, x: torch.Tensor, args: tuple) -> torch.Tensor | None:
        """Exact weight uses of a convolution with integer padding (``None`` for other ops)."""
        if self.op not in CONV_OPS:
            return None
        stride, padding, dilation, groups = (list(args[3:7]) + [1, 0, 1, 1][len(args[3:7]):])
        if isinstance(padding, str):
            return None
        return conv_uses(x, 1, args[1].shape, stride, padding, dilation, groups)


def _packet(fn):
    """The op overload packet of an aten op (``aten.linear`` for ``aten.linear.default``), else ``fn``."""
    return getattr(fn, "overloadpacket", fn)


def _neuron_of(node, gm: fx.GraphModule) -> nn.Module | None:
    """The neuron whose output ``node`` is, directly or through ops that only move values."""
    while isinstance(node, fx.Node):
        if node.op == "call_module" and str(node.target).startswith("quantizers."):
            return gm.get_submodule(node.target)
        if node.op != "call_function" or G.packet(node) not in MOVES or not node.args:
            return None
        node = node.args[0]
    return None


def _path(node: fx.Node) -> str:
    """The innermost module path the node was traced in (``blocks.0.attn``; ``""`` at the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _names(found: list[tuple[str, object]]) -> list[str]:
    """Row names for counted ops given as ``(module path, op)``: the path when it holds one counted op (a Linear,
    a product module), else ``path.op`` numbered as fx numbers nodes (``blocks.0.attn.matmul``, ``..matmul_1``)."""
    per_path: dict[str, int] = {}
    for path, _ in found:
        per_path[path] = per_path.get(path, 0) + 1
    taken: dict[str, int] = {}
    names = []
    for path, op in found:
        base = path if path and per_path[path] == 1 else f"{path}.{op.__name__}".lstrip(".")
        count = taken.get(base, 0)
        taken[base] = count + 1
        names.append(base if count == 0 else f"{base}_{count}")
    return names


def instrument(snn: nn.Module) -> tuple[nn.Module, dict[nn.Module, Counted], dict[nn.Module, str]]:
    """A copy of the graph SNN ``snn`` (parameters and buffers shared), its counted ops by module, and its LayerNorms
    (module -> row name; their input is the accumulated value in both states)."""
    memo = {id(t): t for t in (*snn.parameters(), *snn.buffers())}
    twin = copy.deepcopy(snn, memo)
    gm = twin.model
    kinds = G.classify(gm)
    exact = getattr(snn, "state", "exact") == "exact"
    region = G.regions(gm, kinds) if exact else {}
    gm.add_module("energy_ops", nn.ModuleList())
    counted: dict[nn.Module, Counted] = {}
    norms: dict[nn.Module, str] = {}
    paths: list[tuple[str, object]] = []
    for node in list(gm.graph.nodes):
        if node.op == "call_function":
            op, kind = G.packet(node), kinds.get(node)
            product = kind == G.BILINEAR and exact and node not in region
            if op is G.aten.layer_norm and kinds.get(node) != G.CONST:  # for conventions that charge LayerNorm
                module, node = _wrap(gm, node)
                module.elementwise_affine = len(node.args) > 2 and node.args[2] is not None
                norms[module] = _path(node)
                continue
            if not product and not (kind == G.WEIGHTED and op in COUNTED):
                continue
            fn, kwargs = node.target, dict(node.kwargs)
            module, node = _wrap(gm, node)
        elif node.op == "call_module":
            module = gm.get_submodule(node.target)
            if isinstance(module, SESA):
                product, fn, kwargs = True, module.fn, module.kwargs
            elif isinstance(module, ConstantsOnce) and _packet(module.fn) in COUNTED:
                product, fn, kwargs = False, module.fn, module.kwargs
            else:
                continue
            op = _packet(fn)
        else:
            continue
        signal = tuple(i for i, a in enumerate(node.args)
                       if isinstance(a, fx.Node) and kinds.get(a, G.SOURCE) != G.CONST)
        if len(signal) != (2 if product else 1):
            raise ValueError(f"energy.report: cannot count node '{node.name}' ({op}, {G.where(node)}): expected "
                             f"{2 if product else 1} signal operand(s) among its positional arguments")
        kind = "product" if product else "linear" if op in (G.aten.linear, G.aten.addmm, *G.PRODUCT_OPS) else "conv"
        thetas = tuple(_theta(node.args[i], gm) for i in signal)
        pair = (lambda a, b, fn=fn, kwargs=kwargs: fn(a, b, **kwargs)) if product else None
        counted[module] = Counted("", kind, op, signal, thetas, pair)
        paths.append((_path(node), op))
    for c, name in zip(counted.values(), _names(paths)):
        c.name = name
    gm.graph.lint()
    gm.recompile()
    norms = dict(zip(norms, _names([(path, G.aten.layer_norm) for path in norms.values()])))
    return twin, counted, norms


def _wrap(gm: fx.GraphModule, node: fx.Node) -> tuple[nn.Module, fx.Node]:
    """Replace the ``call_function`` ``node`` by a call of a :class:`~spiketwin.convert.graph.OpModule` (so that a
    forward hook sees its arguments and output); the module and its node."""
    module = G.OpModule(node.target)
    gm.energy_ops.append(module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(f"energy_ops.{len(gm.energy_ops) - 1}", node.args, node.kwargs)
    new.meta = node.meta
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return module, new


def _theta(node, gm: fx.GraphModule) -> torch.Tensor | None:
    neuron = _neuron_of(node, gm)
    return None if neuron is None else neuron.threshold


def until_settled(max_steps: int = 512) -> Callable[[nn.Module, object], None]:
    """``run`` for :func:`spiketwin.energy.report` on a graph SNN: one step at a time on the whole batch until no
    neuron is pending (every sample settled) or ``max_steps`` run out. The check reads the host at every step, on
    CUDA too (one read, all neurons' flags at once): the report's ``T`` is the settle step on every device, where
    a check every few steps would count the silent steps up to the next check into ``T`` and the firing rates."""

    def run(snn: nn.Module, inputs) -> None:
        args, kwargs = _split(inputs)
        for _ in range(max_steps):
            snn(*args, **kwargs)
            pending = [n.pending.any() for n in snn.neurons if n.pending is not None]
            if not pending or not bool(torch.stack(pending).any()):
                return
    return run


def batch_of(inputs) -> int:
    """The batch size of a graph SNN's inputs (a tensor, a tuple, or a dict of keyword tensors)."""
    return _batch(*_split(inputs))


class GraphRun(Run):
    """:class:`~spiketwin.energy.collect.Run` on an instrumented graph SNN: every call of a counted op is one step."""

    def __init__(self, model: nn.Module, analog: str | Iterable[str], needs: Needs, ops: dict[nn.Module, Counted],
                 norms: dict[nn.Module, str], batch: int, exact: bool) -> None:
        super().__init__(model, analog if isinstance(analog, str) else "none", needs)
        if not isinstance(analog, str):
            self.analog = set(analog)
            unknown = self.analog - {c.name for c in ops.values()}
            if unknown:
                raise ValueError(f"energy.report: analog lists {sorted(unknown)}, which are not counted ops of the "
                                 f"graph SNN; its ops: {sorted(c.name for c in ops.values())}")
        self.batch, self.exact = batch, exact
        labels = getattr(model, "labels", None) or []
        self.labels = {f"model.quantizers.{i}": label for i, label in enumerate(labels)}  # neuron rows by label
        self.previous: dict[tuple[int, int], torch.Tensor] = {}
        for module, counted in ops.items():
            self.handles.append(module.register_forward_hook(self._op_hook(counted)))
        if "layernorm" in needs.extras:
            for module, name in norms.items():
                self.handles.append(module.register_forward_hook(self._extra_hook(name, "layernorm")))

    def close(self) -> None:
        super().close()
        self.previous.clear()

    def _increment(self, key: tuple[int, int], x: torch.Tensor, theta: torch.Tensor | None) -> torch.Tensor:
        """What the operand carries this step: ``x`` (events), or its change since the previous step (exact)."""
        if not self.exact:
            return x
        previous = self.previous.get(key)
        self.previous[key] = x
        if previous is not None and previous.shape != x.shape:
            raise RuntimeError("energy.report: a graph SNN's batch changed during the run; run it without early "
                               "exit (spiketwin.energy.simulation_run, or the default run)")
        change = x if previous is None else x - previous
        return change if theta is None else torch.round(change / theta.to(x.dtype)) * theta.to(x.dtype)

    def _stats(self, name: str, kind: str, module: nn.Module, x: torch.Tensor | None = None) -> Stats:
        return super()._stats(self.labels.get(name, name), kind, module, x)

    def _count_extra(self, s: Stats, module: nn.Module, x: torch.Tensor, n: int) -> None:
        """An exact-state neuron's input is its accumulated input: count its change, as the events state sees it."""
        if self.exact and isinstance(module, ExactSTBIF):
            x = self._increment((id(module), 0), x, None)
        super()._count_extra(s, module, x, n)

    def _graph_operand(self, d: torch.Tensor, theta: torch.Tensor | None) -> Operand:
        rows = d.reshape(1, -1)
        nonzero = torch.count_nonzero(rows, dim=1)
        if theta is None:
            return self._describe(rows, nonzero, nonzero, d.shape)
        spikes = torch.round(rows.abs() / theta.to(rows.dtype)).sum(1, dtype=torch.float64)
        return self._describe(rows, nonzero, spikes, d.shape)

    def _op_hook(self, counted: Counted):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            parts = [self._increment((id(module), i), args[p], theta)
                     for i, (p, theta) in enumerate(zip(counted.operands, counted.thetas))]
            product = counted.kind == "product"
            s = self._stats(counted.name, counted.kind, module, None if product else parts[0])
            ops = [self._graph_operand(d, theta) for d, theta in zip(parts, counted.thetas)]
            flops = counted.flops(args, out)
            if product:
                a, b = parts
                dtype = a.dtype if a.is_floating_point() else torch.float32
                pairs = counted.fn(a.ne(0).to(dtype), b.ne(0).to(dtype)).reshape(1, -1).sum(1, dtype=torch.float64)
                call = Call(s.steps, 1, flops, ops[0], ops[1], pairs=pairs)
            else:
                outputs, per_call = counted.bias(args, out)
                call = Call(s.steps, 1, flops, ops[0], bias_outputs=outputs, bias_call=per_call)
                if self.needs.uses:
                    call.uses = counted.uses(parts[0], args)
                if s.analog:
                    call.compute = self._compute_steps(s, parts[0], 1)
            s.calls.append(call)
            s.steps += 1
        return hook


__all__ = ["Counted", "GraphRun", "Stats", "batch_of", "instrument", "is_graph_snn", "until_settled"]
