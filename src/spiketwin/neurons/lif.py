"""The LIF and IF neurons (SpikingJelly's semantics) and their fused time scan, forward and backward, on the
torch path and by the fused kernels (:mod:`spiketwin.kernels.lif`: C on CPU, Triton on CUDA)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..kernels import lif as lif_ops
from ..base import StatefulModule
from ..surrogate import ATan, Sigmoid, Surrogate


class LIFParams(NamedTuple):
    """Parameters of the LIF/IF dynamics. ``tau=None`` means no leak (IF); ``v_reset=None`` means soft reset."""

    tau: float | None = 2.0
    v_threshold: float = 1.0
    v_reset: float | None = 0.0
    decay_input: bool = True
    detach_reset: bool = True


def _charge(v: torch.Tensor, x: torch.Tensor, p: LIFParams) -> torch.Tensor:
    """Membrane potential after integrating ``x``: ``H = V + (X - (V - V_reset)) / tau`` and variants."""
    if p.tau is None:
        return v + x
    rest = v if not p.v_reset else v - p.v_reset
    if p.decay_input:
        return v + (x - rest) / p.tau
    return v - rest / p.tau + x


def _charge_grads(p: LIFParams) -> tuple[float, float]:
    """(dH/dV, dH/dX) of :func:`_charge`; both constant."""
    return lif_ops.charge_grads(lif_mode(p), _scalars(p)[0])


def lif_step(
    x: torch.Tensor, v: torch.Tensor, p: LIFParams, surrogate: Surrogate
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LIF/IF step as a pure function (the reference the fused scan is tested against).

    Charge ``H``, fire ``S = Θ(H - V_th)`` (surrogate gradient), then hard reset
    ``V = H (1 - S) + V_reset S`` or, when ``p.v_reset is None``, soft reset ``V = H - V_th S``.
    Returns ``(spikes, v)``.
    """
    h = _charge(v, x, p)
    s = surrogate(h - p.v_threshold)
    s_reset = s.detach() if p.detach_reset else s
    if p.v_reset is None:
        v = h - p.v_threshold * s_reset
    else:
        v = h * (1 - s_reset) + p.v_reset * s_reset
    return s, v


def lif_negated(p: LIFParams) -> bool:
    """Whether :func:`lif_scan` runs SpikingJelly's default neuron (leaky, decay_input, hard reset to 0) in negated
    form, storing ``-H`` rather than ``H``."""
    return p.tau is not None and p.decay_input and p.v_reset == 0.0


def _scan_negated(x_seq: torch.Tensor, v: torch.Tensor, p: LIFParams, out: torch.Tensor) -> torch.Tensor:
    """Forward scan of the default neuron on the negated potential ``W = -V``: three passes per step.

    ``-H = W - (X + W) / tau`` is bit-for-bit the negation of ``V + (X - V) / tau`` (negation is exact), and
    the hard reset ``V = 0 if H >= V_th else H`` is one ``threshold`` pass on ``-H`` (keep it where
    ``-H > -V_th``, else ``-V_reset = 0``). Writes ``-H`` of every step into ``out`` ``[T, ...]``; returns the
    final ``V``.
    """
    w = -v
    for t in range(x_seq.shape[0]):
        charge = torch.add(x_seq[t], w).div_(p.tau)
        torch.sub(w, charge, out=out[t])
        w = torch.nn.functional.threshold(out[t], -p.v_threshold, 0.0)
    return -w


def _scan_generic(x_seq: torch.Tensor, v: torch.Tensor, p: LIFParams, out: torch.Tensor) -> torch.Tensor:
    """Forward scan of any LIF/IF variant; writes ``H`` of every step into ``out``; returns the final ``V``."""
    for t in range(x_seq.shape[0]):
        h = out[t]
        h.copy_(_charge(v, x_seq[t], p))
        fired = h >= p.v_threshold
        if p.v_reset is None:
            v = torch.where(fired, h - p.v_threshold, h)
        else:
            v = h.masked_fill(fired, p.v_reset)
    return v


def lif_scan(x_seq: torch.Tensor, v: torch.Tensor, p: LIFParams, out: torch.Tensor) -> torch.Tensor:
    """Forward scan over ``[T, ...]``: writes ``H`` of every step into ``out`` (``-H`` for the default neuron,
    see :func:`lif_negated`); returns the final ``V``. ``out`` may be ``x_seq`` itself (each step reads its input
    before writing). Not differentiable (for autograd: :func:`lif_sequence`). Runs a fused kernel when one runs on
    these tensors (same results), else the torch scans above."""
    if v.shape == x_seq.shape[1:] == out.shape[1:] and x_seq.is_contiguous() and out.is_contiguous() \
            and lif_ops.runs_on(x_seq, v, out):
        v_final = torch.empty_like(v)
        lif_ops.launch_forward(x_seq, v.contiguous(), out, None, v_final, lif_mode(p), *_scalars(p))
        return v_final
    return (_scan_negated if lif_negated(p) else _scan_generic)(x_seq, v, p, out)


