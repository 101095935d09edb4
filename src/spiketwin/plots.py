"""PNG plots of a spiking run: accuracy vs time step, firing rate per layer, spike raster, settle steps.

Needs matplotlib (``pip install 'spiketwin[plot]'``). Figures are drawn with the Agg canvas directly (no
pyplot, no global backend switch), so plotting works on machines without a display. Every function
writes ``path`` and returns it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from .base import StatefulModule, reset
from .extras import require
from .neurons import ExactSTBIF


def _figure(width: float = 6.0, height: float = 4.0):
    figure = require("matplotlib.figure", "plot", "spiketwin.plots")
    canvas = require("matplotlib.backends.backend_agg", "plot", "spiketwin.plots")
    fig = figure.Figure(figsize=(width, height), dpi=100)
    canvas.FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plots write PNG files; got {path} (use a .png name)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def accuracy_vs_steps(curves: torch.Tensor | Sequence[float] | Mapping[str, torch.Tensor | Sequence[float]],
                      path: str | Path, reference: Mapping[str, float] | None = None,
                      title: str = "Accuracy vs time step") -> Path:
    """Accuracy after each step (``[T]``, e.g. :meth:`SimResult.accuracy_per_step`), or several named
    curves; ``reference`` draws horizontal lines (e.g. ``{"QANN": 0.97}``). Accuracies in ``[0, 1]``."""
    if not isinstance(curves, Mapping):
        curves = {"SNN": curves}
    fig = _figure()
    ax = fig.add_subplot()
    for label, curve in curves.items():
        values = torch.as_tensor(curve, dtype=torch.float64).flatten()
        ax.plot(range(1, len(values) + 1), (values * 100).tolist(), marker=".", label=label)
    styles = ("--", ":", "-.")
    for i, (label, value) in enumerate((reference or {}).items()):  # in the legend: close lines stay readable
        ax.axhline(100 * value, linestyle=styles[i % len(styles)], color=f"C{len(curves) + i}",
                   label=f"{label} {100 * value:.2f}%")
    ax.set_xlabel("time step T")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def firing_rates(report, path: str | Path, title: str = "Firing rate of each layer's input") -> Path:
    """Bars of the mean firing rate per counted layer of an :class:`~spiketwin.energy.EnergyReport`
    (products show both operands)."""
    names, rates, colours = [], [], []
    for layer in report.layers:
        for suffix, rate in (("", layer.rate), (" (b)", layer.rate_b)):
            if rate is not None:
                names.append(layer.name + suffix)
                rates.append(rate)
                colours.append("tab:orange" if layer.coding == "analog" else "tab:blue")
    fig = _figure(max(6.0, 0.35 * len(names) + 2), 4.0)
    ax = fig.add_subplot()
    ax.bar(range(len(names)), rates, color=colours)
    ax.set_xticks(range(len(names)), names, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("fraction of non-zero inputs")
    ax.set_title(title + " (orange: analog input)")
    ax.set_ylim(0, max(1.0, max(rates, default=0)))
    return _save(fig, path)


def spike_raster(spikes: torch.Tensor, path: str | Path, neurons: Sequence[int] | None = None, sample: int = 0,
                 title: str = "Spike raster") -> Path:
    """Raster of ``spikes`` (``[T, B, ...]``; any non-zero value is a spike, negative ones drawn in red) for
    ``sample``; ``neurons`` are flat indices into the per-sample neurons (default: the first 64)."""
    if spikes.dim() < 2:
        raise ValueError(f"spike_raster: spikes must be [T, B, ...], got shape {tuple(spikes.shape)}")
    if not 0 <= sample < spikes.shape[1]:
        raise ValueError(f"spike_raster: sample {sample} is outside the batch of {spikes.shape[1]}")
    flat = spikes[:, sample].reshape(spikes.shape[0], -1).detach().cpu()
    chosen = list(range(min(64, flat.shape[1]))) if neurons is None else list(neurons)
    bad = [n for n in chosen if not 0 <= n < flat.shape[1]]
    if bad:
        raise ValueError(f"spike_raster: neuron indices {bad} outside 0..{flat.shape[1] - 1}")
    fig = _figure()
    ax = fig.add_subplot()
    for row, n in enumerate(chosen):
        train = flat[:, n]
        for sign, colour in ((1, "black"), (-1, "red")):
            steps = torch.nonzero(train * sign > 0).flatten() + 1
            ax.vlines(steps.tolist(), row + 0.6, row + 1.4, color=colour, linewidth=1.5)
    every = max(1, len(chosen) // 16)  # at most ~16 labels
    ax.set_yticks(range(1, len(chosen) + 1, every), [str(n) for n in chosen[::every]], fontsize=8)
    ax.set_xlim(0.5, flat.shape[0] + 0.5)
    ax.set_ylim(0.5, len(chosen) + 0.5)
    ax.set_xlabel("time step")
    ax.set_ylabel("neuron")
    ax.set_title(title)
    return _save(fig, path)


def settle_histogram(settle_step: torch.Tensor, path: str | Path, title: str = "Settle step per sample") -> Path:
    """Histogram of the settle steps (``[B]``, ``-1`` = did not settle, counted in the title)."""
    steps = torch.as_tensor(settle_step).flatten().cpu()
    settled = steps[steps >= 0]
    fig = _figure()
    ax = fig.add_subplot()
    if len(settled):
        lo, hi = int(settled.min()), int(settled.max())
        ax.hist(settled.tolist(), bins=range(lo, hi + 2), align="left", color="tab:blue")
        title += f" (median {int(settled.median())}, max {hi})"
    unsettled = int((steps < 0).sum())
    if unsettled:
        title += f"; {unsettled} of {len(steps)} not settled"
    ax.set_xlabel("settle step")
    ax.set_ylabel("samples")
    ax.set_title(title)
    return _save(fig, path)


def record(model: nn.Module, x, name: str,
           run: Callable[[nn.Module, object], object] | None = None) -> torch.Tensor:
    """The output of ``model``'s sub-module ``name`` (e.g. a neuron's spikes) over a run, ``[T, B, ...]``.

    The run is ``model(x)`` (no gradients), or ``run(model, x)`` (e.g. a converted SNN's own ``simulate``
    without early exit); outputs of calls in sequence mode are joined along time, those in step mode
    stacked. The model's spiking state is reset before and after.

    A converted graph SNN (``spiketwin.convert.to_snn``) names its neurons by ``model.labels`` (a module path works
    too); its default run steps until every sample settles (:func:`spiketwin.energy.until_settled`). An exact-state
    neuron (:class:`~spiketwin.neurons.ExactSTBIF`) outputs its count; what is recorded is its spikes, the count
    change times θ (as an event-state :class:`~spiketwin.neurons.STBIF` outputs them)."""
    from .energy import is_graph_snn, until_settled

    modules = dict(model.named_modules())
    labels = list(getattr(model, "labels", None) or []) if is_graph_snn(model) else []
    if name in labels:
        module = model.neurons[labels.index(name)]
    elif name in modules:
        module = modules[name]
    else:
        known = labels or [n for n, m in modules.items() if isinstance(m, StatefulModule)]
        raise KeyError(f"record: {type(model).__name__} has no {'neuron' if labels else 'module'} {name!r}; "
                       f"{'neurons' if labels else 'spiking modules'}: {', '.join(known[:20])}"
                       f"{' ...' if len(known) > 20 else ''}")
    if run is None and is_graph_snn(model):
        run = until_settled()
    out: list[torch.Tensor] = []

    def keep(m, args, y) -> None:
        y = m.spikes if isinstance(m, ExactSTBIF) else y
        out.append(y.detach() if getattr(m, "step_mode", "m") == "m" else y.detach().unsqueeze(0))

    handle = module.register_forward_hook(keep)
    try:
        reset(model)
        with torch.no_grad():
            run(model, x) if run is not None else model(x)
    finally:
        handle.remove()
        reset(model)
    if not out:
        raise RuntimeError(f"record: module {name!r} did not run")
    return torch.cat(out)
