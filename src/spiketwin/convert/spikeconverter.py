"""SpikeConverter: ANN -> 2^T-level quantized ANN (QANN) -> SNN of iLIF neurons with temporal separation.

``qann = to_qann(model, levels=2**T, neuron="ilif", calibration=x)`` traces ``model`` with ``torch.fx``,
folds every BatchNorm into the Conv/Linear before it and replaces every ReLU by an unsigned ``2**T``-level
:class:`~spiketwin.quant.Quantizer` whose step ``s = p / 2^T`` comes from ``p``, a high percentile (99.99th by
default) of that ReLU's outputs on ``calibration``. Quantizers already in the model (a :class:`ViT` gets
SpikeZIP-TF's, signed and unsigned) get ``s = p / 2^T`` (unsigned) or ``p / 2^(T-1)`` (signed) from the
percentile of ``|input|``. The QANN trains like any model (QAT with :func:`spiketwin.train.fit`).
``snn = qann.to_snn()`` swaps each quantizer for an :class:`~spiketwin.neurons.ILIF` neuron with threshold
``θ = s · 2^T`` (spike amplitude ``s``).

**Schedule.** A global clock ``t = 0, 1, ...`` is cut into periods of ``T`` steps (phase ``j = t mod T``).
Every value flowing between layers is a spike train read most significant step first: its value for one
period is ``Σ_j k^(T-1-j) y_j``. The iLIF neuron accumulates one period (amplifying by ``k``) and fires it
during the next one, so the neuron at depth ``d`` (``d`` iLIF layers on its longest path from the input)
fires sample ``n`` during period ``n + d``. Things that enter without a spike train enter at the phase
with weight 1, ``j = T - 1``: the image (analog input, once, as the first layer's input current, as in
SpikeZIP-TF), each Conv/Linear bias and each constant (class token, position embedding) once per period
(an earlier one would be amplified). Operands of one operation that come from different depths are
aligned by delaying the shallower ones by whole periods (:class:`Delay`). Max pooling compares the
binary-coded trains most significant step first (:class:`SpikeMaxPool2d`), exact for ``k = 2``. Signed
quantizers become :class:`SignedILIF` (an offset in and out); LayerNorm, softmax and activation x activation
products become :class:`PeriodOp` (decode, apply, encode: one period each). The network's output (the last
layer, no neuron) is decoded over period ``D`` (the depth), so a sample needs ``(D + 1) · T`` steps
(latency); with pipelining a new sample enters every ``T`` steps (throughput).

With ``k = 2`` every decoded value of the SNN equals the QANN's (:meth:`ILIFSNN.verify`, float64).
Other ``k`` keep each layer's range ``[0, s (2^T - 1)]`` and are reported as conversion error.
:meth:`SpikeConverterQANN.to_rate_snn` builds the classic rate-coded IF conversion for comparison (CNNs).
"""

from __future__ import annotations

import copy
import math
import operator
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.utils import _pair
from torch.fx.experimental.meta_tracer import MetaTracer
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ..base import StatefulModule, check_step_mode, reset
from ..models.vit import AddTokens, ViT
from ..neurons import IF, ILIF
from ..ops import MatMul
from ..quant import Quantizer
from ..simulate import SimResult

DEFAULT_PERCENTILE = 99.99

_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Linear)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)
_PASSIVE = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity,
            nn.Dropout, AddTokens)
_RELU_FUNCTIONS = (F.relu, torch.relu)
_ADD_FUNCTIONS = (operator.add, torch.add)
_PERIOD_OPS = (nn.LayerNorm, nn.Softmax, nn.GELU, MatMul)
_SCALE_FUNCTIONS = (operator.mul, operator.truediv)
_SHAPE_FUNCTIONS = (torch.flatten, torch.cat, operator.getitem, getattr)
_SHAPE_METHODS = ("flatten", "view", "reshape", "size", "transpose", "unflatten", "unbind", "expand", "contiguous")
SUPPORTED = ("Conv1d/Conv2d/Linear, BatchNorm1d/2d right after one of them, ReLU (module, F.relu, torch.relu, "
             ".relu()), MaxPool2d right after a ReLU, AvgPool/AdaptiveAvgPool, Flatten/torch.flatten/.view/"
             ".reshape, Dropout/Identity, additions of two activations; for transformers: Quantizer modules already in "
             "the model (signed or unsigned), LayerNorm/Softmax/GELU/spiketwin.ops.MatMul, parameters with a "
             "leading dimension of 1 (class token, position embedding), torch.cat/.transpose/.unflatten/"
             ".expand/indexing that keep dimension 0 the batch, products with a number")


# ----------------------------------------------------------------------------- ANN -> QANN


_LEAVES = (Quantizer, MatMul, AddTokens)


