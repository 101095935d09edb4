"""Surrogate gradients equal their analytic formulas; the forward is the Heaviside step."""

import math

import pytest
import torch

from spiketwin.surrogate import ATan, Sigmoid


@pytest.mark.parametrize("alpha", [1.0, 4.0, 7.5])
def test_sigmoid_gradient_is_its_formula(alpha):
    x = torch.linspace(-3, 3, 201, dtype=torch.float64, requires_grad=True)
    y = Sigmoid(alpha)(x)
    assert torch.equal(y, (x >= 0).double())
    y.backward(torch.ones_like(y))
    s = torch.sigmoid(alpha * x.detach())
    assert torch.allclose(x.grad, alpha * s * (1 - s), rtol=0, atol=1e-15)


@pytest.mark.parametrize("alpha", [0.5, 2.0, 5.0])
def test_atan_gradient_is_its_formula(alpha):
    x = torch.linspace(-3, 3, 201, dtype=torch.float64, requires_grad=True)
    y = ATan(alpha)(x)
    assert torch.equal(y, (x >= 0).double())
    y.sum().backward()
    expected = alpha / 2 / (1 + (math.pi / 2 * alpha * x.detach()) ** 2)
    assert torch.allclose(x.grad, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("surrogate", [Sigmoid(4.0), ATan(2.0)])
def test_surrogate_is_derivative_of_its_smooth_function(surrogate):
    # the surrogate derivative integrates to 1 over the real line (it is the derivative of a step-like
    # function going from 0 to 1): check numerically
    x = torch.linspace(-200, 200, 2_000_001, dtype=torch.float64)
    integral = torch.trapezoid(surrogate.grad(x), x)
    assert abs(integral.item() - 1) < 2e-3


def test_alpha_must_be_positive():
    with pytest.raises(ValueError, match="alpha"):
        Sigmoid(0.0)
