"""Memory for backward: what autograd keeps of a spiking network, kept small and exact.

- **Spikes and counts packed**: a layer fed with spikes (a convolution, a linear layer, a max pool, a product
  of spike matrices) saves its input for backward. Inside :func:`spikes_saved_as_bool` ``(s1, s2, ...)``,
  every tensor autograd saves that lives in the storage of one of the given spike tensors is packed as
  ``bool`` and unpacked back to its float dtype when backward needs it: exact (spikes are 0 or 1), a quarter
  of the memory. :func:`counts_saved_as_uint8` does the same for tensors holding ``step`` times a whole number
  in 0..255 (sums of a few spike tensors, ``Q Kᵀ`` counts times the attention scale). The given tensors must
  hold only such values; they are alive during the block, so their storage cannot be mistaken for another
  tensor's. Several layers saving the same tensor inside one block share one packed copy.
- **BatchNorm -> LIF recomputed**: :func:`batch_norm_lif` runs ``lif(bn(z))`` with both modules called as usual
  (their hooks, running statistics and gradients unchanged), but the LIF's membrane potentials ``H``, a float
  tensor as large as its input, are not kept: BatchNorm keeps its input ``z`` anyway, and backward recomputes
  ``H`` from it (the same BatchNorm and LIF forward, bit for bit; on CPU one native pass over ``z`` that applies
  BatchNorm's batch statistics, computed again as torch computes them, inside the LIF scan; on CUDA BatchNorm
  again, then the LIF kernel over its output).
- **Max pooling** (:class:`CompactMaxPool2d`) keeps its argmax indices as ``int16`` (2 bytes per output, not 8).
- **Applied to a model**: :func:`pack` ``(model)`` does all of this for a plain model (no block in its code): it
  follows, during the forward, which tensors hold spikes (a LIF's output) or counts (their sums, products and
  positive multiples), packs what is saved of them, recomputes every BatchNorm -> LIF pair and swaps in
  :class:`CompactMaxPool2d`. :class:`~spiketwin.train.TrainConfig` applies it by default (``pack_memory``).

:func:`float_saves` turns all of this off (to compare memory, or to check that gradients are identical).
"""

from .packing import pack
from .saving import CompactMaxPool2d, batch_norm_lif, counts_saved_as_uint8, float_saves, spikes_saved_as_bool

__all__ = ["CompactMaxPool2d", "batch_norm_lif", "counts_saved_as_uint8", "float_saves", "pack",
           "spikes_saved_as_bool"]
