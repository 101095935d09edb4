"""The ST-BIF neuron of SpikeZIP-TF: bipolar, bounded, the exact twin of a quantizer."""

from __future__ import annotations

import torch

from ..base import StatefulModule
from ..kernels.stbif import fused, stbif_steps
from ..kernels.stbif_rule import stbif_scan
from ..ops import changed_samples, event_driven, scatter_samples, sparse_index
from .common import as_threshold


class STBIF(StatefulModule):
    """Spike-threshold bipolar integrate-and-fire neuron (SpikeZIP-TF), threshold ``θ``.

    With ``V`` starting at ``θ/2`` and spike tracer ``S`` at 0, each step ``V += x``; then it emits ``+θ``
    (``V -= θ``, ``S += 1``) if ``V >= θ`` and ``S < n_max``, ``-θ`` (``V += θ``, ``S -= 1``) if ``V < 0`` and
    ``S > n_min``, else 0. Once the summed input ``X`` stops changing, ``S`` walks one step at a time to
    ``clamp(floor(X/θ + 1/2), n_min, n_max)``, so the summed output equals ``Quantizer(X)``.

    Multi-spike (``spikes_per_step=m``): each step the neuron emits ``k`` spikes of ``±θ`` at once (a graded
    spike ``k·θ``), ``k = clamp(target - S, -m, m)`` with ``target = clamp(floor(X/θ + 1/2), n_min, n_max)``
    (:func:`stbif_target`, :func:`stbif_move`): ``S`` walks up to ``m`` levels per step and never leaves
    ``[n_min, n_max]``; ``m = 1`` is the neuron above, bit for bit; with ``m >= n_max - n_min`` an analog input
    is answered in one step.

    The state is kept as the summed input ``.total`` and the spike count ``.count`` (``V = θ/2 + total - θ·count``,
    readable as ``.v``): the same rule, written so that the comparison is the quantizer's own expression.
    ``.spikes`` is the last step's output; ``.fired`` the ``[B]`` mask of samples in which any neuron spiked then.
    ``.pending`` (``[B, T]`` bool, for the T steps of the last call; not state) marks the samples in which,
    after that step, some neuron's count still differs from its target (it was more than ``m`` spikes away): with
    no further input such a neuron fires at the next step; a sample with no pending neuron has settled.

    Event-driven sequence path (``sparse=True``, CPU): a sample with no input during a call and no pending
    neuron before it emits zeros and keeps its state, so only the other samples are computed, with the same
    arithmetic (see :data:`~spiketwin.ops.SPARSE_MAX_FRACTION`).
    """

    nir_refusal = "ST-BIF neuron: bipolar spikes bounded by a spike count [n_min, n_max] have no NIR neuron"

    state_names = ("total", "count", "spikes")

    def __init__(self, threshold: float | torch.Tensor, n_min: int, n_max: int, step_mode: str = "m",
                 sparse: bool = True, spikes_per_step: int = 1) -> None:
        super().__init__(step_mode)
        if not n_min <= 0 < n_max:
            raise ValueError(f"STBIF: need n_min <= 0 < n_max, got n_min={n_min}, n_max={n_max}")
        if isinstance(spikes_per_step, bool) or not isinstance(spikes_per_step, int) or spikes_per_step < 1:
            raise ValueError(f"STBIF: spikes_per_step must be an integer >= 1 (1: SpikeZIP-TF's neuron; n_max - "
                             f"n_min or more: any level in one step), got {spikes_per_step!r}")
        self.n_min, self.n_max = int(n_min), int(n_max)
        self.spikes_per_step = spikes_per_step
        self.sparse = sparse
        self.register_buffer("threshold", as_threshold(threshold))
        self.pending: torch.Tensor | None = None

    def reset(self) -> None:
        super().reset()
        self.pending = None

    def keep(self, index: torch.Tensor, batch: int | None = None) -> None:
        super().keep(index, batch)
        if self.pending is not None:
            self.pending = self.pending.index_select(0, index)

    @classmethod
    def from_quantizer(cls, quantizer, step_mode: str = "m", spikes_per_step: int = 1) -> STBIF:
        """The neuron whose summed output equals ``quantizer`` applied to the summed input."""
        if not bool(quantizer.initialized):
            raise ValueError("STBIF.from_quantizer: the quantizer's step was never initialised (run a batch first)")
        return cls(quantizer.step.detach(), quantizer.n_min, quantizer.n_max, step_mode,
                   spikes_per_step=spikes_per_step)

    @property
    def v(self) -> torch.Tensor | None:
        if self.total is None:
            return None
        return self.threshold / 2 + self.total - self.threshold * self.count

    @property
    def value(self) -> torch.Tensor | None:
        """``count * θ``: the neuron's output so far, summed over the steps (the quantizer's value once settled)."""
        return None if self.count is None else self.count * self.threshold.to(self.count.dtype)

    @property
    def fired(self) -> torch.Tensor | None:
        """``[B]`` bool: the samples in which any neuron spiked at the last step (``None`` before any input)."""
        if self.spikes is None:
            return None
        return self.spikes.flatten(1).ne(0).any(1) if self.spikes.dim() > 1 else self.spikes.ne(0)

    def single_step(self, x: torch.Tensor) -> torch.Tensor:
        """One step: the sequence path with ``T = 1``."""
        return self.multi_step(x.unsqueeze(0))[0]

    def multi_step(self, x_seq: torch.Tensor) -> torch.Tensor:
        """The step rule over ``[T, B, ...]`` (the one implementation: a step is a sequence of one): the
        running totals and their rounded targets are computed for all steps first; only the walk of the count
        towards its target (at most ``m`` levels per step) is scanned. Samples that can only output zeros are
        skipped."""
        if self.threshold.numel() == 1:
            dense = x_seq.contiguous()  # the kernels' layout; a copy only of a strided view, only for a kernel
            if fused(dense, *([] if self.total is None else [self.total, self.count])):
                return self._fused_steps(dense)
        if self.sparse and self.pending is not None and event_driven(x_seq):
            index = sparse_index(changed_samples(x_seq) | self.pending[:, -1])
            if index is not None:
                return self._sample_steps(x_seq, index)
        spikes, self.total, self.count, self.pending = self._steps(x_seq, self.total, self.count)
        self.spikes = spikes[-1]
        return spikes

    def _fused_steps(self, x_seq: torch.Tensor) -> torch.Tensor:
        """:meth:`multi_step` by the fused operator ``spiketwin::stbif_steps`` (:mod:`spiketwin.kernels.stbif`:
        the native kernel on the CPU, Triton on CUDA): one pass, the same arithmetic; with ``sparse``, every
        sample without input or pending neuron is skipped."""
        if self.total is None:
            self.total, self.count = torch.zeros_like(x_seq[0]), torch.zeros_like(x_seq[0])
        skip = self.sparse and self.pending is not None
        spikes, self.pending = stbif_steps(x_seq, self.total, self.count, self.pending[:, -1] if skip else None,
                                           self.threshold, self.n_min, self.n_max, self.spikes_per_step)
        self.spikes = spikes[-1]
        return spikes

    def _steps(self, x_seq: torch.Tensor, total: torch.Tensor | None, count: torch.Tensor | None):
        """The scan from state ``(total, count)``: spikes ``[T, B, ...]``, the new state and ``pending``."""
        return stbif_scan(x_seq, total, count, self.threshold.to(x_seq.dtype), self.n_min, self.n_max,
                          self.spikes_per_step)

    def _sample_steps(self, x_seq: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """:meth:`multi_step` for the samples ``index`` only; the others output zeros and keep their state."""
        spikes, total, count, pending = self._steps(x_seq.index_select(1, index), self.total.index_select(0, index),
                                                    self.count.index_select(0, index))
        self.total.index_copy_(0, index, total)  # the state tensors are this neuron's own
        self.count.index_copy_(0, index, count)
        self.pending = pending.new_zeros((x_seq.shape[1], x_seq.shape[0])).index_copy_(0, index, pending)
        out = scatter_samples(index, spikes, x_seq.shape[1])
        self.spikes = out[-1]
        return out

    def extra_repr(self) -> str:
        theta = self.threshold.flatten()[:4].tolist()
        m = f"spikes_per_step={self.spikes_per_step}, " if self.spikes_per_step != 1 else ""
        return f"threshold={theta if self.threshold.numel() > 1 else theta[0]}, n_min={self.n_min}, " \
               f"n_max={self.n_max}, {m}{super().extra_repr()}"
