"""Hugging Face models by registry name (needs the ``nlp`` extra: ``transformers``); built from a config, so
nothing is downloaded. The conversion engine converts them as they are (``spiketwin.convert.to_qann``)."""

from __future__ import annotations

from torch import nn

from ..extras import require
from .registry import register


SMALL = dict(vocab_size=8192, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             hidden_act="relu", max_position_embeddings=66, type_vocab_size=1, num_labels=2, pad_token_id=1)
"""The benchmark's size: 2 layers, hidden 64, 4 heads, ReLU; trains from scratch on SST-2 on a CPU in minutes."""


@register("roberta_sst2_small")
def roberta_sst2_small(**overrides) -> nn.Module:
    """A small ``RobertaForSequenceClassification`` (:data:`SMALL`; ``overrides`` are ``RobertaConfig`` fields)."""
    transformers = require("transformers", "nlp", "roberta_sst2_small")
    return transformers.RobertaForSequenceClassification(transformers.RobertaConfig(**{**SMALL, **overrides}))


@register("bert_sst2_small")
def bert_sst2_small(**overrides) -> nn.Module:
    """A ``BertForSequenceClassification`` of the same size (:data:`SMALL`; ``overrides`` are ``BertConfig`` fields)."""
    transformers = require("transformers", "nlp", "bert_sst2_small")
    return transformers.BertForSequenceClassification(transformers.BertConfig(**{**SMALL, **overrides}))
