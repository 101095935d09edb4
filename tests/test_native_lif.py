"""The native LIF kernels (spiketwin/native/lif.c, as the CPU implementation of the spiketwin::lif_* operators)
against the torch path they replace: the forward scan bit for bit, the backward bit for bit where torch's
operations can be repeated exactly (ATan), to a few ulp with the sigmoid surrogate (its exp is not torch's), and
the torch path whenever the kernels are off or cannot run."""

from __future__ import annotations

import pytest
import torch

from spiketwin import native, reset
from spiketwin.kernels import lif as lif_ops
from spiketwin.neurons.lif import (LIF, LIFParams, _charge_grads, _scan_generic, _scan_negated, lif_backward, lif_mode,
                                   lif_negated, lif_scan, lif_sequence, lif_spikes, lif_u, native_affine_scan)
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


def _kernel_scan(x, v0, p, keep_h=True):
    """(spikes, final V, H) by the operator spiketwin::lif_scan."""
    return lif_ops.lif_scan(x, v0, lif_mode(p), p.tau or 1.0, p.v_threshold, p.v_reset or 0.0, 0, 4.0, keep_h)


def _kernel_backward(h, grad_s, grad_v, p, surrogate):
    """(dL/dX, dL/dV_0) by the operator spiketwin::lif_scan_backward."""
    kind = lif_ops.ATAN if isinstance(surrogate, ATan) else lif_ops.SIGMOID
    return lif_ops.lif_scan_backward(h, grad_s, grad_v, lif_mode(p), kind, p.v_threshold, p.v_reset or 0.0,
                                     *_charge_grads(p), surrogate.alpha)


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
        s, v, h = _kernel_scan(x, v0, p)
        assert torch.equal(h, h_ref) and torch.equal(s, s_ref) and torch.equal(v, v_ref)
        spikes_only, v_only, no_h = _kernel_scan(x, v0, p, keep_h=False)
        assert torch.equal(v_only, v_ref) and torch.equal(spikes_only, s_ref) and no_h.numel() == 0
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
                got = _kernel_backward(h, grad_s, gv, p, surrogate)
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
        got, _ = _kernel_backward(h, grad_s, None, p, Sigmoid(4.0))
        expected, _ = lif_backward(lif_u(h, p), grad_s, None, p, Sigmoid(4.0))
        nan = _kernel_backward(torch.full((1, 1), float("nan"), dtype=dtype), torch.ones(1, 1, dtype=dtype), None,
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
    x, v0, _, _ = _inputs(3, torch.float32, 0)
    assert lif_ops.runs_on(x, v0)
    assert not lif_ops.runs_on(x.half(), v0.half())  # dtype
    assert not lif_ops.runs_on(x, v0.double())  # mixed dtypes
    xi = x.clone().requires_grad_()
    s, _ = lif_sequence(xi, v0, LIFParams(), torch.nn.Identity())  # a surrogate the kernels do not know
    assert type(s.grad_fn).__name__ == "_LIFScanBackward"  # the torch path's autograd function
    monkeypatch.setenv("SPIKETWIN_NATIVE", "0")
    assert not lif_ops.runs_on(x, v0)
    assert "SPIKETWIN_NATIVE=0" in lif_ops.status()


def test_a_strided_input_gives_the_result_of_its_contiguous_copy():
    x, v0, _, _ = _inputs(3, torch.float64, 1)
    strided = x.transpose(1, 2).contiguous().transpose(1, 2)
    assert not strided.is_contiguous()
    for p in PARAMS[:4]:
        with torch.no_grad():
            expected = _kernel_scan(x, v0, p)
            for a, b in zip(_kernel_scan(strided, v0, p), expected):
                assert torch.equal(a, b)


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
        assert torch.equal(native_affine_scan(z.detach(), scale, shift, v0, p, T), expected)
        assert native_affine_scan(z.detach(), scale[:-1], shift[:-1], v0, p, T) is None  # wrong channel count


def test_operators_pass_torch_library_opcheck():
    x, v0, grad_s, grad_v = _inputs(3, torch.float64, 2)
    p = LIFParams(3.0, 1.0, None, True, False)
    scalars = (p.tau, p.v_threshold, 0.0)
    torch.library.opcheck(lif_ops.lif_scan, (x.clone().requires_grad_(), v0.clone().requires_grad_(), lif_mode(p),
                                             *scalars, lif_ops.ATAN, 2.0, True))
    torch.library.opcheck(lif_ops.lif_scan, (x, v0, lif_mode(p), *scalars, lif_ops.SIGMOID, 4.0, False))
    h = _kernel_scan(x, v0, p)[2]
    torch.library.opcheck(lif_ops.lif_scan_backward, (h, grad_s, grad_v, lif_mode(p), lif_ops.SIGMOID,
                                                      p.v_threshold, 0.0, *_charge_grads(p), 4.0))
    z = torch.randn(6, 4, 5, dtype=torch.float64)
    scale, shift = torch.rand(4, dtype=torch.float64) + 0.5, torch.randn(4, dtype=torch.float64)
    torch.library.opcheck(lif_ops.lif_affine_scan, (z, scale, shift, torch.zeros(2, 4, 5, dtype=torch.float64), 3,
                                                    lif_mode(LIFParams()), 2.0, 1.0, 0.0))


@pytest.mark.filterwarnings("ignore:The tensor attribute")  # the LIF's state .v, set by the traced forward
def test_torch_export_and_compile_see_the_scan_as_one_operator():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), LIF())
    x = torch.randn(4, 3, 6)
    exported = torch.export.export(model, (x,))
    assert torch.ops.spiketwin.lif_scan.default in [n.target for n in exported.graph.nodes]
    reset(model)
    eager = model(x)
    reset(model)
    assert torch.equal(exported.module()(x), eager)
    grads = []
    for run in (torch.compile(model, backend="aot_eager", fullgraph=True), model):  # forward and backward traced
        xi = x.clone().requires_grad_()
        out = run(xi)
        reset(model)
        (out * torch.arange(5.0)).sum().backward()
        grads.append((out.detach(), xi.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
