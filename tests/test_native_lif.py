"""The native LIF kernels (spiketwin/native/lif.c) against the torch path they replace: the forward scan bit for
bit, the backward bit for bit where torch's operations can be repeated exactly (ATan), to a few ulp with the
sigmoid surrogate (its exp is not torch's), and the torch path whenever the kernels are off or cannot run."""

from __future__ import annotations

import pytest
import torch

from spiketwin import native
from spiketwin.neurons.lif import (LIF, LIFParams, _native_backward, _native_scan, _scan_generic, _scan_negated,
                                   lif_backward, lif_negated, lif_scan, lif_spikes, lif_u, native_affine_scan)
from spiketwin.surrogate import ATan, Sigmoid

PARAMS = [LIFParams(), LIFParams(2.0, 0.5, 0.0), LIFParams(3.0, 1.0, 0.0), LIFParams(3.0, 1.0, None, True, False),
          LIFParams(1.5, 0.8, -0.2, False, False), LIFParams(4.0, 1.2, None, False, True),
          LIFParams(2.5, 0.7, 0.3, True, True), LIFParams(None, 1.0, 0.0), LIFParams(None, 0.6, None, True, False)]
DTYPES = [torch.float32, torch.float64]
STEPS = [1, 2, 4, 7]


@pytest.fixture(autouse=True)
def _native_on(monkeypatch):
    monkeypatch.delenv("SPIKETWIN_NATIVE", raising=False)
    if native.library("lif") is None:
        pytest.skip(native.status("lif"))


