"""Export to NIR (the Neuromorphic Intermediate Representation), for what NIR can express.

``to_nir(snn, example_input, path)`` writes one time step of ``snn`` as an NIR graph (HDF5): Linear /
Conv1d / Conv2d (``Affine`` / ``Linear`` / ``Conv*d``, with a following BatchNorm folded into them), LIF and
IF neurons with hard reset, average pooling, flatten, and residual sums (several edges into one node:
NIR sums a node's inputs). Anything else (activation x activation products, softmax, LayerNorm, max
pooling, soft reset, ST-BIF bounds, iLIF, quantizers, analog activations) is refused with one message that
lists every offending module path and why. ``submodule="path"`` exports that part of the network alone
(its input is what it receives when ``snn`` runs on ``example_input``).

**Neuron mapping.** NIR's LIF is continuous: ``tau dv/dt = (v_leak - v) + r I``, spike when
``v > v_threshold``, then ``v = v_reset``. One forward-Euler step of length ``dt`` gives
``v <- v + (dt/tau) (v_leak - v + r I)``. SpikingJelly's (and our) LIF with ``decay_input=True`` is
``H = V + (X - (V - V_reset)) / tau_sj``, so ``tau = tau_sj * dt``, ``v_leak = V_reset``, ``r = 1``; with
``decay_input=False`` (``H = V - (V - V_reset)/tau_sj + X``) the input weight is 1, so ``r = tau_sj``.
NIR's IF is ``dv/dt = r I``: ``v <- v + dt r I`` equals ``H = V + X`` with ``r = 1/dt``. ``dt`` (default 1, one
time unit per step) is stored in the graph's metadata. NIR fires on ``v > θ``, we fire on ``v >= θ``: the
threshold written is the largest number below ``θ`` in the model's precision, so a potential exactly on the
threshold fires in both. NIR does not say where ``v`` starts (ours starts at ``v_reset``; :func:`from_nir`
does the same).

**Targets.** Importers read NIR with their own conventions: ``target="snntorch"`` and ``target="norse"``
write what ``snntorch.import_nir.import_from_nir`` and ``norse.torch.from_nir`` reproduce our spikes from
(their time step, Flatten dims, pooling, no node they drop); :mod:`spiketwin.export.nir_targets` says how.

Needs ``nir`` (``pip install 'spiketwin[nir]'``); reading back with :func:`from_nir` needs ``nirtorch`` too.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import fx, nn

from ..base import StatefulModule, reset, set_step_mode
from ..checkpoint import atomic_write
from ..extras import require
from ..neurons import LIF
from . import nir_targets
from .nir_graph import PASS_THROUGH, NIRExportError, build
from .nir_read import consumer, from_nir

_LEAVES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.AvgPool2d, nn.Flatten, LIF, nn.BatchNorm1d, nn.BatchNorm2d,
           *PASS_THROUGH)
# torch's own modules that NIR cannot express; spiketwin's say it themselves (their ``nir_refusal``)
_TORCH_REASONS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (nn.Softmax, "softmax: NIR has no normalisation across neurons"),
    (nn.LayerNorm, "LayerNorm: NIR has no normalisation across neurons"),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d), "max pooling: NIR 1.0 has only AvgPool2d and SumPool2d"),
    ((nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid), "analog activation: NIR graphs carry spikes between neurons"),
)


def _import_nir():
    return require("nir", "nir", "NIR export")


def _reason(module: nn.Module) -> str | None:
    """Why ``module`` cannot be exported, or None when it can (or is a container traced through). Every
    stateful module, and spiketwin's operators, carry their own reason (``nir_refusal``; None for a LIF / IF
    with hard reset)."""
    why = getattr(module, "nir_refusal", None)
    if why is not None:
        return why
    for types, why in _TORCH_REASONS:
        if isinstance(module, types):
            return why
    if isinstance(module, nn.AvgPool2d) and (module.ceil_mode or module.divisor_override is not None):
        return "AvgPool2d with ceil_mode or divisor_override: NIR's AvgPool2d has neither"
    if isinstance(module, nn.AvgPool2d) and not module.count_include_pad and module.padding not in (0, (0, 0)):
        return "AvgPool2d with count_include_pad=False and padding: NIR's AvgPool2d divides by the whole window"
    return None


def unsupported(model: nn.Module, ran: set[nn.Module] | None = None) -> list[tuple[str, str]]:
    """``(module path, reason)`` for every module of ``model`` that NIR cannot express (children of an
    offending module are not listed again); with ``ran``, only modules that ran (a model may hold unused
    ones, like the official Spikformer's LayerNorms)."""
    found: list[tuple[str, str]] = []
    for name, module in model.named_modules():
        if any(name.startswith(bad + ".") for bad, _ in found) or (ran is not None and module not in ran):
            continue
        why = _reason(module)
        if why is not None:
            found.append((name or "(the model itself)", f"{type(module).__name__}: {why}"))
    return found


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (*_LEAVES, StatefulModule)) or super().is_leaf_module(m, qualname)


def _part(snn: nn.Module, submodule: str | None) -> tuple[nn.Module, nn.Module]:
    """A private eval-mode copy of ``snn`` and the part of it to export."""
    model = copy.deepcopy(snn).eval()
    modules = dict(model.named_modules())
    if submodule is not None and submodule not in modules:
        raise KeyError(f"to_nir: {type(snn).__name__} has no submodule {submodule!r}; top-level ones: "
                       f"{', '.join(n for n, _ in model.named_children())}")
    return model, (model if submodule is None else modules[submodule])


