"""Dead-row elimination: a traced graph computes only the rows its output keeps.

A classifier that reads one token (a ViT's or BERT's class token, ``x[:, 0]``) computes every other token's rows
after the last attention for nothing: the last block's projection, residual sums, norm and MLP act on each token
separately, and the last attention needs only the class token's queries. :func:`prune_rows` moves each such
selection up the graph, through every op that acts on the selected dimension row by row, until it meets a value
that something else needs whole (the keys and values of the last attention, the residual stream before it). What
the graph computes for the kept rows is unchanged, op for op (a matrix product over fewer rows may round in
another order); the other rows are never computed. :func:`~spiketwin.convert.qann.graph_to_qann` runs it after
placing the quantizers (so a value that a kept and a pruned use share keeps one quantizer), which it moves like
elementwise ops: the QANN's quantizers and the SNN's neurons hold only the rows that reach the output, the model
runs faster and its SNN settles as soon as the neurons that matter have.

Moved: ``select`` / ``slice`` (step 1) on a dimension that is not the batch, through elementwise ops and quantizers
(broadcasting operands are sliced where they have the dimension), ``layer_norm`` / ``softmax`` / reductions over other
dimensions, ``linear``, the rows or columns of matrix products, ``transpose`` / ``permute``, views that keep the
dimension whole, ``cat`` along another dimension. A value with several users is sliced only when all of them take
the same rows. A fused projection whose outputs are unbound (timm's ``qkv``) splits by output columns when one
output is selected from and the others are not (:meth:`_Pruner.split`).
"""

from __future__ import annotations

import functools
import operator
import sys

import torch
from torch import fx
from torch._guards import detect_fake_mode

from ..quant import Quantizer
from . import graph as G

aten = torch.ops.aten

ELEMENTWISE = {
    aten.relu, aten.gelu, aten.silu, aten.tanh, aten.sigmoid, aten.neg, aten.exp, aten.log, aten.abs, aten.sqrt,
    aten.rsqrt, aten.pow, aten.hardtanh, aten.hardswish, aten.hardsigmoid, aten.mish, aten.elu, aten.leaky_relu,
    aten.relu6, aten.erf, aten.clone, aten.contiguous, aten.alias, aten.detach, aten._to_copy, aten.to, aten.type_as,
    aten.dropout, aten.add, aten.sub, aten.mul, aten.div, aten.where, aten.masked_fill, aten.clamp, aten.minimum,
    aten.maximum, aten.square, aten.reciprocal,
}
"""Ops whose every output element depends on the same element of each (broadcast) tensor operand."""
REDUCTIONS = {aten.mean, aten.sum, aten.amax, aten.amin, aten.var, aten.std}
VIEWS = {aten.view, aten._unsafe_view, aten.reshape}
HUGE = 2 ** 62  # an end past any size: ``x[a:]`` traces as slice(x, d, a, 9223372036854775807)


def _val(node) -> torch.Tensor | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None


def _expr(size):
    return size.node.expr if isinstance(size, torch.SymInt) else size


def _product_int(sizes) -> int:
    result = 1
    for size in sizes:
        result *= int(size)
    return result


def _view_source(before: list, after: list, dim: int) -> int | None:
    """The dimension of a view's input that is its output dimension ``dim``, whole and alone: the same size, and as
    many elements before it in memory order (``None`` if the view merges or splits it, or sizes are not provably
    equal)."""
    prefix = 1
    for size in after[:dim]:
        prefix = prefix * _expr(size)
    product = 1
    for k, size in enumerate(before):
        if product == prefix and _expr(size) == _expr(after[dim]):
            return k
        product = product * _expr(size)
    return None


