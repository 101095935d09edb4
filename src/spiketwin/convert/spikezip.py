"""SpikeZIP-TF: ANN -> quantized ANN (QANN) -> SNN that is mathematically equivalent to the QANN (SPEC A).

- :func:`vit_to_qann` puts :class:`~spiketwin.quant.Quantizer` modules into the ``*_quant`` slots of a
  :class:`~spiketwin.models.ViT` (10 per block, after the patch embedding and after the final norm; the head
  is not quantized), absorbs the MLP's ReLU/GELU into the unsigned quantizer after ``fc1`` (an unsigned
  quantizer is a quantized ReLU), and returns a :class:`SpikeZIPQANN` to train with QAT.
- :func:`spiking_swap` turns a QANN module tree into the SNN by swapping each operator for its spiking twin
  (:mod:`spiketwin.ops`, :class:`~spiketwin.neurons.STBIF`); the module paths stay the same, which is how
  :meth:`SpikeZIPSNN.verify` compares the two layer by layer.
- :class:`SpikeZIPSNN` runs the SNN: analog input at the first step, zeros afterwards, logits summed over
  steps; each sample stops as soon as it has settled (after a step that left no neuron short of its target,
  so nothing will fire again: the step that would show it idle is never run), and the run stops when all have.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ..base import StatefulModule, reset, set_step_mode
from ..neurons import STBIF
from ..ops import SESA, Accumulate, BiasOnce, MatMul, OffsetOnce, running_sum
from ..quant import Quantizer
from ..simulate import SimResult
from .report import EquivalenceReport

# --------------------------------------------------------------------------- ANN -> QANN


def _vit_types():
    from ..models import vit

    return vit


def vit_to_qann(model: nn.Module, levels: int = 16) -> SpikeZIPQANN:
    """A deep copy of the ViT ``model`` with SpikeZIP-TF's quantizers, wrapped as a :class:`SpikeZIPQANN`.

    Signed quantizers (``[-L/2, L/2 - 1]``): after the patch embedding, ``norm1``, ``q``, ``k``, ``v``,
    ``attn @ v``, ``proj``, ``norm2``, ``fc2`` and the final norm. Unsigned (``[0, L - 1]``): after softmax and
    after ``fc1``, where the quantizer replaces the activation (GELU becomes ReLU). Each quantizer's step is
    set by the first batch it sees; train the result like any model (QAT).
    """
    vit = _vit_types()
    if not isinstance(model, vit.ViT):
        raise TypeError(f"vit_to_qann: expected a spiketwin.models.ViT, got {type(model).__name__}")
    _check_supported(model, (vit.ViT, vit.PatchEmbed, vit.AddTokens, vit.Block, vit.Attention, vit.Mlp,
                             nn.ModuleList, nn.Linear, nn.Conv2d, nn.LayerNorm, nn.Softmax, MatMul, nn.Identity,
                             nn.ReLU, nn.GELU), "vit_to_qann")
    qann = copy.deepcopy(model)
    param = next(qann.parameters())

    def quantizer(signed: bool) -> Quantizer:
        return Quantizer(levels, signed).to(device=param.device, dtype=param.dtype)

    qann.patch_embed.quant = quantizer(True)
    for block in qann.blocks:
        attn, mlp = block.attn, block.mlp
        block.norm1_quant, block.norm2_quant = quantizer(True), quantizer(True)
        attn.q_quant, attn.k_quant, attn.v_quant = quantizer(True), quantizer(True), quantizer(True)
        attn.attn_quant, attn.out_quant, attn.proj_quant = quantizer(False), quantizer(True), quantizer(True)
        mlp.act, mlp.act_quant, mlp.fc2_quant = nn.Identity(), quantizer(False), quantizer(True)
    qann.norm_quant = quantizer(True)
    return SpikeZIPQANN(qann)


def _check_supported(model: nn.Module, supported: tuple[type, ...], who: str) -> None:
    for name, module in model.named_modules():
        if type(module) not in supported:
            names = ", ".join(sorted({t.__name__ for t in supported}))
            raise TypeError(f"{who}: module '{name or '<root>'}' is a {type(module).__name__}, which it cannot "
                            f"convert; supported module types: {names}")


class SpikeZIPQANN(nn.Module):
    """A quantized model prepared for SpikeZIP-TF (made by :func:`vit_to_qann`); ``.model`` is the network.

    It trains and evaluates like the model it wraps; :meth:`to_snn` builds the equivalent SNN.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.model(*args, **kwargs)

    def quantizers(self) -> list[tuple[str, Quantizer]]:
        return [(n, m) for n, m in self.named_modules() if isinstance(m, Quantizer)]

    def check_initialized(self) -> None:
        """Raise a ``ValueError`` naming every quantizer whose step was never set from data."""
        fresh = [n for n, q in self.quantizers() if not bool(q.initialized)]
        if fresh:
            raise ValueError(f"to_snn: quantizers {', '.join(fresh)} were never initialised; run the QANN on a "
                             "batch (calibration or QAT) first")

    def to_snn(self, spikes_per_step: int = 1) -> SpikeZIPSNN:
        """The SNN whose summed output equals this QANN's output (eval mode, every quantizer initialised); its
        neurons emit up to ``spikes_per_step`` spikes per step (:class:`~spiketwin.neurons.STBIF`)."""
        self.check_initialized()
        return SpikeZIPSNN(spiking_swap(copy.deepcopy(self.model).eval(), neuron_swap(spikes_per_step)))


