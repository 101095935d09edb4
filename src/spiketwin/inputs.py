"""Model inputs: one tensor, a tuple of positional tensors, or a dict of keyword tensors (``input_ids``, ...).

The helpers here treat the three forms alike: :func:`count` (samples), :func:`select` (rows), :func:`to` (device,
and the dtype of the floating-point tensors only: token ids stay integers), :func:`call` (the model called as the
inputs say). :func:`describe` writes the form, shapes and dtypes of example inputs as JSON-able data (what a
checkpoint keeps to trace a model again; never the values) and :func:`placeholder` builds inputs from it.
"""

from __future__ import annotations

import torch
from torch import nn

Inputs = torch.Tensor | tuple | dict
"""A model input: one tensor, a tuple of positional inputs, or a dict of keyword inputs."""
SCALARS = (bool, int, float, str, type(None))


def _parts(x: Inputs) -> list:
    return list(x.values()) if isinstance(x, dict) else list(x) if isinstance(x, (tuple, list)) else [x]


def _map(x: Inputs, fn) -> Inputs:
    if isinstance(x, dict):
        return {k: fn(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return tuple(fn(v) for v in x)
    return fn(x)


def count(x: Inputs) -> int:
    """The number of samples: the length of the first tensor (every tensor input is batch-first)."""
    first = next((v for v in _parts(x) if isinstance(v, torch.Tensor) and v.dim()), None)
    if first is None:
        raise ValueError(f"inputs hold no tensor with a batch dimension (got {type(x).__name__})")
    return len(first)


def select(x: Inputs, index: torch.Tensor | slice) -> Inputs:
    """Rows ``index`` of every tensor input (other values are kept)."""
    return _map(x, lambda v: v[index] if isinstance(v, torch.Tensor) and v.dim() else v)


def to(x: Inputs, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Inputs:
    """The inputs on ``device``; floating-point tensors also in ``dtype`` when given."""
    return _map(x, lambda v: v.to(device, dtype if dtype is not None and v.is_floating_point() else None)
                if isinstance(v, torch.Tensor) else v)


def call(model: nn.Module, x: Inputs):
    """``model(**x)`` for a dict, ``model(*x)`` for a tuple, ``model(x)`` for a tensor."""
    if isinstance(x, dict):
        return model(**x)
    return model(*x) if isinstance(x, (tuple, list)) else model(x)


def _describe(value, where: str):
    if isinstance(value, torch.Tensor):
        return {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, SCALARS):
        return {"value": value}
    raise TypeError(f"example inputs: {where} is a {type(value).__name__}; a checkpoint keeps tensors (their shape and "
                    "dtype) and plain values (bool, int, float, str, None) only")


def describe(x: Inputs) -> dict:
    """The form, shapes and dtypes of ``x`` (values of non-tensors) as JSON-able data: ``{"tensor": {...}}``,
    ``{"tuple": [...]}`` or ``{"dict": {name: ...}}`` with ``{"shape", "dtype"}`` or ``{"value"}`` leaves."""
    if isinstance(x, dict):
        return {"dict": {k: _describe(v, f"input {k!r}") for k, v in x.items()}}
    if isinstance(x, (tuple, list)):
        return {"tuple": [_describe(v, f"positional input {i}") for i, v in enumerate(x)]}
    return {"tensor": _describe(x, "the input")}


def _leaf(spec: dict, dtype: torch.dtype | None, device):
    if "value" in spec:
        return spec["value"]
    kind = getattr(torch, str(spec.get("dtype")), None)
    if not isinstance(kind, torch.dtype) or not isinstance(spec.get("shape"), list):
        raise ValueError(f"example inputs: {spec} needs a 'shape' list and a torch 'dtype' name (e.g. 'float32')")
    if dtype is not None and kind.is_floating_point:
        kind = dtype
    return torch.zeros(spec["shape"], dtype=kind, device=device)


def placeholder(spec: dict, dtype: torch.dtype | None = None, device=None) -> Inputs:
    """Inputs of the form, shapes and dtypes :func:`describe` wrote, filled with zeros (tracing needs no values);
    floating-point tensors in ``dtype`` when given."""
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ("tensor", "tuple", "dict"):
        raise ValueError(f"example inputs: expected {{'tensor' | 'tuple' | 'dict': ...}} (spiketwin.inputs.describe), "
                         f"got {spec!r}")
    (form, body), = spec.items()
    if form == "dict":
        return {k: _leaf(v, dtype, device) for k, v in body.items()}
    if form == "tuple":
        return tuple(_leaf(v, dtype, device) for v in body)
    return _leaf(body, dtype, device)
