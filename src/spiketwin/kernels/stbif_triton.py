"""The ST-BIF neurons' operators in Triton: the CUDA implementations of ``spiketwin::stbif_steps`` (the sequence
call) and ``spiketwin::stbif_exact_step`` (the exact-state neuron's step, :func:`stbif_exact_step`).

One program per sample and block of neurons scans the T steps with the arithmetic of the torch path
(:func:`spiketwin.kernels.stbif_rule.stbif_scan`) and of ``native/stbif.c``, in the same order and precision:
IEEE division (:func:`~.triton_ieee.ieee_div`: Triton's float32 ``/`` is approximate), no fused multiply-add
(``enable_fp_fusion=False``). The exact step also takes float16 and bfloat16 ``x``: it computes in float32 and
rounds each result to the half dtype where torch's half-precision operations round theirs (:func:`_rounded`).
A block whose sample had no pending neuron before the call and whose inputs are all zero writes zero spikes
and leaves its state alone (the per-sample skip of the C kernel, per block). A sample's far flag: written by its
block when it has one; when it has several, set by each block that has a far neuron, on a buffer of zeros (the
same value from every writer, so plain stores do): one fill a call, where a flag per block and their ``any``
took a reduction (25 us of host time a call on the GPU machine, more than the kernel's launch). No host
synchronisation.

Importing this module needs the ``triton`` package. ``TRITON_INTERPRET=1`` runs the kernel on CPU tensors; Triton
reads it when it is first imported (its own library functions are compiled or interpreted from then on), so
it must be set before that (the tests' ``conftest.py`` does on a machine without CUDA).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch_device
from .triton_ieee import ieee_div

BLOCK = 1024
"""Neurons per program (fewer when a sample has fewer)."""


@triton.jit(do_not_specialize=["T", "B", "N", "n_min", "n_max", "m"])  # else a 1 becomes a constant (no .to)
def _stbif_steps(x_ptr, total_ptr, count_ptr, spikes_ptr, far_ptr, was_pending_ptr, theta_ptr, T, B, N,
                 n_min, n_max, m, SKIP: tl.constexpr, BLOCK: tl.constexpr, ONE_BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    theta = tl.load(theta_ptr)
    lo = n_min.to(theta.dtype)
    hi = n_max.to(theta.dtype)
    most = m.to(theta.dtype)
    quiet = tl.program_id(0) < 0  # False, as a scalar the branches below may replace
    if SKIP:
        if tl.load(was_pending_ptr + b) == 0:
            nonzero = tl.zeros([BLOCK], dtype=tl.int32)
            for t in range(T):
                xt = tl.load(x_ptr + (t * B + b) * N + offs, mask=mask, other=0.0)
                nonzero = tl.maximum(nonzero, (xt != 0).to(tl.int32))
            quiet = tl.max(nonzero, axis=0) == 0
    if quiet:
        for t in range(T):
            tl.store(spikes_ptr + (t * B + b) * N + offs, tl.zeros([BLOCK], dtype=theta.dtype), mask=mask)
            if ONE_BLOCK:
                tl.store(far_ptr + b * T + t, False)  # no neuron is far: none moved
    else:
        total = tl.load(total_ptr + b * N + offs, mask=mask, other=0.0)
        count = tl.load(count_ptr + b * N + offs, mask=mask, other=0.0)
        for t in range(T):
            total = total + tl.load(x_ptr + (t * B + b) * N + offs, mask=mask, other=0.0)
            target = tl.floor(ieee_div(total, theta) + 0.5)
            target = tl.minimum(tl.maximum(target, lo), hi)
            delta = target - count
            far = tl.max((((delta > most) | (delta < -most)) & mask).to(tl.int32), axis=0) != 0
            if ONE_BLOCK:
                tl.store(far_ptr + b * T + t, far)
            else:  # set by any block with a far neuron (the same value: no atomics), on zeros
                tl.store(far_ptr + b * T + t, far, mask=far)
            delta = tl.minimum(tl.maximum(delta, -most), most)
            count = count + delta
            tl.store(spikes_ptr + (t * B + b) * N + offs, delta * theta, mask=mask)
        tl.store(total_ptr + b * N + offs, total, mask=mask)
        tl.store(count_ptr + b * N + offs, count, mask=mask)


def stbif_steps(x: torch.Tensor, total: torch.Tensor, count: torch.Tensor, was_pending: torch.Tensor | None,
                theta: torch.Tensor, n_min: int, n_max: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``spiketwin::stbif_steps`` by the Triton kernel: contiguous ``x`` ``[T, B, ...]`` from the state
    ``total``, ``count`` (``[B, ...]``, updated in place); ``theta`` a one-element tensor of ``x``'s dtype.
    Returns the spikes ``[T, B, ...]`` and the far flags ``[B, T]`` (bool)."""
    steps, batch = x.shape[:2]
    n = x[0, 0].numel() if batch else 0
    spikes = torch.empty_like(x)
    if not spikes.numel():
        return spikes, torch.zeros((batch, steps), dtype=torch.bool, device=x.device)
    block = min(BLOCK, triton.next_power_of_2(n))
    blocks = triton.cdiv(n, block)
    far = (torch.empty if blocks == 1 else torch.zeros)((batch, steps), dtype=torch.bool, device=x.device)
    skip = far if was_pending is None else was_pending.contiguous()  # any pointer when there is no skip
    with launch_device(x):
        _stbif_steps[(batch, blocks)](x, total, count, spikes, far, skip, theta, steps, batch, n, n_min, n_max, m,
                                      SKIP=was_pending is not None, BLOCK=block, ONE_BLOCK=blocks == 1,
                                      enable_fp_fusion=False)
    return spikes, far


