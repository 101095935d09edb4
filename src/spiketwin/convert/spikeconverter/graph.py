"""A converted QANN graph rewritten into a time-folded SNN (``[T' B, ...]`` tensors): each module swapped for its
spiking counterpart, constants entering once per period, operands from different depths aligned by delays; run
chunk by chunk of time steps from a reset state."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import fx, nn

from ...base import check_step_mode, reset
from ...quant import Quantizer
from .front import ADD_FUNCTIONS, PERIOD_OPS, call_sites, constant_value, Recorder
from .operators import Clocked, Delay, PeriodConstant, Clock

class TimeFoldedSNN(nn.Module):
    """A converted graph run on time-folded tensors, chunk by chunk of time steps."""

    def __init__(self, qann: nn.Module, swap: Callable[[nn.Module, Clock], nn.Module | None],
                 align: bool) -> None:
        super().__init__()
        if not (isinstance(getattr(qann, "net", None), fx.GraphModule) and hasattr(qann, "phase_steps")):
            raise TypeError(f"expected a QANN made by to_qann(..., neuron='ilif'), got {type(qann).__name__}")
        self.phase_steps = qann.phase_steps
        self.clock = Clock()
        gm = copy.deepcopy(qann.net)
        sites = call_sites(gm)
        (image,) = [n for n in gm.graph.nodes if n.op == "placeholder"]
        lags: dict[str, int | None] = {}  # None: a constant, present in every period
        for node in list(gm.graph.nodes):
            if node.op == "get_attr":
                if not align:
                    raise TypeError(f"{type(self).__name__}: constant '{node.target}' is not supported")
                value = constant_value(gm, node.target)
                name = f"constant_{node.name}"
                gm.add_submodule(name, Clocked(PeriodConstant(value, self.phase_steps), self.clock))
                with gm.graph.inserting_after(node):
                    constant = gm.graph.call_module(name, (image,))
                node.replace_all_uses_with(constant)
                gm.graph.erase_node(node)
                lags[constant.name] = None
                continue
            inputs = [a for a in node.all_input_nodes if lags[a.name] is not None]
            lag = max((lags[a.name] for a in inputs), default=0)
            if align and (node.target in ADD_FUNCTIONS or node.target is torch.cat or node.op == "call_module"):
                for i, a in enumerate(inputs):  # operands of one operation must arrive in the same period
                    if lags[a.name] < lag:
                        name = f"delay_{i}_of_{node.name}"
                        gm.add_submodule(name, Clocked(Delay((lag - lags[a.name]) * self.phase_steps), self.clock))
                        with gm.graph.inserting_before(node):
                            delayed = gm.graph.call_module(name, (a,))
                        lags[delayed.name] = lag
                        node.replace_input_with(a, delayed)
            if node.op == "call_module":
                module = gm.get_submodule(node.target)
                new = swap(module, self.clock)
                if sites[node.target] > 1:  # each call site keeps its own state
                    node.target = f"site_{node.name}"
                    new = new if new is not None else copy.deepcopy(module)
                if new is not None:
                    gm.add_submodule(node.target, new)
                lag += isinstance(module, (Quantizer, *PERIOD_OPS))
            lags[node.name] = lag
        gm.graph.lint()
        gm.recompile()
        self.net, self.lags = gm, lags
        (out,) = [n for n in gm.graph.nodes if n.op == "output"]
        self.readout = out.args[0].name
        self.depth = lags[self.readout]

    @property
    def latency(self) -> int:
        """Steps from a sample's input to its decoded output: ``(depth + 1) · T``."""
        return (self.depth + 1) * self.phase_steps

    @torch.no_grad()
    def _run(self, inputs: Callable[[int, int], torch.Tensor], total: int, step_mode: str,
             record: list[str]) -> dict[str, torch.Tensor]:
        """Run ``total`` steps from a reset state; ``inputs(start, steps)`` gives ``[steps, B, ...]``. Returns
        the ``[total, B, ...]`` trains of the nodes in ``record``."""
        check_step_mode(step_mode)  # "s": one step per call; "m": one period per call
        reset(self.net)
        chunk = 1 if step_mode == "s" else self.phase_steps
        trains: dict[str, list[torch.Tensor]] = {name: [] for name in record}
        for start in range(0, total, chunk):
            steps = min(chunk, total - start)
            self.clock.steps = steps
            recorder = Recorder(self.net, record)
            recorder.run(inputs(start, steps).flatten(0, 1))
            for name in record:
                trains[name].append(recorder.values[name].unflatten(0, (steps, -1)))
        reset(self.net)
        return {name: torch.cat(chunks) for name, chunks in trains.items()}

    def _steps(self, max_steps: int | None) -> int:
        """The number of steps :meth:`simulate` runs: ``max_steps``, by default the latency."""
        steps = self.latency if max_steps is None else int(max_steps)
        if steps < 1:
            raise ValueError(f"simulate: max_steps must be >= 1, got {max_steps}")
        return steps

    @staticmethod
    def _check_input(x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
            raise ValueError(f"simulate: x must be a floating-point tensor [B, C, ...], got "
                             f"{type(x).__name__} {getattr(x, 'shape', '')}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("simulate: x contains NaN or inf")

