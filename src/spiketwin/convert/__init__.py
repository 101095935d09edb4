"""Conversion: ANN -> quantized ANN (QANN, trained with QAT) -> SNN, and the equivalence check.

``to_qann(model, levels, neuron)`` picks the method: ``neuron="stbif"`` is SpikeZIP-TF on any traceable model
(the engine: :mod:`~spiketwin.convert.graph`, :mod:`~spiketwin.convert.qann`, :mod:`~spiketwin.convert.snn`),
``neuron="ilif"`` is SpikeConverter (iLIF neurons, on the same traced graph and node kinds). ``to_snn(qann)``
builds the SNN the QANN was prepared for; ``verify(qann, snn, x)`` compares them layer by layer.
"""

from __future__ import annotations

from torch import nn

NEURONS = ("stbif", "ilif")


def to_qann(model: nn.Module, levels: int = 16, neuron: str = "stbif", example_inputs=None,
            activation: str | None = None, dynamic: str = "all", output: str | int | None = None,
            **kwargs) -> nn.Module:
    """A new model with quantizers in the places ``neuron``'s conversion needs; train it like any model.

    ``neuron="stbif"`` (SpikeZIP-TF) converts any ``nn.Module`` that ``torch.export`` can trace: ``example_inputs``
    is a tensor, a tuple of positional tensors or a dict of keyword tensors, as the model is called (inferred for
    models that declare their input shape); ``activation="relu"`` swaps GELU / SiLU for ReLU as the paper does
    (default ``"keep"``). The rules and the placement: :mod:`spiketwin.convert.graph`, :mod:`spiketwin.convert.qann`.
    ``dynamic="all"`` (default) lets every input dimension vary where the model allows (batch, sequence length, image
    size); ``dynamic="batch"`` fixes all but the batch to the example's, and traces far faster a model that computes
    with its image size (a small Swin: 3.8 s instead of 116 s; :data:`spiketwin.convert.graph.DYNAMIC_CHOICES`).
    ``output`` keeps one of several outputs (a field name such as ``"pooler_output"`` or ``"image_embeds"``, or a
    tuple index): the QANN and its SNN return that tensor alone, and what only the other outputs need is not
    converted (an encoder without a classification head; :func:`spiketwin.convert.graph.keep_output`).

    ``neuron="ilif"`` (SpikeConverter) traces the same way from ``calibration=`` (a few hundred training inputs,
    which also set the quantizer steps; ``percentile=``), swaps GELU-like activations for ReLU by default
    (``activation="relu"``) and places quantizers by the same node kinds (:mod:`spiketwin.convert.spikeconverter`).
    """
    if neuron not in NEURONS:
        raise ValueError(f"to_qann: neuron must be one of {NEURONS}, got {neuron!r}")
    if neuron == "ilif":
        from .spikeconverter import to_ilif_qann

        if example_inputs is not None:
            raise TypeError("to_qann(neuron='ilif'): the model is traced on calibration=, not example_inputs")
        return to_ilif_qann(model, levels, activation=activation, dynamic=dynamic, output=output, **kwargs)
    from .qann import graph_to_qann

    if kwargs:
        raise TypeError(f"to_qann: unexpected options {sorted(kwargs)} for neuron='stbif'")
    return graph_to_qann(model, levels, example_inputs, "keep" if activation is None else activation, dynamic,
                         output)


def to_snn(qann: nn.Module, **options) -> nn.Module:
    """The SNN equivalent to ``qann`` (a model returned by :func:`to_qann`).

    SpikeZIP-TF QANNs take ``state="exact"`` (default: bit-identical to the QANN in any dtype) or ``"events"``
    (event-driven increments) and ``spikes_per_step`` (multi-spike ST-BIF neurons; 1 is the paper's).
    """
    from .qann import GraphQANN

    if isinstance(qann, GraphQANN):
        from .snn import GraphSNN

        qann.check_initialized()
        return GraphSNN.from_qann(qann, **options)
    build = getattr(qann, "to_snn", None)
    if build is None:
        raise TypeError(f"to_snn: {type(qann).__name__} is not a QANN made by spiketwin.convert.to_qann")
    if options:
        raise ValueError(f"to_snn: options {sorted(options)} need an ST-BIF QANN (to_qann(..., neuron='stbif')); "
                         f"{type(qann).__name__} converts to neurons with one kind of spike")
    return build(**options)


def verify(qann: nn.Module, snn: nn.Module, x, allow_tf32: bool = False, **kwargs):
    """Compare ``snn``'s summed values with ``qann``'s, per sample and per layer (see each SNN's ``verify``); TF32
    is off meanwhile unless ``allow_tf32`` (:func:`spiketwin.simulate.full_float32`)."""
    from ..simulate import full_float32

    check = getattr(snn, "verify", None)
    if check is None:
        raise TypeError(f"verify: {type(snn).__name__} is not a converted SNN (it has no .verify)")
    with full_float32(allow_tf32):
        return check(qann, x, **kwargs)