def _part_io(model: nn.Module, part: nn.Module, example_input: torch.Tensor, submodule: str | None):
    """``(input, output, in_sequence, modules that ran)`` of ``part``'s first call when ``model`` runs
    ``example_input``."""
    seen: dict[str, torch.Tensor] = {}
    ran: set[nn.Module] = set()
    hooks = [part.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0] if a else None)),
             part.register_forward_hook(lambda m, a, o: seen.setdefault("y", o))]
    hooks += [m.register_forward_pre_hook(lambda m, a: ran.add(m)) for m in part.modules()]
    reset(model)
    with torch.no_grad():
        try:
            model(example_input.detach())
        finally:
            for h in hooks:
                h.remove()
            reset(model)
    if not isinstance(seen.get("x"), torch.Tensor) or not isinstance(seen.get("y"), torch.Tensor):
        raise NIRExportError(f"to_nir: {submodule or 'the model'} does not map a tensor to a tensor on the "
                             "example input")
    in_sequence = any(m.step_mode == "m" for m in part.modules() if isinstance(m, StatefulModule))
    return seen["x"], seen["y"], in_sequence, ran


def check(snn: nn.Module, graph, example_input: torch.Tensor, submodule: str | None = None,
          reader: str = "spiketwin") -> float:
    """Largest absolute difference, over every step of ``example_input`` (see :func:`to_nir`), between the
    output of the exported part of ``snn`` and the NIR ``graph`` (a path or an ``NIRGraph``) read back and run
    step by step. 0 means the file reproduces the network exactly.

    ``reader``: ``"spiketwin"`` (:func:`from_nir`, in the input's dtype), or the real consumer a file of that
    target is for, ``"snntorch"`` or ``"norse"`` (their importers, float32; the package must be installed)."""
    model, part = _part(snn, submodule)
    x, y, in_sequence, _ = _part_io(model, part, example_input, submodule)
    steps, expected = (x, y) if in_sequence else (x.unsqueeze(0), y.unsqueeze(0))
    if reader == "spiketwin":
        step = from_nir(graph, dtype=x.dtype).to(x.device)
    else:
        step = consumer(graph, reader)
        steps = steps.float().cpu()
    state, outputs = None, []
    with torch.no_grad():
        for x_t in steps:
            out, state = step(x_t, state)
            outputs.append(out.to(expected))
    return float((torch.stack(outputs) - expected).abs().max())


def to_nir(snn: nn.Module, example_input: torch.Tensor, path: str | Path | None = None,
           submodule: str | None = None, dt: float | None = None, target: str = "nir"):
    """Export one time step of ``snn`` (or of its ``submodule``) to an NIR graph; write it to ``path``
    (HDF5, ``nir.write``) when given. Returns the ``nir.NIRGraph``.

    ``example_input`` is what ``snn`` takes in one call in its current step mode: a sequence
    ``[T, B, ...]`` in sequence mode, one step ``[B, ...]`` in step mode. The input that the exported part
    receives at the first step fixes the NIR shapes. BatchNorm is folded with its running statistics.
    ``target``: ``"nir"`` (NIR as specified; ``dt`` default 1), ``"snntorch"`` (for
    ``snntorch.import_nir.import_from_nir``; dt is 1e-4, its importer's) or ``"norse"`` (for
    ``norse.torch.from_nir``; ``dt`` default 1e-3, its default: pass the same ``dt`` to Norse otherwise).
    Raises :class:`NIRExportError` listing every module that NIR (or that target) cannot express.
    """
    nir = _import_nir()
    nir_targets.check_target(target)
    dt = nir_targets.resolve_dt(target, dt)
    model, part = _part(snn, submodule)
    x, _, in_sequence, ran = _part_io(model, part, example_input, submodule)
    bad = unsupported(part, ran)
    if bad:
        raise NIRExportError(_refusal(bad, snn, submodule))
    x = x[0] if in_sequence else x
    set_step_mode(part, "s")
    try:
        graph = _Tracer().trace(part)
    except Exception as e:
        raise NIRExportError(f"to_nir: {type(part).__name__}'s forward cannot be traced by torch.fx ({e}); "
                             "export a traceable submodule with submodule=...") from e
    gm = fx.GraphModule(part, graph)
    from torch.fx.passes.shape_prop import ShapeProp

    with torch.no_grad():
        ShapeProp(gm).propagate(x)
    reset(part)
    nir_graph = build(nir, gm, dt, target, x.dtype, lambda found: _refusal(found, snn, submodule))
    if path is not None:
        atomic_write(path, lambda tmp: nir.write(tmp, nir_graph))
    return nir_graph


def _refusal(bad: list[tuple[str, str]], snn: nn.Module, submodule: str | None) -> str:
    where = type(snn).__name__ + (f".{submodule}" if submodule else "")
    lines = [f"to_nir: {where} has {len(bad)} module(s) NIR cannot express:"]
    lines += [f"  {name}: {why}" for name, why in bad]
    lines.append("Export a part without them with to_nir(..., submodule='path') (spiketwin export-nir --submodule).")
    return "\n".join(lines)