class _Pruner:
    def __init__(self, gm: fx.GraphModule, inputs: list[torch.Tensor], mode) -> None:
        self.gm, self.graph, self.mode = gm, gm.graph, mode
        self.batch = {str(v.shape[0]) for v in inputs if v.dim()}

    # ---- building nodes

    def _call(self, target, args: tuple, kwargs: dict, like: fx.Node) -> fx.Node:
        """A new node ``target(*args, **kwargs)`` before ``like``, with its source location and value's metadata."""
        with self.graph.inserting_before(like):
            node = self.graph.call_function(target, args, kwargs)
        node.meta = {k: v for k, v in like.meta.items() if k in ("stack_trace", "nn_module_stack")}
        self._infer(node)
        return node

    def _infer(self, node: fx.Node) -> None:
        """``node``'s value metadata (a fake tensor) for its current arguments."""
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), self._fake)
        with self.mode:
            node.meta["val"] = node.target(*args, **kwargs)

    def _fake(self, node: fx.Node):
        if node.op == "get_attr" and "val" not in node.meta:  # a parameter or buffer
            node.meta["val"] = self.mode.from_tensor(functools.reduce(getattr, node.target.split("."), self.gm))
        return node.meta.get("val")

    def _slice(self, value: fx.Node, dim: int, cut: tuple, like: fx.Node) -> fx.Node:
        """``value`` sliced to rows ``cut = (start, end, length)`` of its dimension ``dim``, before ``like``."""
        return self._call(aten.slice.Tensor, (value, dim, cut[0], cut[1]), {}, like)

    # ---- the rule of each op: the node's inputs sliced so that the op gives rows start:end of output dim ``dim``

    def _operand(self, arg, out_rank: int, dim: int, cut: tuple, node: fx.Node):
        val = _val(arg)
        if val is None:
            return arg
        aligned = dim - (out_rank - val.dim())
        if aligned < 0 or (not isinstance(val.shape[aligned], torch.SymInt) and val.shape[aligned] == 1):
            return arg
        return self._slice(arg, aligned, cut, node)

    def rewrite(self, node: fx.Node, dim: int, cut: tuple) -> bool:
        """Make ``node`` compute only rows ``cut = (start, end, length)`` of its dimension ``dim``, from sliced
        inputs (in place: it keeps its name); ``False`` when its op does not act row by row on that dimension."""
        if node.op == "call_module":  # a quantizer: elementwise, its value like its input's
            node.args = (self._slice(node.args[0], dim, cut, node),)
            node.meta["val"] = node.args[0].meta["val"]
            return True
        op, args, out = G.packet(node), node.args, _val(node)
        rank = out.dim()
        new = None
        if op in ELEMENTWISE:
            new = tuple(self._operand(a, rank, dim, cut, node) if isinstance(a, fx.Node) else a for a in args)
        elif op is aten.layer_norm:
            if dim < rank - len(args[1]):
                new = (self._slice(args[0], dim, cut, node), *args[1:])
        elif op in (aten.softmax, aten._softmax, aten._safe_softmax, aten.log_softmax, aten._log_softmax):
            if dim != args[1] % rank:
                new = (self._slice(args[0], dim, cut, node), *args[1:])
        elif op in REDUCTIONS:
            new = self._reduction(node, dim, cut)
        elif op is aten.linear:
            if dim < rank - 1:
                new = (self._slice(args[0], dim, cut, node), *args[1:])
        elif op in (aten.matmul, aten.bmm, aten.mm):
            new = self._product(node, dim, cut)
        elif op is aten.transpose:
            a, b = (d % rank for d in args[1:3])
            source = b if dim == a else a if dim == b else dim
            new = (self._slice(args[0], source, cut, node), *args[1:])
        elif op is aten.permute:
            new = (self._slice(args[0], args[1][dim] % rank, cut, node), args[1])
        elif op in VIEWS:
            new = self._view(node, dim, cut)
        elif op is aten.cat and dim != (args[1] if len(args) > 1 else node.kwargs.get("dim", 0)) % rank:
            new = ([self._slice(t, dim, cut, node) for t in args[0]], *args[1:])
        if new is None:
            return False
        node.args = tuple(new)
        self._infer(node)
        return True

    def _reduction(self, node: fx.Node, dim: int, cut: tuple):
        x = _val(node.args[0])
        dims = node.args[1] if len(node.args) > 1 else None
        if dims is None:
            return None
        dims = sorted(d % x.dim() for d in ([dims] if isinstance(dims, int) else dims))
        keepdim = bool(node.args[2]) if len(node.args) > 2 else bool(node.kwargs.get("keepdim", False))
        source = dim if keepdim else next(d for d in range(x.dim()) if d not in dims and (
            d - sum(r < d for r in dims)) == dim)
        if source in dims:
            return None
        return (self._slice(node.args[0], source, cut, node), *node.args[1:])

    def _product(self, node: fx.Node, dim: int, cut: tuple):
        a, b = node.args[:2]
        va, vb, rank = _val(a), _val(b), _val(node).dim()
        if va is None or vb is None or va.dim() < 2 or vb.dim() < 2:
            return None
        if dim == rank - 2:
            return (self._slice(a, va.dim() - 2, cut, node), b)
        if dim == rank - 1:
            return (a, self._slice(b, vb.dim() - 1, cut, node))
        return tuple(self._operand(t, rank, dim, cut, node) for t in (a, b))

    def _view(self, node: fx.Node, dim: int, cut: tuple):
        before, after = list(_val(node.args[0]).shape), list(_val(node).shape)
        source = _view_source(before, after, dim)
        if source is None:
            return None
        shape = list(node.args[1])
        shape[dim] = cut[2]
        return (self._slice(node.args[0], source, cut, node), shape)

    # ---- the pass

    def selection(self, node: fx.Node) -> tuple[int, tuple] | None:
        """``(dim, (start, end, length))`` of a step-1 slice of a non-batch dimension whose length is known."""
        if node.op != "call_function" or node.target is not aten.slice.Tensor:
            return None
        val, source = _val(node), _val(node.args[0])
        if val is None or source is None:
            return None
        args = list(node.args) + [None] * (5 - len(node.args))
        dim, start, end, step = args[1] if args[1] is not None else 0, args[2], args[3], args[4]
        dim %= source.dim()
        if (step not in (None, 1) or str(source.shape[dim]) in self.batch or not isinstance(start, int)
                or not isinstance(end, (int, type(None))) or isinstance(val.shape[dim], torch.SymInt)):
            return None
        return dim, (start, end, int(val.shape[dim]))

    def selects_to_slices(self) -> None:
        """``select(x, d, i)`` becomes ``select(slice(x, d, i, i + 1), d, 0)``: the slice keeps the rank, so the
        rules move it; full-range slices (``x[:, ...]``) are dropped."""
        for node in list(self.graph.nodes):
            if node.op != "call_function":
                continue
            if node.target is aten.slice.Tensor and self._full(node):
                node.replace_all_uses_with(node.args[0])
                self.graph.erase_node(node)
            elif node.target is aten.select.int and isinstance(node.args[2], int) and _val(node.args[0]) is not None:
                source = _val(node.args[0])
                dim, index = node.args[1] % source.dim(), node.args[2]
                if str(source.shape[dim]) in self.batch:
                    continue
                end = index + 1 if index != -1 else sys.maxsize
                sliced = self._call(aten.slice.Tensor, (node.args[0], dim, index, end), {}, node)
                node.args = (sliced, dim, 0)

    def split(self, item: fx.Node) -> bool:
        """An output of ``unbind(view(linear(x, W, b)))`` that only selected rows are taken from (timm's fused
        ``q, k, v``, of which the last attention needs one token's ``q``): the projection splits by output columns
        into one linear for this output and one per run of the others (``W``'s and ``b``'s rows sliced), so that
        the selection moves on into its own linear and the others' rows are all computed once."""
        parts, index = item.args
        if G.packet(parts) is not aten.unbind or not isinstance(index, int) or len(parts.args) < 2:
            return False
        view, dim = parts.args[0], parts.args[1]
        if (G.packet(view) not in VIEWS or len(view.users) != 1 or len(parts.users) < 2
                or G.packet(view.args[0]) is not aten.linear or len(view.args[0].users) != 1):
            return False
        linear = view.args[0]
        x, weight, bias = (list(linear.args) + [None])[:3]
        if weight.op != "get_attr" or (bias is not None and bias.op != "get_attr"):
            return False
        inner, outer = list(_val(linear).shape), list(_val(view).shape)
        dim %= len(outer)
        lead = len(inner) - 1
        if (dim != lead or [_expr(n) for n in outer[:lead]] != [_expr(n) for n in inner[:lead]]
                or any(isinstance(n, torch.SymInt) for n in outer[lead:])):
            return False  # the unbound dimension must be the first that the projection's features split into
        width = _product_int(outer[lead + 1:])
        getitems = {u.args[1]: u for u in parts.users}
        runs: list[list[int]] = []  # this output alone, the others in runs of neighbours
        for i in range(outer[dim]):
            if i != index and runs and runs[-1][-1] == i - 1 and index not in runs[-1]:
                runs[-1].append(i)
            else:
                runs.append([i])
        for run in runs:
            lo, hi = run[0] * width, (run[-1] + 1) * width
            cols = [self._call(aten.slice.Tensor, (t, 0, lo, hi), {}, linear) for t in (weight, bias) if t is not None]
            part = self._call(aten.linear.default, (x, *cols), {}, linear)
            part.meta = {**{k: v for k, v in linear.meta.items() if k != "val"}, "val": part.meta["val"]}
            shape = list(view.args[1])
            if len(run) == 1:
                del shape[dim]
                alone = self._call(view.target, (part, shape), {}, linear)
                if run[0] in getitems:
                    getitems[run[0]].replace_all_uses_with(alone)
                continue
            shape[dim] = len(run)
            pieces = self._call(aten.unbind.int, (self._call(view.target, (part, shape), {}, linear), dim), {}, linear)
            for k, i in enumerate(run):
                if i in getitems:
                    with self.graph.inserting_before(linear):
                        got = self.graph.call_function(operator.getitem, (pieces, k))
                    got.meta = dict(getitems[i].meta)
                    getitems[i].replace_all_uses_with(got)
        for node in (*getitems.values(), parts, view, linear):
            self.graph.erase_node(node)
        return True

    def _movable(self, node: fx.Node) -> bool:
        """A call a slice may move above: a function's (the rules say which) or a quantizer's, on one tensor."""
        if _val(node) is None:
            return False
        if node.op == "call_module":
            return isinstance(self.gm.get_submodule(node.target), Quantizer) and len(node.args) == 1
        return True

    def slices_to_selects(self) -> None:
        """Undo :meth:`selects_to_slices` where the slice did not move: ``select(x, d, i)`` again."""
        for node in list(self.graph.nodes):
            if node.op != "call_function" or node.target is not aten.select.int or node.args[2] != 0:
                continue
            sliced = node.args[0]
            if (isinstance(sliced, fx.Node) and sliced.target is aten.slice.Tensor and len(sliced.users) == 1
                    and sliced.args[1] == node.args[1] and isinstance(sliced.args[2], int)
                    and sliced.args[3] == (sliced.args[2] + 1 if sliced.args[2] != -1 else sys.maxsize)):
                node.args = (sliced.args[0], node.args[1], sliced.args[2])
                self.graph.erase_node(sliced)

    def _full(self, node: fx.Node) -> bool:
        args = list(node.args) + [None] * (5 - len(node.args))
        val, source = _val(node), _val(args[0])
        return (val is not None and source is not None and args[2] in (None, 0) and args[4] in (None, 1)
                and (args[3] is None or (isinstance(args[3], int) and args[3] >= HUGE)))

    def run(self) -> bool:
        self.selects_to_slices()
        changed, any_change = True, False
        while changed:
            changed = False
            for node in reversed(list(self.graph.nodes)):
                if node.op != "call_function" and node.op != "call_module":
                    continue
                users = list(node.users)
                cuts = {self.selection(u) for u in users}
                if not users or len(cuts) != 1 or None in cuts or any(u.args[0] is not node for u in users):
                    continue
                if node.target is operator.getitem:
                    if self.split(node):
                        changed = any_change = True
                        break  # the graph changed around this node
                    continue
                if not self._movable(node):
                    continue
                dim, cut = cuts.pop()
                if not self.rewrite(node, dim, cut):
                    continue
                for user in users:
                    user.replace_all_uses_with(node)
                    self.graph.erase_node(user)
                changed = any_change = True
        self.slices_to_selects()
        self.graph.eliminate_dead_code()
        self.graph.lint()
        self.gm.recompile()
        return any_change


def prune_rows(gm: fx.GraphModule) -> bool:
    """Move every row selection of ``gm`` up through the ops that act row by row (module docstring), in place;
    returns whether the graph changed."""
    inputs = [_val(n) for n in gm.graph.nodes if n.op == "placeholder" and _val(n) is not None]
    mode = detect_fake_mode(inputs)
    return mode is not None and _Pruner(gm, inputs, mode).run()
