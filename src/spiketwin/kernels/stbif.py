"""``spiketwin::stbif_steps``: the ST-BIF neuron's sequence call (:meth:`spiketwin.neurons.STBIF.multi_step`)
as one custom operator, multi-spike and with the per-sample skip.

``stbif_steps(x, total, count, was_pending, theta, n_min, n_max, m) -> (spikes, far)``: contiguous ``x``
``[T, B, ...]`` enters from the state ``total``, ``count`` (``[B, ...]``, updated in place); ``theta`` is a
one-element tensor of ``x``'s dtype (a float64 threshold keeps its precision); ``was_pending`` (``[B]`` bool, or
``None`` to compute every sample) says which samples had a neuron short of its target before the call: one
without, and without input, outputs zeros and keeps its state (the result is the same bits either way, the
skip only saves work). ``far`` is ``[B, T]`` bool: after step t some neuron of the sample is still short.

CPU: the native kernel (``native/stbif.c``), else :func:`~spiketwin.neurons.stbif_rule.stbif_scan`. CUDA: the
Triton kernel (:mod:`.stbif_triton`). All three give the same bits.
"""

from __future__ import annotations

import ctypes

import torch

from .. import native
from ..neurons.stbif_rule import stbif_scan
from . import triton_takes


def _native_kernel(dtype: torch.dtype):
    return native.function("stbif", "stbif_steps", dtype, *[ctypes.c_void_p] * 6, *[ctypes.c_int64] * 3,
                           *[native.REAL] * 4)


def fused(x: torch.Tensor, *state: torch.Tensor) -> bool:
    """Whether :func:`stbif_steps` runs a fused kernel on these tensors (``x`` and the state, when there is one):
    the native kernel on the CPU, the Triton kernel on CUDA. Otherwise the neuron keeps its torch path (with
    its own event-driven skip on the CPU)."""
    if x.device.type == "cuda":
        return triton_takes(x, *state)
    return _native_kernel(x.dtype) is not None and native.takes(x, *state)


_LIBRARY = torch.library.Library("spiketwin", "FRAGMENT")
_LIBRARY.define("stbif_steps(Tensor x, Tensor(a!) total, Tensor(b!) count, Tensor? was_pending, Tensor theta, "
                "int n_min, int n_max, int m) -> (Tensor, Tensor)")
# the low-level registration: a call through the dispatcher costs ~3 us here, torch.library.custom_op's ~30 us


def stbif_steps(x: torch.Tensor, total: torch.Tensor, count: torch.Tensor, was_pending: torch.Tensor | None,
                threshold: torch.Tensor, n_min: int, n_max: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The operator on tensors that :func:`fused` accepts, ``threshold`` the neuron's one-element buffer. An
    eager call on the CPU goes straight to the native kernel (through the dispatcher it would cost ~4 us more
    per neuron and call, a fifth of the kernel's time on a small batch); CUDA, and any call that
    ``torch.compile`` traces, goes through ``torch.ops.spiketwin.stbif_steps``."""
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        return _native_steps(x, total, count, was_pending, threshold.item(), n_min, n_max, m)
    theta = threshold.to(device=x.device, dtype=x.dtype).reshape(1)
    return torch.ops.spiketwin.stbif_steps(x, total, count, was_pending, theta, n_min, n_max, m)


def _native_steps(x, total, count, was_pending, theta: float, n_min, n_max, m):
    steps, batch = x.shape[:2]
    spikes = torch.empty_like(x)
    far = torch.empty((batch, steps), dtype=torch.bool)
    skip = was_pending.contiguous() if was_pending is not None else None
    _native_kernel(x.dtype)(native.pointer(x), native.pointer(total), native.pointer(count), native.pointer(spikes),
                            native.pointer(far), None if skip is None else native.pointer(skip), steps, batch,
                            x[0, 0].numel() if batch else 0, theta, n_min, n_max, m)
    return spikes, far


def _stbif_steps_cpu(x, total, count, was_pending, theta, n_min, n_max, m):
    with torch.no_grad():
        if _native_kernel(x.dtype) is not None and native.takes(x, total, count):
            return _native_steps(x, total, count, was_pending, theta.item(), n_min, n_max, m)
        spikes, new_total, _, far = stbif_scan(x, total, count, theta, n_min, n_max, m)
        total.copy_(new_total)
        return spikes, far


def _stbif_steps_cuda(x, total, count, was_pending, theta, n_min, n_max, m):
    from .stbif_triton import stbif_steps as triton_steps  # needs the triton package

    return triton_steps(x, total, count, was_pending, theta, n_min, n_max, m)


def _stbif_steps_fake(x, total, count, was_pending, theta, n_min, n_max, m):
    return torch.empty_like(x), x.new_empty((x.shape[1], x.shape[0]), dtype=torch.bool)


_LIBRARY.impl("stbif_steps", _stbif_steps_cpu, "CPU")
_LIBRARY.impl("stbif_steps", _stbif_steps_cuda, "CUDA")
torch.library.register_fake("spiketwin::stbif_steps", _stbif_steps_fake, lib=_LIBRARY)
