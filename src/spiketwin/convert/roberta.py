"""SpikeZIP-TF for language: RoBERTa (Hugging Face ``RobertaForSequenceClassification``) -> QANN -> SNN.

Reuses the vision pipeline (:mod:`spiketwin.convert.spikezip`): the same quantizer, the same module swap
and the same simulator; what RoBERTa adds is handled here.

- :func:`roberta_to_qann` copies the model into :class:`~spiketwin.models.roberta.Roberta` (explicit modules,
  Hugging Face's keys) and fills its quantizer slots: 10 per layer and one after the embedding LayerNorm,
  like the ViT, plus one after the classifier's ``tanh``. Post-norm placement: signed quantizers after
  ``query``, ``key``, ``value``, ``attn @ v``, ``attention.output.dense``, ``attention.output.LayerNorm``,
  ``output.dense`` and ``output.LayerNorm``; unsigned after the softmax and after ``intermediate.dense``,
  where the quantizer absorbs the activation (GELU becomes ReLU).
- The SNN runs from the embeddings: the summed word + position + token-type lookups are the analog input
  (first step only); the embedding LayerNorm, the masked softmax and the head's ``tanh`` are
  accumulate-apply-difference operators; the attention mask is applied unchanged at every step, so a
  padded key gets exactly zero weight at every step and padding never changes a real token's result.
- :class:`RobertaSNN` takes ``{"input_ids", "attention_mask"[, "token_type_ids"]}`` (a dict, or
  ``input_ids`` with the others as keyword arguments) in :meth:`~RobertaSNN.simulate` and
  :meth:`~RobertaSNN.verify`; its output is the logits.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..models import roberta as R
from ..ops import Accumulate, MatMul
from ..quant import Quantizer
from ..simulate import SimResult
from .spikezip import EquivalenceReport, SpikeZIPQANN, SpikeZIPSNN, _check_supported, neuron_swap, spiking_swap

SUPPORTED = (R.Roberta, R.Backbone, R.Embeddings, R.Encoder, R.Layer, R.Attention, R.SelfAttention, R.AddNorm,
             R.Intermediate, R.ClassificationHead, R.MaskedSoftmax, nn.ModuleList, nn.Embedding, nn.Linear,
             nn.LayerNorm, nn.Dropout, nn.Tanh, nn.Identity, nn.ReLU, nn.GELU, MatMul)

ROBERTA_SWAPS = {
    R.MaskedSoftmax: Accumulate,  # the mask is an argument of the softmax: applied, never accumulated
    nn.Tanh: Accumulate,
    nn.Embedding: lambda m: m,  # the lookups make the analog input, outside the time loop
}
"""RoBERTa's leaf types beyond :data:`spiketwin.convert.spikezip.SWAPS`, with their spiking twins."""

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
SIMULATE_OPTIONS = ("chunk", "early_exit")


def roberta_to_qann(model: nn.Module, levels: int = 16) -> RobertaQANN:
    """A quantized copy of ``model`` (a ``transformers.RobertaForSequenceClassification`` or a
    :class:`~spiketwin.models.roberta.Roberta`) with SpikeZIP-TF's quantizers; train it with QAT.

    Each quantizer's step is set by the first batch it sees.
    """
    if type(model).__name__ == "RobertaForSequenceClassification":
        qann = R.Roberta.from_hf(model)
    elif isinstance(model, R.Roberta):
        qann = copy.deepcopy(model)
    else:
        raise TypeError(f"roberta_to_qann: expected a transformers RobertaForSequenceClassification or a "
                        f"spiketwin.models.roberta.Roberta, got {type(model).__name__}")
    _check_supported(qann, SUPPORTED, "roberta_to_qann")
    param = next(qann.parameters())

    def quantizer(signed: bool) -> Quantizer:
        return Quantizer(levels, signed).to(device=param.device, dtype=param.dtype)

    qann.roberta.embeddings.quant = quantizer(True)
    for layer in qann.roberta.encoder.layer:
        att, out = layer.attention.self, layer.attention.output
        att.query_quant, att.key_quant, att.value_quant = quantizer(True), quantizer(True), quantizer(True)
        att.attn_quant, att.out_quant = quantizer(False), quantizer(True)
        out.dense_quant, out.norm_quant = quantizer(True), quantizer(True)
        layer.intermediate.intermediate_act_fn, layer.intermediate.act_quant = nn.Identity(), quantizer(False)
        layer.output.dense_quant, layer.output.norm_quant = quantizer(True), quantizer(True)
    qann.classifier.act_quant = quantizer(True)
    return RobertaQANN(qann)


