"""The Triton LIF kernels (spiketwin/native/lif_triton.py, the CUDA implementation of the spiketwin::lif_*
operators), run by Triton's interpreter (TRITON_INTERPRET=1) on CPU tensors, against the torch path: the forward
scan and the ATan backward bit for bit, the sigmoid backward bit for bit against the C kernel (the same exp) and
to a few ulp against torch. Small sizes: the interpreter runs each program in numpy."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

from spiketwin.kernels import lif as lif_ops
from spiketwin.neurons.lif import (LIFParams, _charge_grads, _scan_generic, _scan_negated, lif_backward, lif_mode,
                                   lif_negated, lif_spikes, lif_u)
from spiketwin.surrogate import ATan, Sigmoid

pytest.importorskip("triton", reason="triton is not installed (pip install triton): the Triton kernels are untested")

PARAMS = [LIFParams(), LIFParams(2.0, 0.5, 0.0), LIFParams(3.0, 1.0, None, True, False),
          LIFParams(1.5, 0.8, -0.2, False, False), LIFParams(4.0, 1.2, None, False, True),
          LIFParams(2.5, 0.7, 0.3, True, True), LIFParams(None, 1.0, 0.0), LIFParams(None, 0.6, None, True, False)]
DTYPES = [torch.float32, torch.float64]
BLOCK = 256  # several programs and a ragged last block at N = 700


@pytest.fixture(scope="module")
def kernels():
    """lif_triton imported with TRITON_INTERPRET=1 (read when its kernels are decorated, its helpers' too), then
    forgotten, so that on a GPU machine the operators import the compiled kernels."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TRITON_INTERPRET", "1")
    modules = ("spiketwin.kernels.lif_triton", "spiketwin.kernels.triton_ieee")
    for name in modules:
        sys.modules.pop(name, None)
    try:
        yield importlib.import_module("spiketwin.kernels.lif_triton")
    finally:
        for name in modules:
            sys.modules.pop(name, None)
        mp.undo()


def _inputs(T: int, dtype: torch.dtype, seed: int, n: int = 700):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(T, n, generator=g, dtype=torch.float64) + 0.6).to(dtype)
    v0 = (torch.rand(n, generator=g, dtype=torch.float64) * 0.8).to(dtype)
    grad_s = torch.randn(x.shape, generator=g, dtype=torch.float64).to(dtype)
    grad_v = torch.randn(v0.shape, generator=g, dtype=torch.float64).to(dtype)
    return x, v0, grad_s, grad_v


def _torch_scan(x, v0, p):
    h = torch.empty_like(x)
    v = (_scan_negated if lif_negated(p) else _scan_generic)(x, v0, p, h)
    return h, lif_spikes(h, p, torch.empty_like(h)), v


def _triton_backward(kernels, h, grad_s, grad_v, p, surrogate):
    grad_x, grad_v0 = torch.empty_like(h), torch.empty_like(h[0])
    kind = lif_ops.ATAN if isinstance(surrogate, ATan) else lif_ops.SIGMOID
    kernels.backward(h, grad_s, grad_v, grad_x, grad_v0, lif_mode(p), kind, p.v_threshold, p.v_reset or 0.0,
                     *_charge_grads(p), surrogate.alpha, block=BLOCK)
    return grad_x, grad_v0


@pytest.mark.parametrize("p", PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [1, 3])
def test_triton_forward_is_bit_identical(kernels, p, dtype, T):
    x, v0, _, _ = _inputs(T, dtype, T)
    h_ref, s_ref, v_ref = _torch_scan(x, v0, p)
    h, s, v = torch.empty_like(x), torch.empty_like(x), torch.empty_like(v0)
    args = (lif_mode(p), p.tau or 1.0, p.v_threshold, p.v_reset or 0.0)
    kernels.forward(x, v0, h, s, v, *args, block=BLOCK)
    assert torch.equal(h, h_ref) and torch.equal(s, s_ref) and torch.equal(v, v_ref)
    in_place, spikes_only = x.clone(), torch.empty_like(x)  # H over the input (the BN recompute); spikes only
    kernels.forward(in_place, v0, in_place, None, v, *args, block=BLOCK)
    assert torch.equal(in_place, h_ref) and torch.equal(v, v_ref)
    kernels.forward(x, v0, None, spikes_only, v, *args, block=BLOCK)
    assert torch.equal(spikes_only, s_ref)
    assert 0 < s_ref.sum() < s_ref.numel()  # both branches of the reset ran


@pytest.mark.parametrize("p", PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_backward_matches_the_torch_path(kernels, p, dtype):
    T = 3
    x, v0, grad_s, grad_v = _inputs(T, dtype, 5)
    h, _, _ = _torch_scan(x, v0, p)
    c_kernel = lif_ops.runs_on(h)
    for surrogate in (ATan(2.0), Sigmoid(4.0)):
        for gv in (None, grad_v):
            expected = lif_backward(lif_u(h, p), grad_s, gv, p, surrogate)
            got = _triton_backward(kernels, h, grad_s, gv, p, surrogate)
            for a, b in zip(got, expected):
                if isinstance(surrogate, ATan):  # the same operations: the same bits
                    assert torch.equal(a, b)
                else:  # lif.c's exp, not torch's: a few ulp relative to the gradient's size
                    eps = torch.finfo(dtype).eps
                    torch.testing.assert_close(a, b, rtol=8 * eps, atol=8 * eps * float(b.abs().max()))
            if c_kernel and isinstance(surrogate, Sigmoid):  # the C kernel's exp, operation for operation
                kind = lif_ops.SIGMOID
                c = lif_ops.lif_scan_backward(h, grad_s, gv, lif_mode(p), kind, p.v_threshold, p.v_reset or 0.0,
                                              *_charge_grads(p), surrogate.alpha)
                assert torch.equal(got[0], c[0]) and torch.equal(got[1], c[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_sigmoid_surrogate_at_extreme_potentials(kernels, dtype):
    u = torch.tensor([0.0, 1e-8, -3.0, 20.0, -20.0, 30.0, -30.0, 90.0, -90.0, 800.0, -800.0, 1e30, -1e30,
                      float("inf"), float("-inf"), float("nan")], dtype=dtype)
    h = (u + 1.0).unsqueeze(0)  # one step of the soft-reset neuron: H = u + V_th
    p = LIFParams(3.0, 1.0, None)
    grad_s = torch.ones_like(h)
    got, _ = _triton_backward(kernels, h, grad_s, None, p, Sigmoid(4.0))
    expected, _ = lif_backward(lif_u(h, p), grad_s, None, p, Sigmoid(4.0))
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(got[:, :-1], expected[:, :-1], rtol=8 * eps, atol=torch.finfo(dtype).tiny * 4)
    assert got[0, -1].isnan()
