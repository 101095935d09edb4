"""What each NIR consumer reads: the dialects of ``to_nir(..., target=...)``.

NIR's equations leave room that importers fill differently (checked against snnTorch 1.0.0, Norse 1.1.0,
nirtorch 2.6, nir 1.0.8):

- ``"nir"``: NIR as specified. ``tau = tau_sj * dt``, ``r``, ``v_leak = v_reset`` as in the docstring of
  :mod:`spiketwin.export.nir`; ``dt`` (default 1) stored in the metadata; Flatten dims without the batch.
- ``"snntorch"``: ``snntorch.import_nir.import_from_nir`` takes ``dt = 1e-4`` whatever the file says, maps
  ``nir.IF`` to a leaky neuron (beta 0.9, subtract reset), needs ``v_leak = 0``, resets to 0, divides the
  threshold by ``r dt / tau`` and passes Flatten dims to torch unshifted. So every neuron is written as a
  ``nir.LIF`` for ``dt = 1e-4`` with ``r dt / tau = 1`` (an IF as a LIF whose decay is below float64's
  resolution), the potential shifted by ``v_reset`` and scaled by ``tau`` where ``decay_input=True``.
- ``"norse"``: ``norse.torch.from_nir`` integrates with its own ``dt`` (default ``1e-3``), ignores ``r`` and
  ``v_reset`` (resets to 0), has no AvgPool2d (SumPool2d it has; unknown nodes are dropped silently) and
  passes Flatten dims to torch unshifted. So neurons get ``r = 1`` with the potential rescaled instead,
  average pooling becomes SumPool2d with ``1 / k^2`` folded into the next layer's weights (or the next
  neuron's threshold), and ``tau`` is chosen so that float32 ``dt / tau`` is exactly ``1 / tau_sj`` when
  that is a float32 number.

Every target writes Flatten dims that mean the same with and without a batch dimension where the consumer
passes them to torch (counted from the end), and handles the tie at the threshold: NIR (and both libraries)
fire on ``v > θ``, spiketwin on ``v >= θ``; the threshold written is the largest number below ``θ`` in the
precision the consumer computes in (float32 for snnTorch and Norse, the model's dtype for ``"nir"``), so a
potential exactly on ``θ`` fires in both.
"""

from __future__ import annotations

import numpy as np
import torch

TARGETS = ("nir", "snntorch", "norse")
_DT = {"snntorch": 1e-4, "norse": 1e-3}  # what the importer assumes when the caller says nothing
_IF_DECAY = 2.0 ** 60  # tau / dt of a LIF whose 1 - dt/tau is exactly 1.0 in float64: an IF for snnTorch


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"to_nir: unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    return target


def resolve_dt(target: str, dt: float | None) -> float:
    """The time step to write for ``target``: the caller's, or the one the consumer assumes."""
    if dt is not None and not dt > 0:
        raise ValueError(f"to_nir: dt must be positive, got {dt}")
    if target == "snntorch":
        if dt is not None and dt != _DT["snntorch"]:
            raise ValueError(f"to_nir: snnTorch's importer assumes dt = 1e-4 whatever the file says; got dt={dt} "
                             "(leave dt unset for target='snntorch', or use target='nir')")
        return _DT["snntorch"]
    return float(dt) if dt is not None else _DT.get(target, 1.0)


def below(value: float, dtype: torch.dtype) -> np.ndarray:
    """The largest ``dtype`` number below ``value`` rounded to ``dtype``: ``v > below(θ)`` is ``v >= θ``."""
    np_dtype = np.float32 if dtype in (torch.float32, torch.float16, torch.bfloat16) else np.float64
    v = np.asarray(value, dtype=np_dtype)
    return np.nextafter(v, np.asarray(-np.inf, dtype=np_dtype)).astype(np.float64)


