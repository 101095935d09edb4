"""Correctly rounded division for the Triton kernels, in float32 and float64.

Triton compiles a float32 ``/`` to the GPU's approximate division (``div.full.f32``, up to 2 ulp off), so the kernels
divide with ``fdiv(ieee_rounding=True)`` (``div.rn.f32``), as torch and C do. For float64 that call compiles in
Triton 3.6 but not in 3.9 ("intrinsic call returns double but llvm.nvvm.div.rn.f actually returns float"), and ``/``
is IEEE already (``div.rn.f64``). ``tests/test_kernels_compile.py`` compiles every kernel for real GPUs and reads the
instructions. Imports ``triton``: load it only where it is installed.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def ieee_div(a, b):
    """``a / b`` rounded to nearest in ``b``'s dtype (``b`` a tensor; ``a`` a tensor or a number)."""
    if b.dtype == tl.float64:
        return a / b
    else:
        return tl.math.fdiv(a, b, ieee_rounding=True)
