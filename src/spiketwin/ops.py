"""Operators shared by the models and the conversions, and their spiking twins.

``MatMul`` is an activation x activation product as a module (``a @ b``), so that conversions can swap
it (SpikeZIP-TF's SESA) and energy reports can count it by both operands' firing rates.

The spiking operators below are the SNN side of SpikeZIP-TF (SPEC A). Each is a
:class:`~spiketwin.base.StatefulModule` whose outputs, summed over time steps, equal the output of the
ANN operator it replaces applied to the summed inputs:

- :class:`BiasOnce` (Linear / Conv): the weight acts on every step, the bias is added at the first step only.
- :class:`OffsetOnce`: a module taking additive offsets (class token, position embedding) sees them at
  the first step only, zeros afterwards.
- :class:`SESA`: ``a @ b`` of two spike trains from running sums, ``A_t B_t - A_{t-1} B_{t-1}``.
- :class:`Accumulate`: any function ``f`` (softmax, LayerNorm, ...) as accumulate, apply, difference:
  ``X_t = X_{t-1} + x_t``, ``out_t = f(X_t) - f(X_{t-1})`` with ``f(X_0)`` taken as 0.

Every one runs one step (``step_mode="s"``, ``[B, ...]``) or a sequence (``"m"``, ``[T, B, ...]``) with
bit-identical results; the sequence path applies the stateless work to all ``T`` steps at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import StatefulModule


class MatMul(nn.Module):
    """``a @ b`` (batched over leading dimensions) as a module."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


def running_sum(x_seq: torch.Tensor, initial: torch.Tensor | None = None) -> torch.Tensor:
    """``[T, ...]`` running sums ``initial + x_1 + ... + x_t``, added one step at a time.

    Step by step on purpose: ``torch.cumsum`` accumulates float32 in double on the CPU, which would make
    the sequence path differ from the step path in the last bit.
    """
    out = torch.empty_like(x_seq)
    if initial is None:
        out[0] = x_seq[0]
    else:
        torch.add(initial, x_seq[0], out=out[0])
    for t in range(1, x_seq.shape[0]):
        torch.add(out[t - 1], x_seq[t], out=out[t])
    return out


