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

    nir_refusal = "activation x activation product: NIR has no product of two signals"

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


def running_sum_into(x_seq: torch.Tensor, total: torch.Tensor | None) -> torch.Tensor:
    """:func:`running_sum` from ``total`` that adds a single step into ``total`` itself (the caller's own state,
    which it replaces by the result anyway): the same addition, without writing a new tensor. Without autograd
    only (in-place writes would break a recorded graph)."""
    if total is not None and x_seq.shape[0] == 1 and total.shape == x_seq.shape[1:] and not torch.is_grad_enabled():
        return total.add_(x_seq[0]).unsqueeze(0)
    return running_sum(x_seq, total)


def difference(y_seq: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """A new tensor ``d_t = y_t - y_{t-1}`` along dim 0, with ``y_0 = previous`` (``None``: ``d_1 = y_1``).

    One subtraction over all steps; ``y_seq`` is left intact, so a caller may keep ``y_seq[-1]`` as state
    without copying it.
    """
    if y_seq.requires_grad:  # autograd cannot record writes into ``out=``; same values, one more copy
        first = y_seq[:1] if previous is None else y_seq[:1] - previous
        return torch.cat([first, y_seq[1:] - y_seq[:-1]])
    out = torch.empty_like(y_seq)
    torch.sub(y_seq[1:], y_seq[:-1], out=out[1:])
    if previous is None:
        out[0] = y_seq[0]
    else:
        torch.sub(y_seq[0], previous, out=out[0])
    return out


def difference_into(y_seq: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """:func:`difference` that writes a single step into ``previous`` itself (the caller's own state, which it
    replaces by ``y_seq[-1]`` and never reads again): the same subtraction, into memory already in use (a new
    tensor costs several times more to write, measured). Without autograd only."""
    if previous is not None and y_seq.shape[0] == 1 and previous.shape == y_seq.shape[1:] \
            and not torch.is_grad_enabled():
        return torch.sub(y_seq[0], previous, out=previous).unsqueeze(0)
    return difference(y_seq, previous)


SPARSE_MAX_FRACTION = 0.5
"""Event-driven sequence path: while at most this fraction of the samples of a call has work (input, or a
neuron still walking to its target), an operator computes those samples only and outputs zeros for the rest."""


def changed_samples(x_seq: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: the samples of ``x_seq`` (``[T, B, ...]``) with a nonzero entry at some step (two reductions
    over all but the batch dimension: fast on any layout)."""
    if x_seq.dim() == 2:
        return (x_seq != 0).any(0)
    dims = (0, *range(2, x_seq.dim()))
    return (x_seq.amax(dims) != 0) | (x_seq.amin(dims) != 0)


def event_driven(x: torch.Tensor) -> bool:
    """Whether the event-driven path may run on ``x``: on the CPU without autograd. Counting the samples with
    work reads the count on the host: on a CPU that is free, on CUDA it would stall the device at every
    operator, so there the operators run dense and skip even the reductions that find those samples. With
    autograd on the event-driven path cannot run either (it updates state in place)."""
    return x.device.type == "cpu" and not torch.is_grad_enabled()


def sparse_index(active: torch.Tensor) -> torch.Tensor | None:
    """The indices of the ``active`` samples (``[B]`` bool) when computing only those pays, else ``None`` (dense;
    always where :func:`event_driven` says no)."""
    if not event_driven(active) or int(active.sum()) > SPARSE_MAX_FRACTION * active.numel():
        return None
    return active.nonzero().squeeze(1)


def scatter_samples(index: torch.Tensor, values: torch.Tensor, batch: int) -> torch.Tensor:
    """``[T, batch, ...]`` zeros with ``values`` (``[T, len(index), ...]``) at the samples ``index``."""
    out = values.new_zeros((values.shape[0], batch, *values.shape[2:]))
    return out.index_copy_(1, index, values)


def _linear_rows(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``rows @ weight.T`` (``rows`` ``[M, in]``), each row rounded alike whatever ``M``: BLAS may compute the last
    rows of a matrix whose height is below 4 or not a multiple of 4 by a kernel that rounds differently, so such
    a matrix gets zero rows up to a multiple of 8 (the step path, the sequence path and the event-driven path
    then agree bit for bit whatever number of samples and steps each call holds)."""
    n = len(rows)
    pad = (-n % 8 or 8) if n % 4 or n == 0 else 0
    if not pad:
        return F.linear(rows, weight)
    return F.linear(torch.cat([rows, rows.new_zeros((pad, rows.shape[1]))]), weight)[:n]


class BiasOnce(StatefulModule):
    """A ``nn.Linear`` or ``nn.Conv1d/2d/3d`` whose weight acts on every step and whose bias enters once.

    Summed over steps the output is ``W (Σ x_t) + b``: the layer applied to the summed input. Input
    ``[B, ...]`` (step) or ``[T, B, ...]`` (sequence); convolutions fold ``T`` into the batch.
    """

    nir_refusal = "bias added at the first step only: NIR's Affine / Conv add their bias at every step"

    state_names = ("started",)

    def __init__(self, layer: nn.Module, step_mode: str = "m", sparse: bool = True) -> None:
        super().__init__(step_mode)
        if not isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            raise TypeError(f"BiasOnce wraps nn.Linear or nn.ConvNd, got {type(layer).__name__}")
        self.layer = layer
        self.sparse = sparse

    def _weight_only(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if isinstance(layer, nn.Linear):
            return _linear_rows(x.reshape(-1, x.shape[-1]), layer.weight).view(*x.shape[:-1], layer.out_features)
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

    def _weight_only_changed(self, x_seq: torch.Tensor) -> torch.Tensor:
        """:meth:`_weight_only` computed for the samples with a nonzero input only (the others output zeros)."""
        index = sparse_index(changed_samples(x_seq))
        if index is None:
            return self._weight_only(x_seq)
        picked = x_seq.index_select(1, index)
        if not isinstance(self.layer, nn.Linear):
            if len(index):
                return scatter_samples(index, self._weight_only(picked), x_seq.shape[1])
            probe = self._weight_only(x_seq[:1, :1])  # the output's shape, from one sample
            return probe.new_zeros((*x_seq.shape[:2], *probe.shape[2:]))
        y = _linear_rows(picked.reshape(-1, x_seq.shape[-1]), self.layer.weight)
        return scatter_samples(index, y.view(*picked.shape[:-1], self.layer.out_features), x_seq.shape[1])

    def multi_step(self, x_seq: torch.Tensor) -> torch.Tensor:
        sparse = self.sparse and self.started and event_driven(x_seq)
        y = self._weight_only_changed(x_seq) if sparse else self._weight_only(x_seq)
        if self.layer.bias is not None and self.started is None:
            y[0] = self._bias(y[0])
        self.started = True
        return y


class OffsetOnce(StatefulModule):
    """``fn(x, *offsets)`` where the ``offsets`` (tensors that add to the signal, such as a class token and
    a position embedding) are used at the first step and replaced by zeros at every later step."""

    nir_refusal = "offsets (class token, position embedding) added at the first step only: NIR has no such node"

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
    batched matmul over all steps, and a difference. Event-driven (``sparse=True``): a product whose two
    operands got no input during a call outputs zeros, so only the others are computed.
    """

    nir_refusal = MatMul.nir_refusal

    state_names = ("a_sum", "b_sum", "product")

    def __init__(self, step_mode: str = "m", sparse: bool = True) -> None:
        super().__init__(step_mode)
        self.sparse = sparse
        self.own_state = False  # state written by the sequence path only: safe to update in place

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.step_mode == "s":
            self.a_sum = a if self.a_sum is None else self.a_sum + a
            self.b_sum = b if self.b_sum is None else self.b_sum + b
            product = self.a_sum @ self.b_sum
            out = product if self.product is None else product - self.product
            self.product = product
            self.own_state = False
            return out
        if self.sparse and self.own_state and self.product is not None and event_driven(a):
            index = sparse_index(changed_samples(a) | changed_samples(b))
            if index is not None:
                return self._changed_products(a, b, index)
        summed, differenced = (running_sum_into, difference_into) if self.own_state else (running_sum, difference)
        a_seq, b_seq = summed(a, self.a_sum), summed(b, self.b_sum)
        products = a_seq @ b_seq
        out = differenced(products, self.product)
        self.a_sum, self.b_sum, self.product = a_seq[-1], b_seq[-1], products[-1]
        self.own_state = True
        return out

    def _changed_products(self, a: torch.Tensor, b: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The sequence path for the samples ``index`` only; the others output zeros and keep their state."""
        a_seq = running_sum(a.index_select(1, index), self.a_sum.index_select(0, index))
        b_seq = running_sum(b.index_select(1, index), self.b_sum.index_select(0, index))
        products = a_seq @ b_seq
        out = difference(products, self.product.index_select(0, index))
        self.a_sum.index_copy_(0, index, a_seq[-1])
        self.b_sum.index_copy_(0, index, b_seq[-1])
        self.product.index_copy_(0, index, products[-1])
        return scatter_samples(index, out, a.shape[1])


class Accumulate(StatefulModule):
    """Accumulate, apply, difference: any function ``fn`` as a spiking operator.

    ``X_t = X_{t-1} + x_t`` and ``out_t = fn(X_t, *args) - fn(X_{t-1}, *args)`` with ``fn(X_0)`` taken as 0
    (``fn(0)`` is not 0 for softmax or a LayerNorm with bias), so the outputs sum to ``fn(X_T, *args)``.
    Extra arguments (an attention mask, say) are passed to ``fn`` unchanged at every step and are never
    accumulated, so a masked position stays masked. ``fn`` must accept extra leading dimensions (the
    sequence path calls it once on ``[T, B, ...]``): softmax over a negative ``dim``, LayerNorm and
    elementwise functions do; extra arguments must broadcast against ``[T, B, ...]`` (e.g. ``[B, 1, 1, N]``).
    """

    nir_refusal = "accumulate-apply-difference of a non-linear function (softmax, LayerNorm, ...): NIR has none"

    state_names = ("total", "last")

    def __init__(self, fn: nn.Module, step_mode: str = "m", sparse: bool = True) -> None:
        super().__init__(step_mode)
        self.fn = fn
        self.sparse = sparse
        self.own_state = False  # state written by the sequence path only: safe to update in place

    def forward(self, x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        if self.step_mode == "s":
            self.total = x if self.total is None else self.total + x
            y = self.fn(self.total, *args)
            out = y if self.last is None else y - self.last
            self.last = y
            self.own_state = False
            return out
        if self.sparse and self.own_state and self.last is not None and event_driven(x):
            index = sparse_index(changed_samples(x))
            if index is not None:
                return self._changed_samples(x, args, index)
        summed, differenced = (running_sum_into, difference_into) if self.own_state else (running_sum, difference)
        totals = summed(x, self.total)
        y = self.fn(totals, *args)
        out = differenced(y, self.last)
        self.total, self.last = totals[-1], y[-1]
        self.own_state = True
        return out

    def _changed_samples(self, x: torch.Tensor, args: tuple[torch.Tensor, ...], index: torch.Tensor) -> torch.Tensor:
        """The sequence path for the samples ``index`` only: a sample whose accumulated input did not change
        outputs ``fn(X_t) - fn(X_{t-1}) = 0`` and keeps its state. An argument with a batch dimension (as many
        dimensions as a step's input or more, e.g. a mask ``[B, 1, 1, N]``) is cut to the same samples."""
        step_dims = x.dim() - 1
        picked_args = [v.index_select(v.dim() - step_dims, index) if v.dim() >= step_dims and
                       v.shape[v.dim() - step_dims] != 1 else v for v in args]
        totals = running_sum(x.index_select(1, index), self.total.index_select(0, index))
        y = self.fn(totals, *picked_args)
        out = difference(y, self.last.index_select(0, index))
        self.total.index_copy_(0, index, totals[-1])
        self.last.index_copy_(0, index, y[-1])
        return scatter_samples(index, out, x.shape[1])
