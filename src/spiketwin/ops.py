"""Operators shared by the models, and the helpers of the event-driven sequence path.

``MatMul`` is an activation x activation product as a module (``a @ b``), so that conversions can find it and
energy reports can count it by both operands' firing rates. The SNN side of SpikeZIP-TF (SPEC A: bias once,
constants once, SESA, accumulate-apply-difference) is the conversion engine's :mod:`spiketwin.convert.events`.

:func:`running_sum` (step by step, so the sequence path rounds as the step path does) and the sample-compaction
helpers (:func:`changed_samples`, :func:`sparse_index`, :func:`scatter_samples`) serve the ST-BIF neurons'
sequence path: index-select the samples with work, the same sequence code, index-copy.
"""

from __future__ import annotations

import torch
from torch import nn



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
