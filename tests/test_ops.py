"""The helpers of ``spiketwin.ops``: running sums round as step-by-step additions do, and the event-driven
sequence path (index-select the samples with work, the same sequence code, index-copy) is the dense path bit
for bit."""

import pytest
import torch

import spiketwin
from spiketwin.ops import running_sum

T, B = 6, 3


def gen(seed):
    return torch.Generator().manual_seed(seed)


def spike_train(shape, seed, sparsity=0.5):
    """Random signed multiples of 0.25 with many zeros, like spike trains of ST-BIF neurons."""
    g = gen(seed)
    x = torch.randint(-2, 3, shape, generator=g).double() * 0.25
    return x * (torch.rand(shape, generator=g, dtype=torch.float64) > sparsity)


def run(module, *inputs, mode, chunks=(T,), static=()):
    """Run ``module`` over ``[T, B, ...]`` inputs (and ``static`` arguments passed unchanged to every call):
    step by step (mode 's') or as sequence chunks (mode 'm')."""
    spiketwin.reset(module)
    spiketwin.set_step_mode(module, mode)
    if mode == "s":
        return torch.stack([module(*(x[t] for x in inputs), *static) for t in range(inputs[0].shape[0])])
    out, start = [], 0
    for n in chunks:
        out.append(module(*(x[start:start + n] for x in inputs), *static))
        start += n
    return torch.cat(out)


def test_running_sum_is_sequential_addition():
    x = torch.randn(T, 4, 5, generator=gen(0))  # float32: torch.cumsum would accumulate in double
    initial = torch.randn(4, 5, generator=gen(1))
    acc, expected = initial, []
    for xt in x:
        acc = acc + xt
        expected.append(acc)
    assert torch.equal(running_sum(x, initial), torch.stack(expected))
    assert torch.equal(running_sum(x)[0], x[0])


# ---------------------------------------------------------------- event-driven sequence path


def quiet_samples(x, seed, quiet=0.6):
    """``x`` ``[T, B, ...]`` with whole samples silent at random steps (the first step too), as late in a run."""
    silent = torch.rand(x.shape[:2], generator=gen(seed + 100)) < quiet
    return x * ~silent.view(*x.shape[:2], *([1] * (x.dim() - 2)))


def sparse_vs_dense(make, *inputs, static=(), monkeypatch):
    """Run fresh ``make()`` modules on ``inputs`` in uneven sequence chunks, event-driven (compaction forced at
    any density) and dense, and step by step: outputs and final states must be identical, bit for bit.
    Returns how many calls took the event-driven path."""
    import spiketwin.neurons.stbif
    import spiketwin.ops

    calls = []
    original = spiketwin.ops.scatter_samples

    def spy(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(spiketwin.ops, "scatter_samples", spy)
    monkeypatch.setattr(spiketwin.neurons.stbif, "scatter_samples", spy)
    monkeypatch.setattr(spiketwin.ops, "SPARSE_MAX_FRACTION", 1.0)
    chunks = (1, 2, 1, 1, 3, 1, 1)
    results = []
    for sparse, mode in ((True, "m"), (False, "m"), (False, "s")):
        module = make()
        module.sparse = sparse
        with torch.no_grad():
            out = run(module, *inputs, mode=mode, chunks=chunks, static=static)
        results.append((out, [getattr(module, n) for n in module.state_names]))
    (sparse_out, sparse_state), *others = results
    for out, state in others:
        assert torch.equal(sparse_out, out)
        for a, b in zip(sparse_state, state):
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    return len(calls)


@pytest.mark.parametrize("seed", [0, 1])
def test_event_driven_path_is_the_dense_path_bit_for_bit(seed, monkeypatch):
    from spiketwin.neurons import STBIF

    # a neuron keeps firing after its input stopped: a sample with pending neurons must still be computed
    x = quiet_samples(torch.randn(10, 7, 4, 3, generator=gen(seed), dtype=torch.float64), seed + 6, quiet=0.7)
    sparse_vs_dense(lambda: STBIF(0.1, -8, 7), x, monkeypatch=monkeypatch)  # fused kernel: skips inside
    per_channel = torch.tensor([0.1, 0.2, 0.05], dtype=torch.float64)  # not fused: index-select, scan, index-copy
    n = sparse_vs_dense(lambda: STBIF(per_channel, -8, 7), x, monkeypatch=monkeypatch)
    assert n > 3  # the event-driven path really ran (not in the first chunk: no pending state yet)


def test_event_driven_path_stays_dense_off_the_cpu():
    from spiketwin.ops import sparse_index

    assert sparse_index(torch.zeros(5, dtype=torch.bool, device="meta")) is None
    with torch.no_grad():
        assert sparse_index(torch.tensor([True, True, True, False])) is None  # above SPARSE_MAX_FRACTION
        assert torch.equal(sparse_index(torch.tensor([False, True, False, False])), torch.tensor([1]))
    assert sparse_index(torch.tensor([False, True, False, False])) is None  # autograd on: dense
