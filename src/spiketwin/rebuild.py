"""A model rebuilt from a checkpoint at its stage: the ANN, the QANN or the SNN (:mod:`spiketwin.checkpoint`).

The model is built with :func:`spiketwin.models.create` (a Hugging Face model: from the class and configuration
the checkpoint describes, :func:`spiketwin.models.huggingface.from_description`), converted as the checkpoint says
(``to_qann``, traced again on zero inputs of the stored shapes and dtypes: the same tracing gives the same
quantizers in the same order; ``to_snn`` with the stored options for the ``snn`` stage, whose tensors are the
QANN's: the SNN is derived from them exactly), then the tensors are loaded, every one of them and no other. A
SpikeConverter QANN is rebuilt with a zero calibration batch of ``input_shape`` (its structure does not depend on
the values; the quantizer steps are then read from the file). Loading never runs code from the file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .checkpoint import read_info
from .convert import to_qann, to_snn
from .inputs import placeholder
from .models import create
from .utils import safetensors_torch


def build(info: dict, where: str = "checkpoint") -> nn.Module:
    """The ANN a checkpoint's ``info`` describes, with fresh weights: a registry model or a Hugging Face one."""
    if "hf" in info:
        from .models.huggingface import from_description

        return from_description(info["hf"], where)
    return create(info["model"], **info.get("overrides", {}))


def from_checkpoint(path: str | Path, calibration: torch.Tensor | None = None,
                    snn: bool = True, device: torch.device | str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model stored at ``path`` and load its tensors. Returns ``(model, info)``: the ANN, the
    QANN, or the SNN (``info["stage"]``; with ``snn=False`` an SNN checkpoint gives the QANN it comes from).
    ``calibration`` is passed to ``to_qann`` when its method needs one (the calibrated values are then
    replaced by the stored ones). ``device``: where the model is built and traced (a traced graph keeps the
    device its constants were made on), default the CPU."""
    info = read_info(path)
    model = build(info, f"checkpoint {path}").to(device)
    if info["stage"] != "ann":
        kwargs = dict(info.get("qann", {}))
        if calibration is None and kwargs.get("neuron") == "ilif":
            if "input_shape" not in info:
                raise ValueError(f"checkpoint {path}: an iLIF QANN needs 'input_shape' in its metadata to be rebuilt")
            calibration = torch.zeros(1, *info["input_shape"], device=device)  # shapes only: steps from the file
        if calibration is not None:
            kwargs["calibration"] = calibration
        if "example_inputs" in kwargs:  # shapes and dtypes only: tracing needs no values
            kwargs["example_inputs"] = placeholder(kwargs["example_inputs"],
                                                   next(model.parameters(), torch.empty(0)).dtype, device)
        model = to_qann(model, **kwargs)
    missing, unexpected = safetensors_torch().load_model(model, str(path), strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit model {info['model']!r} ({info['stage']}): "
                         f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    if info["stage"] == "snn" and snn:
        model = to_snn(model, **info.get("snn", {}))
    return model, info
