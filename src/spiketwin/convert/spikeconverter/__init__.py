"""SpikeConverter: ANN -> 2^T-level quantized ANN (QANN) -> SNN of iLIF neurons with temporal separation.

``qann = to_qann(model, levels=2**T, neuron="ilif", calibration=x)`` traces ``model`` with the conversion engine
(:func:`spiketwin.convert.graph.trace`: ``torch.export``, dynamic dimensions, an ATen graph), folds every BatchNorm
into the Conv/Linear before it and places ``2**T``-level quantizers (:class:`~spiketwin.quant.Quantizer`) by the
engine's node kinds: in a ReLU network each ReLU becomes an unsigned quantizer; in any other model (transformers)
SpikeZIP-TF's places (:func:`spiketwin.convert.qann.placement`, GELU -> ReLU by default). Steps come from ``p``, a
high percentile (99.99th by default) of ``|value|`` on ``calibration``: ``s = p / 2^T`` unsigned, ``p / 2^(T-1)``
signed. The QANN trains like any model (QAT with :func:`spiketwin.train.fit`). ``snn = qann.to_snn()`` rewrites the
graph by node kind (:mod:`.graph`): each quantizer becomes an :class:`~spiketwin.neurons.ILIF` neuron with threshold
``θ = s · 2^T`` (spike amplitude ``s``).

**Schedule.** A global clock ``t = 0, 1, ...`` is cut into periods of ``T`` steps (phase ``j = t mod T``). Every
value flowing between layers is a spike train read most significant step first: its value for one period is ``Σ_j
k^(T-1-j) y_j``. The iLIF neuron accumulates one period (amplifying by ``k``) and fires it during the next one, so
the neuron at depth ``d`` (``d`` iLIF layers on its longest path from the input) fires sample ``n`` during period
``n + d``. Things that enter without a spike train enter at the phase with weight 1, ``j = T - 1``: the image
(analog input, once, as the first layer's input current, as in SpikeZIP-TF), each Conv/Linear bias and each constant
part of a linear op (class token, position embedding) once per period (an earlier one would be amplified). Operands
of one operation that come from different depths are aligned by delaying the shallower ones by whole periods
(:class:`Delay`). Max pooling compares the binary-coded trains most significant step first
(:class:`SpikeMaxPool2d`), exact for ``k = 2``. Signed quantizers become :class:`SignedILIF` (an offset in and out);
each non-linear region (LayerNorm, softmax...) and each activation x activation product becomes a :class:`PeriodOp`
(decode, apply, encode: one period each). The network's output (the last layer, no neuron) is decoded over period
``D`` (the depth), so a sample needs ``(D + 1) · T`` steps (latency); with pipelining a new sample enters every
``T`` steps (throughput).

With ``k = 2`` every decoded value of the SNN equals the QANN's (:meth:`ILIFSNN.verify`, float64). Other ``k`` keep
each layer's range ``[0, s (2^T - 1)]`` and are reported as conversion error. :meth:`SpikeConverterQANN.to_rate_snn`
builds the classic rate-coded IF conversion for comparison (CNNs).

Modules: :mod:`.qann` (BatchNorm folding, quantizer places, calibration, :class:`SpikeConverterQANN`),
:mod:`.operators` (the spiking operators of the schedule), :mod:`.graph` (the QANN graph rewritten by node kind into
a time-folded SNN, run chunk by chunk), :mod:`.ilif` (:class:`ILIFSNN`: simulation, pipelining, decoding,
``verify``), :mod:`.rate` (:class:`RateSNN`).
"""

from .ilif import ILIFSNN
from .operators import (Clocked, Delay, PerPeriod, PeriodBias, PeriodOp, PhasedModule, SignedILIF, SpikeMaxPool2d,
                        ilif_threshold, last_phase)
from .qann import DEFAULT_PERCENTILE, SpikeConverterQANN, to_ilif_qann
from .rate import RateSNN

__all__ = ["DEFAULT_PERCENTILE", "Clocked", "Delay", "ILIFSNN", "PerPeriod", "PeriodBias", "PeriodOp",
           "PhasedModule", "RateSNN", "SignedILIF", "SpikeConverterQANN", "SpikeMaxPool2d", "ilif_threshold",
           "last_phase", "to_ilif_qann"]