# --------------------------------------------------------------------------- QANN -> SNN


def _accumulate(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.Softmax) and (module.dim is None or module.dim >= 0):
        raise ValueError(f"spiking_swap: nn.Softmax(dim={module.dim}) must use a negative dim (the sequence path "
                         "adds a leading time dimension)")
    return Accumulate(module)


def _offset_once(module: nn.Module) -> nn.Module:
    return OffsetOnce(module)


SWAPS: dict[type, Callable[[nn.Module], nn.Module]] = {
    nn.Linear: BiasOnce,
    nn.Conv1d: BiasOnce,
    nn.Conv2d: BiasOnce,
    nn.Conv3d: BiasOnce,
    nn.LayerNorm: _accumulate,
    nn.Softmax: _accumulate,
    MatMul: lambda m: SESA(),
    Quantizer: STBIF.from_quantizer,
    nn.Identity: lambda m: m,
    nn.Dropout: lambda m: nn.Identity(),
}
"""Leaf module type -> its spiking twin. Containers (modules with children) are kept and searched;
their own ``forward`` must be linear glue (reshapes, residual additions, constant scaling)."""


def neuron_swap(spikes_per_step: int) -> dict[type, Callable[[nn.Module], nn.Module]]:
    """The swap of a :class:`~spiketwin.quant.Quantizer` for an ST-BIF neuron of ``spikes_per_step`` spikes per
    step (for ``spiking_swap``'s ``extra``)."""
    STBIF(1.0, -1, 1, spikes_per_step=spikes_per_step)  # a bad value fails here, before any swap
    return {Quantizer: lambda q: STBIF.from_quantizer(q, spikes_per_step=spikes_per_step)}


def spiking_swap(model: nn.Module, extra: dict[type, Callable[[nn.Module], nn.Module]] | None = None) -> nn.Module:
    """Swap every operator of the QANN tree ``model`` (in place) for its spiking twin; returns ``model``.

    ``extra`` maps further leaf types to their twins (e.g. a model's own embedding module). The ViT's
    :class:`~spiketwin.models.vit.AddTokens` becomes an :class:`~spiketwin.ops.OffsetOnce`. A leaf without a
    twin (an activation the QANN did not absorb into a quantizer, a custom layer) raises a ``TypeError``
    naming its module path and type.
    """
    swaps = {**SWAPS, _vit_types().AddTokens: _offset_once, **(extra or {})}
    for name, child in list(model.named_children()):
        if type(child) in swaps:
            setattr(model, name, swaps[type(child)](child))
        elif len(list(child.children())) > 0 and not isinstance(child, StatefulModule):
            spiking_swap(child, swaps)
        else:
            supported = ", ".join(sorted(t.__name__ for t in swaps))
            raise TypeError(f"spiking_swap: module '{name}' ({type(child).__name__}) has no spiking twin; "
                            f"supported leaf types: {supported}. Activations must be absorbed into an unsigned "
                            "Quantizer (spiketwin.convert.to_qann does that)")
    return model


