"""Energy reports: operation counts, firing rates and the energy of an SNN beside its ANN twin.

``report(model, x)`` runs ``model`` once with forward hooks on every counted layer and returns an
:class:`EnergyReport`. Counted layers are

- weight layers: ``nn.Linear``, ``nn.Conv1d/2d/3d`` and wrappers that hold one in ``.layer`` but apply
  its weight themselves (e.g. SpikeZIP-TF's bias-once layer);
- activation x activation products: :class:`spiketwin.ops.MatMul`, SpikeZIP-TF's :class:`spiketwin.ops.SESA`
  and any module registered with :func:`register_product`.

Definitions (SPEC "Energy"), per sample:

- ``FLOPs``: multiply-accumulates of the layer for one input (one time step), as the ANN computes them:
  ``out_numel * in_features`` (Linear), ``out_numel * C_in/groups * prod(kernel)`` (Conv),
  ``out_numel * k`` for ``[.., n, k] @ [.., k, m]``. Biases are not counted.
- firing rate ``r_t``: fraction of non-zero input elements at step ``t`` (over the batch); ``r = mean_t r_t``.
- weight layer with spike input: ``SOPs = r * T * FLOPs`` (accumulates, ``E_AC`` each).
- product of two spike trains ``a @ b``: ``SOPs = FLOPs * Σ_t r_a(t) r_b(t)`` (a term ``a_ik b_kj`` costs an
  accumulate only when both operands are non-zero; the rates are taken independent within a step).
  The exact count of such terms, ``Σ_t Σ 1[a≠0] @ 1[b≠0]``, is reported beside it as ``sops_exact``.
- weight layer with analog input (default: the first counted layer to run, unless its input is already
  spike-coded, i.e. all its non-zero values have one magnitude): ``MACs = FLOPs * n_compute``
  where ``n_compute`` is the mean over samples of the steps whose input is non-zero and differs from the
  previous step's (a repeated static image is computed once, as the papers count it; SpikeZIP-TF's
  analog input at ``t = 1`` only is computed once).
- ``E_SNN = E_MAC * Σ MACs + E_AC * Σ SOPs``; the ANN's energy is ``E_MAC * Σ FLOPs`` (all MACs, once).

A layer that runs once per sequence rather than once per step (e.g. a classifier on time-averaged
features) counts with ``T = 1``.

A model in which no spiking module ran (an ANN) raises :class:`NotSpikingError`, a ``RuntimeError``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .base import StatefulModule, check_step_mode, reset, set_step_mode
from .checkpoint import atomic_write
from .ops import SESA, MatMul

#: Energy per arithmetic operation in pJ, 45 nm CMOS at 0.9 V, from the table of operation energies in
#: M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, pp. 10-14,
#: doi:10.1109/ISSCC.2014.6757323. Checked against two independent reproductions of that table (docs/energy.md).
HOROWITZ_45NM: dict[str, dict[str, float]] = {
    "fp32": {"mult": 3.7, "add": 0.9},
    "fp16": {"mult": 1.1, "add": 0.4},
    "int32": {"mult": 3.1, "add": 0.1},
    "int8": {"mult": 0.2, "add": 0.03},
}

#: ``(E_MAC, E_AC)`` in pJ per number format: a MAC is one multiply plus one add, an AC one add
#: (fp32: 4.6 / 0.9, the SPEC's and the SNN papers' figures).
PRESETS: dict[str, tuple[float, float]] = {
    name: (round(op["mult"] + op["add"], 6), op["add"]) for name, op in HOROWITZ_45NM.items()
}

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PRODUCTS: list[type] = [MatMul, SESA]


class NotSpikingError(RuntimeError):
    """:func:`report` ran the model but no spiking module (:class:`~spiketwin.base.StatefulModule`) did, so
    there are no time steps or firing rates to count: the model is an ANN (or its neurons were bypassed)."""


def register_product(cls: type) -> type:
    """Count modules of type ``cls`` (called as ``m(a, b)`` computing ``a @ b``) as activation products."""
    if cls not in _PRODUCTS:
        _PRODUCTS.append(cls)
    return cls


@dataclass
class LayerEnergy:
    """One counted layer. ``flops`` is per sample and step; ops and energies are per sample (whole run)."""

    name: str
    kind: str  # "linear", "conv", "product"
    coding: str  # "spike" or "analog"
    steps: int  # time steps the layer runs (1 for a once-per-sequence layer)
    flops: float
    rate: float  # mean over steps of the fraction of non-zero inputs (product: of operand a)
    rate_per_step: list[float]
    sops: float
    macs: float
    energy_pj: float
    ann_energy_pj: float
    rate_b: float | None = None  # products: operand b
    rate_b_per_step: list[float] | None = None
    sops_exact: float | None = None  # products: exact number of terms with both operands non-zero


@dataclass
class EnergyReport:
    """Per-layer counts and totals; ``table()``, ``to_json()``, ``to_csv()`` render it."""

    layers: list[LayerEnergy]
    T: int
    batch: int
    e_mac: float
    e_ac: float
    totals: dict = field(init=False)

    def __post_init__(self) -> None:
        macs = sum(layer.macs for layer in self.layers)
        sops = sum(layer.sops for layer in self.layers)
        flops = sum(layer.flops for layer in self.layers)
        snn = self.e_mac * macs + self.e_ac * sops
        ann = self.e_mac * flops
        self.totals = {"flops": flops, "macs": macs, "sops": sops, "energy_pj": snn, "ann_energy_pj": ann,
                       "ratio_ann_over_snn": ann / snn if snn > 0 else math.inf}

    def to_dict(self) -> dict:
        return {"T": self.T, "batch": self.batch, "e_mac_pj": self.e_mac, "e_ac_pj": self.e_ac,
                "layers": [asdict(layer) for layer in self.layers], "totals": dict(self.totals)}

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            _write_text(path, text + "\n")
        return text

    def to_csv(self, path: str | Path | None = None) -> str:
        """One row per layer (per-step rates joined by ``;``), then a ``total`` row."""
        out = io.StringIO()
        names = ["name", "kind", "coding", "steps", "flops", "rate", "rate_b", "sops", "sops_exact", "macs",
                 "energy_pj", "ann_energy_pj", "rate_per_step", "rate_b_per_step"]
        writer = csv.DictWriter(out, names, lineterminator="\n")
        writer.writeheader()
        for layer in self.layers:
            row = {k: v for k, v in asdict(layer).items() if k in names}
            for key in ("rate_per_step", "rate_b_per_step"):
                row[key] = "" if row[key] is None else ";".join(f"{r:.6g}" for r in row[key])
            writer.writerow(row)
        t = self.totals
        writer.writerow({"name": "total", "flops": t["flops"], "sops": t["sops"], "macs": t["macs"],
                         "energy_pj": t["energy_pj"], "ann_energy_pj": t["ann_energy_pj"]})
        if path is not None:
            _write_text(path, out.getvalue())
        return out.getvalue()

    def table(self) -> str:
        """A plain-text table: one line per layer, then the totals and the ANN / SNN energy ratio."""
        header = ["layer", "kind", "input", "T", "FLOPs", "rate", "SOPs", "MACs", "E_SNN", "E_ANN"]
        rows = []
        for x in self.layers:
            rate = f"{x.rate:.3f}" if x.rate_b is None else f"{x.rate:.3f}x{x.rate_b:.3f}"
            rows.append([x.name, x.kind, x.coding, str(x.steps), _si(x.flops), rate, _si(x.sops), _si(x.macs),
                         _joules(x.energy_pj), _joules(x.ann_energy_pj)])
        t = self.totals
        rows.append(["total", "", "", "", _si(t["flops"]), "", _si(t["sops"]), _si(t["macs"]),
                     _joules(t["energy_pj"]), _joules(t["ann_energy_pj"])])
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in [header] + rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.insert(-1, lines[1])
        lines.append(f"per sample, T={self.T}, E_MAC={self.e_mac} pJ, E_AC={self.e_ac} pJ: "
                     f"SNN {_joules(t['energy_pj'])}, ANN {_joules(t['ann_energy_pj'])}, "
                     f"ANN/SNN = {t['ratio_ann_over_snn']:.2f}x")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _scaled(value: float, units: tuple[str, str, str, str]) -> str:
    """``value`` in the largest of ``units`` (x1, x1e3, x1e6, x1e9) that keeps it at least 1, 3 digits."""
    for power in (3, 2, 1):
        if abs(value) >= 1000 ** power:
            return f"{value / 1000 ** power:.3g}{units[power]}"
    return f"{value:.3g}{units[0]}"


def _si(value: float) -> str:
    return _scaled(value, ("", "k", "M", "G"))


def _joules(pj: float) -> str:
    return _scaled(pj, (" pJ", " nJ", " uJ", " mJ"))


def _weight_layer(module: nn.Module) -> nn.Module | None:
    """The ``nn.Linear`` / ``nn.ConvNd`` a module is, or wraps in ``.layer`` (None otherwise)."""
    if isinstance(module, WEIGHT_LAYERS):
        return module
    inner = getattr(module, "layer", None)
    return inner if isinstance(inner, WEIGHT_LAYERS) else None


def _spike_coded(x: torch.Tensor) -> bool:
    """All non-zero values of ``x`` have one magnitude (binary spikes, ST-BIF ``±θ``, iLIF ``θ/k^T``).
    One host synchronisation, for the first counted layer only."""
    nonzero = x[x != 0].abs()
    return bool(nonzero.numel() == 0 or nonzero.max() == nonzero.min())


def _weight_flops(layer: nn.Module, out: torch.Tensor) -> int:
    if isinstance(layer, nn.Linear):
        return out.numel() * layer.in_features
    return out.numel() * (layer.in_channels // layer.groups) * math.prod(layer.kernel_size)


class _Counter:
    """One layer's statistics over the calls of a run (count tensors stay on the input's device)."""

    def __init__(self, name: str, kind: str, analog: bool) -> None:
        self.name, self.kind, self.analog = name, kind, analog
        self.flops = 0  # summed over calls and samples
        self.steps = 0  # time steps counted so far (the next call's first step)
        self.entries: list[tuple[int, torch.Tensor, int, torch.Tensor | None, int]] = []
        # (first step, nonzero a [n], numel a per step, nonzero b [n] or None, numel b per step)
        self.pairs: list[torch.Tensor] = []  # products: [n] terms with both operands non-zero
        self.compute_steps: list[torch.Tensor] = []  # analog: [B] steps computed, per call
        self.previous: torch.Tensor | None = None  # analog: the last step's input [B, -1]


class _Run:
    """The forward hooks of one :func:`report` call.

    Time is read from the spiking modules: a stateful module in sequence mode gets ``[n, B, ...]`` (``n``
    steps: the whole run, or one chunk of it), one in step mode gets one step ``[B, ...]``. Each counted
    layer keeps its own step cursor, so a run may call the network once, chunk by chunk or step by step.
    """

    def __init__(self, model: nn.Module, analog: str | Iterable[str]) -> None:
        if isinstance(analog, str) and analog not in ("first", "none"):
            raise ValueError(f"energy.report: analog must be 'first', 'none' or a list of module paths, "
                             f"got {analog!r}")
        self.analog_first = analog == "first"
        self.analog = set() if isinstance(analog, str) else set(analog)
        unknown = self.analog - {name for name, _ in model.named_modules()}
        if unknown:
            raise ValueError(f"energy.report: analog lists {sorted(unknown)}, which are not module paths of "
                             f"{type(model).__name__}")
        self.counters: dict[str, _Counter] = {}
        self.n: int | None = None  # steps in the current call (sequence mode)
        self.batch: int | None = None
        self.calls: dict[nn.Module, int] = {}  # weight layer -> times it counted itself
        self.before: dict[nn.Module, int] = {}  # wrapper -> its layer's count when the wrapper started
        self.pending: list[Callable[[int], None]] = []  # counts waiting for the steps of their call
        self.running: list[int | None] = []  # steps of the spiking modules now executing (a stack)
        self.handles = []
        products = tuple(_PRODUCTS)
        for name, m in model.named_modules():
            if isinstance(m, StatefulModule):
                self.handles.append(m.register_forward_pre_hook(self._enter))
            layer = _weight_layer(m)
            if layer is not None:
                if layer is not m:
                    self.handles.append(m.register_forward_pre_hook(self._wrapper_enter(layer)))
                self.handles.append(m.register_forward_hook(self._weight_hook(name, layer)))
            elif isinstance(m, products):
                self.handles.append(m.register_forward_hook(self._product_hook(name)))
            if isinstance(m, StatefulModule):
                self.handles.append(m.register_forward_hook(self._leave))

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def _enter(self, module: nn.Module, args) -> None:
        """A spiking module starts: its input says how many steps this call holds (and the batch size)."""
        x = args[0] if args else None
        n = None
        if isinstance(x, torch.Tensor) and x.dim() >= 2:
            sequence = getattr(module, "step_mode", "m") == "m"
            if self.batch is None:
                self.batch = x.shape[1] if sequence else x.shape[0]
            n = self.n = x.shape[0] if sequence else 1
            self.flush()
        self.running.append(n)

    def _leave(self, module: nn.Module, args, out) -> None:
        self.running.pop()

    def flush(self) -> None:
        for count in self.pending:
            count(self.n)
        self.pending.clear()

    def _count_when_known(self, count: Callable[[int], None]) -> None:
        """Count now when the steps of this call are known: the layer runs inside a spiking module (or is
        one), whose input showed them. Otherwise (a plain layer ahead of the first spiking module of a
        call) count at the next spiking module's call, or at :meth:`flush` after the run."""
        known = next((n for n in reversed(self.running) if n is not None), None)
        if known is not None:
            count(known)
        else:
            self.pending.append(count)

    def _wrapper_enter(self, layer: nn.Module):
        def hook(module: nn.Module, args) -> None:
            self.before[module] = self.calls.get(layer, 0)
        return hook

    def _counter(self, name: str, kind: str, x: torch.Tensor | None = None) -> _Counter:
        """The layer's counter; a weight layer's first input ``x`` decides ``analog="first"``."""
        c = self.counters.get(name)
        if c is None:
            analog = x is not None and (name in self.analog or
                                        (self.analog_first and not self.counters and not _spike_coded(x)))
            c = self.counters[name] = _Counter(name, kind, analog)
        return c

    def _weight_hook(self, name: str, layer: nn.Module):
        def hook(module: nn.Module, args, out) -> None:
            if module is not layer and self.calls.get(layer, 0) > self.before.pop(module, 0):
                return  # the wrapper called its layer, which counted itself
            self.calls[layer] = self.calls.get(layer, 0) + 1
            c = self._counter(name, "linear" if isinstance(layer, nn.Linear) else "conv", args[0])
            c.flops += _weight_flops(layer, out)
            self._count_when_known(lambda n: self._count_weight(c, args[0], n))
        return hook

    def _count_weight(self, c: _Counter, x: torch.Tensor, n: int) -> None:
        rows = self._rows(c, x, n)
        if c.analog:
            c.compute_steps.append(self._compute_steps(c, x, rows.shape[0]))
        c.entries.append((c.steps, rows.ne(0).sum(1), rows.shape[1], None, 0))
        c.steps += rows.shape[0]

    def _product_hook(self, name: str):
        def hook(module: nn.Module, args, out) -> None:
            c = self._counter(name, "product")
            c.flops += out.numel() * args[0].shape[-1]
            self._count_when_known(lambda n: self._count_product(c, args[0], args[1], n))
        return hook

    def _count_product(self, c: _Counter, a: torch.Tensor, b: torch.Tensor, n: int) -> None:
        ra, rb = self._rows(c, a, n), self._rows(c, b, n)
        c.entries.append((c.steps, ra.ne(0).sum(1), ra.shape[1], rb.ne(0).sum(1), rb.shape[1]))
        dtype = a.dtype if a.is_floating_point() else torch.float32
        pairs = a.ne(0).to(dtype) @ b.ne(0).to(dtype)
        c.pairs.append(pairs.reshape(ra.shape[0], -1).sum(1))
        c.steps += ra.shape[0]

    def _rows(self, c: _Counter, x: torch.Tensor, n: int) -> torch.Tensor:
        """``x`` (``[n, B, ...]``, ``[n*B*k, ...]``, or ``[B*k, ...]`` once per sequence) as ``[steps, -1]``."""
        B = self.batch
        if x.shape[:2] == (n, B) or x.shape[0] % (n * B) == 0:
            return x.reshape(n, -1)
        if x.shape[0] % B == 0:
            return x.reshape(1, -1)
        raise RuntimeError(f"energy.report: cannot tell the time steps of {c.name!r}'s input {tuple(x.shape)} "
                           f"(steps {n}, batch {B}): expected [n, B, ...], [n*B*k, ...] or [B*k, ...]")

    def _compute_steps(self, c: _Counter, x: torch.Tensor, n: int) -> torch.Tensor:
        """``[B]`` steps in which an analog input is non-zero and differs from the previous step's."""
        seq = x.reshape(n, self.batch, -1)
        changed = seq.ne(0).any(2)
        changed[1:] &= seq[1:].ne(seq[:-1]).any(2)
        if c.previous is not None and c.previous.shape == seq[0].shape:
            changed[0] &= seq[0].ne(c.previous).any(1)
        c.previous = seq[-1]
        return changed.sum(0).to(torch.float64)