def _norse_tau(tau_sj: float, dt: float) -> float:
    """A float32 ``tau`` near ``tau_sj * dt`` for which Norse's float32 ``dt * (1 / tau)`` equals ``1 / tau_sj``
    rounded to float32 (bit-exact leak where ``1 / tau_sj`` is a float32 number, e.g. tau 2 or 4)."""
    want = torch.tensor(1.0 / tau_sj, dtype=torch.float32)
    tau = torch.tensor(tau_sj * dt, dtype=torch.float32)
    candidates = [tau]
    for direction in (torch.tensor(float("inf")), torch.tensor(float("-inf"))):
        t = tau
        for _ in range(4):
            t = torch.nextafter(t, direction.to(torch.float32))
            candidates.append(t)
    for t in candidates:
        if torch.equal(dt * (1 / t), want):
            return float(t)
    return float(tau)


def neuron(nir, target: str, p, shape: tuple[int, ...], dt: float, dtype: torch.dtype, gain: float = 1.0):
    """The NIR node of a hard-reset LIF/IF with parameters ``p`` (:class:`spiketwin.neurons.LIFParams`) whose
    input arrives multiplied by ``gain`` (Norse's folded average pooling), as ``target`` reads it."""
    full = lambda value: np.full(shape, value, dtype=np.float64)
    theta, v_reset = p.v_threshold, p.v_reset
    if target == "nir":
        if gain != 1.0:
            raise AssertionError("a pending input gain only arises for target='norse'")
        if p.tau is None:
            return nir.IF(r=full(1.0 / dt), v_threshold=full(below(theta, dtype)), v_reset=full(v_reset))
        return nir.LIF(tau=full(p.tau * dt), r=full(1.0 if p.decay_input else p.tau), v_leak=full(v_reset),
                       v_threshold=full(below(theta, dtype)), v_reset=full(v_reset))
    # snnTorch and Norse reset to 0 with no leak potential: run the potential shifted by v_reset
    if target == "snntorch":  # M = beta M + X: the potential times tau where the input is divided by tau
        tau = p.tau * dt if p.tau is not None else _IF_DECAY * dt
        scale = p.tau if p.tau is not None and p.decay_input else 1.0
        return nir.LIF(tau=full(tau), r=full(tau / dt), v_leak=full(0.0), v_reset=full(0.0),
                       v_threshold=full(below((theta - v_reset) * scale, torch.float32)))
    # norse: v <- v + dt/tau (X - v), r ignored: the potential divided by the input's gain (and tau)
    scale = gain * (p.tau if p.tau is not None and not p.decay_input else 1.0)
    threshold = full(below((theta - v_reset) / scale, torch.float32))
    if p.tau is None:
        return nir.IF(r=full(1.0), v_threshold=threshold, v_reset=full(0.0))
    return nir.LIF(tau=full(_norse_tau(p.tau, dt)), r=full(1.0), v_leak=full(0.0), v_threshold=threshold,
                   v_reset=full(0.0))


def flatten_dims(target: str, in_shape: tuple[int, ...], start: int, end: int) -> tuple[int, int]:
    """NIR Flatten dims for torch's ``start``/``end`` over ``in_shape`` (batch included, both already >= 1):
    without the batch for ``"nir"``, counted from the end for importers that hand them to torch as they are."""
    if target == "nir":
        return start - 1, end - 1
    return start - len(in_shape), end - len(in_shape)


def identity(nir, target: str, shape: tuple[int, ...]):
    """A node that passes its summed inputs on (a residual sum straight into the output: the output node of
    nirtorch's ``nir_to_torch`` does not sum): ``Scale(1)``, or for importers without ``Scale`` an identity
    Flatten."""
    if target == "nir":
        return nir.Scale(scale=np.ones(shape))
    return nir.Flatten(input_type={"input": np.array(shape)}, start_dim=-1, end_dim=-1)


def dfs_order_problem(edges: list[tuple[str, str]]) -> str | None:
    """Norse runs nodes in depth-first order from the input, following each node's edges in file order, and
    reads an input not yet computed from the previous step. ``edges`` come in topological order; returns the
    first node reached before one of its inputs, or None when that order is topological."""
    children: dict[str, list[str]] = {}
    parents: dict[str, set[str]] = {}
    for src, dst in edges:
        children.setdefault(src, []).append(dst)
        parents.setdefault(dst, set()).add(src)
    seen: list[str] = []
    stack = ["input"]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        if not parents.get(node, set()) <= set(seen):
            return node
        seen.append(node)
        stack.extend(reversed([c for c in children.get(node, []) if c not in seen]))
    return None
