"""Neurons: STBIF is the exact twin of the quantizer, LIF/IF equal a plain reference loop,
ILIF with k = 2 is a ReLU quantized to 2^T levels, and every neuron's step and sequence paths agree."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import spiketwin
from spiketwin.neurons import IF, ILIF, LIF, STBIF, LIFParams, lif_step
from spiketwin.quant import Quantizer
from spiketwin.surrogate import ATan, Sigmoid


def run_steps(neuron, x_seq):
    neuron.step_mode = "s"
    spiketwin.reset(neuron)
    out = torch.stack([neuron(x) for x in x_seq])
    neuron.step_mode = "m"
    return out


def run_sequence(neuron, x_seq):
    neuron.step_mode = "m"
    spiketwin.reset(neuron)
    return neuron(x_seq)


def quantizer(levels, signed, step, dtype=torch.float64):
    q = Quantizer(levels, signed).to(dtype)
    with torch.no_grad():
        q.step.fill_(step)
    q.initialized.fill_(True)
    return q.eval()


def sequential_sum(x_seq):
    total = torch.zeros_like(x_seq[0])
    for x in x_seq:
        total = total + x
    return total


# ---------------------------------------------------------------- ST-BIF

@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), levels=st.sampled_from([4, 8, 16, 32]), signed=st.booleans(),
       steps_in=st.integers(1, 12), theta=st.floats(0.05, 3.0))
def test_stbif_settles_to_quantizer_of_summed_input(seed, levels, signed, steps_in, theta):
    g = torch.Generator().manual_seed(seed)
    q = quantizer(levels, signed, theta)
    x = torch.randn(steps_in, 5, 7, generator=g, dtype=torch.float64) * theta * levels / 4
    neuron = STBIF.from_quantizer(q)
    spiketwin.reset(neuron)
    neuron.step_mode = "s"
    out = [neuron(xt) for xt in x]
    count_at_stop = neuron.count.clone()
    target = q(sequential_sum(x))
    # after the input stops, the count walks one step per time step to its target: it settles within
    # |S_final - S_stop| <= n_max - n_min further steps, never later
    bound = int((target / theta - count_at_stop).abs().max().round())
    assert bound <= neuron.n_max - neuron.n_min
    zeros = torch.zeros_like(x[0])
    out += [neuron(zeros) for _ in range(bound)]
    summed = sequential_sum(torch.stack(out))
    torch.testing.assert_close(summed, target, rtol=1e-12, atol=1e-12)
    for _ in range(40):  # nothing moves afterwards
        assert torch.equal(neuron(zeros), zeros)
    if bound > 0:  # and not earlier: one step less leaves some neuron short of its target
        spiketwin.reset(neuron)
        early = [neuron(xt) for xt in x] + [neuron(zeros) for _ in range(bound - 1)]
        assert not torch.allclose(sequential_sum(torch.stack(early)), target, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("levels,signed", [(8, True), (16, False), (32, True)])
def test_stbif_analog_input_settles_in_exactly_abs_count_steps(levels, signed):
    # SpikeZIP-TF's analog input: everything arrives at t = 1, so a neuron needs exactly |S| steps
    g = torch.Generator().manual_seed(levels)
    theta = 0.3
    q = quantizer(levels, signed, theta)
    x = torch.randn(200, generator=g, dtype=torch.float64) * theta * levels / 3
    neuron = STBIF.from_quantizer(q, step_mode="s")
    first_spike_free_step = torch.full_like(x, -1)
    outputs = [neuron(x)]
    zeros = torch.zeros_like(x)
    for _ in range(1, levels + 2):
        outputs.append(neuron(zeros))
    out = torch.stack(outputs)
    counts = (q(x) / theta).round()
    active_steps = out.ne(0).sum(0)
    assert torch.equal(active_steps, counts.abs().to(active_steps.dtype))
    last_active = torch.where(out.ne(0), torch.arange(len(out))[:, None], first_spike_free_step).amax(0)
    assert torch.equal(last_active + 1, counts.abs().to(last_active.dtype))
    torch.testing.assert_close(out.sum(0), q(x), rtol=1e-12, atol=1e-12)


def stbif_reference(x_seq, theta, n_min, n_max):
    """The SPEC's rule written literally: V starts at θ/2, compare V against θ and 0."""
    v = torch.full_like(x_seq[0], theta / 2)
    s = torch.zeros_like(v)
    outs = []
    for x in x_seq:
        v = v + x
        up = (v >= theta) & (s < n_max)
        down = (v < 0) & (s > n_min) & ~up
        out = theta * (up.double() - down.double())
        v = v - out
        s = s + up.double() - down.double()
        outs.append(out)
    return torch.stack(outs), v, s


