"""The ST-BIF neurons' fused custom operators: ``spiketwin::stbif_steps``, the sequence call of
:class:`~spiketwin.neurons.STBIF` (multi-spike, with the per-sample skip), and ``spiketwin::stbif_exact_step``, the
step of :class:`~spiketwin.neurons.ExactSTBIF` (the exact-state SNN's neuron).

``stbif_steps(x, total, count, was_pending, theta, n_min, n_max, m) -> (spikes, far)``: contiguous ``x``
``[T, B, ...]`` enters from the state ``total``, ``count`` (``[B, ...]``, updated in place); ``theta`` is a
one-element tensor of ``x``'s dtype (a float64 threshold keeps its precision); ``was_pending`` (``[B]`` bool, or
``None`` to compute every sample) says which samples had a neuron short of its target before the call: one
without, and without input, outputs zeros and keeps its state (the result is the same bits either way, the
skip only saves work). ``far`` is ``[B, T]`` bool: after step t some neuron of the sample is still short.

CPU: the native kernel (``native/stbif.c``), else :func:`~spiketwin.kernels.stbif_rule.stbif_scan`. CUDA: the
Triton kernel (:mod:`.stbif_triton`). All three give the same bits.

``stbif_exact_step(x, count, theta, n_min, n_max, m) -> (out, change, far)``: ``x`` ``[B, ...]`` is the
accumulated input, ``count`` (``[B, ...]``, an integer dtype of :data:`COUNT_DTYPES`, or ``x``'s) moves toward its
quantizer level by at most ``m`` (in place); ``change`` is the move (``count``'s dtype), ``out = count * theta``
(``x``'s dtype), ``far`` (``[B]`` bool) marks samples with a neuron still more than ``m`` away. CPU: the native
kernel, CUDA: the Triton kernel, each for contiguous integer counts (a strided ``x`` is copied to their layout);
else :func:`~spiketwin.kernels.stbif_rule.stbif_exact`. All give the same bits.
"""

from __future__ import annotations

import ctypes

import torch

from .. import native
from .stbif_rule import stbif_exact, stbif_scan
from . import TRITON_DTYPES, triton_takes


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


COUNT_DTYPES = {torch.int8: "i8", torch.int16: "i16", torch.int32: "i32"}
"""The integer counts the fused exact-step kernels take (a neuron keeps the narrowest that holds its levels: the
step is memory-bound, and a 1-byte count moves 6 of the 20 bytes a float32 count did per neuron and step)."""


def _native_exact_kernel(dtype: torch.dtype, count_dtype: torch.dtype):
    if count_dtype not in COUNT_DTYPES:
        return None
    return native.function("stbif", f"stbif_exact_step_{COUNT_DTYPES[count_dtype]}", dtype, *[ctypes.c_void_p] * 5,
                           *[ctypes.c_int64] * 2, *[native.REAL] * 4)


EXACT_STEP_DTYPES = (*TRITON_DTYPES, torch.float16, torch.bfloat16)
"""The dtypes of ``x`` that the exact step's Triton kernel takes (half precision: computed in float32, each result
rounded as torch's half-precision operations round it)."""

_LIBRARY.define("stbif_exact_step(Tensor x, Tensor(a!) count, Tensor theta, int n_min, int n_max, int m) "
                "-> (Tensor, Tensor, Tensor)")


