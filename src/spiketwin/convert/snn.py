"""The SNN of a :class:`~spiketwin.convert.qann.GraphQANN`: simulate it, verify it against the QANN.

Two ways to run the same spiking network (``to_snn(qann, state=...)``):

- ``"exact"`` (default): each step computes every neuron's accumulated input from its upstream neurons' spike
  *counts* with the QANN's own operations (one QANN forward), and every ST-BIF neuron moves its count toward the
  quantizer of that value (at most ``spikes_per_step`` spikes). These are the spike trains of the ideal SNN (a chip
  with exact integer accumulators); once settled, every value is computed as the QANN computes it, so the logits
  are **bit-identical** to the QANN's in any dtype.
- ``"events"``: the classic event-driven SNN (:mod:`spiketwin.convert.events`): linear ops act on each step's
  spikes with constants once, bilinear ops are SESA, non-linear regions accumulate-apply-difference, neurons
  integrate floating-point increments. Equal to the QANN in exact arithmetic; in float32 a neuron sitting on a
  rounding boundary can settle one level away.

Early exit: a sample stops when no neuron is short of its target after a step. Dropping settled samples changes
the batch that later steps compute with, and matrix kernels may round a row differently in another batch; so when
samples were dropped, the exact-state run ends with one confirmation forward of the whole batch from the final
counts (from the settled head's values of the last step on the whole batch, :mod:`spiketwin.convert.resume`): if a
neuron would still move there, the whole batch steps on until none does. The result is then the QANN's forward on
that same batch, bit for bit.
"""

from __future__ import annotations

import copy
import inspect

import torch
from torch import nn

from ..base import reset, stateful_modules
from ..neurons import ExactSTBIF
from ..simulate import SimResult
from ..utils import logits_of
from .qann import GraphModel, GraphQANN, misfit
from .report import EquivalenceReport, compare
from .resume import Resume

STATES = ("exact", "events")
LEAVE_AT = 8
"""Settled samples leave the batch once they are at least ``1 / LEAVE_AT`` of it (or all of it): each leaving gathers
every neuron's state, which costs more than a few settled samples riding along for a step or two."""
FEWEST = 2
"""A batch that samples leave keeps at least this many while any runs (settled ones ride along): torch.export traces
a batch of two or more, and some graphs guard against one (SigLIP's traced with every dimension dynamic: "Guard
failed")."""


def default_chunk(device: torch.device | None) -> int:
    """Steps between two settle checks when ``simulate`` is not told: 8 on CUDA (each check reads from the device),
    1 elsewhere."""
    return 8 if device is not None and device.type == "cuda" else 1


