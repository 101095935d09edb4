"""Spiking operators: summed over steps each equals its ANN operator on the summed input (float64), the
step and sequence paths agree bit for bit, chunks of a sequence continue where the last one stopped."""

import pytest
import torch
from torch import nn

import spiketwin
from spiketwin.ops import SESA, Accumulate, BiasOnce, OffsetOnce, running_sum

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


def check_two_clocks(module, *inputs, static=()):
    """Step path == sequence path == sequence in uneven chunks, bit for bit. Returns the outputs."""
    steps = run(module, *inputs, mode="s", static=static)
    assert torch.equal(steps, run(module, *inputs, mode="m", static=static))
    assert torch.equal(steps, run(module, *inputs, mode="m", chunks=(1, 3, T - 4), static=static))
    return steps


def test_running_sum_is_sequential_addition():
    x = torch.randn(T, 4, 5, generator=gen(0))  # float32: torch.cumsum would accumulate in double
    initial = torch.randn(4, 5, generator=gen(1))
    acc, expected = initial, []
    for xt in x:
        acc = acc + xt
        expected.append(acc)
    assert torch.equal(running_sum(x, initial), torch.stack(expected))
    assert torch.equal(running_sum(x)[0], x[0])


@pytest.mark.parametrize("make_layer, shape", [
    (lambda: nn.Linear(7, 5), (T, B, 4, 7)),
    (lambda: nn.Linear(7, 5, bias=False), (T, B, 7)),
    (lambda: nn.Conv2d(2, 4, 3, padding=1), (T, B, 2, 6, 6)),
    (lambda: nn.Conv1d(2, 4, 2, stride=2), (T, B, 2, 8)),
])
def test_bias_once_sums_to_the_layer(make_layer, shape):
    torch.manual_seed(0)
    layer = make_layer().double()
    x = spike_train(shape, 1)
    out = check_two_clocks(BiasOnce(layer), x)
    torch.testing.assert_close(out.sum(0), layer(x.sum(0)), rtol=1e-12, atol=1e-12)
    if layer.bias is not None:  # the bias enters at the first step only: zero input later -> zero output
        zero_after = run(BiasOnce(layer), torch.cat([x[:1], torch.zeros_like(x[1:])]), mode="m")
        assert torch.equal(zero_after[1:], torch.zeros_like(zero_after[1:]))


def test_bias_once_rejects_other_layers():
    with pytest.raises(TypeError, match="nn.Linear or nn.ConvNd"):
        BiasOnce(nn.LayerNorm(3))


def test_offset_once_adds_offsets_at_the_first_step_only():
    fn = lambda x, a, b: torch.cat([a.expand(*x.shape[:-2], 1, x.shape[-1]), x], -2) + b
    module = OffsetOnce(_Fn(fn))
    x = spike_train((T, B, 4, 3), 2)
    a, b = torch.randn(1, 1, 3, dtype=torch.float64), torch.randn(1, 5, 3, dtype=torch.float64)
    out = check_two_clocks(module, x, static=(a, b))
    torch.testing.assert_close(out.sum(0), fn(x.sum(0), a, b), rtol=1e-12, atol=1e-12)


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sesa_sums_to_the_product_of_sums(seed):
    a = spike_train((T, B, 2, 5, 4), seed)
    b = spike_train((T, B, 2, 4, 6), seed + 10)
    out = check_two_clocks(SESA(), a, b)
    torch.testing.assert_close(out.sum(0), a.sum(0) @ b.sum(0), rtol=1e-12, atol=1e-12)


def test_sesa_outputs_zero_once_both_inputs_stop():
    a, b = spike_train((T, B, 3, 4), 3), spike_train((T, B, 4, 2), 4)
    a[3:], b[3:] = 0, 0
    out = run(SESA(), a, b, mode="m")
    assert torch.equal(out[3:], torch.zeros_like(out[3:]))


