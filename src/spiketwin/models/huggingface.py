"""Hugging Face models from a local directory, and again from the description a checkpoint keeps.

:func:`load_pretrained` reads ``config.json`` and ``model.safetensors`` of a directory written by
``save_pretrained`` (never downloads; only safetensors weights, so loading runs no code from the files); the class
is ``config.architectures[0]``, looked up in the tables behind transformers' Auto classes (only transformers' own
model classes; a config asking for remote code is refused). :func:`describe` is what a spiketwin checkpoint stores
about such a model (``{"architecture", "config", "dir"}``: JSON only) and :func:`from_description` builds the
model (random weights) from it, for the checkpoint's tensors to be loaded into. ``roberta_sst2_small`` and
``bert_sst2_small`` are registry names of small Hugging Face classifiers built from a config (the benchmarks').
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..extras import require
from .registry import register


def _transformers(what: str):
    return require("transformers", "nlp", what)


def model_class(config, where: str = "config") -> type[nn.Module]:
    """The transformers class named by ``config.architectures[0]`` when an Auto class maps ``config``'s model type
    to it (``BertForSequenceClassification`` for a ``bert`` config); a ``ValueError`` naming ``where`` otherwise."""
    transformers = _transformers("Hugging Face models")
    from transformers.models.auto import modeling_auto

    names = getattr(config, "architectures", None) or []
    if getattr(config, "auto_map", None):
        raise ValueError(f"{where}: 'auto_map' asks for the model's own Python code, which spiketwin never runs; "
                         "use a model whose class ships with transformers")
    if len(names) != 1:
        raise ValueError(f"{where}: 'architectures' must name one model class (e.g. ['BertForSequenceClassification']"
                         f"), got {names}; set it in config.json (model.save_pretrained writes it)")
    known: set[str] = set()
    for table in (getattr(modeling_auto, n) for n in dir(modeling_auto) if n.endswith("_MAPPING_NAMES")):
        entry = table.get(config.model_type) if isinstance(table, dict) else None
        known.update([entry] if isinstance(entry, str) else entry or ())
    if names[0] not in known or not hasattr(transformers, names[0]):
        raise ValueError(f"{where}: {names[0]!r} is not a transformers class for model type {config.model_type!r}; "
                         f"the Auto classes know {', '.join(sorted(known)) or 'none'}")
    return getattr(transformers, names[0])


def load_pretrained(directory: str | Path) -> nn.Module:
    """The model saved in ``directory`` (``config.json``, ``model.safetensors``), in eval mode."""
    transformers = _transformers("loading a Hugging Face model")
    path = Path(directory).expanduser()
    for name in ("config.json", "model.safetensors"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"Hugging Face directory {path}: no {name} (expected a directory written by "
                                    "model.save_pretrained, with safetensors weights)")
    config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    cls = model_class(config, f"{path / 'config.json'}")
    return cls.from_pretrained(str(path), local_files_only=True, use_safetensors=True).eval()


def describe(model: nn.Module, directory: str | Path | None = None) -> dict:
    """``{"architecture", "config", "dir"}`` of a transformers model: what rebuilds it (JSON; ``dir``, where it was
    read from, tells the command line where its tokenizer is)."""
    config = {**json.loads(model.config.to_json_string(use_diff=False)), "architectures": [type(model).__name__]}
    return {"architecture": type(model).__name__, "config": config,
            "dir": str(Path(directory).expanduser().resolve()) if directory is not None else None}


def from_description(description: dict, where: str = "checkpoint") -> nn.Module:
    """A model of the class and configuration :func:`describe` wrote, with fresh weights (load yours into it)."""
    transformers = _transformers("rebuilding a Hugging Face model")
    config = dict(description.get("config") or {})
    kind = config.get("model_type")
    if kind not in transformers.CONFIG_MAPPING:
        raise ValueError(f"{where}: Hugging Face config has model_type {kind!r}, which transformers "
                         f"{transformers.__version__} does not know")
    config = transformers.CONFIG_MAPPING[kind].from_dict(config)
    if config.architectures != [description.get("architecture")]:
        raise ValueError(f"{where}: architecture {description.get('architecture')!r} does not match the config's "
                         f"'architectures' {config.architectures}")
    return model_class(config, where)(config).eval()


SMALL = dict(vocab_size=8192, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             hidden_act="relu", max_position_embeddings=66, type_vocab_size=1, num_labels=2, pad_token_id=1)
"""The benchmark's size: 2 layers, hidden 64, 4 heads, ReLU; trains from scratch on SST-2 on a CPU in minutes."""


@register("roberta_sst2_small")
def roberta_sst2_small(**overrides) -> nn.Module:
    """A small ``RobertaForSequenceClassification`` (:data:`SMALL`; ``overrides`` are ``RobertaConfig`` fields)."""
    transformers = _transformers("roberta_sst2_small")
    return transformers.RobertaForSequenceClassification(transformers.RobertaConfig(**{**SMALL, **overrides}))


@register("bert_sst2_small")
def bert_sst2_small(**overrides) -> nn.Module:
    """A ``BertForSequenceClassification`` of the same size (:data:`SMALL`; ``overrides`` are ``BertConfig`` fields)."""
    transformers = _transformers("bert_sst2_small")
    return transformers.BertForSequenceClassification(transformers.BertConfig(**{**SMALL, **overrides}))


def _builds(factory, name: str) -> None:
    """Tell :func:`~spiketwin.models.registry.model_class` the class ``factory`` builds (imported only when asked)."""
    factory.model_class = lambda: getattr(_transformers(factory.__name__), name)


_builds(roberta_sst2_small, "RobertaForSequenceClassification")
_builds(bert_sst2_small, "BertForSequenceClassification")