class _Tracer(fx.Tracer):
    """``torch.fx`` tracer that keeps quantizers, ``MatMul`` and ``AddTokens`` as modules (the conversion
    swaps or reuses them as they are)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


class _ViTTracer(_Tracer, MetaTracer):
    """Traces a :class:`ViT` on meta tensors, which lets ``q, k, v = (... for t in qkv.unbind(-3))`` unpack
    (the meta result says how many tensors ``unbind`` returns). Shapes the code reads become constants,
    which is safe here because only ``AddTokens`` reads them, and it stays a module. Keeps the same leaves
    as :class:`_Tracer`."""

    def iter(self, obj):
        meta = getattr(obj, "_tensor_meta", None)
        if isinstance(meta, (tuple, list)):
            return iter([obj[i] for i in range(len(meta))])
        return super().iter(obj)


def _trace(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    model = copy.deepcopy(model).eval()
    try:
        if not isinstance(model, ViT):
            return fx.GraphModule(model, _Tracer().trace(model), type(model).__name__)
        meta = copy.deepcopy(model).to("meta")
        meta.check_input = lambda x: None  # input validation needs real tensors; the graph runs without it
        for name, m in list(meta.named_modules()):
            if isinstance(m, Quantizer):  # same shape, and no bool() of a meta tensor; the node keeps its path
                meta.set_submodule(name, nn.Identity())
        graph = _ViTTracer().trace(meta, meta_args={"x": example[:1].to("meta")})
        return fx.GraphModule(model, graph, type(model).__name__)
    except Exception as e:  # fx raises many types; say what failed and what would work
        raise TypeError(f"to_qann(neuron='ilif'): torch.fx cannot trace {type(model).__name__}: {e}. The "
                        "SpikeConverter conversion needs a traceable model without data-dependent control "
                        "flow built from: " + SUPPORTED) from e


def _fold_batchnorm(gm: fx.GraphModule) -> None:
    """Fold every BatchNorm into the Conv/Linear that feeds it (in place)."""
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), _BATCHNORM):
            continue
        src = node.args[0]
        layer = gm.get_submodule(src.target) if src.op == "call_module" else None
        if not isinstance(layer, _LINEAR) or len(src.users) != 1:
            raise ValueError(f"to_qann(neuron='ilif'): BatchNorm '{node.target}' does not directly follow a "
                             f"Conv/Linear used only by it (its input is {src.format_node()}); the conversion "
                             "folds BatchNorm into the layer before it, so place it right after a Conv/Linear")
        bn = gm.get_submodule(node.target)
        fused = fuse_linear_bn_eval(layer, bn) if isinstance(layer, nn.Linear) else fuse_conv_bn_eval(layer, bn)
        gm.add_submodule(src.target, fused)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        gm.delete_submodule(node.target)


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    return ((node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.ReLU))
            or (node.op == "call_function" and node.target in _RELU_FUNCTIONS)
            or (node.op == "call_method" and node.target == "relu"))


def _constant(gm: fx.GraphModule, target: str):
    """The value a ``get_attr`` node reads: an attribute of ``gm``, or a parameter of a submodule."""
    return gm.get_parameter(target) if "." in target else getattr(gm, target)


def _check_supported(gm: fx.GraphModule) -> None:
    """Raise naming every node the conversion cannot handle."""
    bad = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        bad.append(f"the model takes {len(placeholders)} inputs; exactly one image tensor is supported")
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output") or _is_relu(gm, node):
            continue
        if node.op == "get_attr":
            value = _constant(gm, node.target)
            if not isinstance(value, torch.Tensor) or value.dim() < 2 or value.shape[0] != 1:
                bad.append(f"'{node.target}': a constant must be a tensor with a leading dimension of 1 "
                           "(it enters every sample like a bias)")
        elif node.op == "call_module":
            module = gm.get_submodule(node.target)
            if isinstance(module, nn.MaxPool2d):
                if module.ceil_mode or module.return_indices:
                    bad.append(f"'{node.target}' (MaxPool2d): ceil_mode and return_indices are not supported")
                if not _is_relu(gm, node.args[0]):
                    bad.append(f"'{node.target}' (MaxPool2d) takes {node.args[0].name}, not a ReLU output: max "
                               "pooling is exact only on iLIF spike trains; put it right after the ReLU "
                               "(max commutes with ReLU, the ANN is unchanged)")
            elif not isinstance(module, _LINEAR + _PASSIVE + _PERIOD_OPS + (Quantizer,)):
                bad.append(f"'{node.target}' ({type(module).__name__})")
        elif node.op == "call_function" and node.target in _ADD_FUNCTIONS:
            operands = [a for a in node.args if isinstance(a, fx.Node)]
            if len(operands) != 2 or len(node.args) != 2 or node.kwargs:
                bad.append(f"'{node.name}' ({node.format_node()}): only the sum of two activations is "
                           "supported (a constant would have to enter like a bias)")
        elif node.op == "call_function" and node.target in _SCALE_FUNCTIONS:
            if len(node.args) != 2 or not isinstance(node.args[0], fx.Node) or not isinstance(node.args[1],
                                                                                              (int, float)):
                bad.append(f"'{node.name}' ({node.format_node()}): only an activation times a number is linear")
        elif not ((node.op == "call_function" and node.target in _SHAPE_FUNCTIONS)
                  or (node.op == "call_method" and node.target in _SHAPE_METHODS)):
            bad.append(f"'{node.name}' ({node.format_node()})")
    if bad:
        raise TypeError("to_qann(neuron='ilif'): cannot convert " + "; ".join(bad) + ". Supported: " + SUPPORTED)


class _Recorder(fx.Interpreter):
    """Runs a graph module and keeps the values of the nodes named in ``names``."""

    def __init__(self, gm: fx.GraphModule, names) -> None:
        super().__init__(gm)
        self.names, self.values = set(names), {}

    def run_node(self, node: fx.Node):
        out = super().run_node(node)
        if node.name in self.names:
            self.values[node.name] = out
        return out


def _call_sites(gm: fx.GraphModule) -> Counter:
    """How many nodes call each submodule (a module used twice must become two spiking modules)."""
    return Counter(n.target for n in gm.graph.nodes if n.op == "call_module")


def _percentile(x: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q``-th percentile of all elements of ``x`` (nearest rank)."""
    flat = x.detach().flatten()
    rank = min(flat.numel(), max(1, math.ceil(q / 100 * flat.numel())))
    return flat.kthvalue(rank).values


