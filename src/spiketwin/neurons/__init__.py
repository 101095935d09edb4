"""Spiking neurons: LIF, IF, ST-BIF and iLIF, one module each.

Each neuron is a module that runs one step (``step_mode="s"``, input ``[B, ...]``) or a whole sequence
(``step_mode="m"``, input ``[T, B, ...]``) with identical results. State is created lazily from the first
input (its shape, dtype and device) and cleared by :func:`spiketwin.reset`.

- :class:`LIF` / :class:`IF` (:mod:`.lif`): SpikingJelly's leaky / non-leaky integrate-and-fire neuron, with a
  fused time scan whose backward stores only the membrane potentials (:func:`lif_step` is the plain reference).
- :class:`STBIF` (:mod:`.stbif`): the bipolar, bounded neuron of SpikeZIP-TF, the exact twin of
  :class:`~spiketwin.quant.Quantizer`.
- :class:`ExactSTBIF` (:mod:`.exact`): ST-BIF on exact states (accumulated input, spikes = count changes), the
  neuron of the exact-state graph SNN.
- :class:`ILIF` (:mod:`.ilif`): SpikeConverter's amplifying soft-reset neuron with temporal separation
  (accumulate, then fire).
"""

from .exact import ExactSTBIF
from .ilif import ILIF
from .lif import IF, LIF, LIFParams, lif_backward, lif_negated, lif_scan, lif_spikes, lif_step, lif_u, \
    native_affine_scan
from .stbif import STBIF

__all__ = ["IF", "ILIF", "LIF", "STBIF", "ExactSTBIF", "LIFParams", "lif_backward", "lif_negated", "lif_scan",
           "lif_spikes", "lif_step", "lif_u", "native_affine_scan"]
