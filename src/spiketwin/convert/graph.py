"""The conversion engine's front end: trace any model into an ATen graph and classify every node.

:func:`trace` runs ``torch.export`` on the model in eval mode (every dimension of every tensor input dynamic,
so the graph runs for any batch size and sequence length), decomposes ``scaled_dot_product_attention`` into
``matmul -> scale -> mask -> softmax -> matmul`` (a masked softmax is PyTorch's ``_safe_softmax``, as in its own
sdpa) and ``einsum`` / ``baddbmm`` into matrix products, and drops shape/dtype assertion nodes.

:func:`classify` says, for every node, how it depends on the input *signal* (SPEC A, "any model"):

- ``CONST``: parameters, integer inputs (token ids, masks, positions) and anything computed from them only;
- ``SOURCE``: where the signal enters: floating-point inputs and embedding lookups (their indices are constant);
- ``WEIGHTED``: linear in the signal through a weight (linear, conv, a matmul with a constant operand);
- ``LINEAR``: linear (affine) without a weight (add, scaling by a constant, reshapes, cat, mean, batch norm...);
- ``BILINEAR``: a product of two signals (``q @ kᵀ``, ``attn @ v``, a gated MLP's elementwise product);
- ``NONLINEAR``: any other function of the signal (softmax, LayerNorm, GELU, RMSNorm's rsqrt, max pooling...).

Non-linear nodes are grown into *regions* (:func:`regions`): linear nodes that only read a region, and nodes that
combine a region with the region's own inputs (RMSNorm's ``x * rsqrt(mean(x²))``), join it. A region is one
function of its inputs: one accumulate-apply-difference operator in the SNN.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import operator
import warnings

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from ..memory import float_saves
from .experts import dense_experts

aten = torch.ops.aten

CONST, SOURCE, WEIGHTED, LINEAR, BILINEAR, NONLINEAR = "const", "source", "weighted", "linear", "bilinear", "nonlinear"
QUANT, OUTPUT = "quant", "output"

WEIGHT_OPS = {aten.linear, aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution, aten.conv_transpose1d,
              aten.conv_transpose2d, aten.conv_transpose3d, aten.addmm}
PRODUCT_OPS = {aten.matmul, aten.mm, aten.bmm}
"""Products: weighted with one signal operand, bilinear with two (``aten.mul`` too, elementwise)."""
LINEAR_OPS = {
    aten.add, aten.sub, aten.neg, aten.mul, aten.div, aten.view, aten._unsafe_view, aten.reshape, aten.permute,
    aten.transpose, aten.t, aten.unsqueeze, aten.squeeze, aten.flatten, aten.unflatten, aten.expand, aten.expand_as,
    aten.repeat, aten.repeat_interleave, aten.slice, aten.select, aten.narrow, aten.cat, aten.stack, aten.split,
    aten.split_with_sizes, aten.unbind, aten.chunk, aten.clone, aten.contiguous, aten.alias, aten._to_copy, aten.to,
    aten.type_as, aten.dropout, aten.mean, aten.sum, aten.avg_pool1d, aten.avg_pool2d, aten.avg_pool3d,
    aten.adaptive_avg_pool1d, aten.adaptive_avg_pool2d, aten.index_select, aten.gather, aten.index, aten.pad,
    aten.constant_pad_nd, aten.roll, aten.flip, aten.masked_fill, aten.where, aten.batch_norm,
    aten._native_batch_norm_legit_no_training, aten.diagonal, aten.movedim, aten.swapaxes, aten.view_as,
    aten.reshape_as, aten.detach, aten.lift_fresh_copy,
}
"""Affine in the signal and without a weight: no quantizer on their input. ``mul`` / ``div`` only when one factor
(the divisor) is constant; ``where`` / ``masked_fill`` / ``index`` only with constant conditions and indices."""
ACTIVATIONS_TO_RELU = {aten.gelu, aten.silu, aten.hardswish, aten.mish, aten.elu}
"""What ``activation="relu"`` replaces by a ReLU (SpikeZIP-TF's GELU -> ReLU swap)."""
NONNEG_OPS = {aten.relu, aten.relu6, aten.softmax, aten._softmax, aten._safe_softmax, aten.sigmoid, aten.exp, aten.abs,
              aten.hardsigmoid}
DROPPED = {aten._assert_tensor_metadata, aten._assert_scalar, aten.sym_constrain_range_for_size}
NEW_TENSOR_FILL = {aten.new_ones: 1, aten.new_zeros: 0, aten.new_empty: 0}
"""``x.new_ones(size)`` & co (and ``new_full``): a tensor of a given size that reads only ``x``'s dtype and device.
The tracer makes each a ``full`` of the traced dtype and device (which the graph's moves retarget), so that it does
not read ``x``: a constant, not a function of the signal (Funnel's mask)."""


class ConversionError(TypeError):
    """A model, or one node of its graph, that the conversion rules do not cover (the message says which)."""


def packet(node: fx.Node):
    """The op overload packet of a call_function node (``aten.linear``), the target itself otherwise."""
    return getattr(node.target, "overloadpacket", node.target)


def where(node: fx.Node) -> str:
    """The user's source line a node came from (the last frame of its stack trace), for error messages."""
    trace = (node.meta.get("stack_trace") or "").strip().splitlines()
    frames = [line.strip() for line in trace if line.strip().startswith("File ")]
    return frames[-1] if frames else "(no source location recorded)"


def module_path(node: fx.Node) -> str:
    """The innermost ``nn.Module`` path a node was traced in (``blocks.0.attn``), ``""`` for the root."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


# --------------------------------------------------------------------------- tracing


def _sdpa_math(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """``scaled_dot_product_attention`` as the engine classifies it: two products, a scale, a constant mask, softmax.
    With a mask, ``_safe_softmax`` as PyTorch's own sdpa: a query whose every key is masked attends to nothing (a
    row of zeros, where a plain softmax gives NaN: padded queries of sliding-window or left-padded attention)."""
    if dropout_p:
        raise ConversionError("scaled_dot_product_attention with dropout_p > 0: trace the model in eval mode")
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    if enable_gqa:
        k = k.repeat_interleave(q.size(-3) // k.size(-3), -3)
        v = v.repeat_interleave(q.size(-3) // v.size(-3), -3)
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if is_causal:
        keep = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
        scores = scores + torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(~keep, -math.inf)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~attn_mask, -math.inf)
        scores = scores + attn_mask
    masked = is_causal or attn_mask is not None
    return torch.matmul(aten._safe_softmax(scores, -1) if masked else torch.softmax(scores, -1), v)


_PRODUCTS = {op: torch.export.default_decompositions()[op] for op in (aten.einsum.default, aten.baddbmm.default)}
"""``einsum`` and ``baddbmm`` as PyTorch's own decompositions write them (permutes, reshapes, ``bmm``; ``baddbmm``:
``beta * input + alpha * bmm``), so the rules see their products as they see ``matmul``'s (``einsum`` holds its
operands in a list; BLOOM adds its ALiBi bias to ``q @ kᵀ`` with ``baddbmm``, which would otherwise be one non-linear
function with the softmax)."""


DYNAMIC_CHOICES = ("all", "batch")
"""What a traced graph lets vary from call to call: every dimension of every input tensor (``"all"``: batch, sequence
length, image size), or only the first (``"batch"``: other sizes are fixed to the example's, which ``torch.export``
reasons about far faster where a model computes with its image size: windows, padding, strides)."""


def _dynamic(value, dynamic: str):
    """``torch.export`` dynamic-shape spec of one input: its dynamic dimensions ``Dim.AUTO`` (free unless the model's
    code fixes them), the others static; non-tensors static."""
    if isinstance(value, torch.Tensor):
        return {d: torch.export.Dim.AUTO for d in range(value.dim() if dynamic == "all" else min(value.dim(), 1))}
    return None


def _example(value):
    """An example input as export should see it: tensors contiguous (export guards the strides it traced: a sliced
    example, ``ids[:, :5]``, would refuse every contiguous input), and with a batch of one repeated to two, so that
    the batch size is not specialised to 1."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.dim() > 0 and len(value) == 1:
        return value.expand(2, *value.shape[1:]).clone()
    return value.contiguous()


