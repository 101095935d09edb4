"""Conversion: ANN -> quantized ANN (QANN, trained with QAT) -> SNN, and the equivalence check.

``to_qann(model, levels, neuron)`` picks the method: ``neuron="stbif"`` is SpikeZIP-TF (ViT, RoBERTa),
``neuron="ilif"`` is SpikeConverter (ReLU CNNs, then ViTs). ``to_snn(qann)`` builds the SNN the QANN
was prepared for; ``verify(qann, snn, x)`` compares them layer by layer.
"""

from __future__ import annotations

from torch import nn

NEURONS = ("stbif", "ilif")


def to_qann(model: nn.Module, levels: int = 16, neuron: str = "stbif", **kwargs) -> nn.Module:
    """A new model with quantizers in the places ``neuron``'s conversion needs; train it like any model."""
    if neuron not in NEURONS:
        raise ValueError(f"to_qann: neuron must be one of {NEURONS}, got {neuron!r}")
    if neuron == "ilif":
        from .spikeconverter import to_ilif_qann
        return to_ilif_qann(model, levels, **kwargs)
    if neuron == "stbif":
        from ..models.vit import ViT

        if isinstance(model, ViT):
            from .spikezip import vit_to_qann

            return vit_to_qann(model, levels, **kwargs)
        from ..models.roberta import Roberta

        if isinstance(model, Roberta) or type(model).__name__ == "RobertaForSequenceClassification":
            from .roberta import roberta_to_qann

            return roberta_to_qann(model, levels, **kwargs)
    raise TypeError(f"to_qann: no {neuron!r} conversion for {type(model).__name__} yet")


def to_snn(qann: nn.Module, spikes_per_step: int = 1) -> nn.Module:
    """The SNN equivalent to ``qann`` (a model returned by :func:`to_qann`). ``spikes_per_step`` (ST-BIF
    conversions only): up to that many spikes per neuron and step, so the SNN settles in fewer steps."""
    build = getattr(qann, "to_snn", None)
    if build is None:
        raise TypeError(f"to_snn: {type(qann).__name__} is not a QANN made by spiketwin.convert.to_qann")
    if spikes_per_step == 1:
        return build()
    from .spikezip import SpikeZIPQANN

    if not isinstance(qann, SpikeZIPQANN):
        raise ValueError(f"to_snn: spikes_per_step={spikes_per_step} needs an ST-BIF QANN (to_qann(..., "
                         f"neuron='stbif')); {type(qann).__name__} converts to neurons with one kind of spike")
    return build(spikes_per_step=spikes_per_step)


def verify(qann: nn.Module, snn: nn.Module, x, allow_tf32: bool = False, **kwargs):
    """Compare ``snn``'s summed values with ``qann``'s, per sample and per layer (see each SNN's ``verify``); TF32
    is off meanwhile unless ``allow_tf32`` (:func:`spiketwin.simulate.full_float32`)."""
    from ..simulate import full_float32

    check = getattr(snn, "verify", None)
    if check is None:
        raise TypeError(f"verify: {type(snn).__name__} is not a converted SNN (it has no .verify)")
    with full_float32(allow_tf32):
        return check(qann, x, **kwargs)
