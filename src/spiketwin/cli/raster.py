"""``--raster``: the spike raster of one neuron layer for the first test sample (``simulate``, ``energy``)."""

from __future__ import annotations

import argparse

import torch

from .usage import UsageError


def add_raster_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--raster", metavar="PNG", help="write a spike raster of the first test sample here")
    p.add_argument("--raster-module", metavar="PATH", help="the neuron layer to draw, a module path or a converted "
                                                           "graph SNN's neuron label (default: the first one)")
    p.add_argument("--raster-neurons", metavar="I,J,..", help="neuron indices in that layer (default: the first 64)")


def write_raster(model, x, args, run=None) -> None:
    """``--raster``: spikes of ``--raster-module`` (default: the first neuron layer) for the first sample."""
    if not args.raster:
        return
    from ..energy import is_graph_snn
    from ..neurons import ILIF, LIF, STBIF, ExactSTBIF
    from ..plots import record, spike_raster

    first = model.labels[0] if is_graph_snn(model) else next(  # a converted graph SNN names its neurons
        (n for n, m in model.named_modules() if isinstance(m, (LIF, STBIF, ILIF, ExactSTBIF))), None)
    name = args.raster_module or first
    if name is None:
        raise ValueError(f"--raster: {type(model).__name__} has no neuron layer; name one with --raster-module")
    try:
        neurons = None if not args.raster_neurons else [int(i) for i in args.raster_neurons.split(",")]
    except ValueError as e:
        raise UsageError(f"--raster-neurons expects comma-separated integers, got {args.raster_neurons!r}") from e
    one = (lambda v: v[:1] if isinstance(v, torch.Tensor) and v.dim() else v)  # the first sample
    spikes = record(model, {k: one(v) for k, v in x.items()} if isinstance(x, dict) else one(x), name, run=run)
    print(f"{args.command}: wrote {spike_raster(spikes, args.raster, neurons, title=f'Spikes of {name}')}")