@contextlib.contextmanager
def _traced_forward(model: nn.Module, signature: inspect.Signature, loose: list[str], fixed: dict):
    """While tracing, ``model.forward`` is an instance ``forward`` that calls the model's own (module paths unchanged)
    with the ``fixed`` Python values added, under a signature in which the tensors ``loose`` that it takes under
    ``**kwargs`` (an ``attention_mask`` that FNet ignores) are parameters of their own. torch.export 2.13 flattens
    tensors under ``**kwargs`` twice and fails ("Must provide a tree_name when there might be a mismatch"), and cannot
    give dynamic shapes to inputs that mix tensors and Python values there (BERT's ``return_dict=False``)."""
    own, forward = model.__dict__.get("forward"), model.forward
    params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=None) for k in loose]

    def traced(*a, **k):
        return forward(*a, **k, **fixed)

    traced.__signature__ = signature.replace(parameters=params)
    model.forward = traced
    try:
        yield
    finally:
        if own is None:
            del model.forward
        else:
            model.forward = own


def _views_to_reshapes(gm: fx.GraphModule) -> None:
    """Every ``view`` of ``gm`` as a ``reshape``: the same view where the input's layout allows one, a copy where
    not, so that the graph computes on inputs and states in any layout."""
    for node in gm.graph.nodes:
        if node.target is aten.view.default:
            node.target = aten.reshape.default
    gm.recompile()


