"""Compile every Triton kernel of :mod:`spiketwin.kernels` for a real GPU on a machine without one, and list the
floating-point instructions of each (``tests/test_kernels_compile.py`` runs this in a process of its own, as
Triton's interpreter, which the other tests use, must be off).

    python tests/triton_ptx.py 90     # compute capability 9.0 (H100 / H200); JSON on stdout

The launches are spiketwin's own (``stbif_triton.stbif_steps``, ``lif_triton.forward`` ...) on small CPU tensors:
a driver that names the GPU and has no device stands in for Triton's, and every launch compiles the kernel (PTX,
then ``ptxas``, which Triton's package carries) and runs nothing.
"""

from __future__ import annotations

import json
import re
import sys

import torch
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.jit import JITFunction

from spiketwin.kernels import lif as lif_ops
from spiketwin.neurons.lif import lif_mode
from test_lif_triton import PARAMS  # every leak, reset and form of the LIF neuron the interpreter tests check

FLOAT_OP = re.compile(r"^\s*(?:@!?%p\d+\s+)?([a-z][a-z0-9]*(?:\.[a-z0-9]+)*)\s", re.M)


class CompileOnly:
    """The active driver: a GPU of compute capability ``cc`` (its number also keys Triton's per-device caches)."""

    def __init__(self, cc: int) -> None:
        self.cc = cc

    def get_current_device(self) -> int:
        return self.cc

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", self.cc, 32)


def launched_kernels() -> list[str]:
    """The Triton kernels of spiketwin.kernels (jit functions that take pointers; the others are helpers they call)."""
    from spiketwin.kernels import lif_triton, stbif_triton

    return sorted(name for module in (lif_triton, stbif_triton) for name, value in vars(module).items()
                  if isinstance(value, JITFunction) and any(arg.endswith("_ptr") for arg in value.arg_names))


def compile_all(cc: int) -> list[dict]:
    compiled = []
    run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)  # compiles, launches nothing
        ops = sorted({op for op in FLOAT_OP.findall(kernel.asm["ptx"]) if ".f32" in op or ".f64" in op})
        compiled.append(dict(kernel=self.__name__, variant=variant, ops=ops, arch=kernel.metadata.target.arch))
        return kernel

    JITFunction.run = compile_only
    driver.set_active(CompileOnly(cc))
    from spiketwin.kernels import lif_triton, stbif_triton

    widths = (5, stbif_triton.BLOCK + 1)  # a sample of one block (it writes its flag), of two (set on zeros)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for n in widths:
            x, theta = torch.randn(3, 2, n, dtype=dtype), torch.ones(1, dtype=dtype)
            if dtype in (torch.float32, torch.float64):  # the exact step alone takes half precision
                for pending in (None, torch.ones(2, dtype=torch.bool)):
                    variant = f"{dtype} skip={pending is not None} n={n}"
                    stbif_triton.stbif_steps(x, torch.zeros_like(x[0]), torch.zeros_like(x[0]), pending, theta, -8,
                                             7, 2)
            for count in (torch.int8, torch.int16, torch.int32):
                variant = f"{dtype} {count} n={n}"
                stbif_triton.stbif_exact_step(x[0], torch.zeros(2, n, dtype=count), theta, -8, 7, 2)
    for dtype in (torch.float32, torch.float64):
        x, theta = torch.randn(3, 2, 5, dtype=dtype), torch.ones(1, dtype=dtype)
        for p in PARAMS:
            mode, (tau, vth, vreset) = lif_mode(p), (p.tau or 1.0, p.v_threshold, p.v_reset or 0.0)
            h, spikes, v = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x[0])
            for keep in ((h, spikes), (h, None), (None, spikes)):
                variant = f"{dtype} mode={mode} h={keep[0] is not None} spikes={keep[1] is not None}"
                lif_triton.forward(x, x[0], *keep, v, mode, tau, vth, vreset)
            for kind in (lif_ops.SIGMOID, lif_ops.ATAN):
                for grad_v in (x[0], None):
                    variant = f"{dtype} mode={mode} kind={kind} grad_v={grad_v is not None}"
                    lif_triton.backward(h, x, grad_v, torch.empty_like(x), v, mode, kind, vth, vreset,
                                        *lif_ops.charge_grads(mode, tau), 4.0)
    return compiled


if __name__ == "__main__":
    print(json.dumps({"compiled": compile_all(int(sys.argv[1])), "kernels": launched_kernels()}))
