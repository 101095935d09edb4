"""The fused LIF kernels as torch operators: one operator each, a CPU implementation (``native/lif.c`` through
ctypes) and a CUDA one (:mod:`.lif_triton`), with fake (shape) implementations and, for the scan, its autograd
formula, so that autograd, ``torch.compile`` and ``torch.export`` see them as single operations.

- ``spiketwin::lif_scan(x, v, ...) -> (spikes, v_final, h)``: the time scan over ``x`` ``[T, ...]`` from state
  ``v``; ``h`` (``H`` of every step, ``-H`` in the negated mode; empty unless ``keep_h``) is what backward reads.
- ``spiketwin::lif_scan_backward(h, grad_spikes, grad_v, ...) -> (grad_x, grad_v0)``.
- ``spiketwin::lif_affine_scan(z, scale, shift, v, steps, ...) -> h``: ``H`` of the scan of a BatchNorm's output
  computed on the fly from its per-channel terms (CPU only: see docs/spikformer.md).

Callers ask :func:`runs_on` first and take their torch path when it says no: no kernel for that device (no C
compiler or ``SPIKETWIN_NATIVE=0`` on CPU; no ``triton`` or ``SPIKETWIN_TRITON=0`` on CUDA), dtypes other than
float32/float64, or mixed devices/dtypes.
``mode`` and ``kind`` are ``lif.c``'s codes (see ``spiketwin.neurons.lif``). Scalars are Python floats (double
precision), rounded to the tensors' dtype inside the kernels as torch rounds a scalar operand.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from ..native import REAL, enabled, function, library
from . import TRITON_DTYPES, triton_enabled

_LIB = "lif"
SIGMOID, ATAN = 0, 1
"""The surrogate codes (``kind``) of the backward: :class:`~spiketwin.surrogate.Sigmoid` and ``ATan``."""


@functools.cache
def _triton():
    """The Triton kernels module, imported on first use on CUDA (``triton`` is optional)."""
    from . import lif_triton
    return lif_triton


def runs_on(*tensors: torch.Tensor, cuda: bool = True) -> bool:
    """Whether the kernels take these tensors: one device, one dtype (float32/float64), and a kernel for that device
    (the C library on CPU; on CUDA ``triton``, unless ``cuda=False``: an operator with no CUDA implementation)."""
    first = tensors[0]
    if first.dtype not in TRITON_DTYPES or any(t.device != first.device or t.dtype != first.dtype for t in tensors):
        return False
    return _kernel_on(first.device.type, cuda)


@torch.compiler.assume_constant_result  # torch.compile takes the answer at tracing time (it may build the library)
def _kernel_on(device_type: str, cuda: bool) -> bool:
    if device_type == "cpu":
        return library(_LIB) is not None
    return cuda and device_type == "cuda" and triton_enabled()


def status() -> str:
    """One line for reports: which LIF kernels run on CPU and on CUDA."""
    cpu = "native C kernel" if library(_LIB) is not None else "torch path" + ("" if enabled() else
                                                                                 " (SPIKETWIN_NATIVE=0)")
    return f"lif: CPU {cpu}, CUDA {'Triton kernel' if triton_enabled() else 'torch path'}"


def _pointer(tensor: torch.Tensor | None) -> ctypes.c_void_p | None:
    return None if tensor is None else ctypes.c_void_p(tensor.data_ptr())


def _c(symbol: str, dtype: torch.dtype, *argtypes):
    fn = function(_LIB, symbol, dtype, *argtypes)
    if fn is None:
        raise RuntimeError(f"spiketwin.native: the C kernel {symbol} is not available (check runs_on first)")
    return fn


# ---------------------------------------------------------------- launches into given buffers (contiguous)

def launch_forward(x: torch.Tensor, v0: torch.Tensor, h: torch.Tensor | None, spikes: torch.Tensor | None,
                   v: torch.Tensor, mode: int, tau: float, vth: float, vreset: float) -> None:
    """The scan over ``x`` ``[T, ...]`` from ``v0``: ``H`` into ``h`` (None: not kept; may be ``x``), spikes into
    ``spikes`` (None: not wanted), the final ``V`` into ``v``; all contiguous, on ``x``'s device."""
    if x.device.type == "cuda":
        _triton().forward(x, v0, h, spikes, v, mode, tau, vth, vreset)
        return
    kernel = _c("lif_forward", x.dtype, *[ctypes.c_void_p] * 5, ctypes.c_int64, ctypes.c_int64, ctypes.c_int32,
                *[REAL] * 3)
    kernel(_pointer(x), _pointer(h), _pointer(spikes), _pointer(v0), _pointer(v), x.shape[0], v0.numel(), mode,
           tau, vth, vreset)


