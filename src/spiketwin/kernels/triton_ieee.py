"""Correctly rounded division for the Triton kernels, in float32 and float64.

Triton compiles a float32 ``/`` to the GPU's approximate division (``div.full.f32``, up to 2 ulp off), and
``fdiv(ieee_rounding=True)`` does not help everywhere: Triton 3.6 ignores the flag (``div.full.f32`` again) and 3.9
cannot compile it for float64 ("intrinsic call returns double but llvm.nvvm.div.rn.f actually returns float"). So
float32 divides with ``div_rn`` (``div.rn.f32`` in both), float64 with ``/``, which is IEEE already
(``div.rn.f64``), as torch and C divide. ``tests/test_kernels_compile.py`` compiles every kernel for real GPUs and
reads the instructions. Imports ``triton``: load it only where it is installed."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def ieee_div(a, b):
    """``a / b`` rounded to nearest in ``b``'s dtype (``b`` a tensor; ``a`` a tensor or a number)."""
    if b.dtype == tl.float64:
        return a / b
    else:
        return tl.math.div_rn(a, b)
