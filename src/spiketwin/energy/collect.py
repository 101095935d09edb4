"""Statistics of one instrumented run, collected once for every convention asked for.

Forward hooks on the counted modules record, per call and per time step, what any :class:`Convention` needs:
the non-zero inputs, the spikes they carry, and (when a value test is asked for) the extremes, the absolute sum
and whether every value is an integer. Counts stay tensors on the input's device until :meth:`Run.finish`.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..base import StatefulModule
from ..neurons import IF, ILIF, LIF, STBIF, ExactSTBIF
from ..ops import MatMul

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
PRODUCTS: list[type] = [MatMul]
NEURONS = (LIF, IF, STBIF, ILIF, ExactSTBIF)
EXTRA_TYPES: dict[str, tuple[type, ...]] = {
    "batchnorm": (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d),
    "layernorm": (nn.LayerNorm,),
    "pooling": (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.AdaptiveAvgPool1d,
                nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d),
    "neurons": NEURONS,
}


@dataclass
class Needs:
    """What the conventions of one run need beyond the non-zero and spike counts."""

    first: bool = False  # the spiketwin analog-first rule (and its changed-step count)
    values: bool = False  # value tests (extremes, integers, absolute sums)
    uses: bool = False  # exact weight uses of convolutions
    extras: set[str] = field(default_factory=set)


@dataclass
class Operand:
    """One input of one call: per-step ``[n]`` statistics (tensors until :meth:`Run.finish`, then lists)."""

    numel: int  # elements per step (all samples)
    nonzero: object
    spikes: object  # spikes carried: |x|/θ for an ST-BIF output, else the non-zero count
    shape: tuple[int, ...]
    abs_sum: object = None
    vmin: object = None
    vmax: object = None
    amax: object = None
    amin_nonzero: object = None
    integer: object = None


@dataclass
class Call:
    start: int  # first step
    n: int  # steps
    flops: float  # the ANN's multiply-accumulates of the whole call (all steps and samples)
    a: Operand
    b: Operand | None = None
    bias_outputs: int = 0  # output elements that get a bias added
    bias_call: int = 0  # syops-counter's bias count for this call
    pairs: object = None  # products: [n] coincident non-zero operand pairs
    uses: object = None  # convolutions: [n] exact weight uses
    compute: object = None  # analog-first layers: [B] steps computed
    ops_per_element: int = 1  # extras
    channels: int = 0


class Stats:
    """One counted module over a run."""

    def __init__(self, name: str, kind: str, module: nn.Module, analog: bool) -> None:
        self.name, self.kind, self.module, self.analog = name, kind, module, analog
        self.steps = 0
        self.calls: list[Call] = []
        self.previous: torch.Tensor | None = None  # analog: the last step's input [B, -1]


def spike_coded(x: torch.Tensor) -> bool:
    """All non-zero values of ``x`` have one magnitude (binary spikes, ST-BIF ``±θ``, iLIF ``θ/k^T``).
    One host synchronisation, for the first counted layer only."""
    nonzero = x[x != 0].abs()
    return bool(nonzero.numel() == 0 or nonzero.max() == nonzero.min())


def _weight_layer(module: nn.Module) -> nn.Module | None:
    """The ``nn.Linear`` / ``nn.ConvNd`` a module is, or wraps in ``.layer`` (None otherwise)."""
    if isinstance(module, WEIGHT_LAYERS):
        return module
    inner = getattr(module, "layer", None)
    return inner if isinstance(inner, WEIGHT_LAYERS) else None


def _exact_uses(conv: nn.Module, x: torch.Tensor, n: int) -> torch.Tensor:
    """``[n]`` weight uses of a convolution: each non-zero input times the outputs it reaches (borders included)."""
    dims = len(conv.kernel_size)
    x = x.reshape(-1, *x.shape[x.dim() - dims - 1:])  # a wrapper's [T, B, C, ...] folded to [T*B, C, ...]
    if conv.padding_mode != "zeros":
        x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        padding = 0
    else:
        padding = conv.padding
    return conv_uses(x, n, conv.weight.shape, conv.stride, padding, conv.dilation, conv.groups)


def conv_uses(x: torch.Tensor, n: int, weight_shape, stride, padding, dilation, groups: int) -> torch.Tensor:
    """``[n]`` weight uses of a zero-padded convolution with weights of ``weight_shape`` (``[C_out, C_in/groups,
    *kernel]``) on ``x`` (``[N, C_in, ...]``): each non-zero input times the outputs it reaches."""
    ones = torch.ones(groups, *weight_shape[1:], device=x.device)
    conv_fn = (F.conv1d, F.conv2d, F.conv3d)[len(weight_shape) - 3]
    reach = conv_fn(x.ne(0).float(), ones, None, stride, padding, dilation, groups)
    return reach.reshape(n, -1).sum(1, dtype=torch.float64) * (weight_shape[0] // groups)


class Run:
    """The forward hooks of one instrumented run.

    Time is read from the spiking modules: a stateful module in sequence mode gets ``[n, B, ...]`` (``n``
    steps: the whole run, or one chunk of it), one in step mode gets one step ``[B, ...]``. Each counted
    module keeps its own step cursor, so a run may call the network once, chunk by chunk or step by step.
    """

    def __init__(self, model: nn.Module, analog: str | Iterable[str], needs: Needs) -> None:
        if isinstance(analog, str) and analog not in ("first", "none"):
            raise ValueError(f"energy.report: analog must be 'first', 'none' or a list of module paths, "
                             f"got {analog!r}")
        self.analog_first = analog == "first" and needs.first
        self.analog = set() if isinstance(analog, str) else set(analog)
        unknown = self.analog - {name for name, _ in model.named_modules()}
        if unknown:
            raise ValueError(f"energy.report: analog lists {sorted(unknown)}, which are not module paths of "
                             f"{type(model).__name__}")
        self.needs = needs
        self.stats: dict[str, Stats] = {}
        self.n: int | None = None  # steps in the current call (sequence mode)
        self.batch: int | None = None
        self.calls: dict[nn.Module, int] = {}  # weight layer -> times it counted itself
        self.before: dict[nn.Module, int] = {}  # wrapper -> its layer's count when the wrapper started
        self.pending: list[Callable[[int], None]] = []  # counts waiting for the steps of their call
        self.running: list[int | None] = []  # steps of the spiking modules now executing (a stack)
        self.units: dict[int, tuple[weakref.ref, torch.Tensor]] = {}  # storage -> (ST-BIF output, θ)
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None  # the last ST-BIF output and its θ
        self.handles = []
        products = tuple(PRODUCTS)
        extras = {kind: EXTRA_TYPES[kind] for kind in ("batchnorm", "layernorm", "pooling", "neurons")
                  if kind in needs.extras or (kind == "batchnorm" and "batchnorm-eval" in needs.extras)}
        for name, m in model.named_modules():
            if isinstance(m, StatefulModule):
                self.handles.append(m.register_forward_pre_hook(self._enter))
            layer = _weight_layer(m)
            if layer is not None:
                if layer is not m:
                    self.handles.append(m.register_forward_pre_hook(self._wrapper_enter(layer)))
                self.handles.append(m.register_forward_hook(self._weight_hook(name, layer)))
            elif isinstance(m, products):
                self.handles.append(m.register_forward_hook(self._product_hook(name)))
            kind = next((k for k, types in extras.items() if isinstance(m, types)), None)
            if kind is not None:
                self.handles.append(m.register_forward_hook(self._extra_hook(name, kind)))
            if isinstance(m, STBIF):
                self.handles.append(m.register_forward_hook(self._stbif_output))
            if isinstance(m, StatefulModule):
                self.handles.append(m.register_forward_hook(self._leave))

    def close(self) -> None:
        self.last = None
        for h in self.handles:
            h.remove()

    def _enter(self, module: nn.Module, args) -> None:
        """A spiking module starts: its input says how many steps this call holds (and the batch size)."""
        x = args[0] if args else None
        n = None
        if isinstance(x, torch.Tensor) and x.dim() >= 2:
            sequence = getattr(module, "step_mode", "m") == "m"
            if self.batch is None:
                self.batch = x.shape[1] if sequence else x.shape[0]
            n = self.n = x.shape[0] if sequence else 1
            self.flush()
        self.running.append(n)

    def _leave(self, module: nn.Module, args, out) -> None:
        self.running.pop()

    def _stbif_output(self, module: nn.Module, args, out) -> None:
        """Remember an ST-BIF neuron's output storage and θ: a layer reading it counts ``|x|/θ`` spikes."""
        if isinstance(out, torch.Tensor):
            self.last = (out, module.threshold)  # held (a copy may outlive its source's last reference)
            self.units[out.untyped_storage().data_ptr()] = (weakref.ref(out), module.threshold)

    def _spikes(self, x: torch.Tensor, steps: int, nonzero: torch.Tensor) -> torch.Tensor:
        """``[steps]`` spikes in ``x``: ``Σ |x|/θ`` when ``x`` is an ST-BIF neuron's output or a view of it, or a
        copy of the last ST-BIF output to run (same size and absolute sum; a reshape after a transpose copies),
        else the non-zero count. No host synchronisation."""
        entry = self.units.get(x.untyped_storage().data_ptr())
        source = theta = None
        if entry is not None and entry[0]() is not None:
            theta = entry[1]
        elif self.last is not None and self.last[0].numel() == x.numel() and self.last[1].numel() == 1:
            source, theta = self.last
        else:
            return nonzero
        theta = theta.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
        if theta.numel() > 1 and torch.broadcast_shapes(x.shape, theta.shape) != x.shape:
            return nonzero
        spikes = (x.abs() / theta).reshape(steps, -1).sum(1, dtype=torch.float64)
        if source is None:
            return spikes
        same = torch.isclose(x.abs().sum(dtype=torch.float64), source.abs().sum(dtype=torch.float64), rtol=1e-6)
        return torch.where(same, spikes, nonzero.to(torch.float64))

    def flush(self) -> None:
        for count in self.pending:
            count(self.n)
        self.pending.clear()

    def _count_when_known(self, count: Callable[[int], None]) -> None:
        """Count now when the steps of this call are known: the module runs inside a spiking module (or is
        one), whose input showed them. Otherwise (a plain layer ahead of the first spiking module of a
        call) count at the next spiking module's call, or at :meth:`flush` after the run."""
        known = next((n for n in reversed(self.running) if n is not None), None)
        if known is not None:
            count(known)
        else:
            self.pending.append(count)

    def _wrapper_enter(self, layer: nn.Module):
        def hook(module: nn.Module, args) -> None:
            self.before[module] = self.calls.get(layer, 0)
        return hook

    def _stats(self, name: str, kind: str, module: nn.Module, x: torch.Tensor | None = None) -> Stats:
        """The module's statistics; a weight layer's first input ``x`` decides the analog-first rule."""
        s = self.stats.get(name)
        if s is None:
            analog = x is not None and (name in self.analog or (
                self.analog_first and not any(t.kind in ("linear", "conv", "product") for t in self.stats.values())
                and not spike_coded(x)))
            s = self.stats[name] = Stats(name, kind, module, analog)
        return s

    def _rows(self, s: Stats, x: torch.Tensor, n: int) -> torch.Tensor:
        """``x`` (``[n, B, ...]``, ``[n*B*k, ...]``, or ``[B*k, ...]`` once per sequence) as ``[steps, -1]``; an
        extra layer may also get ``[n, b, ...]``, the samples an event-driven operator computes (``b < B``)."""
        B = self.batch
        if x.shape[:2] == (n, B) or x.shape[0] % (n * B) == 0:
            return x.reshape(n, -1)
        if x.shape[0] % B == 0:
            return x.reshape(1, -1)
        if s.kind not in ("linear", "conv", "product") and x.shape[0] == n:
            return x.reshape(n, -1)
        raise RuntimeError(f"energy.report: cannot tell the time steps of {s.name!r}'s input {tuple(x.shape)} "
                           f"(steps {n}, batch {B}): expected [n, B, ...], [n*B*k, ...] or [B*k, ...]")

    def _operand(self, s: Stats, x: torch.Tensor, n: int, full: bool = True) -> Operand:
        """``x``'s statistics per step; without ``full`` (a neuron's input: one update per element) only the
        non-zero count."""
        rows = self._rows(s, x, n)
        nonzero = torch.count_nonzero(rows, dim=1)
        spikes = self._spikes(x, rows.shape[0], nonzero) if full else nonzero
        return self._describe(rows, nonzero, spikes, x.shape, full)

    def _describe(self, rows: torch.Tensor, nonzero: torch.Tensor, spikes: torch.Tensor, shape,
                  full: bool = True) -> Operand:
        """The :class:`Operand` of an input as ``[steps, -1]`` rows, with its non-zero and spike counts (and, when
        ``full``, the value statistics the conventions need)."""
        if not rows.is_floating_point():
            rows = rows.float()
        op = Operand(rows.shape[1], nonzero, spikes, tuple(shape))
        if full and self.needs.values:
            a = rows.abs()
            op.abs_sum = a.sum(1, dtype=torch.float64)
            op.vmin, op.vmax = torch.aminmax(rows, dim=1)
            op.amax = torch.maximum(op.vmax, -op.vmin)
            op.amin_nonzero = a.masked_fill_(a == 0, torch.inf).amin(1)
            op.integer = torch.count_nonzero(rows.frac(), dim=1) == 0
        return op

    def _weight_hook(self, name: str, layer: nn.Module):
        def hook(module: nn.Module, args, out) -> None:
            if module is not layer and self.calls.get(layer, 0) > self.before.pop(module, 0):
                return  # the wrapper called its layer, which counted itself
            self.calls[layer] = self.calls.get(layer, 0) + 1
            linear = isinstance(layer, nn.Linear)
            s = self._stats(name, "linear" if linear else "conv", layer, args[0])
            self._count_when_known(lambda n: self._count_weight(s, layer, args[0], out, n))
        return hook

    def _count_weight(self, s: Stats, layer: nn.Module, x: torch.Tensor, out: torch.Tensor, n: int) -> None:
        linear = isinstance(layer, nn.Linear)
        k = layer.in_features if linear else layer.in_channels // layer.groups * math.prod(layer.kernel_size)
        op = self._operand(s, x, n)
        steps = op.nonzero.shape[0]
        has_bias = layer.bias is not None
        call = Call(s.steps, steps, float(out.numel() * k), op, bias_outputs=out.numel() if has_bias else 0,
                    bias_call=(layer.out_features if linear else out.numel()) if has_bias else 0)
        if self.needs.uses and not linear:
            call.uses = _exact_uses(layer, x, steps)
        if s.analog:
            call.compute = self._compute_steps(s, x, steps)
        s.calls.append(call)
        s.steps += steps

    def _product_hook(self, name: str):
        def hook(module: nn.Module, args, out) -> None:
            s = self._stats(name, "product", module)
            self._count_when_known(lambda n: self._count_product(s, args[0], args[1], out, n))
        return hook

    def _count_product(self, s: Stats, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, n: int) -> None:
        oa, ob = self._operand(s, a, n), self._operand(s, b, n)
        steps = oa.nonzero.shape[0]
        dtype = a.dtype if a.is_floating_point() else torch.float32
        pairs = (a.ne(0).to(dtype) @ b.ne(0).to(dtype)).reshape(steps, -1).sum(1, dtype=torch.float64)
        s.calls.append(Call(s.steps, steps, float(out.numel() * a.shape[-1]), oa, ob, pairs=pairs))
        s.steps += steps

    def _extra_hook(self, name: str, kind: str):
        def hook(module: nn.Module, args, out) -> None:
            s = self._stats(name, kind, module)
            self._count_when_known(lambda n: self._count_extra(s, module, args[0], n))
        return hook

    def _count_extra(self, s: Stats, module: nn.Module, x: torch.Tensor, n: int) -> None:
        if x.numel() == 0:  # an event-driven operator with no sample to compute
            s.steps += n
            return
        op = self._operand(s, x, n, full=s.kind != "neurons")
        steps = op.nonzero.shape[0]
        affine = getattr(module, "affine", getattr(module, "elementwise_affine", False))
        channels = x.shape[1] if x.dim() > 1 else 1
        s.calls.append(Call(s.steps, steps, 0.0, op, ops_per_element=2 if affine else 1, channels=channels))
        s.steps += steps

    def _compute_steps(self, s: Stats, x: torch.Tensor, n: int) -> torch.Tensor:
        """``[B]`` steps in which an analog input is non-zero and differs from the previous step's."""
        seq = x.reshape(n, self.batch, -1)
        changed = seq.ne(0).any(2)
        changed[1:] &= seq[1:].ne(seq[:-1]).any(2)
        if s.previous is not None and s.previous.shape == seq[0].shape:
            changed[0] &= seq[0].ne(s.previous).any(1)
        s.previous = seq[-1]
        return changed.sum(0).to(torch.float64)

    def finish(self) -> None:
        """Bring every count to the host at once (one transfer per tensor, after the run)."""
        for s in self.stats.values():
            s.previous = None
            for call in s.calls:
                for op in (call.a, call.b):
                    if op is None:
                        continue
                    for key in ("nonzero", "spikes", "abs_sum", "vmin", "vmax", "amax", "amin_nonzero", "integer"):
                        value = getattr(op, key)
                        if isinstance(value, torch.Tensor):
                            setattr(op, key, value.tolist())
                for key in ("pairs", "uses"):
                    value = getattr(call, key)
                    if isinstance(value, torch.Tensor):
                        setattr(call, key, value.tolist())
                if isinstance(call.compute, torch.Tensor):
                    call.compute = float(call.compute.sum())