def to_ilif_qann(model: nn.Module, levels: int, calibration: torch.Tensor | None = None,
                 percentile: float = DEFAULT_PERCENTILE) -> SpikeConverterQANN:
    """The QANN of ``model`` for an iLIF SNN with ``T = log2(levels)`` steps per phase.

    BatchNorms are folded, each ReLU becomes an unsigned ``levels``-level :class:`Quantizer` with step
    ``p / levels``, ``p`` the ``percentile``-th percentile of that ReLU's outputs on ``calibration``
    (``[N, C, H, W]``, a few hundred training images) in the float model. ``model`` is not modified.
    """
    levels = int(levels)
    if levels < 2 or levels & (levels - 1):
        raise ValueError(f"to_qann(neuron='ilif'): levels must be 2**T (T >= 1 steps per phase), got {levels}")
    if calibration is None or not isinstance(calibration, torch.Tensor):
        raise ValueError("to_qann(neuron='ilif') needs calibration=<tensor of a few hundred training inputs> "
                         "to set each quantizer's step from the activations")
    if not 0 < percentile <= 100:
        raise ValueError(f"to_qann(neuron='ilif'): percentile must be in (0, 100], got {percentile}")
    if isinstance(model, ViT):  # SpikeZIP-TF's quantizer places (GELU -> ReLU); steps are calibrated below
        from .spikezip import vit_to_qann

        model = vit_to_qann(model, levels).model
    gm = _trace(model, calibration)
    _fold_batchnorm(gm)
    _check_supported(gm)
    relus = [n for n in gm.graph.nodes if _is_relu(gm, n)]
    placed = [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), Quantizer)]
    for node in placed:
        if gm.get_submodule(node.target).levels != levels:
            raise ValueError(f"to_qann(neuron='ilif'): quantizer '{node.target}' has "
                             f"{gm.get_submodule(node.target).levels} levels, the conversion uses levels={levels}")
    with torch.no_grad():
        recorder = _Recorder(gm, [n.name for n in relus] + [n.args[0].name for n in placed])
        recorder.run(calibration)
        for node in placed:  # step from the percentile of |input|: p / (L/2) signed, p / L unsigned
            quantizer = gm.get_submodule(node.target)
            p = _percentile(recorder.values[node.args[0].name].abs(), percentile)
            scale = levels // 2 if quantizer.signed else levels
            quantizer.step.copy_((p / scale).clamp_min(torch.finfo(quantizer.step.dtype).tiny))
            quantizer.initialized.fill_(True)
    ref = next(gm.parameters(), calibration)
    sites = _call_sites(gm)
    for i, node in enumerate(relus):
        quantizer = Quantizer(levels, signed=False).to(device=ref.device, dtype=ref.dtype)
        p = _percentile(recorder.values[node.name], percentile)
        with torch.no_grad():
            quantizer.step.copy_((p / levels).clamp_min(torch.finfo(quantizer.step.dtype).tiny))
            quantizer.initialized.fill_(True)
        if node.op == "call_module" and sites[node.target] == 1:
            gm.add_submodule(node.target, quantizer)
            continue
        name = f"relu_quant_{i}"
        gm.add_submodule(name, quantizer)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return SpikeConverterQANN(gm, levels.bit_length() - 1)