def difference_(y_seq: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """In place: ``y_t <- y_t - y_{t-1}`` along dim 0 with ``y_0 = previous`` (``None``: ``y_1`` stays).
    Returns ``y_seq``, whose last step must be saved by the caller beforehand if it is still needed."""
    for t in range(y_seq.shape[0] - 1, 0, -1):
        y_seq[t].sub_(y_seq[t - 1])
    if previous is not None:
        y_seq[0].sub_(previous)
    return y_seq


class BiasOnce(StatefulModule):
    """A ``nn.Linear`` or ``nn.Conv1d/2d/3d`` whose weight acts on every step and whose bias enters once.

    Summed over steps the output is ``W (Σ x_t) + b``: the layer applied to the summed input. Input
    ``[B, ...]`` (step) or ``[T, B, ...]`` (sequence); convolutions fold ``T`` into the batch.
    """

    state_names = ("started",)

    def __init__(self, layer: nn.Module, step_mode: str = "m") -> None:
        super().__init__(step_mode)
        if not isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            raise TypeError(f"BiasOnce wraps nn.Linear or nn.ConvNd, got {type(layer).__name__}")
        self.layer = layer

    def _weight_only(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if isinstance(layer, nn.Linear):
            return F.linear(x, layer.weight)
        spatial = layer.weight.dim() - 2  # a ConvNd input is [batch, C, *spatial]
        folded = x.flatten(0, x.dim() - spatial - 2)
        return layer._conv_forward(folded, layer.weight, None).unflatten(0, x.shape[:x.dim() - spatial - 1])

    def _bias(self, y: torch.Tensor) -> torch.Tensor:
        bias = self.layer.bias
        if isinstance(self.layer, nn.Linear):
            return y + bias
        return y + bias.view(-1, *([1] * (self.layer.weight.dim() - 2)))

    def single_step(self, x: torch.Tensor) -> torch.Tensor:
        y = self._weight_only(x)
        if self.layer.bias is not None and self.started is None:
            y = self._bias(y)
        self.started = True
        return y

    def multi_step(self, x_seq: torch.Tensor) -> torch.Tensor:
        y = self._weight_only(x_seq)
        if self.layer.bias is not None and self.started is None:
            y[0] = self._bias(y[0])
        self.started = True
        return y


class OffsetOnce(StatefulModule):
    """``fn(x, *offsets)`` where the ``offsets`` (tensors that add to the signal, such as a class token and
    a position embedding) are used at the first step and replaced by zeros at every later step."""

    state_names = ("started",)

    def __init__(self, fn: nn.Module, step_mode: str = "m") -> None:
        super().__init__(step_mode)
        self.fn = fn

    def forward(self, x: torch.Tensor, *offsets: torch.Tensor) -> torch.Tensor:
        zeros = [torch.zeros_like(o) for o in offsets]
        if self.step_mode == "s":
            y = self.fn(x, *(zeros if self.started else offsets))
        elif self.started:
            y = self.fn(x, *zeros)
        else:
            first = self.fn(x[:1], *offsets)
            y = first if x.shape[0] == 1 else torch.cat([first, self.fn(x[1:], *zeros)])
        self.started = True
        return y


class SESA(StatefulModule):
    """Spiking product of two spike trains (SpikeZIP-TF's spike-equivalent self-attention operator).

    With running sums ``A_t = Σ_{τ≤t} a_τ`` and ``B_t`` likewise, step ``t`` outputs
    ``A_t @ B_t - A_{t-1} @ B_{t-1}``, so the outputs sum to ``A_T @ B_T``. Inputs ``[B, ..., n, k]`` and
    ``[B, ..., k, m]`` (step) or with a leading ``T`` (sequence); the sequence path is running sums, one
    batched matmul over all steps, and a difference.
    """

    state_names = ("a_sum", "b_sum", "product")

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.step_mode == "s":
            self.a_sum = a if self.a_sum is None else self.a_sum + a
            self.b_sum = b if self.b_sum is None else self.b_sum + b
            product = self.a_sum @ self.b_sum
            out = product if self.product is None else product - self.product
            self.product = product
            return out
        a_seq, b_seq = running_sum(a, self.a_sum), running_sum(b, self.b_sum)
        products = a_seq @ b_seq
        last = products[-1].clone()
        out = difference_(products, self.product)
        self.a_sum, self.b_sum, self.product = a_seq[-1], b_seq[-1], last
        return out


class Accumulate(StatefulModule):
    """Accumulate, apply, difference: any function ``fn`` as a spiking operator.

    ``X_t = X_{t-1} + x_t`` and ``out_t = fn(X_t, *args) - fn(X_{t-1}, *args)`` with ``fn(X_0)`` taken as 0
    (``fn(0)`` is not 0 for softmax or a LayerNorm with bias), so the outputs sum to ``fn(X_T, *args)``.
    Extra arguments (an attention mask, say) are passed to ``fn`` unchanged at every step and are never
    accumulated, so a masked position stays masked. ``fn`` must accept extra leading dimensions (the
    sequence path calls it once on ``[T, B, ...]``): softmax over a negative ``dim``, LayerNorm and
    elementwise functions do; extra arguments must broadcast against ``[T, B, ...]`` (e.g. ``[B, 1, 1, N]``).
    """

    state_names = ("total", "last")

    def __init__(self, fn: nn.Module, step_mode: str = "m") -> None:
        super().__init__(step_mode)
        self.fn = fn

    def forward(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        if self.step_mode == "s":
            self.total = x if self.total is None else self.total + x
            y = self.fn(self.total, *args)
            out = y if self.last is None else y - self.last
            self.last = y
            return out
        totals = running_sum(x, self.total)
        y = self.fn(totals, *args)
        last = y[-1].clone()
        out = difference_(y, self.last)
        self.total, self.last = totals[-1], last
        return out