def _inputs(T: int, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    shape = [(3, 1001), (2, 5, 7), (513,)][seed % 3]  # block boundaries (512) and ragged tails
    x = (torch.randn(T, *shape, generator=g, dtype=torch.float64) + 0.6).to(dtype)
    v0 = (torch.rand(shape, generator=g, dtype=torch.float64) * 0.8).to(dtype)
    grad_s = torch.randn(x.shape, generator=g, dtype=torch.float64).to(dtype)
    grad_v = torch.randn(v0.shape, generator=g, dtype=torch.float64).to(dtype)
    return x, v0, grad_s, grad_v


def _torch_scan(x, v0, p):
    h = torch.empty_like(x)
    v = (_scan_negated if lif_negated(p) else _scan_generic)(x, v0, p, h)
    return h, lif_spikes(h, p, torch.empty_like(h)), v


@pytest.mark.parametrize("p", PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", STEPS)
def test_forward_is_bit_identical(p, dtype, T):
    x, v0, _, _ = _inputs(T, dtype, T)
    with torch.no_grad():
        h_ref, s_ref, v_ref = _torch_scan(x, v0, p)
        h, s = torch.empty_like(x), torch.empty_like(x)
        v = _native_scan(x, v0, p, h, s)
        assert v is not None
        assert torch.equal(h, h_ref) and torch.equal(s, s_ref) and torch.equal(v, v_ref)
        spikes_only = torch.empty_like(x)
        assert torch.equal(_native_scan(x, v0, p, None, spikes_only), v_ref) and torch.equal(spikes_only, s_ref)
        in_place = x.clone()  # lif_scan over its own input, as the BN -> LIF recompute runs it
        assert torch.equal(lif_scan(in_place, v0, p, out=in_place), v_ref) and torch.equal(in_place, h_ref)
    assert 0 < s_ref.sum() < s_ref.numel()  # both branches of the reset ran


@pytest.mark.parametrize("p", PARAMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", STEPS)
def test_backward_matches_the_torch_path(p, dtype, T):
    x, v0, grad_s, grad_v = _inputs(T, dtype, T + 1)
    with torch.no_grad():
        h, _, _ = _torch_scan(x, v0, p)
        for surrogate in (ATan(2.0), Sigmoid(4.0)):
            for gv in (None, grad_v):
                expected = lif_backward(lif_u(h, p), grad_s, gv, p, surrogate)
                got = _native_backward(h, grad_s, gv, p, surrogate)
                assert got is not None
                for a, b in zip(got, expected):
                    if isinstance(surrogate, ATan):  # the same operations: the same bits
                        assert torch.equal(a, b)
                    else:  # exp differs from torch's in the last bit: a few ulp, relative to the gradient's size
                        eps = torch.finfo(dtype).eps
                        torch.testing.assert_close(a, b, rtol=8 * eps, atol=8 * eps * float(b.abs().max()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_surrogate_at_extreme_potentials(dtype):
    u = torch.tensor([0.0, 1e-8, -3.0, 20.0, -20.0, 30.0, -30.0, 90.0, -90.0, 800.0, -800.0, 1e30, -1e30,
                      float("inf"), float("-inf")], dtype=dtype)
    h = (u + 1.0).unsqueeze(1)  # generic neuron (soft reset): H = u + V_th
    p = LIFParams(3.0, 1.0, None)
    grad_s = torch.ones_like(h)
    with torch.no_grad():
        got, _ = _native_backward(h, grad_s, None, p, Sigmoid(4.0))
        expected, _ = lif_backward(lif_u(h, p), grad_s, None, p, Sigmoid(4.0))
        nan = _native_backward(torch.full((1, 1), float("nan"), dtype=dtype), torch.ones(1, 1, dtype=dtype), None,
                               p, Sigmoid(4.0))[0]
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(got, expected, rtol=8 * eps, atol=torch.finfo(dtype).tiny * 4)
    assert nan.isnan().all()


@pytest.mark.parametrize("cfg", [dict(), dict(tau=3.0, v_reset=None, detach_reset=False), dict(tau=None)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss_on", ["both", "spikes", "v"])  # an output the loss does not use gets no gradient
def test_lif_module_native_and_torch_paths_agree(cfg, dtype, loss_on, monkeypatch):
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(4, 6, 300, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    weights = torch.randn(x.shape, generator=g, dtype=torch.float64).to(dtype)
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv("SPIKETWIN_NATIVE", flag)
        xi = x.clone().requires_grad_()
        neuron = LIF(**cfg)
        first = neuron(xi[:2])  # two calls: the state carries over, with its gradient
        s = torch.cat([first, neuron(xi[2:])])
        loss = (s * weights).sum() if loss_on != "v" else 0
        (loss + neuron.v.sum() * 0.3 if loss_on != "spikes" else loss).backward()
        results.append((s.detach(), neuron.v.detach(), xi.grad))
    assert "off" in native.status("lif")
    (s1, v1, g1), (s2, v2, g2) = results
    assert torch.equal(s1, s2) and torch.equal(v1, v2)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(g1, g2, rtol=16 * eps, atol=16 * eps * float(g2.abs().max()))


def test_kernels_decline_what_they_do_not_take(monkeypatch):
    x, v0, grad_s, _ = _inputs(3, torch.float32, 0)
    p = LIFParams()
    with torch.no_grad():
        assert _native_scan(x.half(), v0.half(), p, None, torch.empty_like(x.half())) is None  # dtype
        assert _native_scan(x, v0.double(), p, None, torch.empty_like(x)) is None  # mixed dtypes
        assert _native_scan(x.transpose(1, 2), v0.T, p, None, torch.empty_like(x.transpose(1, 2))) is None
        assert _native_backward(x, grad_s, None, p, torch.nn.Identity()) is None  # a surrogate it does not know
        monkeypatch.setenv("SPIKETWIN_NATIVE", "0")
        assert _native_scan(x, v0, p, None, torch.empty_like(x)) is None
        assert _native_backward(x, grad_s, None, p, Sigmoid()) is None
    assert _native_scan(x, v0, p, None, torch.empty_like(x)) is None  # autograd on: the torch path


@pytest.mark.parametrize("layout", ["conv", "tokens"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", STEPS)
def test_batch_norm_fused_into_the_scan_is_bit_identical(layout, affine, dtype, T):
    g = torch.Generator().manual_seed(T)
    B, C = 3, 5
    z = torch.randn((T * B, C, 6, 7) if layout == "conv" else (T * B * 11, C), generator=g, dtype=torch.float64)
    z = (z * 2 + 0.5).to(dtype)
    bn = (torch.nn.BatchNorm2d if layout == "conv" else torch.nn.BatchNorm1d)(C, affine=affine).to(dtype)
    if affine:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 2.0, generator=g)
            bn.bias.uniform_(-0.5, 1.0, generator=g)
    normed = bn(z.requires_grad_())
    mean, invstd = normed.grad_fn._saved_result1, normed.grad_fn._saved_result2
    p = LIFParams()
    with torch.no_grad():
        shape = (T, B, C, 6, 7) if layout == "conv" else (T, B, 11, C)
        v0 = torch.rand(shape[1:], generator=g, dtype=torch.float64).to(dtype) * 0.5
        expected = normed.detach().clone().view(shape)
        lif_scan(expected, v0, p, out=expected)
        scale = invstd * bn.weight if affine else invstd
        shift = torch.addcmul(bn.bias if affine else torch.zeros_like(mean), mean, scale, value=-1)
        out = torch.empty(shape, dtype=dtype)
        assert native_affine_scan(z.detach(), scale, shift, v0, p, out)
        assert torch.equal(out, expected)
        assert not native_affine_scan(z.detach(), scale[:-1], shift[:-1], v0, p, out)  # wrong channel count