def _rates(entries: list[tuple[int, torch.Tensor, int]], steps: int) -> list[float]:
    """Per-step fraction of non-zero elements from ``(first step, nonzero [k], numel per step)`` entries."""
    nonzero = [0.0] * steps
    numel = [0] * steps
    for start, counts, n in entries:
        for i, v in enumerate(counts.tolist()):
            nonzero[start + i] += v
            numel[start + i] += n
    return [nz / n if n else 0.0 for nz, n in zip(nonzero, numel)]


def _summarise(c: _Counter, B: int, e_mac: float, e_ac: float) -> LayerEnergy:
    steps = c.steps
    flops = c.flops / (steps * B)
    rate_a = _rates([(s, a, na) for s, a, na, _, _ in c.entries], steps)
    mean_a = sum(rate_a) / steps
    macs = sops = 0.0
    rate_b = mean_b = sops_exact = None
    if c.kind == "product":
        rate_b = _rates([(s, b, nb) for s, _, _, b, nb in c.entries], steps)
        mean_b = sum(rate_b) / steps
        sops = flops * sum(ra * rb for ra, rb in zip(rate_a, rate_b))
        sops_exact = float(sum(p.sum() for p in c.pairs)) / B
    elif c.analog:
        macs = flops * float(sum(s.sum() for s in c.compute_steps)) / B
    else:
        sops = mean_a * steps * flops
    return LayerEnergy(
        name=c.name, kind=c.kind, coding="analog" if c.analog else "spike", steps=steps, flops=flops,
        rate=mean_a, rate_per_step=rate_a, sops=sops, macs=macs, energy_pj=e_mac * macs + e_ac * sops,
        ann_energy_pj=e_mac * flops, rate_b=mean_b, rate_b_per_step=rate_b, sops_exact=sops_exact)