# --------------------------------------------------------------------------- the SNN


class _Observer:
    """Forward hooks on an SNN run: every stateful module's output summed over steps, scattered back to the
    full batch (``active``: the rows of the full batch that the current call runs)."""

    def __init__(self, snn: SpikeZIPSNN, batch: int) -> None:
        self.active: torch.Tensor | None = None
        self.step_mode = "s"
        self.batch = batch
        self.sums: dict[str, torch.Tensor] = {}
        self.handles = [module.register_forward_hook(self._summer(name)) for name, module in
                        snn.model.named_modules() if isinstance(module, StatefulModule)]

    def _summer(self, name: str):
        def hook(module, inputs, out: torch.Tensor) -> None:
            total = out if self.step_mode == "s" else out.sum(0)
            if name not in self.sums:
                self.sums[name] = total.new_zeros((self.batch, *total.shape[1:]))
            self.sums[name][self.active] += total
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


ROWS_PER_CALL = 16
"""Adaptive chunks: steps per sequence call = ceil(ROWS_PER_CALL / running samples). Measured on ``vit_mnist``
(1 CPU thread, CPU time per step): a call costs ~3 ms of overhead, so one sample runs 3x faster per step in
chunks of 16 than of 1; from 16 samples on, a step costs the same per sample in chunks of 1 as of 4, and
chunks of 16 are slower (the ``[T*B, ...]`` tensors leave the cache)."""


