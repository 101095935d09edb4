"""The LIF scan and its backward as Triton kernels: the CUDA twins of ``lif.c`` (same operations, same order).

Each program takes ``BLOCK`` neurons through all T steps, keeping the membrane state (forward) or the running
gradient (backward) in registers, so every element of the ``[T, N]`` tensors is read or written once. The
arithmetic is ``lif.c``'s, written out: IEEE-rounded division (:func:`~.triton_ieee.ieee_div`), a fused
multiply-add exactly where torch's CPU ``addcmul_`` rounds once, no other contraction (``enable_fp_fusion=False``)
and ``lif.c``'s exp for the sigmoid surrogate (not the GPU's approximate ``ex2``). Run on CPU tensors with
``TRITON_INTERPRET=1`` (set before this module is imported) the kernels give the torch path's bits (forward,
ATan backward) and ``lif.c``'s (sigmoid backward); on a GPU they are untested here.

Scalars come in as the bit patterns of the tensors' dtype (:func:`real_bits`): Triton passes Python floats as
float32, which would round a float64 parameter. Imports ``triton``: load this module only where it is installed.
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

from . import launch_device
from .triton_ieee import ieee_div

# mode bits, as in lif.c (the surrogate codes: 0 sigmoid, 1 ATan); constexpr, as a compiled kernel reads no other
# globals (Triton's interpreter does), and written first in `BIT & MODE` (an int MODE in the interpreter has no `&`
# for a constexpr)
NEGATED, SOFT, SHIFT, DETACH, LEAK_MASK = (tl.constexpr(bit) for bit in (16, 4, 8, 32, 3))
BLOCK = 1024
_INF = tl.constexpr(float("inf"))


def real_bits(value: float, dtype: torch.dtype) -> int:
    """The bit pattern of ``value`` rounded to ``dtype`` (float32 or float64), as a signed integer."""
    if dtype == torch.float64:
        return struct.unpack("<q", struct.pack("<d", value))[0]
    return struct.unpack("<i", struct.pack("<f", value))[0]


@triton.jit
def _real(bits, DTYPE: tl.constexpr):
    if DTYPE == tl.float64:
        return tl.cast(tl.cast(bits, tl.int64), tl.float64, bitcast=True)
    else:
        return tl.cast(tl.cast(bits, tl.int32), tl.float32, bitcast=True)


@triton.jit
def _exp(z):
    """lif.c's lif_exp: Cody-Waite reduction, a Taylor polynomial by Horner's rule, 2^k from exponent bits."""
    if z.dtype == tl.float64:
        c = tl.minimum(tl.maximum(z, -708.0), 709.0)
        t = c * 1.44269504088896340736 + 6755399441055744.0
        k = t - 6755399441055744.0
        r = (c - k * 6.93147180369123816490e-01) - k * 1.90821492927058770002e-10
        p = (1.0 / 6227020800.0) * r + 1.0 / 479001600
        p = p * r + 1.0 / 39916800
        p = p * r + 1.0 / 3628800
        p = p * r + 1.0 / 362880
        p = p * r + 1.0 / 40320
        p = p * r + 1.0 / 5040
        p = p * r + 1.0 / 720
        p = p * r + 1.0 / 120
        p = p * r + 1.0 / 24
        p = p * r + 1.0 / 6
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        scale = ((k.to(tl.int64) + 1023) << 52).to(tl.float64, bitcast=True)
        e = tl.where(z > 709.0, _INF, p * scale)
    else:
        c = tl.minimum(tl.maximum(z, -87.0), 88.0)
        t = c * 1.44269504088896340736 + 12582912.0
        k = t - 12582912.0
        r = (c - k * 0.693145751953125) - k * 1.428606765330187045e-06
        p = 0.00019841270113829523 * r + 0.0013888889225199819  # 1/k! rounded once to float32, as lif.c's
        p = p * r + 0.008333333767950535
        p = p * r + 0.0416666679084301
        p = p * r + 0.1666666716337204
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        scale = ((k.to(tl.int32) + 127) << 23).to(tl.float32, bitcast=True)
        e = tl.where(z > 88.0, _INF, p * scale)
    return tl.where(z != z, z, e)


@triton.jit(do_not_specialize=["tau_bits", "vth_bits", "vreset_bits"])
def _lif_forward(x_ptr, h_ptr, s_ptr, v0_ptr, v_ptr, T, N, tau_bits, vth_bits, vreset_bits, MODE: tl.constexpr,
                 KEEP_H: tl.constexpr, SPIKES: tl.constexpr, BLOCK: tl.constexpr):
    """Forward over x[T][N] from v0[N]: H (or -H, NEGATED) into h, spikes into s, the final V into v."""
    dtype = x_ptr.dtype.element_ty
    tau, vth, vreset = _real(tau_bits, dtype), _real(vth_bits, dtype), _real(vreset_bits, dtype)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    state = tl.load(v0_ptr + offs, mask=mask, other=0.0)
    if NEGATED & MODE:  # the default neuron on W = -V (lif.py's _scan_negated)
        state = -state
    for t in range(T):
        at = t * tl.cast(N, tl.int64) + offs
        x = tl.load(x_ptr + at, mask=mask, other=0.0)
        if NEGATED & MODE:
            h = state - ieee_div(x + state, tau)  # -H
            fired = h <= -vth
            state = tl.where(h > -vth, h, 0.0)
        else:
            if SHIFT & MODE:
                rest = state - vreset
            else:
                rest = state
            if (LEAK_MASK & MODE) == 0:
                h = state + x
            elif (LEAK_MASK & MODE) == 1:
                h = state + ieee_div(x - rest, tau)
            else:
                h = state - ieee_div(rest, tau) + x
            fired = h >= vth
            if SOFT & MODE:
                state = tl.where(fired, h - vth, h)
            else:
                state = tl.where(fired, vreset, h)
        if KEEP_H:
            tl.store(h_ptr + at, h, mask=mask)
        if SPIKES:
            tl.store(s_ptr + at, fired.to(dtype), mask=mask)
    if NEGATED & MODE:
        state = -state
    tl.store(v_ptr + offs, state, mask=mask)


@triton.jit
def _surrogate(u, KIND: tl.constexpr, alpha, half_alpha, atan_scale):
    """Sigmoid.grad / ATan.grad of spiketwin.surrogate at u = H - V_th, the same operations."""
    if KIND == 1:
        a = atan_scale * u
        return ieee_div(1.0, 1.0 + a * a) * half_alpha
    else:
        s = ieee_div(1.0, 1.0 + _exp(-(u * alpha)))
        return (s * alpha) * (1.0 - s)


@triton.jit
def _grad_h(h, gs, MODE: tl.constexpr, KIND: tl.constexpr, vth, vreset, alpha, half_alpha, atan_scale):
    """(sg * dL/dS, dV/dH) of one step, from the stored H (or -H)."""
    if NEGATED & MODE:
        u = -(h + vth)
    else:
        u = h - vth
    sg = _surrogate(u, KIND, alpha, half_alpha, atan_scale)
    if SOFT & MODE:
        if DETACH & MODE:
            dv_dh = tl.full(u.shape, 1.0, u.dtype)
        else:
            dv_dh = sg * -vth + 1.0
    else:
        below = (u < 0).to(u.dtype)
        if DETACH & MODE:
            dv_dh = below
        else:
            dv_dh = below + (vreset - (u + vth)) * sg
    return sg * gs, dv_dh


@triton.jit(do_not_specialize=["vth_bits", "vreset_bits", "dh_dv_bits", "dh_dx_bits", "alpha_bits",
                                "half_alpha_bits", "atan_scale_bits"])
def _lif_backward(h_ptr, gs_ptr, gv_ptr, gx_ptr, gv0_ptr, T, N, vth_bits, vreset_bits, dh_dv_bits, dh_dx_bits,
                  alpha_bits, half_alpha_bits, atan_scale_bits, MODE: tl.constexpr, KIND: tl.constexpr,
                  HAS_GV: tl.constexpr, BLOCK: tl.constexpr):
    """Backward from H (h[T][N]), dL/dS (gs[T][N]) and dL/dV_T (gv[N]): dL/dX into gx, dL/dV_0 into gv0.
    In reverse time: g_t = sg_t gs_t + g_{t+1} (dV_t/dH_t dH/dV), dL/dX_t = g_t dH/dX (lif.c's lif_backward)."""
    dtype = h_ptr.dtype.element_ty
    vth, vreset = _real(vth_bits, dtype), _real(vreset_bits, dtype)
    dh_dv, dh_dx = _real(dh_dv_bits, dtype), _real(dh_dx_bits, dtype)
    alpha, half_alpha, atan_scale = _real(alpha_bits, dtype), _real(half_alpha_bits, dtype), \
        _real(atan_scale_bits, dtype)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    n64 = tl.cast(N, tl.int64)
    at = (T - 1) * n64 + offs
    g, dv_dh = _grad_h(tl.load(h_ptr + at, mask=mask, other=0.0), tl.load(gs_ptr + at, mask=mask, other=0.0),
                       MODE, KIND, vth, vreset, alpha, half_alpha, atan_scale)
    if HAS_GV:
        g = tl.fma(tl.load(gv_ptr + offs, mask=mask, other=0.0), dv_dh, g)
    tl.store(gx_ptr + at, g * dh_dx, mask=mask)
    for i in range(1, T):
        at = (T - 1 - i) * n64 + offs
        grad, dv_dh = _grad_h(tl.load(h_ptr + at, mask=mask, other=0.0), tl.load(gs_ptr + at, mask=mask, other=0.0),
                              MODE, KIND, vth, vreset, alpha, half_alpha, atan_scale)
        g = tl.fma(g, dv_dh * dh_dv, grad)  # torch's addcmul_ rounds once
        tl.store(gx_ptr + at, g * dh_dx, mask=mask)
    tl.store(gv0_ptr + offs, g * dh_dv, mask=mask)


def _grid(n: int, block: int) -> tuple[int]:
    return (triton.cdiv(n, block),)


def forward(x: torch.Tensor, v0: torch.Tensor, h: torch.Tensor | None, spikes: torch.Tensor | None,
            v: torch.Tensor, mode: int, tau: float, vth: float, vreset: float, block: int = BLOCK) -> None:
    """The scan over contiguous ``x`` ``[T, N...]`` from ``v0``: ``H`` into ``h`` (None: not kept; may be ``x``),
    spikes into ``spikes`` (None: not wanted), the final ``V`` into ``v``."""
    n, d = v0.numel(), x.dtype
    with launch_device(x):
        _lif_forward[_grid(n, block)](x, x if h is None else h, x if spikes is None else spikes, v0, v, x.shape[0], n,
                                      real_bits(tau, d), real_bits(vth, d), real_bits(vreset, d),
                                      MODE=mode & ~DETACH.value, KEEP_H=h is not None, SPIKES=spikes is not None,
                                      BLOCK=block, enable_fp_fusion=False)


def backward(h: torch.Tensor, grad_spikes: torch.Tensor, grad_v: torch.Tensor | None, grad_x: torch.Tensor,
             grad_v0: torch.Tensor, mode: int, kind: int, vth: float, vreset: float, dh_dv: float, dh_dx: float,
             alpha: float, block: int = BLOCK) -> None:
    """The scan's gradients from its ``H`` buffer (contiguous ``[T, N...]``) into ``grad_x`` and ``grad_v0``."""
    n, d = grad_v0.numel(), h.dtype
    scalars = (vth, vreset, dh_dv, dh_dx, alpha, alpha / 2, 3.141592653589793 / 2 * alpha)
    with launch_device(h):
        _lif_backward[_grid(n, block)](h, grad_spikes, h if grad_v is None else grad_v, grad_x, grad_v0, h.shape[0],
                                       n, *(real_bits(s, d) for s in scalars), MODE=mode, KIND=kind,
                                       HAS_GV=grad_v is not None, BLOCK=block, enable_fp_fusion=False)
