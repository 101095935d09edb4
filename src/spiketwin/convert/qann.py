"""ANN -> QANN for any traceable model: SpikeZIP-TF's quantizers placed by rules over the traced graph.

Placement rule (:func:`placement`), on the node kinds of :mod:`spiketwin.convert.graph`:

1. every signal input of a weighted op (linear, conv, a matmul with a constant operand) is quantized;
2. every signal input of a bilinear op (``q @ kᵀ``, ``attn @ v``, a gated product) is quantized;
3. the output of a weighted op that reaches a residual sum (an add of two signals) through linear ops is quantized;

except values computed from the model's own input by linear ops alone (the input enters analog at the first
step). A value feeding several such ops gets one quantizer, shared; a quantizer replaces every later use of its
value outside the value's own non-linear region. Quantizers after a ReLU, softmax or sigmoid (and what merely
reshapes, pools or selects from them) are unsigned. For a pre-norm ViT this gives SpikeZIP-TF's 10 per block
(norm1; q, k, v; softmax; attn @ v; proj; norm2; the activation; fc2) plus one after the patch embedding and one
after the final norm; for a post-norm BERT / RoBERTa, 10 per layer (the layer's input, which is the embedding
LayerNorm or the previous layer's output LayerNorm; q, k, v; softmax; attn @ v; the attention output dense;
its LayerNorm; the activation; the output dense) plus the final LayerNorm's selected token and the pooler's tanh.
"""

from __future__ import annotations

import copy
import inspect
import itertools

import torch
from torch import fx, nn

from ..inputs import describe
from ..quant import Quantizer
from . import graph as G
from .rows import prune_rows
from .samples import batch_dim, batch_sizes, folded_samples, mixes_samples, refold, unfold

ACTIVATION_CHOICES = ("keep", "relu")
KEEPS_SIGN = {G.aten.view, G.aten._unsafe_view, G.aten.reshape, G.aten.permute, G.aten.transpose, G.aten.t,
              G.aten.unsqueeze, G.aten.squeeze, G.aten.flatten, G.aten.unflatten, G.aten.expand, G.aten.slice,
              G.aten.select, G.aten.clone, G.aten.contiguous, G.aten.alias, G.aten.dropout, G.aten._to_copy,
              G.aten.mean, G.aten.sum, G.aten.max_pool1d, G.aten.max_pool2d, G.aten.max_pool3d,
              G.aten.max_pool2d_with_indices, G.aten.avg_pool2d, G.aten.adaptive_avg_pool2d, G.aten.cat}


def nonnegative(node: fx.Node, memo: dict) -> bool:
    """Whether ``node``'s value is never negative, by its ops (a quantizer after it can be unsigned)."""
    if node not in memo:
        op = G.packet(node)
        if node.op != "call_function":
            memo[node] = False
        elif op in G.NONNEG_OPS:
            memo[node] = True
        elif op in KEEPS_SIGN or node.target.__name__ == "getitem":
            inputs = [a for a in G.tensor_args(node) if a.op != "get_attr" and isinstance(a.meta.get("val"),
                                                                                             torch.Tensor)]
            memo[node] = bool(inputs) and all(nonnegative(a, memo) for a in inputs)
        else:
            memo[node] = False
    return memo[node]


def _analog(node: fx.Node, kinds: dict, memo: dict) -> bool:
    """Computed from the model's input (or embedding lookups) by linear ops alone: it enters the SNN analog."""
    if node not in memo:
        kind = kinds[node]
        memo[node] = kind == G.SOURCE or (kind == G.LINEAR and all(
            _analog(a, kinds, memo) for a in G.tensor_args(node) if kinds[a] != G.CONST))
    return memo[node]


def _feeds_residual(node: fx.Node, kinds: dict, region: dict) -> bool:
    """Whether ``node``'s value reaches a residual sum: an add / sub of two signals not both computed from ``node``
    (RoPE's ``q cos + rotate(q) sin`` is not one), through single-signal linear ops."""
    frontier, derived = [node], {node}
    while frontier:
        for user in frontier.pop().users:
            if user in derived or user in region or kinds.get(user) != G.LINEAR:
                continue
            signal = [a for a in G.tensor_args(user) if kinds[a] != G.CONST]
            mixed = not all(a in derived for a in signal)
            if G.packet(user) in (G.aten.add, G.aten.sub) and len(signal) >= 2 and mixed:
                return True
            if all(a in derived for a in signal):
                derived.add(user)
                frontier.append(user)
    return False


def _weighted_input(node: fx.Node, kinds: dict) -> fx.Node:
    if G.packet(node) is G.aten.addmm:
        return node.args[1]
    return next(a for a in G.tensor_args(node) if kinds[a] != G.CONST)