def keep_output(gm: fx.GraphModule, output: str | int, who: str) -> None:
    """Make ``gm`` (a ``torch.export`` graph: flat outputs, rebuilt into the model's output object by its output
    spec) return one of its model's outputs alone, in place; what only the others needed is then dead. ``output``
    names a field of an output object or dict (``"pooler_output"``) or indexes an output tuple."""
    codegen, out = gm.graph._codegen, gm.graph.output_node()
    leaves = list(out.args[0])
    tree = pytree.tree_unflatten(list(range(len(leaves))), codegen.pytree_info.out_spec)
    if isinstance(tree, int):
        raise ConversionError(f"{who}: output={output!r}, but the model returns one tensor; leave output unset")
    try:
        index = tree[output]
    except (KeyError, IndexError, TypeError):
        index = None
    if not isinstance(index, int):
        names = list(tree.keys()) if hasattr(tree, "keys") else list(range(len(tree)))
        raise ConversionError(f"{who}: output={output!r} is not one tensor of the model's {type(tree).__name__}; "
                              f"its outputs: {names}")
    out.args = ((leaves[index],),)
    codegen.pytree_info = codegen.pytree_info._replace(out_spec=pytree.tree_flatten(0)[1])


def _export(model: nn.Module, args: tuple, kwargs: dict, shapes: dict, traced: tuple) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` in eval mode through :func:`_traced_forward` ``(model, *traced)``, with
    ``scaled_dot_product_attention`` and the ops of :data:`_PRODUCTS` decomposed."""
    was_training = model.training
    model.eval()
    try:  # a packed model traces as the plain one, experts densely
        with float_saves(), dense_experts(model), _traced_forward(model, *traced):
            program = torch.export.export(model, args, kwargs, dynamic_shapes=shapes, strict=False)
    except Exception as error:  # torch.export raises many types; the message says what failed and where
        cache = ("; a model that returns a key-value cache needs use_cache=False among example_inputs"
                 if "Cache" in str(error) else "")
        raise ConversionError(
            f"to_qann: torch.export could not trace {type(model).__name__}: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}. The forward must be traceable with example_inputs "
            "(no data-dependent Python control flow on tensor values, no unsupported Python objects as inputs); "
            f"pass example_inputs exactly as you call the model, e.g. a dict of keyword tensors{cache}") from error
    finally:
        model.train(was_training)
    # torch 2.11 traces nn.MultiheadAttention's sdpa -> permute -> .contiguous().view() as a bare view, which the sdpa
    # decomposition below breaks (its output has another layout)
    _views_to_reshapes(program.graph_module)
    return program.run_decompositions({aten.scaled_dot_product_attention.default: _sdpa_math, **_PRODUCTS})


def _changed_state(program: torch.export.ExportedProgram) -> list[str]:
    """The parameters and buffers that the traced forward writes into (state kept from call to call)."""
    spec = program.graph_signature
    return sorted({*spec.buffers_to_mutate.values(), *getattr(spec, "parameters_to_mutate", {}).values()})


def trace(model: nn.Module, example_inputs, dynamic: str = "all",
          output: str | int | None = None) -> tuple[fx.GraphModule, dict]:
    """``model`` (eval mode) as an ATen :class:`torch.fx.GraphModule` that runs for any batch size, and with
    ``dynamic="all"`` any sequence length or image size the model's code allows (:data:`DYNAMIC_CHOICES`; a call
    with another size of a fixed dimension fails the graph's own guard, which names the input and the size).

    ``example_inputs``: a tensor, a tuple of positional inputs, or a dict of keyword inputs. Non-tensor keyword
    values (``use_cache=False``) are fixed into the graph, which does not take them; they are returned as the second
    value (:meth:`GraphModel.graph_kwargs` accepts them again at a call only with the same value). A forward with a
    ``use_cache`` parameter that the example does not set is traced with ``use_cache=False``.
    ``output``: keep only this output of the model (:func:`keep_output`), e.g. an encoder's ``"pooler_output"``.
    A forward that writes into its own parameters or buffers on its first call in eval mode only (RWKV rescales
    its weights) is called once on copies of the example inputs and traced again (``model`` keeps the change); one
    that writes at every call is refused.
    """
    if dynamic not in DYNAMIC_CHOICES:
        raise ValueError(f"to_qann: dynamic must be one of {DYNAMIC_CHOICES}, got {dynamic!r}")
    if isinstance(example_inputs, dict):
        args, kwargs = (), dict(example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    else:
        args, kwargs = (example_inputs,), {}
    args = tuple(_example(a) for a in args)
    kwargs = {k: _example(v) for k, v in kwargs.items()}
    fixed = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}
    kwargs = {k: v for k, v in kwargs.items() if k not in fixed}
    signature = inspect.signature(model.forward)
    try:
        given = signature.bind(*args, **kwargs, **fixed).arguments
    except TypeError as error:
        raise ConversionError(f"to_qann: example_inputs do not match {type(model).__name__}.forward: "
                              f"{error}") from error
    if "use_cache" in signature.parameters and "use_cache" not in given:
        fixed["use_cache"] = False  # a key-value cache serves generation; torch.export cannot return one
    bound = signature.bind_partial(*args, **kwargs).arguments
    var = next((name for name, p in signature.parameters.items() if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    loose = bound.pop(var, {})  # tensors under **kwargs: named inputs while tracing (_traced_forward)
    bound.update(loose)
    shapes = {name: ({k: _dynamic(v, dynamic) for k, v in value.items()} if isinstance(value, dict)
                     else _dynamic(value, dynamic))
              for name, value in bound.items()}
    traced = (signature, list(loose), fixed)
    program = _export(model, args, kwargs, shapes, traced)
    if _changed_state(program):  # on the first call only (RWKV rescales its weights)? make the change, trace again
        was_training = model.training
        copies, copied = pytree.tree_map_only(torch.Tensor, torch.clone, (args, kwargs))
        with torch.no_grad():
            model.eval()(*copies, **copied, **fixed)
        model.train(was_training)
        program = _export(model, args, kwargs, shapes, traced)
        if state := _changed_state(program):
            raise ConversionError(
                f"to_qann: {type(model).__name__}.forward changes its own {', '.join(state)} in place at every call: "
                "state kept from call to call, which a QANN (a function of its inputs) cannot carry")
    unlifted = program.module()
    gm = fx.GraphModule(unlifted, unlifted.graph)
    _views_to_reshapes(gm)  # the decompositions' views too: the SNN's states may have another layout than traced
    if output is not None:
        keep_output(gm, output, f"to_qann({type(model).__name__})")
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and packet(node) in DROPPED and not node.users:
            gm.graph.erase_node(node)
        elif node.target is aten.copy_.default and node.args[0].op == "placeholder" and not node.users:
            gm.graph.erase_node(node)  # a forward writing into its input: the graph computes the same from its copy
        elif node.op == "call_function" and packet(node) in (*NEW_TENSOR_FILL, aten.new_full):
            fill = node.args[2] if packet(node) is aten.new_full else NEW_TENSOR_FILL[packet(node)]
            val = node.meta["val"]
            node.target, node.args = aten.full.default, (node.args[1], fill)
            node.kwargs = {"dtype": val.dtype, "device": val.device}
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm, fixed


# --------------------------------------------------------------------------- classification


class OpModule(nn.Module):
    """A graph op (a ``call_function`` target) as a module: what a rewrite puts where a module is wanted (a forward
    hook, a wrapper that takes a module)."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def tensor_args(node: fx.Node) -> list[fx.Node]:
    """The graph nodes among a node's arguments (positional and keyword, nested lists included)."""
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
    return found


def _is_float(node: fx.Node) -> bool:
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):
        return any(isinstance(v, torch.Tensor) and v.is_floating_point() for v in val)
    return isinstance(val, torch.Tensor) and val.is_floating_point()


def _kind_of_call(node: fx.Node, signal: list[fx.Node]) -> str:
    op = packet(node)
    if op is aten.embedding:
        if node.args[1] in signal:
            raise ConversionError(f"node '{node.name}' ({where(node)}): an embedding indexed by the signal")
        return SOURCE
    if op in WEIGHT_OPS:
        data = node.args[1] if op is aten.addmm else node.args[0]
        if [n for n in signal if n is not data]:
            raise ConversionError(f"node '{node.name}' ({op}, {where(node)}) has a signal weight or bias; only its "
                                  "input may carry the signal")
        return WEIGHTED
    if op in PRODUCT_OPS or (op is aten.mul and len(signal) == 2):
        return BILINEAR if len(signal) == 2 else WEIGHTED if op in PRODUCT_OPS else LINEAR
    if op is aten.div and node.args[0] in signal and not any(a in signal for a in node.args[1:]):
        return LINEAR
    if op in (aten.where, aten.masked_fill, aten.index, aten.index_select, aten.gather):
        index_args = {aten.where: node.args[:1], aten.masked_fill: node.args[1:2], aten.index: node.args[1:],
                      aten.index_select: node.args[2:], aten.gather: node.args[2:]}[op]
        flat: list[fx.Node] = []
        fx.node.map_arg(index_args, lambda n: flat.append(n) or n)
        return NONLINEAR if any(n in signal for n in flat) else LINEAR
    if op in LINEAR_OPS and op is not aten.div and op is not aten.dropout:
        return LINEAR
    if op is aten.dropout:
        if len(node.args) > 2 and node.args[2]:
            raise ConversionError(f"node '{node.name}' ({where(node)}): dropout in training mode")
        return LINEAR
    name = str(op)
    if name.endswith("_") or "rand" in name or "bernoulli" in name:
        raise ConversionError(f"node '{node.name}' ({op}, {where(node)}) mutates or samples a signal tensor; the SNN "
                              "needs a pure function of its inputs (write it out-of-place, no randomness in eval)")
    return NONLINEAR


def classify(gm: fx.GraphModule) -> dict[fx.Node, str]:
    """The kind of every node of ``gm`` (see the module docstring); a node the rules cannot cover raises
    :class:`ConversionError` naming it, its source line and what would work instead."""
    kinds: dict[fx.Node, str] = {}
    integers: list[fx.Node] = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            kinds[node] = SOURCE if _is_float(node) else CONST
        elif node.op in ("get_attr", "output"):
            kinds[node] = CONST if node.op == "get_attr" else OUTPUT
        else:
            signal = [n for n in tensor_args(node) if kinds.get(n, CONST) != CONST]
            if (not node.users and node.meta.get("val") is None) or isinstance(node.meta.get("val"), (
                    int, torch.SymInt)):  # a guard, an assertion or a shape: no signal
                kinds[node] = CONST
            elif node.op == "call_function" and packet(node) is aten.embedding:
                kinds[node] = _kind_of_call(node, signal)
            elif not signal:
                kinds[node] = CONST
            elif node.op == "call_module":
                kinds[node] = QUANT if str(node.target).startswith("quantizers.") else NONLINEAR
            elif node.target is operator.getitem:
                kinds[node] = kinds[node.args[0]] if kinds[node.args[0]] == NONLINEAR else LINEAR
            else:
                kinds[node] = _kind_of_call(node, signal)
            if kinds[node] != CONST and not _is_float(node):
                integers.append(node)
    if integers:
        _check_integers_stay_in_regions(gm, kinds, integers)
    return kinds


def _check_integers_stay_in_regions(gm: fx.GraphModule, kinds: dict[fx.Node, str], integers: list[fx.Node]) -> None:
    """A signal may become integers (a router's top-k indices) only inside one non-linear region, which the SNN
    evaluates as one function of its real-valued inputs; an integer that leaves it would be a spike train of
    integers."""
    region = regions(gm, kinds)
    for node in integers:
        if node not in region or any(kinds[user] != CONST and region.get(user) != region[node] for user in node.users):
            val = node.meta.get("val")
            raise ConversionError(
                f"node '{node.name}' ({packet(node)}, {where(node)}) turns the signal into a "
                f"{val.dtype if isinstance(val, torch.Tensor) else 'non-tensor'} value that leaves the non-linear "
                "function computing it; a spiking network carries real values only (compute masks and indices from "
                "the integer inputs instead)")


def regions(gm: fx.GraphModule, kinds: dict[fx.Node, str]) -> dict[fx.Node, int]:
    """Group every non-linear node into a region (node -> region id).

    A region starts at each non-linear node and absorbs (to a fixed point): non-linear nodes reading it, linear
    nodes whose signal inputs all come from it, and any node whose signal inputs come from it and from its own
    inputs, or with linear functions of them (``x * rsqrt(mean(x²) + eps)``, ``0.5 x (1 + tanh(...))``). Weighted
    nodes never join; regions that meet merge.
    """
    parent: dict[fx.Node, fx.Node] = {}

    def find(n: fx.Node) -> fx.Node:
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    def inputs_of(root: fx.Node) -> set[fx.Node]:
        members = {n for n in parent if find(n) is root}
        return {a for n in members for a in tensor_args(n) if a not in members and kinds.get(a) != CONST}

    def from_inputs(node: fx.Node, inputs: set[fx.Node]) -> bool:
        """A region input, or computed from region inputs by linear ops alone (``0.5 * x`` beside ``tanh(x)``)."""
        return node in inputs or (kinds.get(node) == LINEAR and node not in parent and all(
            from_inputs(a, inputs) for a in tensor_args(node) if kinds.get(a) != CONST))

    def union(a: fx.Node, b: fx.Node) -> bool:
        ra, rb = find(a), find(b)
        if ra is rb:
            return False
        parent[rb] = ra
        return True

    for node in gm.graph.nodes:
        if kinds.get(node) == NONLINEAR:
            parent[node] = node
    changed = True
    while changed:
        changed = False
        for node in gm.graph.nodes:
            if kinds.get(node) not in (LINEAR, BILINEAR, NONLINEAR):
                continue
            signal = [a for a in tensor_args(node) if kinds.get(a) != CONST]
            roots = {find(a) for a in signal if a in parent}
            if not roots:
                continue
            outside = [a for a in signal if a not in parent]
            if node in parent or not outside or any(
                    all(from_inputs(a, inputs_of(root)) for a in outside) for root in roots):
                if node not in parent:
                    parent[node] = node
                    changed = True
                for root in roots:
                    changed = union(root, node) or changed
    ids: dict[fx.Node, int] = {}
    numbering: dict[fx.Node, int] = {}
    for node in gm.graph.nodes:
        if node in parent:
            ids[node] = numbering.setdefault(find(node), len(numbering))
    return ids


def warn_weights_in_regions(gm: fx.GraphModule, kinds: dict[fx.Node, str], region: dict[fx.Node, int]) -> None:
    """Warn where a non-linear region multiplies the signal by a weight matrix with an op the rules do not know as a
    product (``tensordot``, ``nn.Bilinear``, a sparse mixture's grouped product): the SNN stays exact, but computes
    that product inside one analog function of its inputs instead of on spikes."""
    parameters = dict(gm.named_parameters())

    def weight(node: fx.Node) -> str | None:  # a parameter matrix, through constant reshapes and transposes
        while node.op == "call_function" and kinds.get(node) == CONST and len(tensor_args(node)) == 1:
            node = tensor_args(node)[0]
        named = str(node.target) if node.op == "get_attr" else ""
        return named if named in parameters and parameters[named].dim() >= 2 else None

    for node in gm.graph.nodes:
        if node in region and kinds.get(node) == NONLINEAR and node.op == "call_function":
            weights = [w for w in map(weight, tensor_args(node)) if w]
            if weights:
                warnings.warn(f"to_qann: {packet(node)} in {module_path(node) or 'the model'} ({where(node)}) "
                              f"multiplies the signal by {', '.join(weights)} "
                              "inside a non-linear function: the SNN is exact but does not spike there (a product "
                              "written with linear, matmul or einsum would)", stacklevel=4)


def retarget(gm: fx.GraphModule, device: torch.device) -> None:
    """Point the graph's tensor-making nodes (``arange``, ``zeros``, ``full``...: their ``device`` argument was fixed
    when the model was traced) at ``device``, so that the graph runs where its parameters were moved."""
    changed = False
    for node in gm.graph.nodes:
        if isinstance(node.kwargs.get("device"), torch.device) and node.kwargs["device"] != device:
            node.kwargs = {**node.kwargs, "device": device}
            changed = True
    if changed:
        gm.recompile()


def retype(gm: fx.GraphModule, old: torch.dtype, new: torch.dtype) -> None:
    """Turn every dtype argument of the graph that names ``old`` (casts, tensor-making nodes, masks: fixed when the
    model was traced in ``old``) into ``new``, so that the graph computes in the floating dtype its parameters were
    moved to, as it computed in ``old`` before."""
    swap = lambda a: new if isinstance(a, torch.dtype) and a == old else a
    changed = False
    for node in gm.graph.nodes:
        args, kwargs = fx.node.map_aggregate(node.args, swap), fx.node.map_aggregate(node.kwargs, swap)
        if args != node.args or kwargs != node.kwargs:
            node.args, node.kwargs = args, kwargs
            changed = True
    if changed:
        gm.recompile()
