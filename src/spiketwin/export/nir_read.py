"""Read an NIR graph, ours or another producer's, into a module that runs one time step per call."""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..extras import require

# The time step each producer's exporter assumes when it writes tau (they store no dt)
_PRODUCER_DT = "snnTorch writes tau for dt = 1e-4, Norse for dt = 1e-3"


class _NIRNeuron(nn.Module):
    """One forward-Euler step of NIR's LIF (``tau`` given) or IF (``tau=None``); state: the potential."""

    def __init__(self, node, dt: float) -> None:
        super().__init__()
        for key in ("r", "v_threshold", "v_reset") + (("tau", "v_leak") if hasattr(node, "tau") else ()):
            self.register_buffer(key, torch.as_tensor(np.asarray(getattr(node, key))))
        self.leaky, self.dt = hasattr(node, "tau"), dt

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        v = self.v_reset.to(x.dtype).expand_as(x) if state is None else state
        if self.leaky:
            v = v + self.dt / self.tau * (self.v_leak - v + self.r * x)
        else:
            v = v + self.dt * self.r * x
        spikes = v > self.v_threshold
        return spikes.to(x.dtype), torch.where(spikes, self.v_reset.to(x.dtype), v)


class _Scale(nn.Module):
    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _size(value) -> tuple[int, ...]:
    """A pooling size as torch takes it: NIR files hold pairs, or one number for both sides (snnTorch)."""
    arr = np.asarray(value).reshape(-1)
    return tuple(int(v) for v in (arr if arr.size > 1 else (arr[0], arr[0])))


def _flatten_dim(dim) -> int:
    """NIR dims exclude the batch: a non-negative one moves up by one, one counted from the end stays."""
    dim = int(dim)
    return dim + 1 if dim >= 0 else dim


def _time_step(graph, dt: float | None, source) -> float:
    """``dt`` as given, else the graph's metadata, else 1 with a warning; warns where ``dt / tau > 1``."""
    where = f"NIR graph {str(source)!r}" if isinstance(source, (str, Path)) else "the NIR graph"
    if dt is None:
        stored = (graph.metadata or {}).get("dt")
        if stored is None:
            warnings.warn(f"from_nir: {where} stores no dt in its metadata; assuming dt = 1 (one time unit per "
                          f"step). The likely cause: another producer's file ({_PRODUCER_DT}); pass "
                          "from_nir(..., dt=...) with the time step it was written for", stacklevel=3)
            dt = 1.0
        else:
            dt = float(np.asarray(stored))
    for name, node in graph.nodes.items():
        tau = getattr(node, "tau", getattr(node, "tau_mem", None))
        if tau is None:
            continue
        ratio = float(np.max(dt / np.asarray(tau, dtype=np.float64)))
        if ratio > 1:
            warnings.warn(f"from_nir: node {name!r} of {where} has dt / tau = {ratio:.4g} > 1 with dt = {dt:g}: "
                          "forward Euler overshoots and the neuron no longer decays. The likely cause: the file was "
                          f"written for a smaller time step ({_PRODUCER_DT}); pass from_nir(..., dt=...)",
                          stacklevel=3)
            break
    return dt


def from_nir(source, dt: float | None = None, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Read an NIR graph (a path or a ``nir.NIRGraph``) into an executable module with ``nirtorch``.

    The module runs one time step per call: ``out, state = m(x)``, then ``m(x, state)``. Neurons are
    integrated with forward Euler over ``dt`` (default: the graph's ``metadata["dt"]``; without one, 1 and a
    warning). Files of other producers read as well: pooling sizes given as one number, Flatten dims counted
    from the end, ``SumPool2d``; a ``dt / tau`` above 1 (a file written for a smaller time step) is warned about.
    """
    nir = require("nir", "nir", "NIR export")
    nirtorch = require("nirtorch", "nir", "reading NIR back")
    graph = nir.read(str(source)) if isinstance(source, (str, Path)) else source
    dt = _time_step(graph, dt, source)

    def affine(node):  # nirtorch's own Affine mapping drops the bias (it sets weight.bias)
        layer = nn.Linear(node.weight.shape[-1], node.weight.shape[-2])
        layer.weight.data = torch.as_tensor(np.asarray(node.weight))
        layer.bias.data = torch.as_tensor(np.asarray(node.bias))
        return layer

    def flatten(node):
        return nn.Flatten(_flatten_dim(node.start_dim), _flatten_dim(node.end_dim))

    def avg_pool(node):
        return nn.AvgPool2d(_size(node.kernel_size), _size(node.stride), _size(node.padding))

    def sum_pool(node):
        if any(_size(node.padding)):
            raise ValueError(f"from_nir: a SumPool2d with padding {_size(node.padding)} is not supported")
        return nn.LPPool2d(1, _size(node.kernel_size), _size(node.stride))

    node_map = {nir.Affine: affine, nir.Flatten: flatten, nir.AvgPool2d: avg_pool, nir.SumPool2d: sum_pool,
                nir.LIF: lambda n: _NIRNeuron(n, dt), nir.IF: lambda n: _NIRNeuron(n, dt),
                nir.Scale: lambda n: _Scale(torch.as_tensor(np.asarray(n.scale)))}
    return nirtorch.nir_to_torch(graph, node_map, dtype=dtype)


def consumer(source, reader: str):
    """One step of the NIR graph ``source`` (a path or a ``nir.NIRGraph``) as the consumer library ``reader``
    runs it: ``step(x, state) -> (y, state)``. ``"snntorch"``: ``snntorch.import_nir.import_from_nir`` (its
    neurons keep their potentials inside; a fresh import starts at rest); ``"norse"``: ``norse.torch.from_nir``."""
    nir = require("nir", "nir", "NIR export")
    if reader not in _CONSUMERS:
        raise ValueError(f"unknown NIR reader {reader!r}; choose 'spiketwin', {', '.join(map(repr, _CONSUMERS))}")
    module_name, install = _CONSUMERS[reader]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(f"reading NIR with {reader} needs it installed: {install}") from e
    graph = nir.read(str(source)) if isinstance(source, (str, Path)) else copy.deepcopy(source)  # both edit it
    if reader == "snntorch":
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a progress line of its own
            net = module.import_from_nir(graph)
        return lambda x, state: (net(x)[0], None)
    return module.from_nir(graph)


# The importer of each consumer, and how to install it beside an existing torch (what the tests were run with)
_CONSUMERS = {"snntorch": ("snntorch.import_nir", "pip install snntorch==1.0.0"),
              "norse": ("norse.torch", "pip install --no-deps norse==1.1.0 (its torchvision requirement would "
                                       "pull another torch)")}
