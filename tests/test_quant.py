"""The LSQ quantizer: levels, round half up, initialisation, straight-through and LSQ gradients, the fused inference
pass."""

import math

import pytest
import torch

from spiketwin import native
from spiketwin.kernels.quantize import quantize
from spiketwin.quant import Quantizer, level_range


def test_level_ranges():
    assert level_range(16, signed=True) == (-8, 7)
    assert level_range(16, signed=False) == (0, 15)
    assert level_range(2, signed=False) == (0, 1)
    with pytest.raises(ValueError, match="signed"):
        level_range(3, signed=True)
    with pytest.raises(ValueError, match="unsigned"):
        level_range(1, signed=False)


def _quantizer(levels, signed, step):
    q = Quantizer(levels, signed).double()
    with torch.no_grad():
        q.step.fill_(step)
    q.initialized.fill_(True)
    return q


@pytest.mark.parametrize("levels,signed", [(4, True), (8, False), (16, True), (32, False)])
def test_forward_is_round_half_up_and_clamped(levels, signed):
    q = _quantizer(levels, signed, 0.25)
    x = torch.randn(1000, dtype=torch.float64) * 3
    n_min, n_max = level_range(levels, signed)
    expected = 0.25 * torch.clamp(torch.floor(x / 0.25 + 0.5), n_min, n_max)
    assert torch.equal(q(x), expected)
    # exact halves round up, unlike torch.round (half to even)
    halves = torch.tensor([0.125, 0.375, -0.125, -0.375], dtype=torch.float64)
    assert q(halves).tolist() == [0.25, min(0.5, 0.25 * n_max), 0.0, -0.25 if signed else 0.0]


def test_step_initialised_from_first_batch_and_only_once():
    q = Quantizer(16, signed=False)
    x = torch.rand(64, 10) * 4
    q(x)
    assert bool(q.initialized)
    assert math.isclose(q.step.item(), 2 * x.abs().mean().item() / math.sqrt(15), rel_tol=1e-6)
    before = q.step.item()
    q(x * 100)
    assert q.step.item() == before
    state = q.state_dict()
    fresh = Quantizer(16, signed=False)
    fresh.load_state_dict(state)
    assert bool(fresh.initialized) and fresh.step.item() == before
    q.load_state_dict(Quantizer(16, signed=False).state_dict())  # a never-initialised state: the flag is read again
    q(x)
    assert bool(q.initialized) and math.isclose(q.step.item(), before, rel_tol=1e-6)


def test_straight_through_and_lsq_gradients():
    levels, step = 8, 0.5
    q = _quantizer(levels, True, step)
    n_min, n_max = level_range(levels, True)
    x = torch.tensor([-10.0, -1.1, 0.2, 0.74, 1.3, 10.0], dtype=torch.float64, requires_grad=True)
    q(x).sum().backward()
    v = x.detach() / step
    inside = (torch.floor(v + 0.5) >= n_min) & (torch.floor(v + 0.5) <= n_max)
    assert torch.equal(x.grad, inside.double())
    # LSQ: d out/ds = round(v) - v inside, the clamp bound outside; scaled by 1/sqrt(numel * n_max)
    d = torch.where(inside, torch.floor(v + 0.5) - v, torch.where(v < 0, float(n_min), float(n_max)))
    expected = d.sum() / math.sqrt(x.numel() * n_max)
    assert math.isclose(q.step.grad.item(), expected.item(), rel_tol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "permuted", "gaps"])
def test_inference_pass_equals_the_torch_path_bit_for_bit(dtype, layout):
    """Without autograd on the CPU the quantizer runs one native pass (``kernels.quantize``; a strided input is read
    in a contiguous copy): the same bits as the torch path, halves, the clamp and NaN included, and a contiguous
    output either way (the layout the SNN's neurons give)."""
    q = Quantizer(16, signed=True).to(dtype)
    with torch.no_grad():
        q.step.fill_(0.37)
    q.initialized.fill_(True)
    x = torch.randn(6, 5, 8, dtype=dtype) * 4
    x[0, 0, :5] = torch.tensor([0.5, 1.5, -0.5, -2.5, float("nan")], dtype=dtype) * q.step.detach().to(dtype)
    x[0, 1, 0] = 1e30
    x = {"contiguous": x, "permuted": x.transpose(1, 2).contiguous().transpose(1, 2), "gaps": x[:, :, ::2]}[layout]
    with torch.no_grad():
        fast = q(x)
        with native.disabled():
            reference = q(x)
        assert quantize(x, q.step.to(dtype), q.n_min, q.n_max) is not None
    assert fast.is_contiguous() and reference.is_contiguous()
    assert torch.equal(fast.nan_to_num(7.0), reference.nan_to_num(7.0))
    assert bool(fast[0, 0].isnan().any())
