"""Checkpoints: a model's tensors in safetensors plus what is needed to rebuild it, written atomically.

The file's metadata holds ``spiketwin`` = JSON ``{"model": registry name, "overrides": {...},
"stage": "ann" | "qann" | "snn", "qann": {to_qann keyword arguments}, "input_shape": [C, H, W]}``.
:func:`save` writes one, :func:`read_info` reads that entry back; rebuilding the model from it (which needs
the models and the conversions, both above this module) is :func:`spiketwin.rebuild.from_checkpoint`.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

# load_state_dict_checked is re-exported for models/vit.py and models/roberta.py, which import it from here
from .utils import atomic_write, load_state_dict_checked, read_metadata, safetensors_torch  # noqa: F401

STAGES = ("ann", "qann", "snn")


def save(model: nn.Module, path: str | Path, info: dict) -> Path:
    """Write ``model``'s state (``nn.Module.state_dict`` tensors) and ``info`` (see the module doc) to ``path``."""
    if info.get("stage") not in STAGES:
        raise ValueError(f"checkpoint.save: info['stage'] must be one of {STAGES}, got {info.get('stage')!r}")
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
