"""Fused kernels as torch operators: ``spiketwin::stbif_steps`` on the CPU (native kernel, torch fallback) and
its Triton kernel, run by Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``), all bit for bit equal
to the neuron's torch path; the operator passes torch's own registration checks (``opcheck``)."""

import importlib
import os

import pytest
import torch

import spiketwin.kernels.stbif  # noqa: F401  (registers the operators)
from spiketwin import native
from spiketwin.kernels.stbif_rule import stbif_exact, stbif_scan, stbif_target


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def triton_module(name: str):
    """``spiketwin.kernels.<name>``, on CUDA or (no CUDA) in Triton's interpreter; a skip without Triton."""
    pytest.importorskip("triton", reason="the triton package is not installed")
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA, and TRITON_INTERPRET was not 1 when Triton was imported (tests/conftest.py sets it)")
    return importlib.import_module(f"spiketwin.kernels.{name}")


def case(seed: int, dtype: torch.dtype, steps: int = 4, batch: int = 5, shape=(3, 7)):
    """Input ``[T, B, ...]`` in which samples 1 and 3 get no input, and a consistent state: samples 0 and 1 start
    with neurons short of their targets (pending), the others settled (count = target of the total)."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.tensor([0.37, 0.05, 1.3][seed % 3], dtype=dtype)
    x = torch.randn(steps, batch, *shape, generator=g, dtype=dtype) * 1.5
    x[:, [1, 3]] = 0
    total = torch.randn(batch, *shape, generator=g, dtype=dtype) * 2
    count = stbif_target(total, theta, -8, 7)
    count[:2] = 0
    was_pending = torch.tensor([True, True, False, False, False])
    return x, total, count, was_pending, theta.reshape(1)


def reference(x, total, count, theta, m):
    spikes, total, count, far = stbif_scan(x, total.clone(), count.clone(), theta[0], -8, 7, m)
    return spikes, total, count, far


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("steps", [1, 4])
def test_triton_kernel_equals_the_torch_path_bit_for_bit(dtype, m, skip, steps, monkeypatch):
    stbif_triton = triton_module("stbif_triton")
    monkeypatch.setattr(stbif_triton, "BLOCK", 16)  # several blocks per sample, the last one partly masked
    x, total, count, was_pending, theta = case(m + steps, dtype, steps)
    want = reference(x, total, count, theta, m)
    x, total, count, was_pending, theta = (t.to(DEVICE) for t in (x, total, count, was_pending, theta))
    spikes, far = stbif_triton.stbif_steps(x, total, count, was_pending if skip else None, theta, -8, 7, m)
    for got, expected in zip((spikes, total, count, far), want):
        assert got.dtype == expected.dtype and torch.equal(got.cpu(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", [1, 2, 16])
def test_operator_on_the_cpu_equals_the_torch_path_native_or_not(dtype, m):
    x, total, count, was_pending, theta = case(m, dtype)
    want = reference(x, total, count, theta, m)
    for off in (False, True):
        state = total.clone(), count.clone()
        if off:
            with native.disabled():
                spikes, far = torch.ops.spiketwin.stbif_steps(x, *state, was_pending, theta, -8, 7, m)
        else:
            spikes, far = torch.ops.spiketwin.stbif_steps(x, *state, was_pending, theta, -8, 7, m)
        for got, expected in zip((spikes, *state, far), want):
            assert got.dtype == expected.dtype and torch.equal(got, expected)


def test_operator_passes_torch_registration_checks():
    x, total, count, was_pending, theta = case(0, torch.float64)
    for pending in (was_pending, None):
        torch.library.opcheck(torch.ops.spiketwin.stbif_steps.default,
                              (x, total.clone(), count.clone(), pending, theta, -8, 7, 2))


def test_triton_can_be_switched_off_for_a_block(monkeypatch):
    from spiketwin.kernels import triton_disabled, triton_enabled

    monkeypatch.setattr("spiketwin.kernels._triton_installed", lambda: True)
    with triton_disabled():
        with triton_disabled():
            assert not triton_enabled()
        assert not triton_enabled()
    assert triton_enabled()


@pytest.mark.parametrize("m", [1, 4])
def test_the_neuron_on_this_machines_device_equals_its_cpu_torch_path(m):
    """On CUDA the neuron's sequence call runs the Triton kernel, on the CPU the native one: chunked calls with
    the per-sample skip give the torch path's bits."""
    from spiketwin.neurons import STBIF

    g = torch.Generator().manual_seed(m)
    x = torch.randn(12, 6, 4, 5, generator=g) * 2
    x[:, torch.rand(6, generator=g) < 0.5] = 0
    x[5:] = 0

    def chunked(neuron, device):
        neuron.to(device)
        outs, pending = [], []
        with torch.no_grad():
            for a, b in ((0, 1), (1, 4), (4, 6), (6, 12)):
                outs.append(neuron(x[a:b].to(device)).cpu())
                pending.append(neuron.pending.cpu())
        return torch.cat(outs), torch.cat(pending, 1), neuron.count.cpu()

    fast = chunked(STBIF(0.37, -8, 7, spikes_per_step=m), DEVICE)
    with native.disabled():
        slow = chunked(STBIF(0.37, -8, 7, spikes_per_step=m), "cpu")
    assert all(torch.equal(a, b) for a, b in zip(fast, slow))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("surrogate", ["atan", "sigmoid"] if DEVICE == "cuda" else ["atan"])  # on the CPU the