@pytest.mark.parametrize("fn", [nn.Softmax(dim=-1), nn.LayerNorm(6), nn.GELU()], ids=["softmax", "layernorm", "gelu"])
def test_accumulate_sums_to_fn_of_the_sum(fn):
    torch.manual_seed(0)
    fn = fn.double()
    if isinstance(fn, nn.LayerNorm):  # a bias makes f(0) != 0: the first step must output f(X_1), not f(X_1) - f(0)
        nn.init.normal_(fn.weight)
        nn.init.normal_(fn.bias)
    x = spike_train((T, B, 5, 6), 5)
    out = check_two_clocks(Accumulate(fn), x)
    torch.testing.assert_close(out.sum(0), fn(x.sum(0)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[0], fn(x[0]), rtol=0, atol=0)


def test_accumulate_keeps_a_masked_softmax_masked():
    masked_softmax = _Fn(lambda x, mask: (x + mask).softmax(-1))
    x = spike_train((T, B, 2, 4, 5), 6)
    mask = torch.zeros(B, 1, 1, 5, dtype=torch.float64)
    mask[:, ..., 3:] = torch.finfo(torch.float64).min  # the last two keys are padding
    # [B, 1, 1, N] broadcasts against one step [B, H, N, N] and against a sequence [T, B, H, N, N]
    seq = check_two_clocks(Accumulate(masked_softmax), x, static=(mask,))
    assert torch.equal(seq[..., 3:], torch.zeros_like(seq[..., 3:]))
    torch.testing.assert_close(seq.sum(0), (x.sum(0) + mask).softmax(-1), rtol=1e-12, atol=1e-12)


def test_keep_drops_samples_from_every_state():
    module = SESA()
    a, b = spike_train((T, B, 3, 4), 7), spike_train((T, B, 4, 2), 8)
    full = run(module, a, b, mode="s")
    spiketwin.reset(module)
    spiketwin.set_step_mode(module, "s")
    keep = torch.tensor([0, 2])
    out = [module(a[0], b[0])]
    module.keep(keep)
    out += [module(a[t, keep], b[t, keep]) for t in range(1, T)]
    assert torch.equal(torch.stack(out[1:]), full[1:, keep])


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

    torch.manual_seed(seed)
    linear = nn.Linear(6, 9).double()
    n = sparse_vs_dense(lambda: BiasOnce(linear), quiet_samples(spike_train((10, 7, 5, 6), seed), seed),
                        monkeypatch=monkeypatch)
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    n += sparse_vs_dense(lambda: BiasOnce(conv), quiet_samples(spike_train((10, 7, 2, 5, 5), seed + 1), seed + 1),
                         monkeypatch=monkeypatch)
    a = quiet_samples(spike_train((10, 7, 2, 5, 4), seed + 2), seed + 2)
    b = quiet_samples(spike_train((10, 7, 2, 4, 6), seed + 3), seed + 3)
    n += sparse_vs_dense(SESA, a, b, monkeypatch=monkeypatch)
    ln = nn.LayerNorm(6).double()
    nn.init.normal_(ln.weight)
    nn.init.normal_(ln.bias)
    for fn in (nn.Softmax(dim=-1), ln):
        x = quiet_samples(spike_train((10, 7, 5, 6), seed + 4), seed + 4)
        n += sparse_vs_dense(lambda fn=fn: Accumulate(fn), x, monkeypatch=monkeypatch)
    mask = torch.zeros(7, 1, 1, 5, dtype=torch.float64)
    mask[:3, ..., 3:] = torch.finfo(torch.float64).min  # three samples with two padded keys
    n += sparse_vs_dense(lambda: Accumulate(_Fn(lambda x, m: (x + m).softmax(-1))),
                         quiet_samples(spike_train((10, 7, 2, 5, 5), seed + 5), seed + 5), static=(mask,),
                         monkeypatch=monkeypatch)
    # a neuron keeps firing after its input stopped: a sample with pending neurons must still be computed
    x = quiet_samples(torch.randn(10, 7, 4, 3, generator=gen(seed), dtype=torch.float64), seed + 6, quiet=0.7)
    n += sparse_vs_dense(lambda: STBIF(0.1, -8, 7), x, monkeypatch=monkeypatch)
    assert n > 30  # the event-driven path really ran


def test_event_driven_path_stays_dense_off_the_cpu():
    from spiketwin.ops import sparse_index

    assert sparse_index(torch.zeros(5, dtype=torch.bool, device="meta")) is None
    with torch.no_grad():
        assert sparse_index(torch.tensor([True, True, True, False])) is None  # above SPARSE_MAX_FRACTION
        assert torch.equal(sparse_index(torch.tensor([False, True, False, False])), torch.tensor([1]))
    assert sparse_index(torch.tensor([False, True, False, False])) is None  # autograd on: dense