def simulation_run(max_steps: int) -> Callable[[nn.Module, torch.Tensor], object]:
    """``run`` for :func:`report` on a converted SNN (one with a ``simulate`` method): its own ``simulate`` for
    ``max_steps`` steps on the whole batch, without early exit where it has one (settled samples are silent,
    so the counts stop growing once a sample has settled)."""
    import inspect

    def run(snn: nn.Module, x: torch.Tensor):
        kwargs: dict = {"max_steps": max_steps}
        if "early_exit" in inspect.signature(snn.simulate).parameters:
            kwargs["early_exit"] = False
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
) -> EnergyReport:
    """Count the operations and firing rates of ``model`` on input ``x``, and price them.

    Args:
        model: a spiking network (its neurons are :class:`~spiketwin.base.StatefulModule`).
        x: in ``step_mode="m"`` what ``model`` takes in one call (``[T, B, ...]``, or ``[B, ...]`` for a
            model that repeats a static input itself). In ``step_mode="s"``: a ``[T, B, ...]`` sequence fed
            one step (``[B, ...]``) per call. The steps and the batch size are read from the inputs of the
            spiking modules (``[n, B, ...]`` in sequence mode, ``[B, ...]`` in step mode).
        analog: which weight layers get analog (non-spike) input and cost MACs: ``"first"`` (the first
            counted layer to run, unless its first input is spike-coded: every non-zero value of one
            magnitude, e.g. event frames or a RoBERTa SNN whose embeddings feed a neuron), ``"none"``, or a
            list of module paths.
        e_mac, e_ac: energy per multiply-accumulate / accumulate in pJ; default from ``preset``
            (:data:`PRESETS`: ``fp32`` is 4.6 / 0.9).
        run: ``run(model, x)`` replaces the default way of running the model, e.g. a converted SNN's own
            ``simulate`` (input at the first step only); it must run every sample of the batch for the same
            steps (no early exit), in one call, in chunks or step by step, and sets the step modes itself
            (``step_mode`` is then not used).

    The model runs in eval mode without gradients; its spiking state is reset before and after, and its
    step modes restored. Returns an :class:`EnergyReport` (counts and energies per sample).

    Raises:
        NotSpikingError: no spiking module ran (``model`` is not an SNN).
        ValueError: a bad ``preset``, ``analog`` or ``step_mode`` input, or a model with no layer to count.
        RuntimeError: a counted layer's input whose time steps cannot be told from its shape.
    """
    if preset not in PRESETS:
        raise ValueError(f"energy.report: preset must be one of {sorted(PRESETS)}, got {preset!r}")
    e_mac = PRESETS[preset][0] if e_mac is None else float(e_mac)
    e_ac = PRESETS[preset][1] if e_ac is None else float(e_ac)
    check_step_mode(step_mode)
    if step_mode == "s" and run is None and x.dim() < 2:
        raise ValueError(f"energy.report: step_mode='s' needs a [T, B, ...] sequence, got shape {tuple(x.shape)}")
    modes = {m: m.step_mode for m in model.modules() if hasattr(m, "step_mode")}
    was_training = model.training
    reset(model)
    if run is None:
        set_step_mode(model, step_mode)
    model.eval()
    hooks = _Run(model, analog)
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
        layers = [_summarise(c, hooks.batch, e_mac, e_ac) for c in hooks.counters.values()]
        T = max((layer.steps for layer in layers), default=0)
    finally:
        hooks.close()
        reset(model)
        for m, mode in modes.items():
            m.step_mode = mode
        model.train(was_training)
    if not layers:
        raise ValueError(f"energy.report: {type(model).__name__} has no Linear/Conv layer or activation product "
                         "to count")
    return EnergyReport(layers, T, hooks.batch, e_mac, e_ac)
