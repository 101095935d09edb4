"""Multi-spike ST-BIF (``spikes_per_step=m``): up to m spikes of ±θ per step. Its summed output is the quantizer
of its summed input once settled, for any input train; its count never leaves [n_min, n_max]; m = 1 is
SpikeZIP-TF's neuron; every path (step, sequence, event-driven, native kernel) gives the same bits; converted
ViTs and RoBERTas equal their QANNs in float64 for every m, and settle in fewer steps as m grows."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import spiketwin
from spiketwin import native
from spiketwin.convert import to_qann, to_snn, verify
from spiketwin.neurons import STBIF
from spiketwin.kernels.stbif_rule import stbif_move, stbif_target
from test_neurons import quantizer, run_sequence, run_steps, sequential_sum
from test_roberta import calibrated_qann, padded_batch, tiny
from test_spikezip import CONFIGS, random_qann


def test_move_is_the_clamped_distance_and_far_marks_samples_left_short():
    count = torch.tensor([[0.0, 3.0, -2.0], [1.0, 1.0, 1.0]])
    target = torch.tensor([[5.0, 3.0, -4.0], [2.0, 0.0, 1.0]])
    k, far = stbif_move(count, target, 2)
    assert torch.equal(k, torch.tensor([[2.0, 0.0, -2.0], [1.0, -1.0, 0.0]]))
    assert far.tolist() == [True, False]  # sample 0's first neuron is 3 short after moving 2
    k, far = stbif_move(count, target, 5)
    assert torch.equal(k, target - count) and not far.any()
    assert torch.equal(stbif_target(torch.tensor([-9.0, -0.26, 0.25, 0.74, 9.0]), 0.5, -4, 3),
                       torch.tensor([-4.0, -1.0, 1.0, 1.0, 3.0]))  # round half up, then clamp


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), levels=st.sampled_from([4, 8, 16, 32]), signed=st.booleans(),
       steps_in=st.integers(1, 12), theta=st.floats(0.05, 3.0), m=st.integers(1, 40), quiet=st.floats(0, 0.8))
def test_summed_output_is_the_quantizer_once_settled_and_the_count_stays_in_range(seed, levels, signed, steps_in,
                                                                                  theta, m, quiet):
    g = torch.Generator().manual_seed(seed)
    q = quantizer(levels, signed, theta)
    x = torch.randn(steps_in, 5, 7, generator=g, dtype=torch.float64) * theta * levels / 3
    x[torch.rand(x.shape, generator=g) < quiet] = 0  # sparse trains too
    neuron = STBIF.from_quantizer(q, step_mode="s", spikes_per_step=m)
    spiketwin.reset(neuron)
    out = []
    for xt in x:
        out.append(neuron(xt))
        assert bool((neuron.count >= neuron.n_min).all() and (neuron.count <= neuron.n_max).all())
        # a graded spike of at most m spikes, each ±θ
        k = (out[-1] / theta).round()
        assert bool((k.abs() <= m).all()) and torch.equal(out[-1], k * neuron.threshold)
    target = q(sequential_sum(x))
    # after the input stops the count moves up to m levels a step: it settles within ceil(|distance| / m) steps
    distance = int((target / theta - neuron.count).abs().max().round())
    bound = math.ceil(distance / m)
    zeros = torch.zeros_like(x[0])
    for _ in range(bound):
        assert bool(neuron.pending[:, -1].any())  # still short, so the settle rule keeps it running
        out.append(neuron(zeros))
        assert bool((neuron.count >= neuron.n_min).all() and (neuron.count <= neuron.n_max).all())
    assert not neuron.pending.any()  # settled
    torch.testing.assert_close(sequential_sum(torch.stack(out)), target, rtol=1e-12, atol=1e-12)
    for _ in range(5):  # nothing moves afterwards
        assert torch.equal(neuron(zeros), zeros)


@pytest.mark.parametrize("levels,signed", [(8, True), (16, False), (32, True)])
@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_analog_input_settles_in_ceil_count_over_m_steps(levels, signed, m):
    g = torch.Generator().manual_seed(levels + m)
    theta = 0.3
    q = quantizer(levels, signed, theta)
    x = torch.randn(300, generator=g, dtype=torch.float64) * theta * levels / 3
    neuron = STBIF.from_quantizer(q, step_mode="s", spikes_per_step=m)
    out = torch.stack([neuron(x)] + [neuron(torch.zeros_like(x)) for _ in range(levels + 1)])
    counts = (q(x) / theta).round()
    steps = torch.arange(1, len(out) + 1)[:, None]
    last_active = torch.where(out.ne(0), steps, 0).amax(0)
    assert torch.equal(last_active, (counts.abs() / m).ceil().to(last_active.dtype))
    torch.testing.assert_close(out.sum(0), q(x), rtol=1e-12, atol=1e-12)


def test_m_at_least_the_range_answers_analog_input_in_one_step():
    q = quantizer(16, True, 0.2)
    x = torch.randn(4, 50, dtype=torch.float64) * 2
    neuron = STBIF.from_quantizer(q, step_mode="s", spikes_per_step=q.n_max - q.n_min)
    assert torch.equal(neuron(x), q(x)) and not neuron.pending.any()


def test_m_1_is_the_default_neuron_bit_for_bit():
    x = torch.randn(20, 3, 40, dtype=torch.float32)
    x[6:] = 0
    for run in (run_steps, run_sequence):
        a, b = STBIF(0.37, -8, 7), STBIF(0.37, -8, 7, spikes_per_step=1)
        assert torch.equal(run(a, x), run(b, x)) and torch.equal(a.count, b.count)


@pytest.mark.parametrize("m", [2, 3, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_sequence_native_and_torch_paths_agree_bit_for_bit(m, dtype):
    g = torch.Generator().manual_seed(m)
    x = torch.randn(14, 6, 3, 5, generator=g, dtype=dtype) * 2
    x[:, torch.rand(6, generator=g) < 0.5] = 0
    x[7:] = 0

    def chunked(neuron):
        spiketwin.reset(neuron)
        outs, pend = [], []
        for a, b in ((0, 1), (1, 4), (4, 5), (5, 9), (9, 14)):
            outs.append(neuron(x[a:b]))
            pend.append(neuron.pending)
        return torch.cat(outs), torch.cat(pend, 1), neuron.count

    reference = run_steps(STBIF(0.37, -8, 7, spikes_per_step=m), x)
    results = [chunked(STBIF(0.37, -8, 7, sparse=sparse, spikes_per_step=m)) for sparse in (True, False)]
    with native.disabled():
        results += [chunked(STBIF(0.37, -8, 7, sparse=sparse, spikes_per_step=m)) for sparse in (True, False)]
    for out, pending, count in results:
        assert torch.equal(out, reference)
        assert torch.equal(pending, results[0][1]) and torch.equal(count, results[0][2])


def test_bad_spikes_per_step_is_refused_by_name():
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match="spikes_per_step"):
            STBIF(1.0, -4, 3, spikes_per_step=bad)
    qann, _ = random_qann(*CONFIGS[0])
    with pytest.raises(ValueError, match="spikes_per_step"):
        to_snn(qann, spikes_per_step=0)


@pytest.mark.parametrize("m", [1, 2, 4, 16])
@pytest.mark.parametrize("config", [CONFIGS[1], CONFIGS[2], CONFIGS[3]], ids=["L8", "L16", "L32"])
def test_vit_snn_equals_qann_float64_for_every_m(config, m):
    qann, x = random_qann(*config)
    snn = to_snn(qann, spikes_per_step=m)
    assert all(n.spikes_per_step == m for n in snn.modules() if isinstance(n, STBIF))
    report = verify(qann, snn, x)
    assert report.ok and report.max_rel <= 1e-9, str(report)
    steps, seq = snn.simulate(x, step_mode="s"), snn.simulate(x, step_mode="m", chunk=3)
    assert torch.equal(steps.output, seq.output) and torch.equal(steps.settle_step, seq.settle_step)
    # running outputs before a sample settles: batches of other compositions, rows rounded alike up to the GEMM
    torch.testing.assert_close(seq.per_step, steps.per_step, rtol=1e-12, atol=1e-12)
    if m >= config[6]:  # every neuron reaches its count in the step its input arrives: the whole net in one step
        assert (steps.settle_step == 1).all()


def test_settle_steps_shrink_as_m_grows():
    qann, x = random_qann(*CONFIGS[3], batch=8)  # 32 levels
    medians = [to_snn(qann, spikes_per_step=m).simulate(x).settle_step.double().median().item() for m in (1, 4, 32)]
    assert medians[0] > medians[1] > medians[2] == 1


@pytest.mark.parametrize("m", [1, 2, 4, 16])
def test_roberta_snn_equals_qann_float64_for_every_m(m):
    batch = padded_batch([9, 3, 7, 5], seed=m)
    qann = calibrated_qann(tiny(m, layers=2, hidden=32, heads=2, act="gelu"), 16, batch)
    snn = to_snn(qann, spikes_per_step=m)
    report = verify(qann, snn, batch, max_steps=512)
    assert report.ok and report.max_rel <= 1e-9, str(report)


def test_spikeconverter_qann_refuses_spikes_per_step():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(2 * 4 * 4, 3))
    qann = to_qann(model, 8, neuron="ilif", calibration=torch.rand(16, 1, 6, 6))
    with pytest.raises(ValueError, match="ST-BIF"):
        to_snn(qann, spikes_per_step=4)
