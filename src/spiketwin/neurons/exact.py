"""The ST-BIF neuron on exact states: what a chip with exact integer accumulators emits.

:class:`ExactSTBIF` receives its accumulated input (not increments) every step and moves its spike count toward the
quantizer level of that input; it is the neuron of the exact-state graph SNN (``to_snn(qann, state="exact")``).
Its spikes are the count changes: ``.change`` (``±k``) and ``.spikes`` (``change * θ``, what
:class:`~spiketwin.neurons.STBIF` outputs). The count is an integer tensor (:func:`count_dtype`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..base import StatefulModule
from ..kernels.stbif import COUNT_DTYPES, stbif_exact_step


def count_dtype(n_min: int, n_max: int, spikes_per_step: int) -> torch.dtype:
    """The narrowest integer dtype that holds every count (``n_min..n_max``) and every move (at most
    ``spikes_per_step`` either way) of a neuron: what it keeps its count and change in (int8 for up to 128 levels)."""
    most = max(-n_min, n_max, min(spikes_per_step, n_max - n_min))
    return next((d for d in COUNT_DTYPES if torch.iinfo(d).max >= most), torch.int64)


def _batch_first(t: torch.Tensor, dim: int | None) -> torch.Tensor:
    """``t`` with its batch dimension ``dim`` first (no batch dimension known: all of ``t`` as one sample)."""
    return t if dim == 0 else t.unsqueeze(0) if dim is None else t.movedim(dim, 0)


def _batch_back(t: torch.Tensor, dim: int | None) -> torch.Tensor:
    """The inverse of :func:`_batch_first`."""
    return t if dim == 0 else t.squeeze(0) if dim is None else t.movedim(0, dim)


class ExactSTBIF(StatefulModule):
    """ST-BIF neuron on exact states: the count moves toward ``clamp(floor(x/θ + 1/2), n_min, n_max)`` of its current
    accumulated input ``x`` by at most ``spikes_per_step`` per step; the output is ``count * θ`` (the value the QANN's
    quantizer gives once settled). ``.change`` holds the last step's count change (``±k`` spikes), ``.spikes`` the
    spikes' value ``change * θ`` (what :class:`~spiketwin.neurons.STBIF` outputs), ``.pending`` ``[B]`` whether a
    sample's neuron is still away from its target after the step. The count and the change are integer tensors
    (:func:`count_dtype`); ``.value`` is ``count * θ`` in the input's dtype."""

    nir_refusal = "ST-BIF neuron (exact state): bipolar spikes bounded by a spike count have no NIR neuron"
    state_names = ("count",)

    def __init__(self, threshold: torch.Tensor, n_min: int, n_max: int, spikes_per_step: int = 1,
                 batch_dim: int | None = 0) -> None:
        super().__init__(step_mode="s")
        if spikes_per_step < 1:
            raise ValueError(f"ExactSTBIF: spikes_per_step must be >= 1, got {spikes_per_step}")
        self.register_buffer("threshold", threshold.detach().clone())
        self.n_min, self.n_max, self.spikes_per_step, self.batch_dim = n_min, n_max, int(spikes_per_step), batch_dim
        self.change: torch.Tensor | None = None
        self.pending: torch.Tensor | None = None
        self.dtype: torch.dtype | None = None  # of the input, which the outputs keep

    @property
    def spikes(self) -> torch.Tensor | None:
        return None if self.change is None else self.change * self.threshold.to(self.dtype)

    @property
    def value(self) -> torch.Tensor | None:
        """``count * θ``: the neuron's output so far, summed over the steps (the quantizer's value once settled)."""
        return None if self.count is None else self.count * self.threshold.to(self.dtype)

    @classmethod
    def from_quantizer(cls, quantizer: nn.Module, spikes_per_step: int = 1, batch_dim: int | None = 0) -> ExactSTBIF:
        return cls(quantizer.step, quantizer.n_min, quantizer.n_max, spikes_per_step, batch_dim)

    def reset(self) -> None:
        super().reset()
        self.change = self.pending = None

    def keep(self, index: torch.Tensor, batch: int | None = None) -> None:
        super().keep(index, batch)
        if self.pending is not None:
            self.pending = self.pending.index_select(0, index)

    def single_step(self, x: torch.Tensor) -> torch.Tensor:
        """One step by the fused operator ``spiketwin::stbif_exact_step`` (:mod:`spiketwin.kernels.stbif`), on
        batch-first views of ``x`` and the count (the batch unknown: all of it as one sample)."""
        if self.count is None:
            self.count = torch.zeros_like(x, dtype=count_dtype(self.n_min, self.n_max, self.spikes_per_step),
                                          memory_format=torch.contiguous_format)  # the quantizer's output layout
        dim = self.batch_dim
        out, change, far = stbif_exact_step(_batch_first(x, dim), _batch_first(self.count, dim), self.threshold,
                                            self.n_min, self.n_max, self.spikes_per_step)  # the count moves in place
        # plain attributes, set past nn.Module.__setattr__'s registry checks (a few us each, every neuron and step);
        # pending is a 0-d flag when the batch dimension is unknown
        vars(self).update(change=_batch_back(change, dim), pending=far[0] if dim is None else far, dtype=x.dtype)
        return _batch_back(out, dim)

    def extra_repr(self) -> str:
        return (f"threshold={float(self.threshold):.4g}, n_min={self.n_min}, n_max={self.n_max}, "
                f"spikes_per_step={self.spikes_per_step}")
