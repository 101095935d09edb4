"""What ``verify`` returns: SNN-vs-QANN differences of summed values, per layer (neuron) and sample."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def compare(names: list[str], pairs: list[tuple[torch.Tensor, torch.Tensor]], output: torch.Tensor,
            reference: torch.Tensor, settle_step: torch.Tensor, rtol: float, dtype: torch.dtype,
            batch_dims: list[int | None] | None = None, kinds: list[str] | None = None,
            periods: list[int] | None = None) -> EquivalenceReport:
    """The report for ``pairs`` of (SNN summed value, QANN value) per layer, then the logits (``output`` against
    ``reference``); ``batch_dims[l]`` is the batch dimension of layer ``l``'s values (0 when not given; None when
    the batch is merged with another dimension: the layer's largest difference is then reported for every sample).
    ``kinds`` and ``periods`` (optional, for SNNs that have them) describe every row, the logits' included."""
    layers = [*names, "<output>"]
    dims = [*(batch_dims or [0] * len(pairs)), 0]
    max_abs, rel = [], []
    for (snn_sum, ref), dim in zip([*pairs, (output, reference)], dims):
        if dim is None:
            snn_sum, ref = snn_sum.reshape(1, -1).expand(len(output), -1), ref.reshape(1, -1).expand(len(output), -1)
            dim = 0
        snn_sum, ref = snn_sum.movedim(dim, 0).double(), ref.movedim(dim, 0).double()
        diff = (snn_sum - ref).flatten(1).abs().amax(1)
        scale = ref.flatten(1).abs().amax(1)
        max_abs.append(diff)
        rel.append(torch.where(diff == 0, torch.zeros_like(diff), diff / scale))
    for extra, what in ((kinds, "kinds"), (periods, "periods")):
        if extra is not None and len(extra) != len(layers):
            raise ValueError(f"compare: {len(extra)} {what} for {len(layers)} rows (the layers and the output)")
    return EquivalenceReport(layers, torch.stack(max_abs).cpu(), torch.stack(rel).cpu(), settle_step.cpu(), rtol,
                             str(dtype).replace("torch.", ""), kinds, periods)


@dataclass
class EquivalenceReport:
    """SNN-vs-QANN differences of summed values, per layer and sample.

    ``max_abs[l, b]``: largest absolute difference in layer ``layers[l]`` for sample ``b``; ``rel[l, b]``: that
    divided by the largest magnitude of the QANN's values there. ``ok``: every sample settled and every
    relative difference is within ``rtol``. Where the SNN has them (SpikeConverter's iLIF SNN), ``kinds[l]`` is
    the row's operation (e.g. ``"Quantizer"``, ``"conv2d"``; ``"output"`` for the logits) and ``periods[l]`` the
    period in which the SNN carries its value; None otherwise.
    """

    layers: list[str]
    max_abs: torch.Tensor
    rel: torch.Tensor
    settle_step: torch.Tensor
    rtol: float
    dtype: str
    kinds: list[str] | None = None
    periods: list[int] | None = None
    worst: list[tuple[str, float, int]] = field(init=False)

    def __post_init__(self) -> None:
        worst_rel, worst_sample = self.rel.max(1)
        self.worst = [(n, float(r), int(s)) for n, r, s in zip(self.layers, worst_rel, worst_sample)]

    @property
    def settled(self) -> bool:
        return bool((self.settle_step >= 0).all())

    @property
    def ok(self) -> bool:
        return self.settled and bool((self.rel <= self.rtol).all())

    @property
    def max_rel(self) -> float:
        return float(self.rel.max())

    def __str__(self) -> str:
        width = max(len(n) for n in self.layers)
        kinds = self.kinds or [""] * len(self.layers)
        kind_width = max(len(k) for k in ["kind", *kinds]) if self.kinds else 0
        periods = [f"{p:>6}" for p in self.periods] if self.periods else [""] * len(self.layers)

        def described(name: str, kind: str, period: str) -> str:
            return "  ".join(c for c in (name.ljust(width), kind.ljust(kind_width), period) if c)

        lines = [f"SNN vs QANN, summed values, {self.dtype}, {self.rel.shape[1]} samples, rtol {self.rtol:g}",
                 f"  {described('layer', 'kind' if self.kinds else '', 'period' if self.periods else '')}  "
                 f"{'max abs diff':>12}  {'max rel diff':>12}  worst sample"]
        for (name, r, s), a, kind, period in zip(self.worst, self.max_abs.max(1).values, kinds, periods):
            flag = "" if r <= self.rtol else "  <-- exceeds rtol"
            lines.append(f"  {described(name, kind, period)}  {float(a):12.3e}  {r:12.3e}  {s:>12}{flag}")
        unsettled = (self.settle_step < 0).nonzero().flatten().tolist()
        steps = self.settle_step[self.settle_step >= 0].double()
        if len(steps):
            lines.append(f"  settle steps: median {float(steps.median()):g}, max {int(steps.max())}")
        if unsettled:
            more = " ..." if len(unsettled) > 10 else ""
            lines.append(f"  NOT SETTLED within max_steps: samples {unsettled[:10]}{more}")
        lines.append(f"  {'OK' if self.ok else 'FAILED'}: max relative difference {self.max_rel:.3e}")
        return "\n".join(lines)