def launch_backward(h: torch.Tensor, grad_spikes: torch.Tensor, grad_v: torch.Tensor | None, grad_x: torch.Tensor,
                    grad_v0: torch.Tensor, mode: int, kind: int, vth: float, vreset: float, dh_dv: float, dh_dx: float,
                    alpha: float) -> None:
    """The scan's gradients from its ``H`` buffer into ``grad_x`` ``[T, ...]`` and ``grad_v0``; all contiguous."""
    if h.device.type == "cuda":
        _triton().backward(h, grad_spikes, grad_v, grad_x, grad_v0, mode, kind, vth, vreset, dh_dv, dh_dx, alpha)
        return
    kernel = _c("lif_backward", h.dtype, *[ctypes.c_void_p] * 5, ctypes.c_int64, ctypes.c_int64, ctypes.c_int32,
                ctypes.c_int32, *[REAL] * 6)
    kernel(_pointer(h), _pointer(grad_spikes), _pointer(grad_v), _pointer(grad_x), _pointer(grad_v0), h.shape[0],
           grad_v0.numel(), mode, kind, vth, vreset, dh_dv, dh_dx, alpha, 3.141592653589793 / 2 * alpha)


# ---------------------------------------------------------------- the operators
# Registered at the dispatcher's level (Library.define / impl), as spiketwin::stbif_steps is: a call costs a few
# us, where torch.library.custom_op's Python wrapper cost ~60 us more per forward and backward of a neuron (the
# host time of a training step on a GPU, measured in docs/gpu.md)

_LIBRARY = torch.library.Library("spiketwin", "FRAGMENT")
_LIBRARY.define("lif_scan(Tensor x, Tensor v, int mode, float tau, float vth, float vreset, int kind, float alpha, "
                "bool keep_h) -> (Tensor, Tensor, Tensor)")
_LIBRARY.define("lif_scan_backward(Tensor h, Tensor grad_spikes, Tensor? grad_v, int mode, int kind, float vth, "
                "float vreset, float dh_dv, float dh_dx, float alpha) -> (Tensor, Tensor)")
_LIBRARY.define("lif_affine_scan(Tensor z, Tensor scale, Tensor shift, Tensor v, int steps, int mode, float tau, "
                "float vth, float vreset) -> Tensor")


