"""The event-driven SNN of a QANN graph (``to_snn(qann, state="events")``): SPEC A's operators as graph rewrites.

Every signal value of the QANN graph becomes its per-step increment, and each node is rewritten by its kind
(:mod:`spiketwin.convert.graph`):

- a source (the model's float input, an embedding lookup) passes its value at the first step, zeros after
  (:class:`EnterOnce`);
- a linear or weighted op acts on each step's increments; its constant part (bias, an added constant, a
  concatenated class token) enters at the first step only (:class:`ConstantsOnce`); purely linear ops (reshapes,
  scaling, a matmul with a weight and no bias) run unchanged;
- a bilinear op is SESA (:class:`SESA`): ``A_t B_t - A_{t-1} B_{t-1}`` from the running sums of its operands;
- a non-linear region accumulates its inputs (:class:`Accumulate`), computes its nodes on the sums, and passes the
  difference of its outputs (:class:`Difference`): ``f(X_t) - f(X_{t-1})``;
- a quantizer becomes an :class:`~spiketwin.neurons.STBIF` neuron that integrates the increments.

Summed over steps, every value equals the QANN's (exactly, in exact arithmetic). Each module keeps its state per
sample along ``batch_dim`` (alone, or folded with other dimensions: ``[B*L, H]``) so that settled samples can leave
the batch.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from ..base import StatefulModule
from ..neurons import STBIF
from . import graph as G
from .samples import batch_dim, batch_sizes, folded_samples

AFFINE = {G.aten.add, G.aten.sub, G.aten.rsub, G.aten.where, G.aten.masked_fill, G.aten.cat, G.aten.stack,
          G.aten.constant_pad_nd, G.aten.batch_norm, G.aten._native_batch_norm_legit_no_training, G.aten.addmm,
          *G.WEIGHT_OPS}
"""Linear ops that can add a constant: :func:`constant_args` says which arguments carry it."""
NONE = object()
"""Marks an argument replaced by ``None`` (a bias) after the first step; other constant parts become zeros."""


def constant_args(node: fx.Node, args: list, signal: list[bool]) -> dict[int, object]:
    """Argument position -> what it becomes after the first step (``NONE`` or ``0``), so that the op computes only
    its linear part: the bias of a weighted op, an added or concatenated constant, ``where``'s constant branch,
    ``masked_fill``'s value, batch norm's shift. Conditions, masks and weights stay."""
    op = G.packet(node)
    if op in G.WEIGHT_OPS and op is not G.aten.addmm:
        return {2: NONE} if len(args) > 2 and args[2] is not None else {}
    positions = {G.aten.addmm: [0], G.aten.where: [1, 2], G.aten.masked_fill: [2], G.aten.constant_pad_nd: [2],
                 G.aten.batch_norm: [2, 3], G.aten._native_batch_norm_legit_no_training: [2, 3]}.get(op)
    if positions is None:  # add, sub, rsub, cat, stack: every constant operand
        positions = [i for i in range(len(args)) if op in (G.aten.cat, G.aten.stack) or i < 2]
    return {i: 0 for i in positions if i < len(args) and not signal[i] and args[i] is not None and not (
        isinstance(args[i], (int, float)) and args[i] == 0)}


def linear_part(args, later: dict[int, object]) -> list:
    """``args`` with the constant parts that ``later`` (:func:`constant_args`) names replaced by ``None`` or zeros:
    what the op computes from them is its linear part."""
    return [a if i not in later else None if later[i] is NONE else torch.zeros_like(a) if isinstance(a, torch.Tensor)
            else 0 for i, a in enumerate(args)]


def constant_part(node: fx.Node, kinds: dict):
    """For an affine op with a constant part: ``(fn, args, later)``, the op as a function of ``args`` (``cat`` /
    ``stack`` get their list of tensors as positional arguments) and :func:`constant_args`; else None."""
    if G.packet(node) not in AFFINE:
        return None
    listed = G.packet(node) in (G.aten.cat, G.aten.stack)
    args = list(node.args[0]) if listed else list(node.args)
    if not listed and any(isinstance(a, (list, tuple)) and any(isinstance(x, fx.Node) for x in a) for a in args):
        raise G.ConversionError(f"node '{node.name}' ({G.packet(node)}, {G.where(node)}): tensors nested in a list")
    later = constant_args(node, args, [_is_signal(a, kinds) for a in args])
    if not later:
        return None
    return (_ListOp(node.target, len(args), tuple(node.args[1:])) if listed else node.target), args, later


class _SampleState(StatefulModule):
    """State tensors kept per sample along ``batch_dim`` (``None``: unknown, samples cannot leave the batch)."""

    def __init__(self, batch_dim: int | None) -> None:
        super().__init__(step_mode="s")
        self.batch_dim = batch_dim


class EnterOnce(_SampleState):
    """The analog input: its value at the first step, zeros afterwards."""

    state_names = ("started",)

    def __init__(self) -> None:
        super().__init__(batch_dim=0)  # no per-sample state (a position embedding has no batch at all)

    def single_step(self, x: torch.Tensor) -> torch.Tensor:
        if self.started is None:
            self.started = True
            return x
        return torch.zeros_like(x)


class ConstantsOnce(_SampleState):
    """A linear op on increments whose constant part enters at the first step only: afterwards the arguments in
    ``later`` (from :func:`constant_args`) are replaced by ``None`` or zeros, leaving the op's linear part."""

    state_names = ("started",)

    def __init__(self, fn, kwargs: dict, later: dict[int, object]) -> None:
        super().__init__(batch_dim=0)  # no per-sample state: samples may leave the batch freely
        self.fn, self.kwargs, self.later = fn, kwargs, later

    def forward(self, *args):
        if self.started is None:
            self.started = True
            return self.fn(*args, **self.kwargs)
        return self.fn(*linear_part(args, self.later), **self.kwargs)


