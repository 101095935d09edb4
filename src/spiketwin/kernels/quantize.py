"""The quantizer's inference forward as one pass (:class:`~spiketwin.quant.Quantizer` without autograd, on the CPU):
``clamp(floor(x/s + 1/2), n_min, n_max) * s`` by the native kernel (``native/quant.c``) where it takes ``x`` (float32
or float64), with the torch path's bits, into a contiguous tensor (a strided ``x`` is read in a contiguous copy);
``None`` elsewhere (the caller runs the torch path)."""

from __future__ import annotations

import ctypes

import torch

from .. import native


def _kernel(dtype: torch.dtype):
    return native.function("quant", "quantize", dtype, *[ctypes.c_void_p] * 2, ctypes.c_int64, *[native.REAL] * 3)


def quantize(x: torch.Tensor, step: torch.Tensor, n_min: int, n_max: int) -> torch.Tensor | None:
    """``x`` quantized with step ``step`` (a 0-d tensor, read only when the kernel runs) into a contiguous tensor,
    or ``None`` when the kernel does not take it (autograd on, not the CPU, another dtype, native kernels off)."""
    if x.device.type != "cpu" or torch.is_grad_enabled() or x.numel() == 0:
        return None
    kernel = _kernel(x.dtype)
    if kernel is None:
        return None
    x = x.contiguous()
    out = torch.empty_like(x)
    kernel(native.pointer(x), native.pointer(out), x.numel(), step.item(), n_min, n_max)
    return out
