"""Checkpoints: a model's tensors in safetensors plus what is needed to rebuild it, written atomically.

The file's metadata holds ``spiketwin`` = JSON ``{"model": registry name, "overrides": {...},
"stage": "ann" | "qann" | "snn", "qann": {to_qann keyword arguments}, "input_shape": [C, H, W]}``. Loading
rebuilds the model with :func:`spiketwin.models.create`, converts it (``to_qann``; ``to_snn`` for the ``snn``
stage, whose tensors are the QANN's: the SNN is derived from them exactly) and loads the tensors. A
SpikeConverter QANN is rebuilt with a zero calibration batch of ``input_shape`` (its structure does not
depend on the values; the quantizer steps are then read from the file). Loading never runs code from the
file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from .extras import require

STAGES = ("ann", "qann", "snn")


def safetensors_torch():
    """The ``safetensors.torch`` module, or an ``ImportError`` that says how to install it."""
    return require("safetensors.torch", "io", "spiketwin checkpoints")


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Create or replace ``path`` atomically: ``write(tmp)`` fills a temporary file beside it, which is synced
    to disk and renamed over ``path``; a crash leaves the old file (or none), never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_state_dict_checked(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Load ``state`` into ``model`` when its keys and shapes are exactly the model's; otherwise raise a
    ``ValueError`` that starts with ``source`` (the file or format at fault) and lists the missing keys (in the
    model, not in ``state``), the unexpected ones and the shape mismatches. Returns ``model``."""
    own = model.state_dict()
    problems = []
    if missing := sorted(set(own) - set(state)):
        problems.append(f"missing keys (in the model, not in the file): {', '.join(missing)}")
    if unexpected := sorted(set(state) - set(own)):
        problems.append(f"unexpected keys (in the file, not in the model): {', '.join(unexpected)}")
    if mismatched := [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                      for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]:
        problems.append("shape mismatches: " + "; ".join(mismatched))
    if problems:
        raise ValueError(f"{source} does not fit {type(model).__name__}: " + " | ".join(problems))
    model.load_state_dict(state)
    return model


def save(model: nn.Module, path: str | Path, info: dict) -> Path:
    """Write ``model``'s state (``nn.Module.state_dict`` tensors) and ``info`` (see the module doc) to ``path``."""
    if info.get("stage") not in STAGES:
        raise ValueError(f"checkpoint.save: info['stage'] must be one of {STAGES}, got {info.get('stage')!r}")
    st = safetensors_torch()
    return atomic_write(path, lambda tmp: st.save_model(model, str(tmp), metadata={"spiketwin": json.dumps(info)}))


def read_metadata(path: str | Path, what: str) -> dict[str, str]:
    """The metadata of the safetensors file at ``path`` (empty when it has none); errors name it as ``what``
    (e.g. "checkpoint"): a ``FileNotFoundError`` when it is missing, a ``ValueError`` when it is not safetensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    safetensors_torch()  # a clear ImportError when it is missing
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:
        raise ValueError(f"{what} {path} is not a safetensors file: {e}") from e


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


def load(path: str | Path, calibration: torch.Tensor | None = None, snn: bool = True) -> tuple[nn.Module, dict]:
    """Rebuild the model stored at ``path`` and load its tensors. Returns ``(model, info)``: the ANN, the
    QANN, or the SNN (``info["stage"]``; with ``snn=False`` an SNN checkpoint gives the QANN it comes from).
    ``calibration`` is passed to ``to_qann`` when its method needs one (the calibrated values are then
    replaced by the stored ones)."""
    from .convert import to_qann, to_snn
    from .models import create

    info = read_info(path)
    model = create(info["model"], **info.get("overrides", {}))
    if info["stage"] != "ann":
        kwargs = dict(info.get("qann", {}))
        if calibration is None and kwargs.get("neuron") == "ilif":
            if "input_shape" not in info:
                raise ValueError(f"checkpoint {path}: an iLIF QANN needs 'input_shape' in its metadata to be rebuilt")
            calibration = torch.zeros(1, *info["input_shape"])  # shapes only: the steps come from the file
        if calibration is not None:
            kwargs["calibration"] = calibration
        model = to_qann(model, **kwargs)
    st = safetensors_torch()
    missing, unexpected = st.load_model(model, str(path), strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit model {info['model']!r} ({info['stage']}): "
                         f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    if info["stage"] == "snn" and snn:
        model = to_snn(model)
    return model, info
