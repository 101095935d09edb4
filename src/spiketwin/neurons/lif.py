"""The LIF and IF neurons (SpikingJelly's semantics) and their fused time scan, forward and backward, on the
torch path and by the native kernels (``native/lif.c``)."""

from __future__ import annotations

import ctypes
import math
from typing import NamedTuple

import torch

from .. import native
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
    if p.tau is None:
        return 1.0, 1.0
    return 1.0 - 1.0 / p.tau, (1.0 / p.tau if p.decay_input else 1.0)


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
    before writing). Runs the native kernel when it can (same results), else the torch scans above."""
    v_final = _native_scan(x_seq, v, p, out, None)
    if v_final is not None:
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


# ---------------------------------------------------------------- the native kernels (native/lif.c)

_NATIVE_SURROGATES = {Sigmoid: 0, ATan: 1}
"""The surrogates the native backward computes (its ``kind`` code), by exact type; others take the torch path."""


def _native_mode(p: LIFParams) -> int:
    """The mode bits of ``native/lif.c`` for ``p``: leak (0 none, 1 decay_input, 2 plain), 4 soft reset,
    8 a non-zero ``v_reset``, 16 the negated form (:func:`lif_negated`), 32 ``detach_reset``."""
    leak = 0 if p.tau is None else 1 if p.decay_input else 2
    return (leak | (4 if p.v_reset is None else 0) | (8 if p.v_reset else 0) | (16 if lif_negated(p) else 0)
            | (32 if p.detach_reset else 0))


def _native_scan(x_seq: torch.Tensor, v: torch.Tensor, p: LIFParams, h_out: torch.Tensor | None,
                 spikes_out: torch.Tensor | None) -> torch.Tensor | None:
    """The scan by the native kernel, one pass: ``H`` (as :func:`lif_scan`) into ``h_out`` (``None``: not kept;
    may be ``x_seq``), spikes (as :func:`lif_spikes`) into ``spikes_out`` (``None``: not wanted). Returns the
    final ``V``, or ``None`` (nothing written) when the kernel cannot run: see :func:`spiketwin.native.takes`."""
    outs = [t for t in (h_out, spikes_out) if t is not None]
    if not native.takes(x_seq, v, *outs) or v.shape != x_seq.shape[1:] or any(t.shape != x_seq.shape for t in outs):
        return None
    kernel = native.function("lif", "lif_forward", x_seq.dtype, *[ctypes.c_void_p] * 5, ctypes.c_int64,
                             ctypes.c_int64, ctypes.c_int32, *[native.REAL] * 3)
    if kernel is None:
        return None
    v_final = torch.empty_like(v)
    kernel(native.pointer(x_seq), None if h_out is None else native.pointer(h_out),
           None if spikes_out is None else native.pointer(spikes_out), native.pointer(v), native.pointer(v_final),
           x_seq.shape[0], v.numel(), _native_mode(p), 1.0 if p.tau is None else p.tau, p.v_threshold,
           p.v_reset or 0.0)
    return v_final


def native_affine_scan(z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, v: torch.Tensor, p: LIFParams,
                       out: torch.Tensor) -> bool:
    """:func:`lif_scan` of a BatchNorm's output computed on the fly, in one native pass: ``z`` ``[M, C, ...]``
    (``M = T R``, the T steps first) becomes ``z * scale[c] + shift[c]`` rounded once, as torch's ``batch_norm``
    computes its output from its per-channel terms; ``H`` goes into ``out`` (``z``'s layout, ``T`` leading; not
    ``z``) from state ``v`` (one step's elements); the final ``V`` is not kept. Returns False (nothing written)
    when the kernel cannot run."""
    steps, channels = out.shape[0], z.shape[1] if z.dim() > 1 else 0
    if (z.dim() < 2 or z.shape[0] % steps or out.numel() != z.numel() or v.numel() * steps != z.numel()
            or scale.shape != (channels,) or shift.shape != (channels,)
            or out.untyped_storage().data_ptr() == z.untyped_storage().data_ptr()
            or not native.takes(z, scale, shift, v, out)):
        return False
    kernel = native.function("lif", "lif_affine_forward", z.dtype, *[ctypes.c_void_p] * 6, *[ctypes.c_int64] * 4,
                             ctypes.c_int32, *[native.REAL] * 3)
    if kernel is None:
        return False
    state = torch.empty_like(v)
    kernel(native.pointer(z), native.pointer(scale), native.pointer(shift), native.pointer(out), native.pointer(v),
           native.pointer(state), steps, z.shape[0] // steps, channels, z[0, 0].numel(), _native_mode(p),
           1.0 if p.tau is None else p.tau, p.v_threshold, p.v_reset or 0.0)
    return True


def _native_backward(h_seq: torch.Tensor, grad_spikes: torch.Tensor, grad_v: torch.Tensor | None, p: LIFParams,
                     surrogate: Surrogate) -> tuple[torch.Tensor, torch.Tensor] | None:
    """:func:`lif_u` and :func:`lif_backward` by the native kernel, one pass reading the scan's ``H`` buffer;
    ``None`` when the kernel cannot run (then nothing is computed)."""
    kind = _NATIVE_SURROGATES.get(type(surrogate))
    grads = [grad_spikes.contiguous()] + ([] if grad_v is None else [grad_v.contiguous()])
    if kind is None or grads[0].shape != h_seq.shape or not native.takes(h_seq, *grads):
        return None
    kernel = native.function("lif", "lif_backward", h_seq.dtype, *[ctypes.c_void_p] * 5, ctypes.c_int64,
                             ctypes.c_int64, ctypes.c_int32, ctypes.c_int32, *[native.REAL] * 6)
    if kernel is None:
        return None
    dh_dv, dh_dx = _charge_grads(p)
    grad_x, grad_v0 = torch.empty_like(h_seq), torch.empty_like(h_seq[0])
    kernel(native.pointer(h_seq), native.pointer(grads[0]), native.pointer(grads[1]) if grad_v is not None else None,
           native.pointer(grad_x), native.pointer(grad_v0), h_seq.shape[0], grad_v0.numel(), _native_mode(p), kind,
           p.v_threshold, p.v_reset or 0.0, dh_dv, dh_dx, surrogate.alpha, math.pi / 2 * surrogate.alpha)
    return grad_x, grad_v0


class _LIFScan(torch.autograd.Function):
    """Fused LIF/IF time scan. Forward keeps only ``H`` per step (``-H`` on the fast path); spikes come from
    ``H`` in one pass over all steps. Backward: :func:`lif_backward`. Both run as one native pass when they can."""

    @staticmethod
    def forward(ctx, x_seq: torch.Tensor, v: torch.Tensor, p: LIFParams, surrogate: Surrogate):
        keep_h = any(ctx.needs_input_grad[:2])
        x_seq = x_seq.contiguous()
        h_seq, spikes = torch.empty_like(x_seq) if keep_h else None, torch.empty_like(x_seq)
        v_final = _native_scan(x_seq, v, p, h_seq, spikes)
        if v_final is None:  # torch path; H not kept: it goes into the spikes buffer, then turns into the spikes
            h = spikes if h_seq is None else h_seq
            v_final = lif_scan(x_seq, v, p, h)
            lif_spikes(h, p, out=spikes)
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
        grads = _native_backward(h_seq, grad_spikes, grad_v, ctx.p, ctx.surrogate)
        if grads is None:
            u = lif_u(h_seq, ctx.p)
            del h_seq  # a recomputed H is freed before the torch backward's temporaries exist
            grads = lif_backward(u, grad_spikes, grad_v, ctx.p, ctx.surrogate)
        return *grads, None, None


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
        spikes, self.v = _LIFScan.apply(x.unsqueeze(0), self._initial_v(x), self.params, self.surrogate)
        return spikes[0]

    def multi_step(self, x_seq: torch.Tensor) -> torch.Tensor:
        spikes, self.v = _LIFScan.apply(x_seq, self._initial_v(x_seq[0]), self.params, self.surrogate)
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
