"""The ST-BIF neuron's step as pure functions of its state, shared by :class:`~spiketwin.neurons.STBIF`, the
fused operator's torch fallback (:mod:`spiketwin.kernels.stbif`) and any neuron that moves a spike count toward
a quantizer's level: :func:`stbif_target` (where the count heads), :func:`stbif_move` (one step, at most ``m``
spikes), :func:`stbif_scan` (a whole sequence call)."""

from __future__ import annotations

import torch

from ..ops import running_sum_into


def stbif_target(total: torch.Tensor, theta: torch.Tensor | float, n_min: int, n_max: int) -> torch.Tensor:
    """The count an ST-BIF neuron heads for: ``clamp(floor(total/θ + 1/2), n_min, n_max)`` (a new tensor),
    the quantizer's level of the summed input ``total``."""
    return torch.div(total, theta).add_(0.5).floor_().clamp_(n_min, n_max)


def stbif_move(count: torch.Tensor, target: torch.Tensor, m: int = 1,
               out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of an ST-BIF neuron with at most ``m`` spikes per step, as a pure function of its count.

    Returns ``(k, far)``: ``k = clamp(target - count, -m, m)`` (the neuron emits ``k·θ`` and its count becomes
    ``count + k``), into ``out`` when given (it may be ``target``); ``far`` (``[B]`` bool, ``count`` is
    ``[B, ...]``) marks the samples in which some neuron is still short of its target after the move (it was
    more than ``m`` spikes away): with no further input such a neuron fires again at the next step.
    """
    delta = torch.sub(target, count, out=out)
    if delta.dim() == 1:
        far = delta.abs() > m
    else:
        flat = delta.flatten(1)  # amax / amin: the fastest reductions here
        far = flat.amax(1).gt(m) | flat.amin(1).lt(-m)
    return delta.clamp_(-m, m), far


def stbif_scan(x_seq: torch.Tensor, total: torch.Tensor | None, count: torch.Tensor | None, theta: torch.Tensor,
               n_min: int, n_max: int, m: int = 1):
    """The neuron's sequence rule by torch operations, from state ``(total, count)`` (``None``: zeros; both are
    updated in place where that saves a copy, so pass the neuron's own): returns the spikes ``[T, B, ...]``,
    the new ``total`` and ``count``, and the far flags ``[B, T]`` (see :func:`stbif_move`). The running totals
    and their targets are computed for all steps first; only the walk of the count is scanned."""
    totals = running_sum_into(x_seq, total)
    steps = stbif_target(totals, theta, n_min, n_max)
    count = torch.zeros_like(x_seq[0]) if count is None else count
    far = []
    for t in range(x_seq.shape[0]):  # the target at t becomes the move at t, in place
        move, far_t = stbif_move(count, steps[t], m, out=steps[t])
        far.append(far_t)
        count.add_(move)
    return steps.mul_(theta), totals[-1], count, torch.stack(far, 1)


def stbif_exact(x: torch.Tensor, count: torch.Tensor, theta: torch.Tensor, n_min: int, n_max: int, m: int = 1):
    """One step of the exact-state neuron (:class:`~spiketwin.neurons.ExactSTBIF`) on batch-first ``x`` (the
    accumulated input) by torch operations: the count (updated in place; an integer or ``x``'s dtype) moves toward
    ``x``'s quantizer level; returns ``(count * θ, change, far)``, the change in ``count``'s dtype."""
    change, far = stbif_move(count, stbif_target(x, theta, n_min, n_max), m)
    change = torch.empty_like(count).copy_(change)  # the count's dtype and layout, as the fused kernels give it
    count.add_(change)
    return count * theta, change, far