def lif_spikes(h_seq: torch.Tensor, p: LIFParams, out: torch.Tensor) -> torch.Tensor:
    """Spikes (``h_seq``'s dtype) from the scan's ``H`` buffer, written into ``out`` (may be ``h_seq``)."""
    if lif_negated(p):
        return torch.le(h_seq, -p.v_threshold, out=out)
    return torch.ge(h_seq, p.v_threshold, out=out)


def lif_backward(u: torch.Tensor, grad_spikes: torch.Tensor, grad_v: torch.Tensor | None, p: LIFParams,
                 surrogate: Surrogate) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients ``(dL/dX_seq, dL/dV_0)`` of the scan, given ``u = H - V_th`` of every step (overwritten).

    The surrogate derivative and ``dV/dH`` are evaluated over all T at once; only the linear recurrence
    ``g_t += g_{t+1} dH/dV dV_t/dH_t`` runs in reverse time.
    """
    dh_dv, dh_dx = _charge_grads(p)
    sg = surrogate.grad(u)
    # dV/dH per step, written over u once the surrogate has used it
    if p.v_reset is None:  # V = H - V_th S
        dv_dh = u.fill_(1.0) if p.detach_reset else torch.mul(sg, -p.v_threshold, out=u).add_(1.0)
    elif p.detach_reset:  # V = H (1 - S) + V_reset S
        dv_dh = u.lt_(0.0)
    else:
        dv_dh = (u < 0).to(u.dtype).add_((p.v_reset - (u + p.v_threshold)) * sg)
    # dL/dH_t = g_t sg_t + dL/dV_t dV_t/dH_t, with dL/dV_t = dL/dH_{t+1} dH/dV (or grad_v at the end)
    grad_h = sg.mul_(grad_spikes)
    if grad_v is not None:
        grad_h[-1].addcmul_(grad_v, dv_dh[-1])
    carry = dv_dh.mul_(dh_dv)
    for t in range(grad_h.shape[0] - 2, -1, -1):
        grad_h[t].addcmul_(grad_h[t + 1], carry[t])
    grad_v0 = grad_h[0] * dh_dv
    return grad_h.mul_(dh_dx), grad_v0


def lif_u(h_seq: torch.Tensor, p: LIFParams) -> torch.Tensor:
    """``u = H - V_th`` of every step (the input of :func:`lif_backward`), a new tensor, from the scan's buffer."""
    if lif_negated(p):
        return torch.add(h_seq, p.v_threshold).neg_()
    return torch.sub(h_seq, p.v_threshold)


# ---------------------------------------------------------------- the fused kernels (spiketwin.kernels.lif)

_KERNEL_SURROGATES = {Sigmoid: lif_ops.SIGMOID, ATan: lif_ops.ATAN}
"""The surrogates the kernels' backward computes (its ``kind`` code), by exact type; others take the torch path."""


def lif_mode(p: LIFParams) -> int:
    """The mode bits of the kernels (``native/lif.c``) for ``p``: leak (0 none, 1 decay_input, 2 plain), 4 soft
    reset, 8 a non-zero ``v_reset``, 16 the negated form (:func:`lif_negated`), 32 ``detach_reset``."""
    leak = 0 if p.tau is None else 1 if p.decay_input else 2
    return (leak | (4 if p.v_reset is None else 0) | (8 if p.v_reset else 0) | (16 if lif_negated(p) else 0)
            | (32 if p.detach_reset else 0))


def _scalars(p: LIFParams) -> tuple[float, float, float]:
    """(tau, V_th, V_reset) as the kernels take them."""
    return 1.0 if p.tau is None else p.tau, p.v_threshold, p.v_reset or 0.0


def native_affine_scan(z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, v: torch.Tensor, p: LIFParams,
                       steps: int) -> torch.Tensor | None:
    """:func:`lif_scan` of a BatchNorm's output computed on the fly, in one native pass
    (``spiketwin::lif_affine_scan``): ``z`` ``[M, C, ...]`` (``M = steps R``, the steps first) becomes
    ``z * scale[c] + shift[c]`` rounded once, as torch's CPU ``batch_norm`` computes its output from its
    per-channel terms; returns ``H`` ``[steps, *v.shape]`` from state ``v`` (one step's elements), or None when
    the kernel cannot run (not on CPU, or shapes that do not fit)."""
    channels = z.shape[1] if z.dim() > 1 else 0
    if (z.dim() < 2 or z.shape[0] % steps or v.numel() * steps != z.numel() or scale.shape != (channels,)
            or shift.shape != (channels,) or not lif_ops.runs_on(z, scale, shift, v, cuda=False)):
        return None
    return lif_ops.lif_affine_scan(z, scale, shift, v, steps, lif_mode(p), *_scalars(p))