# sigmoid's reference would be the native kernel itself (tests/test_native_lif.py compares it with torch)
@pytest.mark.parametrize("kwargs", [{}, {"v_reset": None, "detach_reset": False}, {"tau": 1.5, "v_reset": -0.2,
                                                                                 "decay_input": False}])
def test_the_lif_neuron_on_this_machines_device_equals_its_cpu_paths(dtype, surrogate, kwargs):
    """On CUDA the LIF neuron's scan and backward run the compiled Triton kernels, on the CPU the native ones:
    spikes, final potential and the ATan gradient are the CPU torch path's bits; the sigmoid gradient (which needs
    an exp) is the native C kernel's, whose exp the Triton kernel computes too."""
    from spiketwin.neurons import LIF
    from spiketwin.surrogate import ATan, Sigmoid

    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 4, 33, generator=g, dtype=dtype) + 0.6
    upstream = torch.randn(6, 4, 33, generator=g, dtype=dtype)

    def run(device):
        neuron = LIF(surrogate=ATan(2.0) if surrogate == "atan" else Sigmoid(4.0), **kwargs)
        x_dev = x.to(device).requires_grad_()
        spikes = neuron(x_dev)
        (spikes * upstream.to(device)).sum().backward()
        return spikes.detach().cpu(), neuron.v.detach().cpu(), x_dev.grad.cpu()

    fast = run(DEVICE)
    if surrogate == "atan":
        with native.disabled():
            slow = run("cpu")
    else:
        if native.library("lif") is None:
            pytest.skip(f"the sigmoid gradient's reference is the native kernel: {native.status('lif')}")
        slow = run("cpu")
    assert all(torch.equal(a, b) for a, b in zip(fast, slow))