class SpikeZIPSNN(nn.Module):
    """The spiking twin of a :class:`SpikeZIPQANN` (build it with ``spiketwin.convert.to_snn(qann)``).

    ``.model`` is the QANN's module tree with every operator swapped (same module paths). Run it with
    :meth:`simulate`; check it against the QANN with :meth:`verify`.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """One call of the swapped network in its current step mode (``[B, ...]`` or ``[T, B, ...]``)."""
        return self.model(x, **kwargs)

    @torch.no_grad()
    def simulate(self, x: torch.Tensor, max_steps: int | None = None, step_mode: str = "m", chunk: int | None = None,
                 early_exit: bool = True, **kwargs) -> SimResult:
        """Run on ``x`` (``[B, ...]``, entering at the first step; zeros afterwards) until every sample settles.

        ``max_steps`` (default 512) caps the run; ``step_mode="m"`` runs ``chunk`` steps per call (fast),
        ``"s"`` one step per call (the reference); both give identical results. ``chunk=None`` (default) adapts
        it: one step per call while at least ``ROWS_PER_CALL`` samples run (nothing is simulated past a
        sample's settle step), more steps per call for the few samples of the tail (fewer calls).
        ``early_exit=False`` runs all ``max_steps`` for every sample (settle steps are still recorded). Extra
        keyword tensors (e.g. an attention mask, ``[B, ...]``) go to the model unchanged at every step.
        """
        return self._run(x, max_steps, step_mode, chunk, early_exit, None, kwargs)

    def _run(self, x, max_steps, step_mode, chunk, early_exit, observer, kwargs) -> SimResult:
        x = self._check_input(x)
        max_steps = 512 if max_steps is None else int(max_steps)
        if max_steps < 1 or (chunk is not None and chunk < 1):
            raise ValueError(f"simulate: max_steps and chunk must be >= 1, got {max_steps} and {chunk}")
        neurons = [m for m in self.model.modules() if isinstance(m, STBIF)]
        if not neurons:
            raise ValueError("simulate: the SNN has no STBIF neuron; settling is read from the neurons' counts")
        if observer is not None:
            observer.step_mode = step_mode
        batch = len(x)
        settle = torch.full((batch,), -1, dtype=torch.int64, device=x.device)
        active = torch.arange(batch, device=x.device)
        running, rows = None, []
        self.eval()
        reset(self.model)
        set_step_mode(self.model, step_mode)
        t = 0  # steps done
        try:
            while t < max_steps and len(active) > 0:
                n = 1 if step_mode == "s" else min(chunk or -(-ROWS_PER_CALL // len(active)), max_steps - t)
                if observer is not None:
                    observer.active = active
                inputs = x.new_zeros((n, len(active), *x.shape[1:]))
                if t == 0:
                    inputs[0] = x
                extra = {k: v.index_select(0, active) for k, v in kwargs.items()}
                out = self.model(inputs[0] if step_mode == "s" else inputs, **extra)
                out = out.unsqueeze(0) if step_mode == "s" else out  # [n, b, ...]
                if running is None:
                    running = out.new_zeros((batch, *out.shape[2:]))
                sums = running_sum(out, running[active])
                step_rows = running.expand(n, *running.shape).clone()
                step_rows[:, active] = sums
                rows.append(step_rows)
                running = step_rows[-1].clone()
                pending = neurons[0].pending
                for m in neurons[1:]:
                    pending = pending | m.pending  # [b, n]: some neuron still away from its target after step
                calm = ~pending
                first_calm = torch.where(calm.any(1), calm.int().argmax(1), -1)  # within the chunk
                newly = (first_calm >= 0) & (settle[active] < 0)
                settle[active[newly]] = t + 1 + first_calm[newly]  # nothing pending after step s: exact after s
                t += n
                if early_exit:
                    stay = settle[active] < 0
                    if not bool(stay.all()):
                        index = stay.nonzero().squeeze(1)
                        for m in self.model.modules():
                            if isinstance(m, StatefulModule):
                                m.keep(index)
                        active = active[index]
        finally:
            if observer is not None:
                observer.close()
        per_step = torch.cat(rows)
        if len(active) == 0:  # a chunk may have run past the last settle step
            per_step = per_step[: int(settle.max())]
        return SimResult(output=per_step[-1], per_step=per_step, settle_step=settle)

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1 or len(x) == 0:
            desc = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"simulate: x must be a non-empty floating tensor [B, ...], got {desc}")
        if not bool(torch.isfinite(x).all()):
            bad = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten().tolist()
            raise ValueError(f"simulate: x has NaN or inf values in samples {bad[:10]}; the SNN needs finite input")
        check = getattr(self.model, "check_input", None)
        if check is not None:
            check(x)
        param = next(self.model.parameters(), None)
        return x if param is None else x.to(device=param.device, dtype=param.dtype)

    @torch.no_grad()
    def verify(self, qann: nn.Module, x: torch.Tensor, max_steps: int | None = None, step_mode: str = "m",
               rtol: float | None = None, **kwargs) -> EquivalenceReport:
        """Compare this SNN's summed values with ``qann``'s, per sample and per layer.

        For every swapped module (neurons, bias-once layers, SESA products, accumulate-apply-difference
        functions) the outputs summed over steps must equal the QANN module's output of the same path;
        the last row is the logits. ``rtol`` defaults to 1e-9 in float64 and 1e-4 otherwise (in float32 a
        value sitting on a rounding boundary may legitimately move a neuron by one level).
        """
        inner = qann.model if isinstance(qann, SpikeZIPQANN) else qann
        x = self._check_input(x)
        captured: dict[str, torch.Tensor] = {}
        names = {n for n, m in self.model.named_modules() if isinstance(m, StatefulModule)}
        handles = [m.register_forward_hook(lambda mod, i, o, n=n: captured.__setitem__(n, o))
                   for n, m in inner.named_modules() if n in names]
        was_training = inner.training
        try:
            reference = inner.eval()(x, **kwargs)
        finally:
            for h in handles:
                h.remove()
            inner.train(was_training)
        observer = _Observer(self, len(x))
        result = self._run(x, max_steps, step_mode, None, True, observer, kwargs)
        order = [n for n, m in self.model.named_modules() if n in captured]
        layers = order + ["<output>"]
        pairs = [(observer.sums[n], captured[n]) for n in order] + [(result.output, reference)]
        max_abs, rel = [], []
        for snn_sum, ref in pairs:
            diff = (snn_sum.double() - ref.double()).flatten(1).abs().amax(1)
            scale = ref.double().flatten(1).abs().amax(1)
            r = torch.where(diff == 0, torch.zeros_like(diff), diff / scale)
            max_abs.append(diff)
            rel.append(r)
        if rtol is None:
            rtol = 1e-9 if x.dtype == torch.float64 else 1e-4
        return EquivalenceReport(layers, torch.stack(max_abs).cpu(), torch.stack(rel).cpu(),
                                 result.settle_step.cpu(), rtol, str(x.dtype).replace("torch.", ""))
