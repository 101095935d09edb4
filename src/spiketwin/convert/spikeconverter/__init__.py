"""SpikeConverter: ANN -> 2^T-level quantized ANN (QANN) -> SNN of iLIF neurons with temporal separation.

``qann = to_qann(model, levels=2**T, neuron="ilif", calibration=x)`` traces ``model`` with ``torch.fx``,
folds every BatchNorm into the Conv/Linear before it and replaces every ReLU by an unsigned ``2**T``-level
:class:`~spiketwin.quant.Quantizer` whose step ``s = p / 2^T`` comes from ``p``, a high percentile (99.99th by
default) of that ReLU's outputs on ``calibration``. Quantizers already in the model (a :class:`ViT` gets
SpikeZIP-TF's, signed and unsigned) get ``s = p / 2^T`` (unsigned) or ``p / 2^(T-1)`` (signed) from the
percentile of ``|input|``. The QANN trains like any model (QAT with :func:`spiketwin.train.fit`).
``snn = qann.to_snn()`` swaps each quantizer for an :class:`~spiketwin.neurons.ILIF` neuron with threshold
``θ = s · 2^T`` (spike amplitude ``s``).

**Schedule.** A global clock ``t = 0, 1, ...`` is cut into periods of ``T`` steps (phase ``j = t mod T``).
Every value flowing between layers is a spike train read most significant step first: its value for one
period is ``Σ_j k^(T-1-j) y_j``. The iLIF neuron accumulates one period (amplifying by ``k``) and fires it
during the next one, so the neuron at depth ``d`` (``d`` iLIF layers on its longest path from the input)
fires sample ``n`` during period ``n + d``. Things that enter without a spike train enter at the phase
with weight 1, ``j = T - 1``: the image (analog input, once, as the first layer's input current, as in
SpikeZIP-TF), each Conv/Linear bias and each constant (class token, position embedding) once per period
(an earlier one would be amplified). Operands of one operation that come from different depths are
aligned by delaying the shallower ones by whole periods (:class:`Delay`). Max pooling compares the
binary-coded trains most significant step first (:class:`SpikeMaxPool2d`), exact for ``k = 2``. Signed
quantizers become :class:`SignedILIF` (an offset in and out); LayerNorm, softmax and activation x activation
products become :class:`PeriodOp` (decode, apply, encode: one period each). The network's output (the last
layer, no neuron) is decoded over period ``D`` (the depth), so a sample needs ``(D + 1) · T`` steps
(latency); with pipelining a new sample enters every ``T`` steps (throughput).

With ``k = 2`` every decoded value of the SNN equals the QANN's (:meth:`ILIFSNN.verify`, float64).
Other ``k`` keep each layer's range ``[0, s (2^T - 1)]`` and are reported as conversion error.
:meth:`SpikeConverterQANN.to_rate_snn` builds the classic rate-coded IF conversion for comparison (CNNs).

Modules: :mod:`.front` (the ``torch.fx`` front end: tracing, BatchNorm folding, what converts),
:mod:`.qann` (ReLU -> quantizer, calibration, :class:`SpikeConverterQANN`), :mod:`.operators` (the spiking
operators of the schedule), :mod:`.graph` (a QANN graph rewritten into a time-folded SNN and run chunk by chunk),
:mod:`.ilif` (:class:`ILIFSNN`: simulation, pipelining, decoding, ``verify``), :mod:`.rate` (:class:`RateSNN`).
"""

from .ilif import ILIFSNN
from .operators import (Clocked, Delay, PerPeriod, PeriodBias, PeriodOp, PhasedModule, SignedILIF, SpikeMaxPool2d,
                        ilif_threshold, last_phase)
from .qann import DEFAULT_PERCENTILE, SpikeConverterQANN, to_ilif_qann
from .rate import RateSNN

__all__ = ["DEFAULT_PERCENTILE", "Clocked", "Delay", "ILIFSNN", "PerPeriod", "PeriodBias", "PeriodOp",
           "PhasedModule", "RateSNN", "SignedILIF", "SpikeConverterQANN", "SpikeMaxPool2d", "ilif_threshold",
           "last_phase", "to_ilif_qann"]