class SpikeConverterQANN(nn.Module):
    """A ReLU CNN with BatchNorm folded and each ReLU replaced by a ``2^T``-level quantizer (``.net``).

    ``forward(x)``: ``[B, C, H, W] -> [B, classes]``. Train it like any model (QAT); then :meth:`to_snn`.
    """

    def __init__(self, net: fx.GraphModule, phase_steps: int) -> None:
        super().__init__()
        self.net, self.phase_steps = net, int(phase_steps)

    @property
    def levels(self) -> int:
        return 2 ** self.phase_steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def quantizers(self) -> dict[str, Quantizer]:
        """Node name -> quantizer, in graph order."""
        return {n.name: self.net.get_submodule(n.target) for n in self.net.graph.nodes
                if n.op == "call_module" and isinstance(self.net.get_submodule(n.target), Quantizer)}

    def to_snn(self, k: float = 2.0) -> ILIFSNN:
        """The iLIF SNN (amplification ``k``; exactly equivalent for ``k = 2``)."""
        return ILIFSNN(self, k)

    def to_rate_snn(self) -> RateSNN:
        """The classic rate-coded conversion: soft-reset IF neurons with threshold ``p = s 2^T``."""
        return RateSNN(self)


# ----------------------------------------------------------------------------- spiking operators


def ilif_threshold(step: torch.Tensor, phase_steps: int, k: float) -> torch.Tensor:
    """Threshold of the iLIF neuron that replaces a quantizer of step ``s``: spike amplitude ``a = θ / k^T``
    with ``a (k^T - 1) / (k - 1) = s (2^T - 1)`` (an all-ones train decodes to the quantizer's top level).
    For ``k = 2``: ``a = s``, ``θ = s 2^T``, exactly."""
    T = phase_steps
    ratio = (2 ** T - 1) * (k - 1) / (k ** T - 1)
    return step.detach() * ratio * k ** T


def last_phase(start: int, steps: int, phase_steps: int, like: torch.Tensor) -> torch.Tensor:
    """``[steps, 1, ..., 1]`` (as many dimensions as ``like``): 1 at the steps ``start, start + 1, ...`` that
    are the last of their period, 0 elsewhere."""
    phase = torch.arange(start, start + steps, device=like.device) % phase_steps
    return (phase == phase_steps - 1).to(like.dtype).view(steps, *[1] * (like.dim() - 1))


class PhasedModule(StatefulModule):
    """A stateful module that counts its time steps (``.t``, reset to 0) to know where it is in the periods
    of ``phase_steps`` steps."""

    def __init__(self, phase_steps: int, step_mode: str = "m") -> None:
        super().__init__(step_mode)
        self.phase_steps, self.t = int(phase_steps), 0

    def reset(self) -> None:
        super().reset()
        self.t = 0


class PeriodBias(PhasedModule):
    """A Conv/Linear applied to every step without its bias; the bias enters once per period of ``T`` steps,
    at the last step (the one the next neuron does not amplify). ``[T', B, ...] -> [T', B, ...]``."""

    nir_refusal = "bias added once per period of T steps: NIR's Affine / Conv add their bias at every step"

    def __init__(self, layer: nn.Module, phase_steps: int, step_mode: str = "m") -> None:
        super().__init__(phase_steps, step_mode)
        self.layer = copy.deepcopy(layer)
        bias = self.layer.bias
        self.layer.bias = None
        self.register_buffer("bias", bias.detach().clone())

    def multi_step(self, x_seq: torch.Tensor) -> torch.Tensor:
        steps = x_seq.shape[0]
        y = self.layer(x_seq.flatten(0, 1)).unflatten(0, (steps, -1))
        last = last_phase(self.t, steps, self.phase_steps, y)
        bias = self.bias if isinstance(self.layer, nn.Linear) else self.bias.view(-1, *[1] * (y.dim() - 3))
        self.t += steps
        return y + last * bias

    def single_step(self, x: torch.Tensor) -> torch.Tensor:
        return self.multi_step(x.unsqueeze(0))[0]


class Delay(StatefulModule):
    """Delays a sequence by ``steps`` steps (zeros first). ``[T', B, ...] -> [T', B, ...]``."""

    state_names = ("buffer",)

    def __init__(self, steps: int, step_mode: str = "m") -> None:
        super().__init__(step_mode)
        if steps < 1:
            raise ValueError(f"Delay: steps must be >= 1, got {steps}")
        self.steps = int(steps)

    def multi_step(self, x_seq: torch.Tensor) -> torch.Tensor:
        if self.buffer is None:
            self.buffer = x_seq.new_zeros((self.steps, *x_seq.shape[1:]))
        joined = torch.cat([self.buffer, x_seq])
        self.buffer = joined[-self.steps:]
        return joined[:x_seq.shape[0]]

    def single_step(self, x: torch.Tensor) -> torch.Tensor:
        return self.multi_step(x.unsqueeze(0))[0]

    def extra_repr(self) -> str:
        return f"steps={self.steps}, {super().extra_repr()}"


