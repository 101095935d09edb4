"""Checkpoints: a model's tensors in safetensors plus what is needed to rebuild it, written atomically.

The file's metadata holds ``spiketwin`` = JSON (never pickled objects)::

    {"model": registry name (a Hugging Face model: its class name), "overrides": {constructor keywords},
     "hf": {"architecture", "config", "dir"}  (Hugging Face models only: spiketwin.models.huggingface.describe),
     "stage": "ann" | "qann" | "snn",
     "qann": {to_qann keyword arguments; "example_inputs": their form, shapes and dtypes (spiketwin.inputs)},
     "snn": {to_snn keyword arguments: "state", "spikes_per_step"}, "input_shape": [C, H, W]}

An ``snn`` checkpoint holds the QANN's tensors: the SNN is derived from them exactly, with the ``snn`` options.
For a QANN made by the conversion engine the ``qann`` entry comes from the model itself (``GraphQANN.recipe``:
levels, activation, the example inputs it was traced with); example input tensors given in ``info`` are stored
as their shapes and dtypes. :func:`save` writes a checkpoint, :func:`read_info` reads that entry back; rebuilding
the model from it (which needs the models and the conversions, both above this module) is
:func:`spiketwin.rebuild.from_checkpoint`.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from .inputs import describe
from .utils import atomic_write, read_metadata, safetensors_torch

STAGES = ("ann", "qann", "snn")
SNN_OPTIONS = ("state", "spikes_per_step")


def save(model: nn.Module, path: str | Path, info: dict) -> Path:
    """Write ``model``'s state (``nn.Module.state_dict`` tensors) and ``info`` (see the module doc) to ``path``.
    ``info["qann"]["example_inputs"]``, when given, are the example inputs themselves (stored as shapes and dtypes);
    a model with a ``recipe`` (a QANN of the conversion engine) supplies the ``qann`` entry itself."""
    if info.get("stage") not in STAGES:
        raise ValueError(f"checkpoint.save: info['stage'] must be one of {STAGES}, got {info.get('stage')!r}")
    if info["stage"] != "ann":
        qann, recipe = dict(info.get("qann", {})), getattr(model, "recipe", None)
        if recipe:  # the model's own: it wins over what info says (info may come from the file it was read from)
            qann.update(recipe)
        elif "example_inputs" in qann:
            qann["example_inputs"] = describe(qann["example_inputs"])
        info = {**info, "qann": qann}
    unknown = set(info.get("snn", {})) - set(SNN_OPTIONS)
    if unknown:
        raise ValueError(f"checkpoint.save: info['snn'] takes {SNN_OPTIONS} (to_snn's options), not {sorted(unknown)}")
    st = safetensors_torch()
    return atomic_write(path, lambda tmp: st.save_model(model, str(tmp), metadata={"spiketwin": json.dumps(info)}))


def read_info(path: str | Path) -> dict:
    """The ``info`` dict stored in a checkpoint (clear errors for a missing or foreign file)."""
    meta = read_metadata(path, "checkpoint")
    if "spiketwin" not in meta:
        raise ValueError(f"checkpoint {path} has no 'spiketwin' metadata (model name, stage); write it with "
                         "spiketwin.checkpoint.save or the spiketwin command line")
    info = json.loads(meta["spiketwin"])
    if info.get("stage") not in STAGES or "model" not in info:
        raise ValueError(f"checkpoint {path}: metadata needs 'model' and a 'stage' in {STAGES}, got {info}")
    return info
