"""Which dimension of each traced value holds the samples, so that a sample that has settled can leave the batch.

The batch sizes are symbols of the traced graph: the first dimension of each input (``s0``). A value whose
dimension has exactly that size holds one sample per index there (:func:`batch_dim`). Many models fold the samples
together with other dimensions, sample-major: GPT-2's ``Conv1D`` and a mixture of experts flatten ``[B, L, H]`` to
``[B*L, H]``, Swin cuts ``[B, H, W, C]`` into windows ``[B*windows, N, C]``. :func:`folded_samples` follows such
folds from the inputs, and :func:`unfold` writes the folded dimension as ``[B, rest]`` around a neuron, whose
state then keeps one sample per index. A value that combines samples (:func:`mixes_samples`) keeps the whole
batch running.
"""

from __future__ import annotations

import operator

import sympy
import torch
from torch import fx
from torch._guards import detect_fake_mode

from . import graph as G

RESHAPES = {G.aten.view, G.aten._unsafe_view, G.aten.reshape, G.aten.flatten, G.aten.unflatten}
AXIS_MOVES = {G.aten.permute, G.aten.transpose, G.aten.t, G.aten.movedim, G.aten.swapaxes, G.aten.unsqueeze,
              G.aten.squeeze}
"""Ops that move or add axes and keep every row: a ``dim`` argument of theirs names an axis, not a computation."""


def batch_sizes(gm: fx.GraphModule) -> set[str]:
    """The symbols of the inputs' first dimensions (``{"s0"}``)."""
    sizes = set()
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder" and isinstance(val, torch.Tensor) and val.dim() and isinstance(val.shape[0],
                                                                                                     torch.SymInt):
            sizes.add(str(val.shape[0]))
    return sizes


def batch_dim(node: fx.Node, batch_sizes: set[str]) -> int | None:
    """The dimension of ``node``'s value that is the batch (its traced size is an input's first dimension)."""
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return None
    dims = [d for d, size in enumerate(val.shape) if str(size) in batch_sizes]
    return dims[0] if len(dims) == 1 else None


def mixes_samples(gm: fx.GraphModule, batch_sizes: set[str]) -> bool:
    """Whether some value of ``gm`` that differs from sample to sample combines samples: the batch size is in two of
    its dimensions (CLIP's image-text logits ``[B, B]``) or in none (a reduction over the batch). No sample of such a
    model is done before every sample is, so none may leave the batch early."""
    varies: set[fx.Node] = set()
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):  # a tuple of values (split, max pooling with indices): its items say
            if isinstance(val, (tuple, list)) and any(a in varies for a in node.all_input_nodes):
                varies.add(node)
            continue
        if node.op == "placeholder":
            if _batch_axes(val, batch_sizes) == 1:
                varies.add(node)
        elif any(a in varies for a in node.all_input_nodes):
            if _batch_axes(val, batch_sizes) != 1:
                return True
            varies.add(node)
    return False


def _batch_axes(val: torch.Tensor, batch_sizes: set[str]) -> int:
    """How many dimensions of ``val`` have a size that involves a batch size (``s0`` or ``4*s0``)."""
    return sum(bool(_symbols(size) & batch_sizes) for size in val.shape)


def _expr(size) -> sympy.Expr:
    """A size (an int, a traced ``SymInt`` or already an expression) as a sympy expression."""
    if isinstance(size, sympy.Basic):
        return size
    return size.node.expr if isinstance(size, torch.SymInt) else sympy.Integer(size)


def _symbols(size) -> set[str]:
    return {str(s) for s in _expr(size).free_symbols}


def _dims_of(val, size: sympy.Expr) -> list[int]:
    return [d for d, s in enumerate(val.shape) if sympy.expand(_expr(s) - size) == 0]