class SpikeMaxPool2d(PhasedModule):
    """Max pooling of binary-coded spike trains (most significant step first), period by period.

    Per window it keeps the inputs still tied for the maximum (all of them at the start of a period). At
    each step, if any of them spikes it emits that spike and drops the tied inputs that did not. For trains
    whose value order is their lexicographic order (iLIF trains with ``k = 2``, which are binary expansions)
    the output train is the train of the window's maximum, so the decoded output is the max of the decoded
    inputs exactly. Zero padding is exact because trains are non-negative. ``[B, C, H, W]`` per step.
    """

    nir_refusal = "max pooling of binary-coded spike trains: NIR 1.0 has only AvgPool2d and SumPool2d"

    state_names = ("tied",)

    def __init__(self, pool: nn.MaxPool2d, phase_steps: int, step_mode: str = "m") -> None:
        super().__init__(phase_steps, step_mode)
        if pool.ceil_mode or pool.return_indices:
            raise ValueError("SpikeMaxPool2d: ceil_mode and return_indices are not supported")
        self.kernel_size, self.padding = _pair(pool.kernel_size), _pair(pool.padding)
        self.stride, self.dilation = _pair(pool.stride or pool.kernel_size), _pair(pool.dilation)

    def single_step(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.t % self.phase_steps == 0:  # a new period: every input of a window is tied again
            self.tied = None
        self.t += 1
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride).unflatten(1, (c, -1))
        spikes = cols > 0  # [B, C, window, positions]
        hit = spikes if self.tied is None else spikes & self.tied
        any_hit = hit.any(2, keepdim=True)
        self.tied = torch.where(any_hit, hit, torch.ones_like(hit) if self.tied is None else self.tied)
        out = (cols * hit).amax(2)
        size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
                zip((h, w), self.padding, self.dilation, self.kernel_size, self.stride)]
        return out.view(b, c, *size)


class SignedILIF(PhasedModule):
    """The neuron of a signed quantizer: ``Q_signed(x) = Q_unsigned(x + c) - c`` with ``c = s L/2``, so ``c``
    enters with the input and leaves with the output, each at the last step of every period (weight 1).
    ``[T', B, ...] -> [T', B, ...]``."""

    def __init__(self, neuron: ILIF, offset: torch.Tensor, step_mode: str = "m") -> None:
        super().__init__(neuron.phase_steps, step_mode)
        self.neuron = neuron
        self.register_buffer("offset", offset.detach().clone())

    def multi_step(self, x_seq: torch.Tensor) -> torch.Tensor:
        shift = last_phase(self.t, x_seq.shape[0], self.phase_steps, x_seq) * self.offset.to(x_seq.dtype)
        self.t += x_seq.shape[0]
        return self.neuron.multi_step(x_seq + shift) - shift


class PeriodOp(PhasedModule):
    """Decode, apply, encode: any operator ``fn`` (LayerNorm, softmax, an activation x activation product)
    on spike trains. Each input's period is accumulated (``V <- k V + x``); at the period boundary ``fn`` is
    applied to the accumulated values, and the result is emitted at the last step of the next period
    (weight 1). Exact for any ``fn``, at the cost of one period of latency. Inputs ``[T', B, ...]`` each."""

    state_names = ("acc", "ready")

    def __init__(self, fn: nn.Module, phase_steps: int, k: float = 2.0, step_mode: str = "m") -> None:
        super().__init__(phase_steps, step_mode)
        self.fn, self.k = fn, float(k)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.step_mode == "s":
            return self._sequence([x.unsqueeze(0) for x in xs])[0]
        return self._sequence(list(xs))

    def _sequence(self, xs: list[torch.Tensor]) -> torch.Tensor:
        out = []
        for j in range(xs[0].shape[0]):
            if self.t > 0 and self.t % self.phase_steps == 0:
                self.ready, self.acc = self.fn(*self.acc), None
            now = [x[j] for x in xs]
            self.acc = now if self.acc is None else [self.k * a + x for a, x in zip(self.acc, now)]
            if self.ready is None:
                self.ready = torch.zeros_like(self.fn(*now))
            emit = self.t % self.phase_steps == self.phase_steps - 1
            out.append(self.ready if emit else torch.zeros_like(self.ready))
            self.t += 1
        return torch.stack(out)


class PeriodConstant(PhasedModule):
    """A constant ``[1, ...]`` (class token, position embedding) entering every period at its last step, for
    every sample of the batch of ``x`` ``[T', B, ...]``; returns ``[T', B, ...value.shape[1:]]``."""

    def __init__(self, value: torch.Tensor, phase_steps: int, step_mode: str = "m") -> None:
        super().__init__(phase_steps, step_mode)
        self.register_buffer("value", value.detach().clone())

    def multi_step(self, x_seq: torch.Tensor) -> torch.Tensor:
        steps, batch = x_seq.shape[:2]
        value = self.value.to(x_seq.dtype).expand(batch, *self.value.shape[1:])
        out = last_phase(self.t, steps, self.phase_steps, value.unsqueeze(0)) * value
        self.t += steps
        return out


