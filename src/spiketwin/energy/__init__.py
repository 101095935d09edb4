"""Energy reports: operation counts, firing rates and the energy of an SNN beside its ANN twin.

``report(model, x)`` runs ``model`` once with forward hooks on every counted module and returns an
:class:`EnergyReport`; ``compare(model, x, ["spiketwin", "syops", ...])`` runs it once and applies several
counting conventions to the same statistics. Counted modules are

- weight layers: ``nn.Linear``, ``nn.Conv1d/2d/3d`` and wrappers that hold one in ``.layer`` but apply
  its weight themselves (e.g. the iLIF SNN's per-period bias layer);
- activation x activation products: :class:`spiketwin.ops.MatMul` and any module registered with
  :func:`register_product`;
- for conventions that count them (:class:`Convention` ``extras``): BatchNorm, LayerNorm, pooling, neurons;
- in a converted graph SNN (:mod:`spiketwin.energy.graph`): its weighted nodes (linear, convolution, addmm, a
  matmul with a constant) and its products of two signals, found by the conversion engine's node kinds.

Definitions of the default convention, ``spiketwin`` (SPEC "Energy"), per sample:

- ``FLOPs``: multiply-accumulates of the layer for one input (one time step), as the ANN computes them:
  ``out_numel * in_features`` (Linear), ``out_numel * C_in/groups * prod(kernel)`` (Conv),
  ``out_numel * k`` for ``[.., n, k] @ [.., k, m]``. Biases are not counted.
- firing rate ``r_t``: fraction of non-zero input elements at step ``t`` (over the batch); ``r = mean_t r_t``.
- weight layer with spike input: ``SOPs = s * T * FLOPs`` accumulates (``E_AC`` each), ``s`` the spikes per
  input element: the firing rate, except that an ST-BIF neuron's graded spike ``k θ`` counts ``|k|`` (every
  spike is an accumulate per fan-out). ``sop_events`` counts each non-zero input once (a graded spike as one
  event); the energy uses ``SOPs``.
- product of two spike trains ``a @ b``: ``SOPs = FLOPs * Σ_t s_a(t) s_b(t)`` (the rates taken independent
  within a step); the exact count of coincident non-zero pairs is reported beside it as ``sops_exact``.
- weight layer with analog input (default: the first counted layer to run, unless its input is already
  spike-coded, i.e. all its non-zero values have one magnitude): ``MACs = FLOPs * n_compute``, ``n_compute``
  the mean over samples of the steps whose input is non-zero and differs from the previous step's. A static
  image repeated T times is computed once (Spikformer's repetition is a way of feeding it, not T different
  inputs); SpikeZIP-TF's image at ``t = 1`` only, once. The directly trained papers (Spikformer,
  Spikingformer) and syops-counter count it T times instead: the ``spikingformer`` / ``syops`` conventions.
- ``E_SNN = E_MAC * Σ MACs + E_AC * Σ SOPs``; the ANN's energy is ``E_MAC * Σ FLOPs`` (all MACs, once).

A layer that runs once per sequence rather than once per step (e.g. a classifier on time-averaged
features) counts with ``T = 1``. The other presets (:data:`CONVENTIONS`) and what each counts: docs/energy.md.

A model in which no spiking module ran (an ANN) raises :class:`NotSpikingError`, a ``RuntimeError``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..base import check_step_mode, reset, set_step_mode
from .collect import PRODUCTS, WEIGHT_LAYERS, Needs, Run
from .conventions import CONVENTIONS, Convention, get_convention
from .costs import HOROWITZ_45NM, PRESETS, energy_per_op
from .count import layer_rows
from .graph import GraphRun, batch_of, instrument, is_graph_snn, until_settled
from .result import EnergyReport, LayerEnergy, comparison_table, csv_text

__all__ = ["CONVENTIONS", "HOROWITZ_45NM", "PRESETS", "WEIGHT_LAYERS", "Convention", "EnergyReport", "LayerEnergy",
           "NotSpikingError", "compare", "comparison_table", "csv_text", "is_graph_snn", "register_product",
           "report", "simulation_run", "until_settled"]


class NotSpikingError(RuntimeError):
    """:func:`report` ran the model but no spiking module (:class:`~spiketwin.base.StatefulModule`) did, so
    there are no time steps or firing rates to count: the model is an ANN (or its neurons were bypassed)."""


def register_product(cls: type) -> type:
    """Count modules of type ``cls`` (called as ``m(a, b)`` computing ``a @ b``) as activation products."""
    if cls not in PRODUCTS:
        PRODUCTS.append(cls)
    return cls


def simulation_run(max_steps: int) -> Callable[[nn.Module, torch.Tensor], object]:
    """``run`` for :func:`report` on a converted SNN (one with a ``simulate`` method): its own ``simulate`` for
    ``max_steps`` steps on the whole batch, without early exit or skipping where it has them (settled samples are
    silent, so the counts stop growing once a sample has settled)."""

    def run(snn: nn.Module, x: torch.Tensor):
        kwargs: dict = {"max_steps": max_steps}
        parameters = inspect.signature(snn.simulate).parameters
        if "early_exit" in parameters:
            kwargs["early_exit"] = False
        if "skip_settled" in parameters:  # every op is watched at every step
            kwargs["skip_settled"] = False
        return snn.simulate(x, **kwargs)
    return run


def report(
    model: nn.Module,
    x: torch.Tensor,
    step_mode: str = "m",
    analog: str | Iterable[str] = "first",
    e_mac: float | None = None,
    e_ac: float | None = None,
    preset: str = "fp32",
    run: Callable[[nn.Module, torch.Tensor], object] | None = None,
    convention: str | Convention = "spiketwin",
) -> EnergyReport:
    """Count the operations and firing rates of ``model`` on input ``x``, and price them.

    Args:
        model: a spiking network (its neurons are :class:`~spiketwin.base.StatefulModule`), or a converted graph
            SNN (``spiketwin.convert.to_snn`` of any traced model, either state), whose weighted ops and products
            are graph nodes (:mod:`spiketwin.energy.graph`); it is counted on an instrumented copy.
        x: in ``step_mode="m"`` what ``model`` takes in one call (``[T, B, ...]``, or ``[B, ...]`` for a
            model that repeats a static input itself). In ``step_mode="s"``: a ``[T, B, ...]`` sequence fed
            one step (``[B, ...]``) per call. The steps and the batch size are read from the inputs of the
            spiking modules (``[n, B, ...]`` in sequence mode, ``[B, ...]`` in step mode). A graph SNN takes
            its inputs as it is called (a tensor ``[B, ...]``, a tuple, or a dict of keyword tensors) and runs
            one step per call; by default until every sample settles (:func:`until_settled`).
        analog: for a convention with ``analog="first"``, which weight layers get analog (non-spike) input and
            cost MACs: ``"first"`` (the first counted layer to run, unless its first input is spike-coded:
            every non-zero value of one magnitude, e.g. event frames or a RoBERTa SNN whose embeddings feed a
            neuron), ``"none"``, or a list of module paths (of a graph SNN: its row names).
        e_mac, e_ac: energy per multiply-accumulate / accumulate in pJ; default from ``preset``
            (:data:`PRESETS`: ``fp32`` is 4.6 / 0.9).
        run: ``run(model, x)`` replaces the default way of running the model, e.g. a converted SNN's own
            ``simulate`` (input at the first step only); it must run every sample of the batch for the same
            steps (no early exit), in one call, in chunks or step by step, and sets the step modes itself
            (``step_mode`` is then not used).
        convention: a :class:`Convention` or the name of a preset in :data:`CONVENTIONS` (what is counted and
            how; default ``"spiketwin"``).

    The model runs in eval mode without gradients; its spiking state is reset before and after, and its
    step modes restored. Returns an :class:`EnergyReport` (counts and energies per sample).

    Raises:
        NotSpikingError: no spiking module ran (``model`` is not an SNN).
        ValueError: a bad ``preset``, ``analog``, ``convention`` or ``step_mode``, or a model with no layer to count.
        RuntimeError: a counted layer's input whose time steps cannot be told from its shape.
    """
    return _measure(model, x, [get_convention(convention)], step_mode, analog, e_mac, e_ac, preset, run)[0]


def compare(model: nn.Module, x: torch.Tensor, conventions: Iterable[str | Convention] = tuple(CONVENTIONS),
            **options) -> dict[str, EnergyReport]:
    """:func:`report` under several conventions from one run: ``{name: EnergyReport}`` in the order given
    (default: every preset); ``options`` are :func:`report`'s (``step_mode``, ``analog``, ``e_mac``, ``e_ac``,
    ``preset``, ``run``). The statistics are collected once; :func:`comparison_table` prints one line each."""
    chosen = [get_convention(c) for c in conventions]
    if not chosen:
        raise ValueError("energy.compare: give at least one convention")
    return {r.convention: r for r in _measure(model, x, chosen, **options)}


def _measure(model, x, chosen, step_mode="m", analog="first", e_mac=None, e_ac=None, preset="fp32", run=None):
    """One instrumented run of ``model`` on ``x``; one :class:`EnergyReport` per convention in ``chosen``."""
    e_mac, e_ac = energy_per_op(preset, e_mac, e_ac)
    check_step_mode(step_mode)
    if step_mode == "s" and run is None and isinstance(x, torch.Tensor) and x.dim() < 2:
        raise ValueError(f"energy.report: step_mode='s' needs a [T, B, ...] sequence, got shape {tuple(x.shape)}")
    needs = Needs(first=any(c.analog == "first" for c in chosen),
                  values=any(c.analog != "first" or c.extras for c in chosen),
                  uses=any(c.accumulates == "exact" for c in chosen),
                  extras={e for c in chosen for e in c.extras})
    if is_graph_snn(model):  # its ops are graph nodes: count them on an instrumented copy
        model, ops, norms = instrument(model)
        hooks = GraphRun(model, analog, needs, ops, norms, batch_of(x), getattr(model, "state", "exact") == "exact")
        run = run if run is not None else until_settled()
    modes = {m: m.step_mode for m in model.modules() if hasattr(m, "step_mode")}
    was_training = model.training
    reset(model)
    if run is None:
        set_step_mode(model, step_mode)
    model.eval()
    if not is_graph_snn(model):
        hooks = Run(model, analog, needs)
    try:
        with torch.no_grad():
            if run is not None:
                run(model, x)
            elif step_mode == "m":
                model(x)
            else:
                for x_t in x:
                    model(x_t)
            if hooks.batch is None:
                raise NotSpikingError(f"energy.report: no spiking module of {type(model).__name__} ran, so the "
                                      "time steps are unknown")
            hooks.flush()
        hooks.finish()
    finally:
        hooks.close()
        reset(model)
        for m, mode in modes.items():
            m.step_mode = mode
        model.train(was_training)
    stats = list(hooks.stats.values())
    if not any(s.kind in ("linear", "conv", "product") for s in stats):
        raise ValueError(f"energy.report: {type(model).__name__} has no Linear/Conv layer or activation product "
                         "to count")
    T = max(s.steps for s in stats)
    return [EnergyReport(layer_rows(stats, c, hooks.batch, e_mac, e_ac), T, hooks.batch, e_mac, e_ac, c.name)
            for c in chosen]