def _lif_scan(x: torch.Tensor, v: torch.Tensor, mode: int, tau: float, vth: float, vreset: float, kind: int,
              alpha: float, keep_h: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spikes, final ``V`` and (``keep_h``) the ``H`` buffer of the scan; ``kind`` / ``alpha`` (the surrogate)
    are for backward only."""
    x, v = x.contiguous(), v.contiguous()
    spikes, v_final = torch.empty_like(x), torch.empty_like(v)
    h = torch.empty_like(x) if keep_h else x.new_empty(0)
    launch_forward(x, v, h if keep_h else None, spikes, v_final, mode, tau, vth, vreset)
    return spikes, v_final, h


def _lif_scan_fake(x, v, mode, tau, vth, vreset, kind, alpha, keep_h):
    return torch.empty_like(x), torch.empty_like(v), torch.empty_like(x) if keep_h else x.new_empty(0)


def _lif_scan_backward(h: torch.Tensor, grad_spikes: torch.Tensor, grad_v: torch.Tensor | None, mode: int, kind: int,
                       vth: float, vreset: float, dh_dv: float, dh_dx: float,
                       alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dL/dX, dL/dV_0)`` of the scan from its ``H`` buffer, dL/dspikes and dL/dV_T (``None``: not used)."""
    grad_spikes = grad_spikes.contiguous()
    grad_v = None if grad_v is None else grad_v.contiguous()
    grad_x, grad_v0 = torch.empty_like(h), torch.empty_like(h[0])
    launch_backward(h.contiguous(), grad_spikes, grad_v, grad_x, grad_v0, mode, kind, vth, vreset, dh_dv, dh_dx,
                    alpha)
    return grad_x, grad_v0


def _lif_scan_backward_fake(h, grad_spikes, grad_v, mode, kind, vth, vreset, dh_dv, dh_dx, alpha):
    return torch.empty_like(h), torch.empty_like(h[0])


def charge_grads(mode: int, tau: float) -> tuple[float, float]:
    """(dH/dV, dH/dX) of the charge, both constant, from the leak bits of ``mode`` (0 none: ``H = V + X``;
    1 decay_input: ``H = V + (X - V_rest) / tau``; 2: ``H = V - V_rest / tau + X``)."""
    leak = mode & 3
    if leak == 0:
        return 1.0, 1.0
    return 1.0 - 1.0 / tau, (1.0 / tau if leak == 1 else 1.0)


def _setup_context(ctx, inputs, output) -> None:
    x, v, mode, tau, vth, vreset, kind, alpha, keep_h = inputs
    ctx.mark_non_differentiable(output[2])
    if keep_h:
        ctx.save_for_backward(output[2])  # the only tensor kept (spiketwin.memory may swap it for a recipe)
    ctx.args = (mode, kind, vth, vreset, *charge_grads(mode, tau), alpha)
    ctx.set_materialize_grads(False)  # an unused final V (the usual case) gets None, not a tensor of zeros


def _backward(ctx, grad_spikes, grad_v, _grad_h):
    h = ctx.saved_tensors[0]
    if grad_spikes is None:  # only the final V is used
        grad_spikes = torch.zeros_like(h)
    grad_x, grad_v0 = lif_scan_backward(h, grad_spikes, grad_v, *ctx.args)
    return grad_x, grad_v0, None, None, None, None, None, None, None


def _lif_affine_scan(z: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, v: torch.Tensor, steps: int,
                     mode: int, tau: float, vth: float, vreset: float) -> torch.Tensor:
    """``H`` ``[steps, *v.shape]`` of the scan of ``z * scale[c] + shift[c]`` (rounded once, as torch's CPU
    ``batch_norm`` computes its output from these terms) from state ``v``; ``z`` is ``[steps * R, C, ...]``."""
    z = z.contiguous()
    h, state = z.new_empty((steps, *v.shape)), torch.empty_like(v)
    kernel = _c("lif_affine_forward", z.dtype, *[ctypes.c_void_p] * 6, *[ctypes.c_int64] * 4, ctypes.c_int32,
                *[REAL] * 3)
    kernel(_pointer(z), _pointer(scale.contiguous()), _pointer(shift.contiguous()), _pointer(h),
           _pointer(v.contiguous()), _pointer(state), steps, z.shape[0] // steps, z.shape[1], z[0, 0].numel(), mode,
           tau, vth, vreset)
    return h


def _lif_affine_scan_fake(z, scale, shift, v, steps, mode, tau, vth, vreset):
    return z.new_empty((steps, *v.shape))


for _name, _impl, _fake, _devices in (("lif_scan", _lif_scan, _lif_scan_fake, ("CPU", "CUDA")),
                                      ("lif_scan_backward", _lif_scan_backward, _lif_scan_backward_fake,
                                       ("CPU", "CUDA")),
                                      ("lif_affine_scan", _lif_affine_scan, _lif_affine_scan_fake, ("CPU",))):
    for _device in _devices:
        _LIBRARY.impl(_name, _impl, _device)
    torch.library.register_fake(f"spiketwin::{_name}", _fake, lib=_LIBRARY)
torch.library.register_autograd("spiketwin::lif_scan", _backward, setup_context=_setup_context, lib=_LIBRARY)

lif_scan = torch.ops.spiketwin.lif_scan.default
"""``spiketwin::lif_scan(x, v, mode, tau, vth, vreset, kind, alpha, keep_h) -> (spikes, v_final, h)``."""
lif_scan_backward = torch.ops.spiketwin.lif_scan_backward.default
"""``spiketwin::lif_scan_backward(h, grad_spikes, grad_v, mode, kind, vth, vreset, dh_dv, dh_dx, alpha)``."""
lif_affine_scan = torch.ops.spiketwin.lif_affine_scan.default
"""``spiketwin::lif_affine_scan(z, scale, shift, v, steps, mode, tau, vth, vreset) -> h`` (CPU only)."""


class LIFScanFunction(torch.autograd.Function):
    """:data:`lif_scan` with the same autograd formula, applied as an ``autograd.Function``: what the neurons call
    when gradients are needed.
    The operator's own autograd (``register_autograd``) re-reads its arguments against the schema on every call
    with gradients (``fill_defaults``, ~30 us a call on these CPUs); inside ``forward`` gradients are off, so the
    operator runs directly. ``torch.compile`` and ``torch.export`` trace through it to the operator."""

    @staticmethod
    def forward(ctx, *inputs):  # ctx first: a separate setup_context makes apply() bind the arguments again too
        output = lif_scan(*inputs)
        _setup_context(ctx, inputs, output)
        return output

    backward = staticmethod(_backward)