@pytest.mark.parametrize("seed", range(5))
def test_stbif_matches_literal_membrane_rule(seed):
    g = torch.Generator().manual_seed(seed)
    theta = 0.37
    x = torch.randn(30, 4, 50, generator=g, dtype=torch.float64) * 0.5
    x[10:] = 0
    ref_out, ref_v, ref_s = stbif_reference(x, theta, -8, 7)
    neuron = STBIF(theta, -8, 7)
    out = run_sequence(neuron, x)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(neuron.v, ref_v, rtol=0, atol=1e-12)
    assert torch.equal(neuron.count, ref_s)


def test_stbif_fired_mask_is_per_sample():
    neuron = STBIF(1.0, -4, 3, step_mode="s")
    x = torch.zeros(3, 5, dtype=torch.float64)
    x[1, 2] = 2.0
    neuron(x)
    assert neuron.fired.tolist() == [False, True, False]


def test_stbif_rejects_bad_bounds_and_threshold():
    with pytest.raises(ValueError, match="n_min"):
        STBIF(1.0, 1, 4)
    with pytest.raises(ValueError, match="threshold"):
        STBIF(0.0, -4, 3)
    with pytest.raises(ValueError, match="initialised"):
        STBIF.from_quantizer(Quantizer(8))


# ---------------------------------------------------------------- LIF / IF

LIF_CONFIGS = [
    dict(tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True, detach_reset=True),
    dict(tau=2.0, v_threshold=0.5, v_reset=0.0, decay_input=True, detach_reset=True),
    dict(tau=3.0, v_threshold=1.0, v_reset=None, decay_input=True, detach_reset=False),
    dict(tau=1.5, v_threshold=0.8, v_reset=-0.2, decay_input=False, detach_reset=False),
    dict(tau=4.0, v_threshold=1.2, v_reset=None, decay_input=False, detach_reset=True),
]


def reference_lif_loop(x_seq, tau, v_threshold, v_reset, decay_input, detach_reset, surrogate):
    """A plain textbook loop with SpikingJelly's equations, written out independently."""
    v = torch.full_like(x_seq[0], 0.0 if v_reset is None else v_reset)
    out = []
    for x in x_seq:
        if tau is None:
            h = v + x
        elif decay_input:
            h = v + (x - (v - (v_reset or 0.0))) / tau
        else:
            h = v - (v - (v_reset or 0.0)) / tau + x
        s = surrogate(h - v_threshold)
        sr = s.detach() if detach_reset else s
        v = h - v_threshold * sr if v_reset is None else h * (1 - sr) + v_reset * sr
        out.append(s)
    return torch.stack(out), v


@pytest.mark.parametrize("cfg", LIF_CONFIGS)
@pytest.mark.parametrize("surrogate_cls", [Sigmoid, ATan])
def test_lif_equals_reference_loop_forward_and_backward(cfg, surrogate_cls):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(8, 3, 40, generator=g, dtype=torch.float64) + 0.6).requires_grad_()
    weights = torch.randn(8, 3, 40, generator=g, dtype=torch.float64)
    ref_s, ref_v = reference_lif_loop(x, surrogate=surrogate_cls(), **cfg)
    (ref_s * weights).sum().add(ref_v.sum() * 0.3).backward()
    ref_grad = x.grad.clone()
    for mode in ("m", "s"):
        x.grad = None
        neuron = LIF(surrogate=surrogate_cls(), **cfg)
        s = run_sequence(neuron, x) if mode == "m" else run_steps(neuron, x)
        assert torch.equal(s, ref_s.detach())
        assert torch.equal(neuron.v.detach(), ref_v.detach())
        (s * weights).sum().add(neuron.v.sum() * 0.3).backward()
        torch.testing.assert_close(x.grad, ref_grad, rtol=1e-12, atol=1e-12)
    assert ref_s.sum() > 0 and (ref_s == 0).any()  # the inputs exercise both branches


def test_if_is_lif_without_leak():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(10, 2, 30, generator=g, dtype=torch.float64).requires_grad_()
    ref_s, ref_v = reference_lif_loop(x, None, 1.0, None, True, True, Sigmoid())
    ref_s.sum().backward()
    ref_grad = x.grad.clone()
    x.grad = None
    neuron = IF(v_reset=None)
    s = run_sequence(neuron, x)
    assert torch.equal(s, ref_s.detach())
    s.sum().backward()
    torch.testing.assert_close(x.grad, ref_grad, rtol=1e-12, atol=1e-12)


def test_functional_lif_step_is_the_reference():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, 9, generator=g, dtype=torch.float64)
    p = LIFParams(tau=2.0, v_threshold=1.0, v_reset=0.0)
    v = torch.zeros_like(x[0])
    spikes = []
    for xt in x:
        s, v = lif_step(xt, v, p, Sigmoid())
        spikes.append(s)
    ref_s, ref_v = reference_lif_loop(x, 2.0, 1.0, 0.0, True, True, Sigmoid())
    assert torch.equal(torch.stack(spikes), ref_s)
    assert torch.equal(v, ref_v)