class SESA(_SampleState):
    """Spike-equivalent product of two signals: ``fn(A_t, B_t) - fn(A_{t-1}, B_{t-1})`` from their running sums."""

    state_names = ("a", "b", "product")

    def __init__(self, fn, kwargs: dict, batch_dim: int | None) -> None:
        super().__init__(batch_dim)
        self.fn, self.kwargs = fn, kwargs

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.a = a if self.a is None else self.a + a
        self.b = b if self.b is None else self.b + b
        product = self.fn(self.a, self.b, **self.kwargs)
        out = product if self.product is None else product - self.product
        self.product = product
        return out


class Accumulate(_SampleState):
    """A non-linear region's input: the running sum of its increments."""

    state_names = ("total",)

    def single_step(self, x: torch.Tensor) -> torch.Tensor:
        self.total = x if self.total is None else self.total + x
        return self.total


class Difference(_SampleState):
    """A non-linear region's output: ``f(X_t) - f(X_{t-1})`` (``f(X_0) = 0``)."""

    state_names = ("last",)

    def single_step(self, y: torch.Tensor) -> torch.Tensor:
        out = y if self.last is None else y - self.last
        self.last = y
        return out


def _insert(gm: fx.GraphModule, module: nn.Module, after: fx.Node, args: tuple) -> fx.Node:
    index = len(gm.events)
    gm.events.append(module)
    with gm.graph.inserting_after(after):
        node = gm.graph.call_module(f"events.{index}", args)
    node.meta = {k: v for k, v in after.meta.items() if k in ("val", "batch_dim", "stack_trace", "nn_module_stack")}
    return node


def to_events(gm: fx.GraphModule, spikes_per_step: int, neuron_batch_dims: list[int | None]) -> fx.GraphModule:
    """Rewrite the QANN graph ``gm`` (a copy, changed in place) into the event-driven SNN; returns it."""
    kinds = G.classify(gm)
    region = G.regions(gm, kinds)
    sizes = batch_sizes(gm)
    folds = folded_samples(gm, sizes)
    for node in gm.graph.nodes:  # where its samples are, alone or folded (``[B*L, H]``); inserted nodes copy it
        node.meta["batch_dim"] = folds.get(node, batch_dim(node, sizes))
    gm.add_module("events", nn.ModuleList())
    for node in list(gm.graph.nodes):
        kind, dim = kinds.get(node), node.meta["batch_dim"]
        if kind == G.SOURCE:
            new = _insert(gm, EnterOnce(), node, (node,))
            node.replace_all_uses_with(new, delete_user_cb=lambda u, n=new: u is not n)
        elif node in region or node.op != "call_function":
            continue
        elif kind == G.BILINEAR:
            if node.kwargs or len(node.args) != 2:
                raise G.ConversionError(f"node '{node.name}' ({G.where(node)}): a product with extra arguments")
            same = all(a.meta["batch_dim"] == dim for a in node.args)  # a, b and their product keep samples alike
            new = _insert(gm, SESA(node.target, {}, dim if same else None), node, tuple(node.args))
            node.replace_all_uses_with(new, delete_user_cb=lambda u, n=new: u is not n)
            gm.graph.erase_node(node)
        elif kind in (G.LINEAR, G.WEIGHTED):
            _replace_constants_once(gm, node, kinds)
    for members in _region_members(region).values():
        _wrap_region(gm, members, kinds)
    gm.quantizers = nn.ModuleList(_neuron(q, spikes_per_step, d) for q, d in zip(gm.quantizers, neuron_batch_dims))
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("quantizers."):
            dim = neuron_batch_dims[int(str(node.target).split(".")[1])]
            if dim not in (0, None):
                _batch_first(gm, node, dim)
    gm.graph.lint()
    gm.recompile()
    return gm


