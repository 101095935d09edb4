"""The settled prefix of an exact-state SNN step: start the graph at the first neuron that can still move.

In the exact state a neuron on its target after a step (not pending) does not move at the next step unless its
input changes, and its input changes only when a neuron before it moves. So while the first neurons of the graph
are all on their targets for every sample still running, every value the graph computes before the first neuron
that is not is the value it computed at the previous step, and the step can start there from those values. Deep
models settle block after block (a random ViT-S/16: about one block more per step), so this skips a growing share
of each step; the arithmetic of what runs is unchanged, so the results are the same bits.

:class:`Resume` cuts the graph before each neuron whose incoming values are few (at most :data:`MAX_CARRIED`
signal tensors: in a transformer the residual stream, the neuron's own input and, before attention's weights
settle, the value neurons' output that multiplies them; constants such as attention masks are made again), and
makes the rest of the graph from each cut a module of its own (the same submodules and parameters) that takes those
values.
A cut before the first neuron skips what the graph computes from the inputs alone (a patch embedding: the input is
the same at every step). Every step records the values that the next :data:`AHEAD` cuts per step between two settle
checks need (the start moves only at a check, by as many steps' worth of settled cuts), per sample along their
batch dimension, so that samples that settle can leave the batch (:meth:`Resume.keep`); a step starts at the last
cut before which no neuron may move and whose values are all recorded.
"""

from __future__ import annotations

import torch
import torch.utils._pytree as pytree
from torch import fx
from torch.fx._pytree import tree_flatten_spec

from ..base import keep_samples
from . import graph as G
from .samples import batch_dim, batch_sizes, folded_samples

MAX_CARRIED = 3
"""The most signal tensors a cut may carry (each is kept for every sample between steps). Three admit the cut
before the attention weights' neurons (residual stream, softmax output, v), the last of a block's attention to
settle: a ViT on MNIST at 16 levels runs 8 of its 24 steps from there instead of from the block's first norm."""
AHEAD = 12
"""How many cuts past the one a step starts at have their values recorded, per step between two settle checks (the
head settles a few cuts per step in a transformer, about seven a block, and the start moves only at a check; the
values of later cuts are not kept, which bounds the memory)."""


class Resume:
    """The cuts of ``gm`` (an exact-state SNN's graph) and the module of the graph from each; cut 0 is the whole
    graph. ``samples_leave``: settled samples leave the batch (:meth:`keep`), so a cut needs the batch dimension of
    every value it carries. ``chunk``: the steps between two settle checks (a step records ``AHEAD * chunk`` cuts).
    """

    def __init__(self, gm: fx.GraphModule, samples_leave: bool = True, chunk: int = 1) -> None:
        self.code = gm.code
        nodes = list(gm.graph.nodes)
        position = {n: i for i, n in enumerate(nodes)}
        kinds = G.classify(gm)  # a constant (parameters, masks, positions, shapes) is made again after a cut
        sizes = batch_sizes(gm)
        folds = folded_samples(gm, sizes)
        info = getattr(gm.graph._codegen, "pytree_info", None)
        self.in_spec, self.out_spec = (info.in_spec, info.out_spec) if info is not None else (None, None)
        neurons = [n for n in nodes if n.op == "call_module" and str(n.target).startswith("quantizers.")]
        self.order = [int(str(n.target).split(".")[1]) for n in neurons]
        """The neurons (indices into ``gm.quantizers``) in graph order."""
        cuts = [(0, 0, [])]  # (position, rank of the neuron it lies before, carried nodes)
        for rank, node in enumerate(neurons):
            here = position[node]
            carried = [n for n in nodes[:here] if kinds[n] != G.CONST and n.op != "placeholder"
                       and any(position[u] >= here for u in n.users)]
            if carried and len(carried) <= MAX_CARRIED and not (samples_leave and any(
                    folds.get(n, batch_dim(n, sizes)) is None for n in carried)):
                cuts.append((here, rank, carried))
        self.ranks = [rank for _, rank, _ in cuts]
        self.carried = [[n.name for n in carried] for _, _, carried in cuts]
        self.dims = {n.name: folds.get(n, batch_dim(n, sizes)) for _, _, carried in cuts for n in carried}
        """Per carried value: the dimension that holds the samples (alone, or folded with others: ``[B*L, H]``)."""
        self.kept = [{n.name for _, _, later in cuts[i:] for n in later if position[n] < here}
                     for i, (here, _, _) in enumerate(cuts)]
        """Per cut, the recorded values a step from it keeps: made before it (so not made again), needed at or after
        it; every other value it makes again or no longer needs."""
        self.modules = [_suffix(gm, nodes, here, carried, [n for _, _, later in cuts[i + 1:i + 1 + AHEAD * chunk]
                                                           for n in later if position[n] >= here])
                        for i, (here, _, carried) in enumerate(cuts)]
        self.values: dict[str, torch.Tensor] = {}

    def busy(self, neurons: list) -> torch.Tensor | None:
        """``[len(neurons)]`` bool on the device, in graph order: whether each neuron may still move (is pending for
        some sample); None before the first step. ``neurons`` are the SNN's neurons by index."""
        flags = [neurons[i].pending for i in self.order]
        if any(f is None for f in flags):
            return None
        return torch.stack([f.any() for f in flags])

    def start(self, busy: list[bool]) -> int:
        """The cut the next step can start at, from :meth:`busy` read on the host: the last one before which no
        neuron may move and whose values are all recorded (0: the whole graph)."""
        first = busy.index(True) if True in busy else len(busy)
        return max(i for i, rank in enumerate(self.ranks)
                   if rank <= first and all(name in self.values for name in self.carried[i]))

    def run(self, cut: int, args: tuple, kwargs: dict):
        """One step from cut ``cut``, recording what later cuts need; returns what the model returns."""
        flat = tree_flatten_spec((args, kwargs), self.in_spec) if self.in_spec is not None else [*args]
        out, recorded = self.modules[cut](*flat, *(self.values[name] for name in self.carried[cut]))
        self.values = {k: v for k, v in self.values.items() if k in self.kept[cut]}
        self.values.update(recorded)
        if self.out_spec is None:
            return out
        return pytree.tree_unflatten(list(out) if isinstance(out, (list, tuple)) else [out], self.out_spec)

    def keep(self, index: torch.Tensor, batch: int) -> None:
        """Keep only the samples ``index`` (of ``batch``) in the recorded values."""
        self.values = {k: keep_samples(v, self.dims[k], index, batch) for k, v in self.values.items()}

    def reset(self) -> None:
        self.values = {}


def _suffix(gm: fx.GraphModule, nodes: list[fx.Node], here: int, carried: list[fx.Node],
            recorded: list[fx.Node]) -> fx.GraphModule:
    """The graph from ``nodes[here]`` on as a module: flat inputs, then the carried values; returns the flat
    outputs and ``{name: value}`` of ``recorded``."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in nodes:
        if node.op == "placeholder":
            env[node] = graph.placeholder(node.name)
    for node in carried:
        env[node] = graph.placeholder(f"carried_{node.name}")

    def value(node: fx.Node) -> fx.Node:
        if node not in env:  # a parameter, or a shape computed before the cut: made again here
            env[node] = graph.node_copy(node, value)
        return env[node]

    outputs = None
    for node in nodes[here:]:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            outputs = fx.map_arg(node.args[0], value)
        else:
            env[node] = graph.node_copy(node, value)
    graph.output((outputs, {n.name: env[n] for n in dict.fromkeys(recorded)}))
    return fx.GraphModule(gm, graph)

