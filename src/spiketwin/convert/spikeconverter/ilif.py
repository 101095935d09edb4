"""The iLIF SNN of a SpikeConverter QANN: simulation (a batch at once or pipelined, a new sample every ``T``
steps), decoding, and the per-layer equivalence check with its report."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn

from ...neurons import ILIF
from ...quant import Quantizer
from ...simulate import SimResult
from ..report import EquivalenceReport, compare
from .. import graph as G
from .graph import Recorder, TimeFoldedSNN, kind_name
from .operators import Clock, Clocked, PeriodOp, SignedILIF, ilif_threshold


class ILIFSNN(TimeFoldedSNN):
    """The iLIF SNN of a :class:`SpikeConverterQANN`: iLIF neurons (amplification ``k``), bias once per period,
    delayed shortcuts, spike-train max pooling. See the module docstring for the schedule."""

    def __init__(self, qann: nn.Module, k: float = 2.0) -> None:
        T = qann.phase_steps

        def neuron(quantizer: Quantizer, clock: Clock) -> nn.Module:
            ilif = ILIF(ilif_threshold(quantizer.step, T, 2.0), 2.0, T)
            offset = quantizer.step.detach() * (quantizer.levels // 2)
            site = Clocked(SignedILIF(ilif, offset) if quantizer.signed else ilif, clock)
            site.register_buffer("step", quantizer.step.detach().clone())
            return site

        super().__init__(qann, neuron, spiking=True)
        self.set_k(k)

    def set_k(self, k: float) -> None:
        """Set the amplification ``k`` (> 1) of every neuron, with thresholds from :func:`ilif_threshold`."""
        k = float(k)
        if not k > 1.0:
            raise ValueError(f"ILIFSNN: the amplification k must be > 1, got {k}")
        for site in self.net.modules():
            if isinstance(site, PeriodOp):
                site.k = k
            if isinstance(site, Clocked) and hasattr(site, "step"):
                neuron = site.module.neuron if isinstance(site.module, SignedILIF) else site.module
                neuron.k = k
                neuron.threshold = ilif_threshold(site.step, self.phase_steps, k)
        self.k = k

    @contextmanager
    def _amplification(self, k: float | None):
        previous = self.k
        if k is not None:
            self.set_k(k)
        try:
            yield
        finally:
            self.set_k(previous)

    def _decode_weights(self, like: torch.Tensor) -> torch.Tensor:
        """``[T, 1, ..., 1]`` (as many dimensions as ``like``): the weight ``k^(T-1-j)`` of phase ``j`` in a
        period's value."""
        T = self.phase_steps
        weights = torch.tensor([self.k ** (T - 1 - j) for j in range(T)], dtype=like.dtype, device=like.device)
        return weights.view(-1, *[1] * (like.dim() - 1))

    def _trains(self, x: torch.Tensor, steps: int, step_mode: str, pipelined: bool,
                record: list[str]) -> dict[str, torch.Tensor]:
        """``[steps, B, ...]`` trains of the ``record`` nodes, each sample's window starting when it enters."""
        T = self.phase_steps
        if not pipelined:
            def inputs(start: int, n: int) -> torch.Tensor:
                seq = x.new_zeros((n, *x.shape))
                if start <= T - 1 < start + n:
                    seq[T - 1 - start] = x
                return seq
            return self._run(inputs, steps, step_mode, record)

        def stream(start: int, n: int) -> torch.Tensor:  # sample i enters at step i T + T - 1, batch of one
            seq = x.new_zeros((n, 1, *x.shape[1:]))
            for j in range(n):
                t = start + j
                if t % T == T - 1 and t // T < len(x):
                    seq[j, 0] = x[t // T]
            return seq
        trains = self._run(stream, (len(x) - 1) * T + steps, step_mode, record)
        return {name: torch.stack([train[i * T:i * T + steps, 0] for i in range(len(x))], 1)
                for name, train in trains.items()}

    @torch.no_grad()
    def simulate(self, x: torch.Tensor, max_steps: int | None = None, step_mode: str = "m",
                 k: float | None = None, pipelined: bool = False) -> SimResult:
        """Simulate images ``x`` ``[B, C, H, W]``; returns the decoded logits.

        ``max_steps`` (default: the latency ``(depth + 1) T``) counts steps from each sample's input;
        ``per_step[t]`` is the output decoded from what the readout received by step ``t + 1`` (zero before
        its period, the most significant steps first during it, the final logits after it). ``k`` overrides
        the amplification for this call. ``pipelined=True`` feeds the samples as one stream, a new sample
        every ``T`` steps (``(B + depth) T`` steps in all, batch of one); ``False`` runs the batch at once.
        Both give identical results. ``settle_step`` is the step after which the output no longer changes
        (``-1`` if ``max_steps`` stops before the latency).
        """
        self._check_input(x)
        steps = self._steps(max_steps)
        with self._amplification(k):
            train = self._trains(x, min(steps, self.latency), step_mode, pipelined, [self.readout])[self.readout]
            return self._result(train, steps)

    def _result(self, train: torch.Tensor, steps: int) -> SimResult:
        """The :class:`SimResult` of ``steps`` steps from the readout's ``train`` over the first
        ``min(steps, latency)`` of them."""
        run = len(train)
        per_step = torch.zeros_like(train)
        start = self.depth * self.phase_steps
        if run > start:
            part = train[start:run]
            w = self._decode_weights(train)[:len(part)]
            per_step[start:run] = (part * w).cumsum(0)
        if steps > run:
            per_step = torch.cat([per_step, per_step[-1:].expand(steps - run, *per_step.shape[1:])])
        output = per_step[-1]
        if run < self.latency:
            settle = torch.full((train.shape[1],), -1, dtype=torch.int64, device=train.device)
        else:
            changed = (per_step != output).flatten(2).any(-1)
            index = torch.arange(1, steps + 1, device=train.device).unsqueeze(1)
            settle = (changed * index).amax(0) + 1
        return SimResult(output, per_step, settle)

    def decoded(self, x: torch.Tensor, names: list[str], step_mode: str = "m",
                pipelined: bool = False) -> dict[str, torch.Tensor]:
        """Each named node's decoded value for ``x``: its train over the period in which it carries the sample."""
        return self._decode(self._trains(x, self.latency, step_mode, pipelined, names), names)

    def _decode(self, trains: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
        """Decode each named node's train over its period (the part of it that ``trains`` hold; zero if none)."""
        T = self.phase_steps
        out = {}
        for name in names:
            lag = self.lags[name]
            train = trains[name][lag * T:(lag + 1) * T]
            out[name] = (train * self._decode_weights(train)[:len(train)]).sum(0)
        return out

    @torch.no_grad()
    def verify(self, qann: nn.Module, inputs: torch.Tensor, max_steps: int | None = None, step_mode: str = "m",
               rtol: float | None = None, pipelined: bool = False) -> EquivalenceReport:
        """Compare this SNN with ``qann`` in float64, per sample and per graph node: each node's decoded value
        (over the period that carries it) against the QANN's, then the logits of :meth:`simulate`
        (``max_steps``, default the latency; a shorter run leaves the samples unsettled). ``rtol`` defaults
        to 1e-9. The report's ``kinds`` name each node's operation and ``periods`` its period."""
        self._check_input(inputs)
        steps = self._steps(max_steps)
        q64, s64, x64 = copy.deepcopy(qann).double().eval(), copy.deepcopy(self).double(), inputs.double()
        present = {n.name for n in s64.net.graph.nodes}
        nodes = {n.name: n for n, kind in G.classify(q64.net).items()
                 if kind not in (G.CONST, G.SOURCE, G.OUTPUT) and n.name in present}
        recorder = Recorder(q64.net, nodes)
        reference = recorder.run(x64)
        expected = {name: v for name, v in recorder.values.items() if isinstance(v, torch.Tensor)}
        record = list(dict.fromkeys([*expected, s64.readout]))
        trains = s64._trains(x64, min(steps, s64.latency), step_mode, pipelined, record)
        result = s64._result(trains[s64.readout], steps)
        got = s64._decode(trains, list(expected))
        pairs, batch_dims, kinds = [], [], []
        for name, want in expected.items():
            snn_value, want = torch.broadcast_tensors(got[name], want)
            pairs.append((snn_value, want))
            batch_dims.append(0 if want.dim() and want.shape[0] == len(x64) else None)  # else a constant's value
            kinds.append(kind_name(nodes[name]))
        return compare(list(expected), pairs, result.output, reference, result.settle_step,
                       1e-9 if rtol is None else rtol, torch.float64, batch_dims, [*kinds, "output"],
                       [*(self.lags[name] for name in expected), self.depth])