class Clocked(nn.Module):
    """Runs a sequence module (``[T', B, ...]`` inputs) inside a graph whose tensors fold time into the batch
    (``[T' B, ...]``); ``clock.steps`` is ``T'`` for the current call. ``scale`` multiplies the output."""

    def __init__(self, module: nn.Module, clock: _Clock, scale: float = 1.0) -> None:
        super().__init__()
        self.module, self.clock, self.scale = module, clock, scale

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        y = self.module(*(x.unflatten(0, (self.clock.steps, -1)) for x in xs)).flatten(0, 1)
        return y if self.scale == 1.0 else y * self.scale


@dataclass
class _Clock:
    steps: int = 1


# ----------------------------------------------------------------------------- SNNs


@dataclass
class LayerDifference:
    """One node of the graph: the largest absolute and relative (to the sample's largest QANN value)
    difference between the SNN's decoded value and the QANN's, over the batch."""

    name: str
    kind: str
    period: int
    max_abs: float
    max_rel: float


@dataclass
class ConversionReport:
    """What :meth:`ILIFSNN.verify` returns: per layer (``layers``) and per sample (``per_sample``, ``[B]``,
    the largest relative difference over all layers) differences, computed in float64."""

    layers: list[LayerDifference]
    per_sample: torch.Tensor
    tolerance: float

    @property
    def max_rel(self) -> float:
        return max((layer.max_rel for layer in self.layers), default=0.0)

    @property
    def ok(self) -> bool:
        return self.max_rel <= self.tolerance

    def __str__(self) -> str:
        width = max(len(layer.name) for layer in self.layers)
        lines = [f"{'node':<{width}}  {'kind':<16} period  max |diff|   max rel"]
        lines += [f"{d.name:<{width}}  {d.kind:<16} {d.period:>6}  {d.max_abs:.3e}  {d.max_rel:.3e}"
                  for d in self.layers]
        verdict = "OK" if self.ok else "NOT equivalent"
        lines.append(f"{verdict}: max relative difference {self.max_rel:.3e} over {len(self.per_sample)} samples "
                     f"(tolerance {self.tolerance:g})")
        return "\n".join(lines)


class _GraphSNN(nn.Module):
    """A converted graph run on time-folded tensors, chunk by chunk of time steps."""

    def __init__(self, qann: SpikeConverterQANN, swap: Callable[[nn.Module, _Clock], nn.Module | None],
                 align: bool) -> None:
        super().__init__()
        if not isinstance(qann, SpikeConverterQANN):
            raise TypeError(f"expected a QANN made by to_qann(..., neuron='ilif'), got {type(qann).__name__}")
        self.phase_steps = qann.phase_steps
        self.clock = _Clock()
        gm = copy.deepcopy(qann.net)
        sites = _call_sites(gm)
        (image,) = [n for n in gm.graph.nodes if n.op == "placeholder"]
        lags: dict[str, int | None] = {}  # None: a constant, present in every period
        for node in list(gm.graph.nodes):
            if node.op == "get_attr":
                if not align:
                    raise TypeError(f"{type(self).__name__}: constant '{node.target}' is not supported")
                value = _constant(gm, node.target)
                name = f"constant_{node.name}"
                gm.add_submodule(name, Clocked(PeriodConstant(value, self.phase_steps), self.clock))
                with gm.graph.inserting_after(node):
                    constant = gm.graph.call_module(name, (image,))
                node.replace_all_uses_with(constant)
                gm.graph.erase_node(node)
                lags[constant.name] = None
                continue
            inputs = [a for a in node.all_input_nodes if lags[a.name] is not None]
            lag = max((lags[a.name] for a in inputs), default=0)
            if align and (node.target in _ADD_FUNCTIONS or node.target is torch.cat or node.op == "call_module"):
                for i, a in enumerate(inputs):  # operands of one operation must arrive in the same period
                    if lags[a.name] < lag:
                        name = f"delay_{i}_of_{node.name}"
                        gm.add_submodule(name, Clocked(Delay((lag - lags[a.name]) * self.phase_steps), self.clock))
                        with gm.graph.inserting_before(node):
                            delayed = gm.graph.call_module(name, (a,))
                        lags[delayed.name] = lag
                        node.replace_input_with(a, delayed)
            if node.op == "call_module":
                module = gm.get_submodule(node.target)
                new = swap(module, self.clock)
                if sites[node.target] > 1:  # each call site keeps its own state
                    node.target = f"site_{node.name}"
                    new = new if new is not None else copy.deepcopy(module)
                if new is not None:
                    gm.add_submodule(node.target, new)
                lag += isinstance(module, (Quantizer, *_PERIOD_OPS))
            lags[node.name] = lag
        gm.graph.lint()
        gm.recompile()
        self.net, self.lags = gm, lags
        (out,) = [n for n in gm.graph.nodes if n.op == "output"]
        self.readout = out.args[0].name
        self.depth = lags[self.readout]

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
            self.clock.steps = steps
            recorder = _Recorder(self.net, record)
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