def placement(gm: fx.GraphModule, kinds: dict, region: dict) -> list[fx.Node]:
    """The value nodes that get a quantizer, in graph order (the rule in the module docstring)."""
    analog: dict = {}
    wanted: dict[fx.Node, None] = {}
    for node in gm.graph.nodes:
        kind = kinds.get(node)
        if kind == G.WEIGHTED:
            data = _weighted_input(node, kinds)
            if not _analog(data, kinds, analog):
                wanted[data] = None
            if _feeds_residual(node, kinds, region):
                wanted[node] = None
        elif kind == G.BILINEAR and node not in region:
            for arg in G.tensor_args(node):
                if kinds[arg] != G.CONST and not _analog(arg, kinds, analog):
                    wanted[arg] = None
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    return sorted(wanted, key=order.__getitem__)


def swap_activations(gm: fx.GraphModule) -> None:
    """``activation="relu"``: every GELU-like activation of ``gm`` becomes a ReLU (in place)."""
    for node in gm.graph.nodes:
        if node.op == "call_function" and G.packet(node) in G.ACTIVATIONS_TO_RELU:
            node.target, node.args, node.kwargs = G.aten.relu.default, node.args[:1], {}
    gm.recompile()


def misfit(who: str, error: Exception, args: tuple, kwargs: dict) -> ValueError:
    """The error for inputs that do not fit the traced model, with their shapes and the tracer's reason (a guard of
    the graph: ``x.size()[1] == 6`` for a dimension traced fixed)."""
    shapes = [f"{tuple(v.shape)} {v.dtype}" for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ValueError(f"{who}: the inputs ({', '.join(shapes)}) do not fit the traced model: {reason}")


class GraphModel(nn.Module):
    """A module around a traced graph (the attribute named by ``graph_attribute``) that follows its parameters and
    buffers wherever they are moved (``.to()``, ``.cuda()``, ``.cpu()``, ``.double()``, ``.bfloat16()``...): its
    tensor-making nodes to their device, its casts and tensor-making nodes to their floating dtype (a graph traced in
    float32 then computes in float64 or bfloat16 throughout, where a model's own code may keep a part in float32 when
    it is traced in bfloat16)."""

    graph_attribute = "model"
    fixed: dict
    """Python values traced into the graph (``use_cache=False``), in subclasses that take them: :meth:`graph_kwargs`."""

    def _apply(self, fn, *args, **kwargs):
        device, dtype = self._device_and_dtype()
        result = super()._apply(fn, *args, **kwargs)
        new_device, new_dtype = self._device_and_dtype()
        graph = getattr(self, self.graph_attribute)
        if new_device is not None and new_device != device:
            G.retarget(graph, new_device)
        if dtype is not None and new_dtype != dtype:
            G.retype(graph, dtype, new_dtype)
        return result

    def graph_kwargs(self, who: str, kwargs: dict) -> dict:
        """The keyword inputs of a call that the graph takes: a non-tensor one was fixed into the graph when it was
        traced (``self.fixed``, e.g. ``use_cache=False``) and is accepted again only with that value."""
        for name, value in kwargs.items():
            if name in self.fixed and (isinstance(value, torch.Tensor) or value != self.fixed[name]):
                raise ValueError(f"{who}: {name}={value!r} was fixed to {self.fixed[name]!r} when the model was "
                                 f"traced; convert again with {name}={value!r} in example_inputs")
        return {k: v for k, v in kwargs.items() if k not in self.fixed}

    def _device_and_dtype(self) -> tuple[torch.device | None, torch.dtype | None]:
        """The device of the first parameter or buffer, and the dtype of the first floating one: where and in what
        the graph computes."""
        device = None
        for tensor in itertools.chain(self.parameters(), self.buffers()):
            device = device or tensor.device
            if tensor.is_floating_point():
                return device, tensor.dtype
        return device, None


class GraphQANN(GraphModel):
    """A model's traced graph with SpikeZIP-TF quantizers (made by :func:`graph_to_qann`); train it like any model.

    ``.model`` is the :class:`torch.fx.GraphModule` (the original parameter names, plus ``quantizers.i``);
    ``.labels[i]`` names quantizer ``i`` by the module and node it follows (``blocks.0.attn:softmax``). It returns
    what the original model returns (a Hugging Face output object stays one), or the one output ``to_qann``'s
    ``output=`` kept. ``.recipe`` holds the ``to_qann`` options it was made with, its example inputs as
    :func:`spiketwin.inputs.describe` gives them (JSON: what a checkpoint keeps to make it again,
    :mod:`spiketwin.checkpoint`).
    """

    def __init__(self, model: fx.GraphModule, fixed: dict, labels: list[str], batch_dims: list[int | None]) -> None:
        super().__init__()
        self.model, self.fixed, self.labels, self.batch_dims = model, fixed, labels, batch_dims
        self.recipe: dict = {}

    def forward(self, *args, **kwargs):
        try:
            return self.model(*args, **self.graph_kwargs(type(self).__name__, kwargs))
        except AssertionError as error:  # a guard of the graph: a size traced fixed (to_qann's dynamic)
            raise misfit(type(self).__name__, error, args, kwargs) from error

    def quantizers(self) -> list[tuple[str, Quantizer]]:
        return list(zip(self.labels, self.model.quantizers))

    def check_initialized(self) -> None:
        """Raise a ``ValueError`` naming every quantizer whose step was never set from data."""
        fresh = [n for n, q in self.quantizers() if not bool(q.initialized)]
        if fresh:
            raise ValueError(f"to_snn: quantizers {', '.join(fresh[:8])}{' ...' if len(fresh) > 8 else ''} were never "
                             "initialised; run the QANN on a batch (calibration or QAT) first")


def graph_to_qann(model: nn.Module, levels: int = 16, example_inputs=None, activation: str = "keep",
                  dynamic: str = "all", output: str | int | None = None) -> GraphQANN:
    """Trace ``model`` (a copy; the original is untouched) and insert quantizers where SpikeZIP-TF puts them."""
    if activation not in ACTIVATION_CHOICES:
        raise ValueError(f"to_qann: activation must be one of {ACTIVATION_CHOICES}, got {activation!r}")
    if example_inputs is None:
        example_inputs = _infer_inputs(model)
    gm, fixed = G.trace(copy.deepcopy(model), example_inputs, dynamic, output)
    if activation == "relu":
        swap_activations(gm)
    kinds = G.classify(gm)
    region = G.regions(gm, kinds)
    G.warn_weights_in_regions(gm, kinds, region)
    values = placement(gm, kinds, region)
    if not values:
        raise G.ConversionError(f"to_qann: {type(model).__name__} has no weighted or bilinear op on a signal, so there "
                                "is nothing to quantize (is its input a floating tensor or an embedding lookup?)")
    param = next(model.parameters(), torch.empty(0))
    memo: dict = {}
    gm.add_module("quantizers", nn.ModuleList())
    sizes = batch_sizes(gm)
    mixed = mixes_samples(gm, sizes)
    folds = {} if mixed else folded_samples(gm, sizes)
    labels, dims = [], []
    for i, value in enumerate(values):
        gm.quantizers.append(Quantizer(levels, not nonnegative(value, memo)).to(device=param.device,
                                                                               dtype=param.dtype))
        fold = folds.get(value)  # [B*L, H]: the neuron reads [B, L, H], one sample per index of its batch dimension
        read = value if fold is None else unfold(gm, value, fold, sizes)
        with gm.graph.inserting_after(read):
            qnode = gm.graph.call_module(f"quantizers.{i}", (read,))
        qnode.meta = {k: v for k, v in read.meta.items() if k in ("val", "stack_trace", "nn_module_stack")}
        out = qnode if fold is None else refold(gm, qnode, fold)
        home = region.get(value)
        reader = qnode if fold is None else read
        value.replace_all_uses_with(out, delete_user_cb=lambda u, q=reader, h=home: u is not q and (
            h is None or region.get(u) != h))
        labels.append(f"{G.module_path(value) or '<root>'}:{value.name}")
        dims.append(None if mixed else batch_dim(read, sizes))  # None: the samples settle together
    prune_rows(gm)
    gm.recompile()
    qann = GraphQANN(gm, fixed, labels, dims)
    qann.recipe = {"levels": levels, "neuron": "stbif", "activation": activation, "dynamic": dynamic,
                   "output": output}
    try:
        qann.recipe["example_inputs"] = describe(example_inputs)
    except TypeError:  # inputs a checkpoint cannot describe (checkpoint.save says so if asked)
        pass
    return qann


def _infer_inputs(model: nn.Module):
    """Example inputs for models that say their input shape: spiketwin's ViT / CNNs (``img_size``, ``in_chans``),
    Hugging Face vision models (``config.image_size``) and text models (``config.vocab_size``: ``input_ids`` and,
    when the model takes one, ``attention_mask``; :func:`~spiketwin.convert.graph.trace` sets ``use_cache=False``)."""
    param = next(model.parameters(), torch.empty(0))
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "image_size"):
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        return {"pixel_values": torch.randn(2, getattr(config, "num_channels", 3), size, size, dtype=param.dtype)}
    if config is not None and hasattr(config, "vocab_size"):
        inputs = {"input_ids": torch.randint(0, config.vocab_size, (2, 8))}
        accepted = inspect.signature(model.forward).parameters
        if "attention_mask" in accepted:
            inputs["attention_mask"] = torch.ones(2, 8, dtype=torch.int64)
        return inputs
    size = getattr(model, "img_size", None) or getattr(getattr(model, "patch_embed", None), "img_size", None)
    channels = getattr(model, "in_chans", None) or getattr(model, "in_channels", None) or getattr(
        getattr(model, "patch_embed", None), "in_chans", None)
    if size and channels:
        return torch.randn(2, channels, size, size, dtype=param.dtype, device=param.device)
    raise ValueError(f"to_qann: cannot infer the input of {type(model).__name__}; pass example_inputs= (a tensor, a "
                     "tuple of positional tensors, or a dict of keyword tensors, as you call the model)")