def _same_shape(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dim() == b.dim() and all(sympy.expand(_expr(x) - _expr(y)) == 0 for x, y in zip(a.shape, b.shape))


def _reshaped(before: torch.Tensor, after: torch.Tensor, size: sympy.Expr, batch_sizes: set[str]):
    """The size of the dimension of ``after`` (a reshape of ``before``) that starts where ``before``'s samples
    dimension (of ``size``) starts and involves a batch size: the samples still lead it. None if there is none."""
    dims = _dims_of(before, size)
    if len(dims) != 1:
        return None
    offset = sympy.Mul(*[_expr(s) for s in before.shape[:dims[0]]])
    for d, s in enumerate(after.shape):
        if sympy.expand(sympy.Mul(*[_expr(t) for t in after.shape[:d]]) - offset) == 0 and _symbols(s) & batch_sizes:
            return _expr(s)
    return None


def _acts_along(node: fx.Node, inputs: dict[fx.Node, sympy.Expr]) -> bool:
    """Whether ``node`` computes along an input's samples dimension (a softmax, cumsum, roll, slice or gather over
    it). An op without a schema counts as one that does."""
    op, schema = G.packet(node), getattr(node.target, "_schema", None)
    if schema is None:
        return True
    if op in AXIS_MOVES or (op is G.aten.slice and _same_shape(node.meta["val"], node.args[0].meta["val"])):
        return False  # axes moved, or a slice that keeps every row (``x[:, ::2]`` slices dim 0 whole first)
    along = {source: _dims_of(source.meta["val"], size) for source, size in inputs.items()}
    for i, arg in enumerate(schema.arguments):
        if arg.name.startswith("dim") or arg.name == "shifts":
            value = node.kwargs.get(arg.name, node.args[i] if i < len(node.args) else arg.default_value)
            for source, dims in along.items():
                rank = source.meta["val"].dim()
                if any(isinstance(n, int) and rank and n % rank in dims
                       for n in (value if isinstance(value, (list, tuple)) else [value])):
                    return True
    if op is G.aten.index and node.args[0] in along:  # index tensors on the samples dimension pick its rows
        return any(i is not None and d in along[node.args[0]] for d, i in enumerate(node.args[1]))
    return False


def folded_samples(gm: fx.GraphModule, batch_sizes: set[str]) -> dict[fx.Node, int]:
    """Nodes with a dimension that holds the samples folded with other dimensions, sample-major (``[B*L, H]``),
    followed from the inputs: a reshape keeps the samples leading the dimension that starts where theirs started;
    another op keeps them in its one dimension of the same size, unless it computes along it. Node -> dimension."""
    sizes: dict[fx.Node, sympy.Expr] = {}  # the size of the dimension that holds the samples
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder":
            if isinstance(val, torch.Tensor) and val.dim() and str(val.shape[0]) in batch_sizes:
                sizes[node] = _expr(val.shape[0])
            continue
        known = {a: sizes[a] for a in G.tensor_args(node) if a in sizes}
        if len(set(known.values())) != 1:
            continue
        size = next(iter(known.values()))
        if node.op == "call_module" and str(node.target).startswith("quantizers."):  # a neuron: elementwise
            sizes[node] = size
            continue
        if node.op != "call_function":
            continue
        if isinstance(val, (tuple, list)):  # a split: its items are checked where they are taken
            if not _acts_along(node, known):
                sizes[node] = size
            continue
        if not isinstance(val, torch.Tensor):
            continue
        if G.packet(node) in RESHAPES:
            size = _reshaped(node.args[0].meta["val"], val, size, batch_sizes)
        elif node.target is not operator.getitem and _acts_along(node, known):
            size = None
        if size is not None and len(_dims_of(val, size)) == 1:
            sizes[node] = size
    return {node: _dims_of(node.meta["val"], size)[0] for node, size in sizes.items()
            if str(size) not in batch_sizes and isinstance(node.meta.get("val"), torch.Tensor)
            and len(_symbols(size) & batch_sizes) == 1}


def unfold(gm: fx.GraphModule, value: fx.Node, dim: int, batch_sizes: set[str]) -> fx.Node:
    """``value`` with its folded samples dimension ``dim`` written as ``[B, rest]`` (a new node after it, with its
    value's metadata): what a neuron reads, so that its state keeps a sample per index of ``dim``."""
    source = next(n for n in gm.graph.nodes if n.op == "placeholder" and isinstance(n.meta.get("val"), torch.Tensor)
                  and n.meta["val"].dim() and str(n.meta["val"].shape[0]) in _symbols(value.meta["val"].shape[dim])
                  & batch_sizes)
    with gm.graph.inserting_after(value):
        batch = gm.graph.call_function(G.aten.sym_size.int, (source, 0))
    with gm.graph.inserting_after(batch):
        node = gm.graph.call_function(G.aten.unflatten.int, (value, dim, [batch, -1]))
    batch.meta["val"] = source.meta["val"].shape[0]
    with detect_fake_mode([value.meta["val"]]):
        node.meta["val"] = value.meta["val"].unflatten(dim, (batch.meta["val"], -1))
    node.meta.update({k: v for k, v in value.meta.items() if k in ("stack_trace", "nn_module_stack")})
    return node


def refold(gm: fx.GraphModule, node: fx.Node, dim: int) -> fx.Node:
    """The inverse of :func:`unfold`, after ``node`` (a neuron's output)."""
    with gm.graph.inserting_after(node):
        folded = gm.graph.call_function(G.aten.flatten.using_ints, (node, dim, dim + 1))
    with detect_fake_mode([node.meta["val"]]):
        folded.meta["val"] = node.meta["val"].flatten(dim, dim + 1)
    folded.meta.update({k: v for k, v in node.meta.items() if k in ("stack_trace", "nn_module_stack")})
    return folded