class ILIFSNN(_GraphSNN):
    """The iLIF SNN of a :class:`SpikeConverterQANN`: iLIF neurons (amplification ``k``), bias once per period,
    delayed shortcuts, spike-train max pooling. See the module docstring for the schedule."""

    def __init__(self, qann: SpikeConverterQANN, k: float = 2.0) -> None:
        T = qann.phase_steps

        def swap(module: nn.Module, clock: _Clock) -> nn.Module | None:
            if isinstance(module, Quantizer):
                neuron = ILIF(ilif_threshold(module.step, T, 2.0), 2.0, T)
                offset = module.step.detach() * (module.levels // 2)
                site = Clocked(SignedILIF(neuron, offset) if module.signed else neuron, clock)
                site.register_buffer("step", module.step.detach().clone())
                return site
            if isinstance(module, _PERIOD_OPS):
                return Clocked(PeriodOp(module, T), clock)
            if isinstance(module, _LINEAR) and module.bias is not None:
                return Clocked(PeriodBias(module, T), clock)
            if isinstance(module, nn.MaxPool2d):
                return Clocked(SpikeMaxPool2d(module, T), clock)
            return nn.Identity() if isinstance(module, nn.Dropout) else None

        super().__init__(qann, swap, align=True)
        self.set_k(k)

    def set_k(self, k: float) -> None:
        """Set the amplification ``k`` (> 1) of every neuron, with thresholds from :func:`ilif_threshold`."""
        k = float(k)
        if not k > 1.0:
            raise ValueError(f"ILIFSNN: the amplification k must be > 1, got {k}")
        for site in self.net.modules():
            if isinstance(site, PeriodOp):
                site.k = k
            if isinstance(site, Clocked) and hasattr(site, "step"):
                neuron = site.module.neuron if isinstance(site.module, SignedILIF) else site.module
                neuron.k = k
                neuron.threshold = ilif_threshold(site.step, self.phase_steps, k)
        self.k = k

    @contextmanager
    def _amplification(self, k: float | None):
        previous = self.k
        if k is not None:
            self.set_k(k)
        try:
            yield
        finally:
            self.set_k(previous)

    def _decode_weights(self, like: torch.Tensor) -> torch.Tensor:
        """``[T, 1, ..., 1]`` (as many dimensions as ``like``): the weight ``k^(T-1-j)`` of phase ``j`` in a
        period's value."""
        T = self.phase_steps
        weights = torch.tensor([self.k ** (T - 1 - j) for j in range(T)], dtype=like.dtype, device=like.device)
        return weights.view(-1, *[1] * (like.dim() - 1))

    def _trains(self, x: torch.Tensor, steps: int, step_mode: str, pipelined: bool,
                record: list[str]) -> dict[str, torch.Tensor]:
        """``[steps, B, ...]`` trains of the ``record`` nodes, each sample's window starting when it enters."""
        T = self.phase_steps
        if not pipelined:
            def inputs(start: int, n: int) -> torch.Tensor:
                seq = x.new_zeros((n, *x.shape))
                if start <= T - 1 < start + n:
                    seq[T - 1 - start] = x
                return seq
            return self._run(inputs, steps, step_mode, record)

        def stream(start: int, n: int) -> torch.Tensor:  # sample i enters at step i T + T - 1, batch of one
            seq = x.new_zeros((n, 1, *x.shape[1:]))
            for j in range(n):
                t = start + j
                if t % T == T - 1 and t // T < len(x):
                    seq[j, 0] = x[t // T]
            return seq
        trains = self._run(stream, (len(x) - 1) * T + steps, step_mode, record)
        return {name: torch.stack([train[i * T:i * T + steps, 0] for i in range(len(x))], 1)
                for name, train in trains.items()}

    @torch.no_grad()
    def simulate(self, x: torch.Tensor, max_steps: int | None = None, step_mode: str = "m",
                 k: float | None = None, pipelined: bool = False) -> SimResult:
        """Simulate images ``x`` ``[B, C, H, W]``; returns the decoded logits.

        ``max_steps`` (default: the latency ``(depth + 1) T``) counts steps from each sample's input;
        ``per_step[t]`` is the output decoded from what the readout received by step ``t + 1`` (zero before
        its period, the most significant steps first during it, the final logits after it). ``k`` overrides
        the amplification for this call. ``pipelined=True`` feeds the samples as one stream, a new sample
        every ``T`` steps (``(B + depth) T`` steps in all, batch of one); ``False`` runs the batch at once.
        Both give identical results. ``settle_step`` is the step after which the output no longer changes
        (``-1`` if ``max_steps`` stops before the latency).
        """
        self._check_input(x)
        steps = self._steps(max_steps)
        run = min(steps, self.latency)
        with self._amplification(k):
            train = self._trains(x, run, step_mode, pipelined, [self.readout])[self.readout]
            per_step = torch.zeros_like(train)
            start = self.depth * self.phase_steps
            if run > start:
                part = train[start:run]
                w = self._decode_weights(train)[:len(part)]
                per_step[start:run] = (part * w).cumsum(0)
        if steps > run:
            per_step = torch.cat([per_step, per_step[-1:].expand(steps - run, *per_step.shape[1:])])
        output = per_step[-1]
        if run < self.latency:
            settle = torch.full((len(x),), -1, dtype=torch.int64, device=x.device)
        else:
            changed = (per_step != output).flatten(2).any(-1)
            index = torch.arange(1, steps + 1, device=x.device).unsqueeze(1)
            settle = (changed * index).amax(0) + 1
        return SimResult(output, per_step, settle)

    def decoded(self, x: torch.Tensor, names: list[str], step_mode: str = "m",
                pipelined: bool = False) -> dict[str, torch.Tensor]:
        """Each named node's decoded value for ``x``: its train over the period in which it carries the sample."""
        T = self.phase_steps
        trains = self._trains(x, self.latency, step_mode, pipelined, names)
        out = {}
        for name in names:
            lag = self.lags[name]
            train = trains[name][lag * T:(lag + 1) * T]
            out[name] = (train * self._decode_weights(train)).sum(0)
        return out

    @torch.no_grad()
    def verify(self, qann: SpikeConverterQANN, x: torch.Tensor, tolerance: float = 1e-9,
               step_mode: str = "m", pipelined: bool = False) -> ConversionReport:
        """Compare every node's decoded value with the QANN's, in float64, per sample and per layer."""
        self._check_input(x)
        q64, s64, x64 = copy.deepcopy(qann).double().eval(), copy.deepcopy(self).double(), x.double()
        nodes = {n.name: n for n in q64.net.graph.nodes if n.op not in ("placeholder", "output", "get_attr")}
        recorder = _Recorder(q64.net, nodes)
        recorder.run(x64)
        expected = {name: v for name, v in recorder.values.items() if isinstance(v, torch.Tensor)}
        got = s64.decoded(x64, list(expected), step_mode, pipelined)
        layers, per_sample = [], torch.zeros(len(x64), dtype=torch.float64, device=x64.device)
        for name, want in expected.items():
            diff = (got[name] - want).abs().flatten(1).amax(1)
            scale = want.abs().flatten(1).amax(1).clamp_min(torch.finfo(torch.float64).tiny)
            rel = diff / scale
            per_sample = torch.maximum(per_sample, rel)
            node = nodes[name]
            kind = type(q64.net.get_submodule(node.target)).__name__ if node.op == "call_module" else str(
                getattr(node.target, "__name__", node.target))
            layers.append(LayerDifference(name, kind, self.lags[name], float(diff.max()), float(rel.max())))
        return ConversionReport(layers, per_sample, tolerance)


class RateSNN(_GraphSNN):
    """Classic rate-coded conversion of the same QANN: soft-reset IF neurons (``IF(v_reset=None)``) with
    threshold ``p = s 2^T`` (the calibrated activation), spikes of amplitude ``p``, the image as a constant
    input current and biases at every step, per-step max pooling. The output is the mean readout."""

    def __init__(self, qann: SpikeConverterQANN) -> None:
        T = qann.phase_steps

        def swap(module: nn.Module, clock: _Clock) -> nn.Module | None:
            if isinstance(module, _PERIOD_OPS) or (isinstance(module, Quantizer) and module.signed):
                raise TypeError(f"RateSNN: the rate-coded baseline converts ReLU CNNs only, not "
                                f"{type(module).__name__}{' (signed)' if isinstance(module, Quantizer) else ''}")
            if isinstance(module, Quantizer):
                theta = float(module.step.detach() * 2 ** T)
                return Clocked(IF(v_threshold=theta, v_reset=None), clock, scale=theta)
            return nn.Identity() if isinstance(module, nn.Dropout) else None

        super().__init__(qann, swap, align=False)

    @torch.no_grad()
    def simulate(self, x: torch.Tensor, max_steps: int | None = None, step_mode: str = "m") -> SimResult:
        """Run ``max_steps`` steps (default: the iLIF latency ``(depth + 1) T``); ``per_step[t]`` is the mean
        readout over the first ``t + 1`` steps. Rate coding never settles exactly: ``settle_step`` is -1."""
        self._check_input(x)
        steps = self._steps(max_steps)
        train = self._run(lambda start, n: x.expand(n, *x.shape), steps, step_mode, [self.readout])[self.readout]
        count = torch.arange(1, steps + 1, device=x.device, dtype=train.dtype).view(-1, *[1] * (train.dim() - 1))
        per_step = train.cumsum(0) / count
        return SimResult(per_step[-1], per_step, torch.full((len(x),), -1, dtype=torch.int64, device=x.device))