def stbif_exact_step(x: torch.Tensor, count: torch.Tensor, threshold: torch.Tensor, n_min: int, n_max: int,
                     m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The operator on ``x`` and ``count`` alike (``[B, ...]``, batch first), ``threshold`` the neuron's one-element
    buffer. An eager call that a fused kernel takes goes straight to it (the native kernel on the CPU, see
    :func:`stbif_steps`; the Triton kernel on CUDA, where the dispatcher and the operator's checks cost ~35 us of
    host time a call on the GPU machine, a third of the call, more than the kernel's GPU time)."""
    eager = not torch.compiler.is_compiling()
    kernel = _native_exact_for(x, count) if eager else None
    if kernel is not None:
        return _native_exact(kernel, x, count, threshold.item(), n_min, n_max, m)
    theta = threshold.to(device=x.device, dtype=x.dtype).reshape(1)
    if eager and x.is_cuda and not (torch.is_grad_enabled() and x.requires_grad) \
            and _triton_exact_takes(x, count, theta):
        return _triton_exact(x, count, theta, n_min, n_max, m)
    return torch.ops.spiketwin.stbif_exact_step(x, count, theta, n_min, n_max, m)


def _in_order(x: torch.Tensor, count: torch.Tensor) -> bool:
    """Whether the fused kernels can run: ``count`` contiguous with an integer dtype they take, ``x`` of its shape
    (:func:`_count_layout` copies it to ``count``'s layout when its strides differ)."""
    return x.shape == count.shape and count.dtype in COUNT_DTYPES and x.numel() > 0 and count.is_contiguous()


def _count_layout(x: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return x if x.stride() == count.stride() else torch.empty_like(count, dtype=x.dtype).copy_(x)


def _native_exact_for(x: torch.Tensor, count: torch.Tensor):
    """The native kernel that takes ``x`` and ``count`` (CPU, no autograd, :func:`_in_order`), or None."""
    if x.device.type != "cpu" or count.device.type != "cpu" or torch.is_grad_enabled() or not _in_order(x, count):
        return None
    return _native_exact_kernel(x.dtype, count.dtype)


def _native_exact(kernel, x, count, theta: float, n_min, n_max, m):
    """Run ``kernel``; ``out`` (``x``'s dtype) and ``change`` (``count``'s) are contiguous, as ``count``."""
    x = _count_layout(x, count)
    out, change = torch.empty_like(count, dtype=x.dtype), torch.empty_like(count)
    batch = x.shape[0]
    far = torch.empty(batch, dtype=torch.bool)
    kernel(native.pointer(x), native.pointer(count), native.pointer(out), native.pointer(change), native.pointer(far),
           batch, x.numel() // batch, theta, n_min, n_max, m)
    return out, change, far


def _stbif_exact_step_cpu(x, count, theta, n_min, n_max, m):
    with torch.no_grad():
        kernel = _native_exact_for(x, count)
        if kernel is not None:
            return _native_exact(kernel, x, count, theta.item(), n_min, n_max, m)
        return stbif_exact(x, count, theta, n_min, n_max, m)


def _triton_exact_takes(x: torch.Tensor, count: torch.Tensor, theta: torch.Tensor) -> bool:
    """Whether the Triton kernel takes the exact step on these CUDA tensors (:func:`_in_order`, a dtype it takes)."""
    return _in_order(x, count) and theta.dtype == x.dtype and triton_takes(theta, dtypes=EXACT_STEP_DTYPES)


def _triton_exact(x, count, theta, n_min, n_max, m):
    from .stbif_triton import stbif_exact_step as triton_step  # needs the triton package

    return triton_step(_count_layout(x, count), count, theta, n_min, n_max, m)


def _stbif_exact_step_cuda(x, count, theta, n_min, n_max, m):
    with torch.no_grad():
        if not _triton_exact_takes(x, count, theta):
            return stbif_exact(x, count, theta, n_min, n_max, m)
        return _triton_exact(x, count, theta, n_min, n_max, m)


def _stbif_exact_step_fake(x, count, theta, n_min, n_max, m):
    return (torch.empty_like(count, dtype=x.dtype), torch.empty_like(count),
            x.new_empty((x.shape[0],), dtype=torch.bool))


_LIBRARY.impl("stbif_exact_step", _stbif_exact_step_cpu, "CPU")
_LIBRARY.impl("stbif_exact_step", _stbif_exact_step_cuda, "CUDA")
torch.library.register_fake("spiketwin::stbif_exact_step", _stbif_exact_step_fake, lib=_LIBRARY)