class _LIFScan(torch.autograd.Function):
    """The LIF/IF time scan on the torch path (where no kernel runs). Forward keeps only ``H`` per step (``-H`` on
    the fast path); spikes come from ``H`` in one pass over all steps. Backward: :func:`lif_backward`."""

    @staticmethod
    def forward(ctx, x_seq: torch.Tensor, v: torch.Tensor, p: LIFParams, surrogate: Surrogate):
        keep_h = any(ctx.needs_input_grad[:2])
        spikes = torch.empty_like(x_seq)
        h_seq = torch.empty_like(x_seq) if keep_h else spikes  # not kept: H goes into the spikes buffer
        v_final = (_scan_negated if lif_negated(p) else _scan_generic)(x_seq, v, p, h_seq)
        lif_spikes(h_seq, p, out=spikes)
        if keep_h:
            ctx.save_for_backward(h_seq)
            ctx.p, ctx.surrogate = p, surrogate
            ctx.set_materialize_grads(False)  # an unused final V (the usual case) gets None, not a tensor of zeros
        return spikes, v_final

    @staticmethod
    def backward(ctx, grad_spikes: torch.Tensor, grad_v: torch.Tensor | None):
        h_seq = ctx.saved_tensors[0]  # no other reference kept: a recomputed H is freed on return
        if grad_spikes is None:  # only the final V is used
            grad_spikes = torch.zeros_like(h_seq)
        u = lif_u(h_seq, ctx.p)
        del h_seq  # a recomputed H is freed before the torch backward's temporaries exist
        return *lif_backward(u, grad_spikes, grad_v, ctx.p, ctx.surrogate), None, None


def lif_sequence(x_seq: torch.Tensor, v: torch.Tensor, p: LIFParams,
                 surrogate: Surrogate) -> tuple[torch.Tensor, torch.Tensor]:
    """Spikes ``[T, ...]`` and the final ``V`` of the scan over ``x_seq`` from ``v``, differentiable: the fused
    operator ``spiketwin::lif_scan`` where a kernel runs (the C kernel on CPU, Triton on CUDA), else the torch
    path. A surrogate other than :class:`Sigmoid` / :class:`ATan` takes the torch path when gradients are needed."""
    keep_h = torch.is_grad_enabled() and (x_seq.requires_grad or v.requires_grad)
    kind = _KERNEL_SURROGATES.get(type(surrogate))
    if (kind is None and keep_h) or v.shape != x_seq.shape[1:] or not lif_ops.runs_on(x_seq, v):
        return _LIFScan.apply(x_seq.contiguous(), v, p, surrogate)
    scan = lif_ops.LIFScanFunction.apply if keep_h else lif_ops.lif_scan
    spikes, v_final, _ = scan(x_seq, v, lif_mode(p), *_scalars(p), kind or 0, getattr(surrogate, "alpha", 1.0), keep_h)
    return spikes, v_final


class LIF(StatefulModule):
    """Leaky integrate-and-fire neuron with SpikingJelly's semantics.

    Charge ``H = V + (X - (V - V_reset)) / tau`` (``decay_input=True``) or ``H = V - (V - V_reset)/tau + X``;
    fire ``S = Θ(H - V_th)``; hard reset to ``v_reset``, or soft reset (subtract ``V_th``) when
    ``v_reset=None``. ``V`` starts at ``v_reset`` (0 for soft reset). Output: spikes in {0, 1}, input's dtype.
    State: ``.v``.
    """

    state_names = ("v",)

    def __init__(
        self,
        tau: float | None = 2.0,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        decay_input: bool = True,
        detach_reset: bool = True,
        surrogate: Surrogate | None = None,
        step_mode: str = "m",
    ) -> None:
        super().__init__(step_mode)
        if tau is not None and not tau > 1.0:
            raise ValueError(f"{type(self).__name__}: tau must be > 1 (it divides the charge), got {tau}")
        self.params = LIFParams(tau, float(v_threshold), None if v_reset is None else float(v_reset),
                                decay_input, detach_reset)
        self.surrogate = surrogate if surrogate is not None else Sigmoid(4.0)

    @property
    def nir_refusal(self) -> str | None:
        """NIR's LIF / IF have a hard reset only."""
        if self.params.v_reset is None:
            return "soft reset (v -= threshold): NIR's LIF / IF reset the potential to v_reset"
        return None

    def _initial_v(self, like: torch.Tensor) -> torch.Tensor:
        if self.v is not None:
            return self.v
        return torch.full_like(like, self.params.v_reset or 0.0)

    def single_step(self, x: torch.Tensor) -> torch.Tensor:
        spikes, self.v = lif_sequence(x.unsqueeze(0), self._initial_v(x), self.params, self.surrogate)
        return spikes[0]

    def multi_step(self, x_seq: torch.Tensor) -> torch.Tensor:
        spikes, self.v = lif_sequence(x_seq, self._initial_v(x_seq[0]), self.params, self.surrogate)
        return spikes

    def extra_repr(self) -> str:
        p = self.params
        return (f"tau={p.tau}, v_threshold={p.v_threshold}, v_reset={p.v_reset}, decay_input={p.decay_input}, "
                f"detach_reset={p.detach_reset}, {super().extra_repr()}")


class IF(LIF):
    """Integrate-and-fire neuron: :class:`LIF` without leak (``H = V + X``)."""

    def __init__(
        self,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        detach_reset: bool = True,
        surrogate: Surrogate | None = None,
        step_mode: str = "m",
    ) -> None:
        super().__init__(None, v_threshold, v_reset, True, detach_reset, surrogate, step_mode)
