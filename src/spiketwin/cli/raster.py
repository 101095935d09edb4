"""``--raster``: the spike raster of one neuron layer for the first test sample (``simulate``, ``energy``)."""

from __future__ import annotations

import argparse

from .usage import UsageError


def add_raster_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--raster", metavar="PNG", help="write a spike raster of the first test sample here")
    p.add_argument("--raster-module", metavar="PATH", help="the neuron layer to draw (default: the first one)")
    p.add_argument("--raster-neurons", metavar="I,J,..", help="neuron indices in that layer (default: the first 64)")


def write_raster(model, x, args, run=None) -> None:
    """``--raster``: spikes of ``--raster-module`` (default: the first neuron layer) for the first sample."""
    if not args.raster:
        return
    from ..neurons import ILIF, LIF, STBIF
    from ..plots import record, spike_raster

    name = args.raster_module or next((n for n, m in model.named_modules() if isinstance(m, (LIF, STBIF, ILIF))),
                                      None)
    if name is None:
        raise ValueError(f"--raster: {type(model).__name__} has no neuron layer; name one with --raster-module")
    try:
        neurons = None if not args.raster_neurons else [int(i) for i in args.raster_neurons.split(",")]
    except ValueError as e:
        raise UsageError(f"--raster-neurons expects comma-separated integers, got {args.raster_neurons!r}") from e
    spikes = record(model, x[:1], name, run=run)
    print(f"{args.command}: wrote {spike_raster(spikes, args.raster, neurons, title=f'Spikes of {name}')}")