def test_lif_state_continues_across_calls_and_resets():
    x = torch.rand(6, 2, 5)
    neuron = LIF()
    whole = neuron(x)
    spiketwin.reset(neuron)
    halves = torch.cat([neuron(x[:3]), neuron(x[3:])])
    assert torch.equal(whole, halves)
    spiketwin.reset(neuron)
    assert neuron.v is None


def test_lif_state_follows_input_dtype_and_device():
    neuron = LIF()
    out = neuron(torch.rand(2, 3, 4, dtype=torch.float64))
    assert out.dtype == torch.float64 and neuron.v.dtype == torch.float64


# ---------------------------------------------------------------- iLIF

@pytest.mark.parametrize("T", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("round_", [True, False])
def test_ilif_k2_is_relu_quantized_to_2_pow_T_levels(T, round_):
    g = torch.Generator().manual_seed(T)
    theta = 1.7
    neuron = ILIF(theta, k=2.0, phase_steps=T, round=round_, step_mode="s")
    # an input train x_1..x_T: the neuron accumulates P = sum_t 2^(T-t) x_t
    x = torch.randn(T, 300, generator=g, dtype=torch.float64) * theta / 2 ** T
    potential = sum(2 ** (T - 1 - t) * x[t] for t in range(T))
    out = [neuron(xt) for xt in x] + [neuron(torch.zeros_like(x[0])) for _ in range(T)]
    out = torch.stack(out)
    assert torch.equal(out[:T], torch.zeros_like(out[:T]))  # nothing fires while accumulating
    fired = out[T:]
    s = theta / 2 ** T
    assert set(fired.unique().tolist()) <= {0.0, s}
    decoded = sum(2 ** (T - 1 - j) * fired[j] for j in range(T))
    rounded = torch.floor(potential / s + (0.5 if round_ else 0.0))
    expected = s * rounded.clamp(0, 2 ** T - 1)
    torch.testing.assert_close(decoded, expected, rtol=1e-12, atol=1e-12)
    assert (potential < 0).any() and (potential > theta).any()  # both ReLU and saturation exercised


def test_ilif_pipelines_one_period_after_another():
    T = 4
    neuron = ILIF(1.0, phase_steps=T, step_mode="s")
    a, b = torch.tensor([0.3, 0.6]), torch.tensor([0.05, 0.9])
    seq = [a] + [torch.zeros(2)] * (T - 1) + [b] + [torch.zeros(2)] * (2 * T - 1)
    out = torch.stack([neuron(x) for x in seq])
    decode = lambda o: sum(2 ** (T - 1 - j) * o[j] for j in range(T))
    s = 1.0 / 2 ** T
    q = lambda p: s * torch.floor(p / s + 0.5).clamp(0, 2 ** T - 1)
    torch.testing.assert_close(decode(out[T:2 * T]), q(a * 2 ** (T - 1)))
    torch.testing.assert_close(decode(out[2 * T:3 * T]), q(b * 2 ** (T - 1)))


def test_ilif_rejects_bad_parameters():
    with pytest.raises(ValueError, match="k"):
        ILIF(1.0, k=1.0)
    with pytest.raises(ValueError, match="phase_steps"):
        ILIF(1.0, phase_steps=0)


# ---------------------------------------------------------------- the two clocks

@pytest.mark.parametrize("make", [
    lambda: LIF(), lambda: LIF(v_reset=None, tau=3.0), lambda: IF(), lambda: STBIF(0.2, -8, 7),
    lambda: STBIF(torch.tensor(0.1), 0, 15), lambda: ILIF(0.5, k=2.0, phase_steps=3),
    lambda: ILIF(0.5, k=1.5, phase_steps=4),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_and_sequence_paths_are_identical(make, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, 4, 5, generator=g).to(dtype)
    neuron = make()
    a = run_sequence(neuron, x)
    state_a = {n: getattr(neuron, n) for n in neuron.state_names}
    b = run_steps(neuron, x)
    assert a.dtype == dtype and torch.equal(a, b)
    for name, value in state_a.items():
        assert torch.equal(value, getattr(neuron, name)), name


def test_reset_clears_every_neuron_in_a_model():
    model = torch.nn.Sequential(LIF(), torch.nn.Identity(), STBIF(1.0, -2, 1), ILIF(1.0))
    model(torch.rand(3, 2, 4))
    assert all(m.v is not None for m in (model[0], model[2], model[3]))
    spiketwin.reset(model)
    assert model[0].v is None and model[2].total is None and model[3].v_acc is None and model[3].t == 0


def test_keep_drops_samples_from_state():
    neuron = STBIF(1.0, -4, 3)
    neuron(torch.randn(2, 5, 3))
    total = neuron.total.clone()
    neuron.keep(torch.tensor([0, 3]))
    assert torch.equal(neuron.total, total[[0, 3]]) and neuron.fired.shape == (2,)


def test_bad_step_mode_is_refused():
    with pytest.raises(ValueError, match="step_mode"):
        LIF(step_mode="x")