class FromEmbeddings(nn.Module):
    """A RoBERTa run from its summed embedding lookups: ``forward(x [..., N, D], mask [B, 1, 1, N])`` -> logits.

    The SNN's time loop calls this (``x`` is the analog input at the first step, zeros afterwards); the QANN
    is wrapped the same way for :meth:`RobertaSNN.verify`, so both have the same module paths.
    """

    def __init__(self, model: R.Roberta) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model.forward_embedded(x, mask)


class RobertaQANN(SpikeZIPQANN):
    """A quantized :class:`~spiketwin.models.roberta.Roberta` (made by :func:`roberta_to_qann`).

    ``qann(input_ids, attention_mask=None, token_type_ids=None)`` returns the logits; :meth:`to_snn` builds
    the equivalent :class:`RobertaSNN`.
    """

    def to_snn(self, spikes_per_step: int = 1) -> RobertaSNN:
        self.check_initialized()
        return RobertaSNN(spiking_swap(FromEmbeddings(copy.deepcopy(self.model).eval()),
                                       {**ROBERTA_SWAPS, **neuron_swap(spikes_per_step)}))


def model_inputs(x, kwargs: dict) -> dict[str, torch.Tensor]:
    """``x`` (a dict of the model's inputs, or the ``input_ids`` tensor) merged with keyword inputs."""
    inputs = dict(x) if isinstance(x, dict) else {"input_ids": x}
    inputs.update(kwargs)
    unknown = sorted(set(inputs) - set(INPUT_KEYS))
    if unknown or "input_ids" not in inputs:
        raise ValueError(f"RoBERTa SNN: inputs must be input_ids plus optional attention_mask and token_type_ids; "
                         f"got keys {sorted(inputs)}")
    return inputs


class RobertaSNN(SpikeZIPSNN):
    """The spiking twin of a :class:`RobertaQANN` (``spiketwin.convert.to_snn(qann)``).

    ``simulate(snn, {"input_ids": [B, N], "attention_mask": [B, N]}, max_steps=...)`` returns the summed
    logits, the running logits per step and each sentence's settle step.
    """

    def embed(self, x, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The analog input ``[B, N, D]`` and additive mask ``[B, 1, 1, N]`` of the model's inputs."""
        return self.model.model.embed(**model_inputs(x, kwargs))

    @torch.no_grad()
    def simulate(self, x, max_steps: int | None = None, step_mode: str = "m", **kwargs) -> SimResult:
        """Run on token ids (``x``: dict of ``input_ids``, ``attention_mask``, ``token_type_ids``, or the
        ``input_ids`` tensor with the others as keywords) until every sentence settles. ``chunk`` and
        ``early_exit`` are :meth:`SpikeZIPSNN.simulate`'s options."""
        options = {k: kwargs.pop(k) for k in SIMULATE_OPTIONS if k in kwargs}
        emb, mask = self.embed(x, kwargs)
        return super().simulate(emb, max_steps, step_mode, mask=mask, **options)

    @torch.no_grad()
    def verify(self, qann: nn.Module, x, max_steps: int | None = None, step_mode: str = "m",
               rtol: float | None = None, **kwargs) -> EquivalenceReport:
        """Compare with ``qann`` (a :class:`RobertaQANN`) layer by layer on token ids (:meth:`SpikeZIPSNN.verify`)."""
        inner = qann.model if isinstance(qann, SpikeZIPQANN) else qann
        if not isinstance(inner, R.Roberta):
            raise TypeError(f"RobertaSNN.verify: qann must be a RobertaQANN, got {type(qann).__name__}")
        emb, mask = self.embed(x, kwargs)
        reference = FromEmbeddings(inner).train(inner.training)  # verify restores this mode afterwards
        return super().verify(reference, emb, max_steps, step_mode, rtol, mask=mask)
