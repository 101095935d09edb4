"""The spiking operators of the iLIF schedule (periods of ``T`` steps, most significant step first):
thresholds, per-period bias and constants, delays, spike-train max pooling, signed neurons, period operators,
and :class:`Clocked`, which runs a sequence module inside a time-folded graph (``[T' B, ...]``, step-major)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from ...base import StatefulModule
from ...neurons import ILIF
from ..events import linear_part

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


class PerPeriod(nn.Module):
    """An affine graph op whose constant part (a bias, an added or concatenated constant such as the class token
    or the position embedding) enters once per period, at its last step: there ``fn`` gets all its arguments, at
    the other steps the arguments at the positions in ``later`` are replaced (``None`` or zeros, from
    :func:`spiketwin.convert.events.linear_part`), leaving the op's linear part. Time-folded arguments and
    output (``[T' B, ...]``, step-major); ``clock`` says which steps the rows hold."""

    def __init__(self, fn: Callable, kwargs: dict, later: dict[int, object], clock: Clock) -> None:
        super().__init__()
        self.fn, self.kwargs, self.later, self.clock = fn, kwargs, later, clock

    def forward(self, *args):
        full = self.fn(*args, **self.kwargs)
        linear = self.fn(*linear_part(args, self.later), **self.kwargs)
        return torch.where(self.clock.last_phase_rows(full) > 0, full, linear)


class Clocked(nn.Module):
    """Runs a sequence module (``[T', B, ...]`` inputs) inside a graph whose tensors fold time into the batch
    (``[T' B, ...]``); ``clock.steps`` is ``T'`` for the current call. ``scale`` multiplies the output."""

    def __init__(self, module: nn.Module, clock: Clock, scale: float = 1.0) -> None:
        super().__init__()
        self.module, self.clock, self.scale = module, clock, scale

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        y = self.module(*(x.unflatten(0, (self.clock.steps, -1)) for x in xs)).flatten(0, 1)
        return y if self.scale == 1.0 else y * self.scale


@dataclass
class Clock:
    """What the current call of a time-folded graph holds: ``steps`` time steps from global step ``start``, in
    periods of ``phase_steps``."""

    phase_steps: int
    steps: int = 1
    start: int = 0

    def last_phase_rows(self, like: torch.Tensor) -> torch.Tensor:
        """``[rows, 1, ..., 1]`` for ``like`` ``[T' B..., ...]``: 1 on the rows of steps that end a period."""
        phase = last_phase(self.start, self.steps, self.phase_steps, like[:1])
        return phase.repeat_interleave(like.shape[0] // self.steps, 0)