def _split(inputs) -> tuple[tuple, dict]:
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def _batch(args: tuple, kwargs: dict) -> int:
    """The batch size of the inputs, after checking them: real values finite (the sample at fault is named)."""
    tensors = [(f"input {i}", v) for i, v in enumerate(args) if isinstance(v, torch.Tensor)]
    tensors += [(f"input '{k}'", v) for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    if not tensors or tensors[0][1].dim() == 0 or len(tensors[0][1]) == 0:
        raise ValueError("simulate: inputs must hold at least one non-empty tensor [B, ...]")
    for name, value in tensors:
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = (~torch.isfinite(value)).flatten(1).any(1).nonzero().flatten().tolist()
            raise ValueError(f"simulate: {name} has NaN or inf values in samples {bad[:10]}; the SNN needs finite "
                             "input")
    return len(tensors[0][1])


def _select(args: tuple, kwargs: dict, index: torch.Tensor, batch: int) -> tuple[tuple, dict]:
    pick = lambda v: v.index_select(0, index) if isinstance(v, torch.Tensor) and v.dim() and len(v) == batch else v
    return tuple(pick(a) for a in args), {k: pick(v) for k, v in kwargs.items()}


class GraphSNN(GraphModel):
    """The spiking twin of a :class:`GraphQANN` (build it with ``spiketwin.convert.to_snn(qann)``).

    ``.model`` is the QANN's graph with every quantizer replaced by a neuron (``.neurons``, named by ``.labels``).
    Run it with :meth:`simulate`; check it against the QANN with :meth:`verify`.
    """

    def __init__(self, model: nn.Module, fixed: dict, labels: list[str], state: str) -> None:
        super().__init__()
        self.model, self.fixed, self.labels, self.state = model, fixed, labels, state

    @classmethod
    def from_qann(cls, qann: GraphQANN, state: str = "exact", spikes_per_step: int = 1) -> GraphSNN:
        if state not in STATES:
            raise ValueError(f"to_snn: state must be one of {STATES}, got {state!r}")
        model = copy.deepcopy(qann.model).eval()
        if state == "events":
            from .events import to_events

            return cls(to_events(model, spikes_per_step, qann.batch_dims), qann.fixed, qann.labels, state)
        model.quantizers = nn.ModuleList(ExactSTBIF.from_quantizer(q, spikes_per_step, d)
                                         for q, d in zip(model.quantizers, qann.batch_dims))
        return cls(model, qann.fixed, qann.labels, state)

    @property
    def neurons(self) -> list[nn.Module]:
        return list(self.model.quantizers)

    @property
    def droppable(self) -> bool:
        """Whether settled samples can leave the batch: the batch dimension of every state is known."""
        return all(m.batch_dim is not None for m in stateful_modules(self.model))

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        """One time step of the network (exact state: one QANN forward with the neurons' counts); no gradients."""
        return self._call(None, 0, args, kwargs)

    def _call(self, resume: Resume | None, cut: int, args: tuple, kwargs: dict):
        """One step: the whole graph, or the graph from cut ``cut`` of ``resume``."""
        kwargs = self.graph_kwargs("simulate", kwargs)
        try:
            if resume is None:
                return self.model(*args, **kwargs)
            return resume.run(cut, args, kwargs)
        except (AssertionError, RuntimeError, TypeError, ValueError) as error:
            raise misfit("simulate", error, args, kwargs) from error

    def _check(self, args: tuple, kwargs: dict) -> None:
        """Inputs against the model's signature (the graph from a cut takes them flat and would not say)."""
        try:
            inspect.signature(self.model.forward).bind(*args, **self.graph_kwargs("simulate", kwargs))
        except TypeError as error:
            raise misfit("simulate", error, args, kwargs) from error

    def _resume(self, chunk: int = 1) -> Resume | None:
        """The cuts of the exact state's graph (:mod:`spiketwin.convert.resume`) for ``chunk`` steps between settle
        checks, made once per graph, device and chunk."""
        if self.state != "exact":
            return None
        cached = self.__dict__.setdefault("_resume_cuts", {})
        if chunk not in cached or cached[chunk].code != self.model.code:
            cached[chunk] = Resume(self.model, self.droppable, chunk)
        return cached[chunk]

    def _apply(self, fn, *args, **kwargs):
        self.__dict__.pop("_resume_cuts", None)  # its modules hold the buffers they were made with
        return super()._apply(fn, *args, **kwargs)

    @torch.no_grad()
    def simulate(self, inputs, max_steps: int | None = None, step_mode: str = "m", chunk: int | None = None,
                 early_exit: bool = True, skip_settled: bool = True, read_late: bool = False) -> SimResult:
        """Run on ``inputs`` (a tensor ``[B, ...]``, a tuple, or a dict of keyword tensors, as the model is called)
        until every sample settles or ``max_steps`` (default 512) run out.

        ``chunk`` steps run between two settle checks (default 1 on the CPU, 8 on CUDA: one device-to-host read per
        chunk); settled samples leave the batch at a check when ``early_exit`` (in groups, :data:`LEAVE_AT`). With
        ``skip_settled`` (exact state), a step starts after the neurons at the head of the graph that can no longer
        move, from the values they left (:mod:`spiketwin.convert.resume`; decided at each check): the same results,
        but those neurons are not called (hooks on them see fewer steps; ``skip_settled=False`` runs the whole graph
        at every step). With ``read_late``, a check starts copying its flags to the host and decides from those of
        the check before (copied while the last chunk ran), so the host never waits for the steps it has just queued
        (on CUDA the GPU does not idle at a check): samples leave and the start moves one check later, and the check
        right after samples left decides nothing (its flags are of the batch before). The same output and settle
        steps, whatever ``chunk`` and ``read_late``; per-step outputs before a sample settles were computed beside
        the samples still in its batch then, and may differ in the last bits.
        ``step_mode`` is accepted for the common SNN interface: a step is one call in both modes here.
        """
        args, kwargs = _split(inputs)
        batch = _batch(args, kwargs)
        device = next(self.parameters()).device if any(True for _ in self.parameters()) else None
        max_steps = 512 if max_steps is None else int(max_steps)
        if chunk is None:
            chunk = default_chunk(device)
        if max_steps < 1 or chunk < 1:
            raise ValueError(f"simulate: max_steps and chunk must be >= 1, got {max_steps} and {chunk}")
        self.eval()
        reset(self.model)
        neurons, droppable = self.neurons, self.droppable
        resume = self._resume(chunk) if skip_settled else None
        if resume is not None:
            self._check(args, kwargs)
            resume.reset()
        cut = 0
        first = next(v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor))
        settle = torch.full((batch,), -1, dtype=torch.int64, device=first.device)
        active = torch.arange(batch, device=first.device)
        parked: list[torch.Tensor | None] = [None] * len(neurons)
        rows: list[torch.Tensor] = []
        dropped = False
        whole: tuple[int, dict] = (0, {})  # the cut and recorded values of the last step on the whole batch
        copied: _HostCopy | None = None  # read_late: the flags the last check started copying
        a_args, a_kwargs = args, kwargs  # the inputs of the samples still running
        t = 0
        while t < max_steps and len(active):
            for _ in range(min(chunk, max_steps - t)):
                out = logits_of(self._call(resume, cut, a_args, a_kwargs))
                row = out.new_zeros((batch, *out.shape[1:])) if not rows else rows[-1].clone()
                row[active] = out if self.state == "exact" else row[active] + out  # events: increments
                rows.append(row)
                t += 1
                calm = ~self._pending(neurons, len(active), out.device)
                settle[active] = torch.where(calm & (settle[active] < 0), t, settle[active])
            busy = resume.busy(neurons) if resume is not None else None
            if not early_exit and busy is None:
                continue
            running = settle[active] < 0
            flags = torch.cat([running, *([] if busy is None else [busy])])
            if read_late:  # copy this check's flags, decide from the last check's (older flags are only
                # conservative: the first busy neuron moves only down the graph, a settled sample stays settled)
                copied, previous = _HostCopy(flags, running), copied
                if previous is None:
                    continue
                flags, running = previous.read(), previous.running
            else:
                flags = flags.tolist()  # the one host read of the chunk
            if busy is not None:
                cut = resume.start(flags[len(running):])
            staying = sum(flags[:len(running)])
            if not early_exit:
                continue
            if not droppable:  # the whole batch runs until every sample has settled
                if not staying:
                    break
                continue
            kept = min(len(active), max(staying, FEWEST)) if staying else 0
            settled = len(active) - kept
            if settled and (not staying or settled * LEAVE_AT >= len(active)):
                order = torch.argsort(running.to(torch.int8), descending=True, stable=True)  # running first, in order
                stay, leave = order[:kept], order[kept:]
                if resume is not None and not dropped:
                    whole = (cut, dict(resume.values))
                for i, neuron in enumerate(neurons):
                    parked[i] = self._park(neuron, parked[i], active[leave], leave, batch)
                for module in stateful_modules(self.model):
                    module.keep(stay, len(active))
                if resume is not None:
                    resume.keep(stay, len(active))
                active, dropped = active[stay], True
                a_args, a_kwargs = _select(args, kwargs, active, batch)
                copied = None  # its flags are of the batch before
        if dropped and self.state == "exact":  # confirm on the whole batch, with the QANN's arithmetic
            out = self._confirm(neurons, parked, active, args, kwargs, settle, rows, max_steps, resume, whole)
        else:
            out = rows[-1]
            if dropped:
                self._unpark(neurons, parked, active)
        if resume is not None:
            resume.reset()  # the recorded values are not kept past the run (on CUDA: about every value of a ViT-S)
        per_step = torch.stack(rows)
        steps = torch.arange(1, len(rows) + 1, device=settle.device)[:, None]
        done = (settle >= 0) & (steps >= settle)  # [T, B]: rows at or after a sample's settle step
        per_step = torch.where(done.reshape(*done.shape, *[1] * (per_step.dim() - 2)), out.unsqueeze(0), per_step)
        if early_exit and bool((settle >= 0).all()):  # a chunk may have run past the last settle step
            per_step = per_step[: int(settle.max())]
        return SimResult(output=out, per_step=per_step, settle_step=settle)

    @staticmethod
    def _pending(neurons, batch: int, device) -> torch.Tensor:
        """``[B]``: whether some neuron of a sample is still away from its target (one ``any`` over the neurons'
        stacked flags: two kernels a step on a GPU, not one per neuron)."""
        flags = []
        for neuron in neurons:
            f = neuron.pending
            if f is None:
                continue
            f = f[:, -1] if f.dim() == 2 else f  # STBIF: [B, steps of the last call]
            flags.append(f.any().expand(batch) if neuron.batch_dim is None else f)
        if not flags:
            return torch.zeros(batch, dtype=torch.bool, device=device)
        return torch.stack(flags).any(0)

    @staticmethod
    def _park(neuron, parked, rows, leave, batch):
        """Keep the final counts of samples leaving the batch, scattered into a full-batch tensor."""
        if neuron.count is None:
            return parked
        dim = neuron.batch_dim
        if parked is None:
            shape = list(neuron.count.shape)
            shape[dim] = batch
            parked = neuron.count.new_zeros(shape)
        parked.index_copy_(dim, rows, neuron.count.index_select(dim, leave))
        return parked

    @staticmethod
    def _unpark(neurons, parked, active) -> None:
        """Every neuron's counts for the whole batch again: the parked ones and those of the samples still running."""
        for neuron, full in zip(neurons, parked):
            if full is not None:
                if neuron.count is not None and len(active):
                    full.index_copy_(neuron.batch_dim, active, neuron.count)
                neuron.count = full

    def _confirm(self, neurons, parked, active, args, kwargs, settle, rows, max_steps, resume, whole) -> torch.Tensor:
        """The whole batch's forward from the final counts. It starts at the cut the last step on the whole batch
        could start at, from that step's recorded values: the neurons before it had settled for every sample, so
        those values are what the whole batch gives again."""
        self._unpark(neurons, parked, active)
        batch = len(settle)
        cut, values = whole
        if cut:
            resume.values = values
            for i in resume.order[:resume.ranks[cut]]:
                neurons[i].pending = None  # not called: on their targets for every sample
        out = logits_of(self._call(resume, cut, args, kwargs))
        moved = self._pending(neurons, batch, out.device)
        while bool(moved.any()) and len(rows) < max_steps:  # a boundary value rounded differently in this batch
            settle[moved] = -1
            out = logits_of(self(*args, **kwargs))
            rows.append(out.clone())
            calm = ~self._pending(neurons, batch, out.device)
            settle.copy_(torch.where(calm & (settle < 0), len(rows), settle))
            moved = ~calm
        return out

    @torch.no_grad()
    def verify(self, qann: nn.Module, inputs, max_steps: int | None = None, step_mode: str = "m",
               rtol: float | None = None) -> EquivalenceReport:
        """Compare this SNN with ``qann`` per sample and per neuron: each neuron's summed output (``count * θ``)
        against its quantizer's output, and the logits. ``rtol`` defaults to 1e-9 in float64 and 1e-4 otherwise
        for the events state; the exact state is held to 0 (bit-identical)."""
        args, kwargs = _split(inputs)
        captured: dict[int, torch.Tensor] = {}
        handles = [q.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, o))
                   for k, q in enumerate(qann.model.quantizers)]
        was_training = qann.training
        try:
            reference = logits_of(qann.eval()(*args, **kwargs), "verify")
        finally:
            for h in handles:
                h.remove()
            qann.train(was_training)
        result = self.simulate(inputs, max_steps=max_steps, step_mode=step_mode)
        sums = [n.value for n in self.neurons]
        if self.state == "events":  # its neurons read their values with the batch first (``events._batch_first``)
            captured = {k: v if d in (0, None) else v.movedim(d, 0)
                        for k, v in captured.items() for d in [qann.batch_dims[k]]}
        keep = [k for k, s in enumerate(sums) if s is not None and k in captured]
        dtype = reference.dtype
        if rtol is None:
            rtol = 0.0 if self.state == "exact" else 1e-9 if dtype == torch.float64 else 1e-4
        return compare([self.labels[k] for k in keep], [(sums[k], captured[k]) for k in keep], result.output,
                       reference, result.settle_step, rtol, dtype, [self.neurons[k].batch_dim for k in keep])


class _HostCopy:
    """Settle-check flags on their way to the host: on CUDA a non-blocking copy (into pinned memory) and an event
    after it on the flags' device (not necessarily the current one), so that reading them waits only for the steps
    queued before the copy."""

    def __init__(self, flags: torch.Tensor, running: torch.Tensor) -> None:
        self.running = running
        self.host = flags.to("cpu", non_blocking=True)
        self.event = None
        if flags.is_cuda:
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(flags.device))

    def read(self) -> list[bool]:
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()