HALF_KINDS = {torch.float16: 1, torch.bfloat16: 2}
"""The half-precision dtypes of the exact step (``HALF`` in the kernel: 0 for float32 / float64)."""


@triton.jit
def _rounded(v, HALF: tl.constexpr):
    """Float32 ``v`` rounded to nearest (ties to even) in float16 (``HALF`` 1) or bfloat16 (2), kept in float32: what
    a torch operation on half-precision tensors stores (it computes in float32 and rounds the result). bfloat16 by
    the bits (Triton's interpreter truncates a float32 -> bfloat16 cast, where the GPU rounds)."""
    if HALF == 1:
        return v.to(tl.float16).to(tl.float32)
    elif HALF == 2:
        bits = v.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        return bits.to(tl.float32, bitcast=True)
    else:
        return v


@triton.jit(do_not_specialize=["N", "n_min", "n_max", "m"])
def _stbif_exact_step(x_ptr, count_ptr, out_ptr, change_ptr, far_ptr, theta_ptr, N, n_min, n_max, m,
                      BLOCK: tl.constexpr, HALF: tl.constexpr, ONE_BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    theta = tl.load(theta_ptr)
    x = tl.load(x_ptr + b * N + offs, mask=mask, other=0.0)
    if HALF:  # float32 arithmetic, each result rounded to x's dtype as torch's half-precision operations round it
        theta, x = theta.to(tl.float32), x.to(tl.float32)
    most = m.to(theta.dtype)
    count = tl.load(count_ptr + b * N + offs, mask=mask, other=0)
    target = tl.floor(_rounded(_rounded(ieee_div(x, theta), HALF) + 0.5, HALF))
    target = _rounded(tl.minimum(tl.maximum(target, n_min.to(theta.dtype)), n_max.to(theta.dtype)), HALF)
    delta = _rounded(target - _rounded(count.to(theta.dtype), HALF), HALF)
    far = tl.max((((delta > most) | (delta < -most)) & mask).to(tl.int32), axis=0) != 0
    if ONE_BLOCK:  # the sample's flag, written whatever it is
        tl.store(far_ptr + b, far)
    else:  # set by any block of the sample that has a far neuron (the same value, so no atomics), on zeros
        tl.store(far_ptr + b, far, mask=far)
    delta = _rounded(tl.minimum(tl.maximum(delta, -most), most), HALF)
    count = count + delta.to(count.dtype)
    tl.store(count_ptr + b * N + offs, count, mask=mask)
    tl.store(change_ptr + b * N + offs, delta.to(change_ptr.dtype.element_ty), mask=mask)
    out = _rounded(_rounded(count.to(theta.dtype), HALF) * theta, HALF)
    tl.store(out_ptr + b * N + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def stbif_exact_step(x: torch.Tensor, count: torch.Tensor, theta: torch.Tensor, n_min: int, n_max: int,
                     m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``spiketwin::stbif_exact_step`` by the Triton kernel, over memory in order: ``count`` (``[B, ...]``, updated
    in place; an integer dtype) contiguous, ``x`` with ``count``'s
    strides, ``theta`` a one-element tensor of ``x``'s dtype. Returns ``count * θ`` (``x``'s dtype) and the change
    (``count``'s), both in ``count``'s layout, and the far flags ``[B]`` (bool)."""
    batch = x.shape[0]
    n = x.numel() // batch if batch else 0
    out, change = torch.empty_like(count, dtype=x.dtype), torch.empty_like(count)
    if not out.numel():
        return out, change, torch.zeros(batch, dtype=torch.bool, device=x.device)
    block = min(BLOCK, triton.next_power_of_2(n))
    blocks = triton.cdiv(n, block)
    # one block: it writes its sample's flag; several: any of them sets it, on zeros (one fill, where a flag per
    # block and their `any` took a reduction, 25 us of host time a call on the GPU machine)
    far = (torch.empty if blocks == 1 else torch.zeros)(batch, dtype=torch.bool, device=x.device)
    with launch_device(x):
        _stbif_exact_step[(batch, blocks)](x, count, out, change, far, theta, n, n_min, n_max, m, BLOCK=block,
                                           HALF=HALF_KINDS.get(x.dtype, 0), ONE_BLOCK=blocks == 1,
                                           enable_fp_fusion=False)
    return out, change, far