def exact_case(seed: int, dtype: torch.dtype, strided: bool):
    """An exact-state neuron's accumulated input ``[B, ...]`` (some values on rounding boundaries) and a count partly
    on its target, partly far from it; ``strided``: a permuted layout (as attention's q, k, v have), ``x`` a view of
    a larger tensor."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.tensor([0.37, 0.05, 1.3][seed % 3], dtype=dtype)
    x = torch.randn(5, 3, 7, generator=g, dtype=dtype) * 3
    x[0, 0] = (torch.arange(-3, 4, dtype=dtype) + 0.5) * theta
    count = stbif_target(x + torch.randn(5, 3, 7, generator=g, dtype=dtype), theta, -8, 7).to(torch.int8)
    if strided:
        x = torch.stack([x.transpose(1, 2), -x.transpose(1, 2)], -1)[..., 0].transpose(1, 2)
        count = count.transpose(1, 2).contiguous().transpose(1, 2)
    return x, count, theta.reshape(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("strided", [False, True])
def test_triton_exact_step_equals_the_torch_path_bit_for_bit(dtype, m, strided, monkeypatch):
    stbif_triton = triton_module("stbif_triton")
    monkeypatch.setattr(stbif_triton, "BLOCK", 8)  # several blocks per sample, the last one partly masked
    x, count, theta = exact_case(m, dtype, strided)
    want_count = count.clone()
    want = stbif_exact(x, want_count, theta[0], -8, 7, m)
    x, count, theta = (t.to(DEVICE) for t in (x, count, theta))
    if strided:
        x = torch.empty_like(count, dtype=x.dtype).copy_(x)  # what the operator hands the kernel: x in count's layout
    got = stbif_triton.stbif_exact_step(x, count, theta, -8, 7, m)
    for a, b in zip((*got, count), (*want, want_count)):
        assert a.dtype == b.dtype and a.stride() == b.stride() and torch.equal(a.cpu(), b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_exact_step_rounds_each_half_precision_result_as_torch_does(dtype):
    """In half precision torch computes each operation of the step in float32 and rounds its result (x / θ, + 1/2,
    the count cast for the difference, count · θ); the kernel must round at each of those places, ties to even:
    200,000 inputs at every scale of the levels (up to ±2200, past the integers float16 and bfloat16 hold exactly),
    many of them on or next to a level's boundary, counts the dtype cannot hold exactly, and θ that divides nothing
    evenly."""
    stbif_triton = triton_module("stbif_triton")
    g = torch.Generator().manual_seed(11)
    theta = torch.tensor([0.0371], dtype=dtype)
    # levels past float16's and bfloat16's exact integers (2048 and 256), where their ulp is 1 and more
    levels = torch.randint(-2200, 2200, (200, 1000), generator=g).to(torch.float32)
    x = ((levels + 0.5 + torch.randn(200, 1000, generator=g) * 0.01) * theta.float()).to(dtype)
    x[::3] = (torch.randn(67, 1000, generator=g) * 3).to(dtype)
    count = torch.randint(-2048, 2048, (200, 1000), generator=g, dtype=torch.int16)
    want_count = count.clone()
    want = stbif_exact(x, want_count, theta[0], -2048, 2047, 2)
    x, count, theta = (t.to(DEVICE) for t in (x, count, theta))
    got = stbif_triton.stbif_exact_step(x, count, theta, -2048, 2047, 2)
    for a, b in zip((*got, count), (*want, want_count)):
        assert a.dtype == b.dtype and torch.equal(a.cpu(), b)


@pytest.mark.parametrize("strided", [False, True])
def test_exact_step_operator_equals_the_torch_path_and_passes_registration_checks(strided):
    x, count, theta = exact_case(0, torch.float64, strided)
    want_count = count.clone()
    want = stbif_exact(x, want_count, theta[0], -8, 7, 2)
    for off in (False, True):
        state = count.clone()
        if off:
            with native.disabled():
                got = torch.ops.spiketwin.stbif_exact_step(x, state, theta, -8, 7, 2)
        else:
            got = torch.ops.spiketwin.stbif_exact_step(x, state, theta, -8, 7, 2)
        for a, b in zip((*got, state), (*want, want_count)):
            assert a.dtype == b.dtype and a.stride() == b.stride() and torch.equal(a, b)
    torch.library.opcheck(torch.ops.spiketwin.stbif_exact_step.default, (x, count.clone(), theta, -8, 7, 2))