def _neuron(quantizer: nn.Module, spikes_per_step: int, dim: int | None) -> STBIF:
    neuron = STBIF.from_quantizer(quantizer, step_mode="s", spikes_per_step=spikes_per_step)
    neuron.batch_dim = None if dim is None else 0  # its input has the batch first (:func:`_batch_first`)
    return neuron


def _batch_first(gm: fx.GraphModule, neuron: fx.Node, dim: int) -> None:
    """Give ``neuron`` its input with the batch dimension ``dim`` moved first, and move it back after: an event
    neuron keeps its samples along dimension 0 (it is elementwise, so no value changes)."""
    where = {k: v for k, v in neuron.meta.items() if k in ("stack_trace", "nn_module_stack")}
    with gm.graph.inserting_before(neuron):
        front = gm.graph.call_function(G.aten.movedim.int, (neuron.args[0], dim, 0))
    neuron.args = (front,)
    with gm.graph.inserting_after(neuron):
        back = gm.graph.call_function(G.aten.movedim.int, (neuron, 0, dim))
    neuron.replace_all_uses_with(back, delete_user_cb=lambda u: u is not back)
    front.meta, back.meta = dict(where), dict(where)


def _replace_constants_once(gm: fx.GraphModule, node: fx.Node, kinds: dict) -> None:
    """Put :class:`ConstantsOnce` in place of ``node`` when it has a constant part."""
    part = constant_part(node, kinds)
    if part is None:
        return
    fn, args, later = part
    new = _insert(gm, ConstantsOnce(fn, dict(node.kwargs), later), node, tuple(args))
    node.replace_all_uses_with(new, delete_user_cb=lambda u: u is not new)
    gm.graph.erase_node(node)


def _is_signal(arg, kinds: dict) -> bool:
    """A node carrying the signal (nodes inserted by the rewrite carry it too)."""
    return isinstance(arg, fx.Node) and kinds.get(arg, G.SOURCE) != G.CONST


class _ListOp:
    """``cat`` / ``stack`` called with its tensors as positional arguments."""

    def __init__(self, op, count: int, rest: tuple) -> None:
        self.op, self.count, self.rest = op, count, rest

    def __call__(self, *tensors, **kwargs):
        return self.op(list(tensors[: self.count]), *self.rest, **kwargs)


def _region_members(region: dict) -> dict[int, list[fx.Node]]:
    groups: dict[int, list[fx.Node]] = {}
    for node, rid in region.items():
        groups.setdefault(rid, []).append(node)
    return groups


def _wrap_region(gm: fx.GraphModule, members: list[fx.Node], kinds: dict) -> None:
    inside = set(members)
    accumulated: dict[fx.Node, fx.Node] = {}
    for node in members:
        for arg in G.tensor_args(node):
            if arg in inside or kinds.get(arg) == G.CONST:
                continue
            if arg not in accumulated:
                accumulated[arg] = _insert(gm, Accumulate(arg.meta["batch_dim"]), arg, (arg,))
            node.replace_input_with(arg, accumulated[arg])
    for node in members:
        outside = [u for u in node.users if u not in inside]
        if outside:
            diff = _insert(gm, Difference(node.meta["batch_dim"]), node, (node,))
            for user in outside:
                user.replace_input_with(node, diff)
