"""Native kernels: built from source on first use, bit-identical to the torch paths, and optional (the torch
path runs when they are off or cannot be built)."""

import os
import subprocess
import sys

import pytest
import torch

import spiketwin
from spiketwin import native
from spiketwin.neurons import STBIF, ExactSTBIF
from spiketwin.neurons.exact import count_dtype

needs_native = pytest.mark.skipif(native.library("stbif") is None, reason=native.status("stbif"))


def stbif_calls(neuron, chunks):
    """Run ``neuron`` over successive sequence chunks from a reset; everything it outputs and keeps."""
    spiketwin.reset(neuron)
    record = []
    for chunk in chunks:
        spikes = neuron(chunk)
        record.append((spikes, neuron.total.clone(), neuron.count.clone(), neuron.pending.clone(),
                       neuron.spikes.clone()))
    return record


def sparse_chunks(seed, dtype, shape=(6, 5, 3)):
    """Chunks of 1..5 steps in which some samples get no input at all (and some neurons keep walking)."""
    g = torch.Generator().manual_seed(seed)
    chunks = []
    for length in (1, 3, 1, 2, 5, 1, 4):
        x = torch.randn(length, *shape, generator=g, dtype=dtype) * 1.5
        x[:, torch.rand(shape[0], generator=g) < 0.5] = 0
        chunks.append(x)
    for length in (1, 2, 8):  # no input: the counts walk to their targets, then every sample is skipped
        chunks.append(torch.zeros(length, *shape, dtype=dtype))
    return chunks


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sparse", [True, False])
def test_stbif_native_equals_torch_path_bit_for_bit(dtype, seed, sparse):
    theta = [0.37, 0.05, 1.3, 0.2][seed]
    n_min, n_max = [(-8, 7), (0, 15), (-2, 1), (-16, 15)][seed]
    chunks = sparse_chunks(seed, dtype)
    fast = stbif_calls(STBIF(theta, n_min, n_max, sparse=sparse), chunks)
    with native.disabled():
        reference = stbif_calls(STBIF(theta, n_min, n_max, sparse=sparse), chunks)
    for got, want in zip(fast, reference):
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and torch.equal(a, b)


@needs_native
def test_stbif_native_takes_non_contiguous_input_and_leaves_it_intact():
    x = torch.randn(3, 8, 4, dtype=torch.float64).transpose(1, 2)  # [T, B=4, 8], not contiguous
    before = x.clone()
    fast = stbif_calls(STBIF(0.3, -4, 3), [x])
    with native.disabled():
        reference = stbif_calls(STBIF(0.3, -4, 3), [x])
    assert torch.equal(fast[0][0], reference[0][0]) and torch.equal(x, before)


def exact_calls(neuron, inputs):
    """Run the exact-state ``neuron`` over successive accumulated inputs from a reset; all it outputs and keeps."""
    spiketwin.reset(neuron)
    return [(neuron(x), neuron.count.clone(), neuron.change.clone(), neuron.pending.clone()) for x in inputs]


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("batch_dim", [0, 1, None])
@pytest.mark.parametrize("strided", [False, True])
def test_exact_stbif_native_equals_torch_path_bit_for_bit(dtype, seed, batch_dim, strided):
    """Accumulated inputs that grow, then stay (the counts walk to their targets); some on rounding boundaries
    (``(k + 1/2) θ``); multi-spike neurons; the batch first, second or unknown; contiguous inputs, or strided views
    of a larger tensor (as attention's q, k, v are), whose outputs are contiguous (the quantizer's layout)."""
    theta = torch.tensor([0.37, 0.05, 1.3, 0.002][seed])
    n_min, n_max = [(-8, 7), (0, 15), (-16, 15), (-1024, 1023)][seed]  # int8 counts; int16 for the last
    g = torch.Generator().manual_seed(seed)
    total, inputs = torch.zeros(5, 6, 3, dtype=dtype), []
    for step in range(40):
        if step < 5:
            total = total + torch.randn(5, 6, 3, generator=g, dtype=dtype) * 2 * float(theta)
        if step == 3:
            total[0, :2] = (torch.arange(-3, 3, dtype=dtype).reshape(2, 3) + 0.5) * theta.to(dtype)
        inputs.append(total.clone() if not strided else
                      torch.stack([total.transpose(1, 2), -total.transpose(1, 2)], -1)[..., 0].transpose(1, 2))
    for m in (1, 3):
        fast = exact_calls(ExactSTBIF(theta, n_min, n_max, m, batch_dim), inputs)
        with native.disabled():
            reference = exact_calls(ExactSTBIF(theta, n_min, n_max, m, batch_dim), inputs)
        for got, want in zip(fast, reference):
            for a, b in zip(got, want):
                assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride() and torch.equal(a, b)
        assert torch.equal(fast[-1][0], (inputs[-1] / theta.to(dtype) + 0.5).floor().clamp(n_min, n_max)
                           * theta.to(dtype))  # settled: the quantizer's value
        assert fast[-1][1].dtype == (torch.int8 if n_max < 128 else torch.int16)
        assert batch_dim == 1 or all(t.is_contiguous() for t in fast[-1][:3])


@needs_native
def test_exact_stbif_native_takes_any_strided_view():
    """Views with gaps or permuted dimensions (copied to the count's layout first): the torch path's bits, in a
    contiguous output."""
    theta = torch.tensor(0.3)
    base = torch.randn(4, 3, 5, 2, 3, 2, 4, generator=torch.Generator().manual_seed(0)) * 2
    views = [base[..., 0], base[:, :, ::2, :, :, :, 1].permute(0, 3, 1, 2, 5, 4), base[..., ::3].transpose(1, 4),
             base[:, 1:, :, :, ::2, :, ::2]]
    for x in views:
        inputs = [x, 2 * x, 2 * x]
        fast = exact_calls(ExactSTBIF(theta, -8, 7), inputs)
        with native.disabled():
            reference = exact_calls(ExactSTBIF(theta, -8, 7), inputs)
        for got, want in zip(fast, reference):
            assert all(a.is_contiguous() == b.is_contiguous() and torch.equal(a, b) for a, b in zip(got, want))


def test_exact_stbif_keeps_the_narrowest_integer_count():
    assert count_dtype(-8, 7, 1) == torch.int8 and count_dtype(0, 255, 1) == torch.int16
    assert count_dtype(0, 127, 200) == torch.int8 and count_dtype(-128, 127, 1) == torch.int16  # -n_min must fit
    assert count_dtype(0, 40000, 1) == torch.int32 and count_dtype(0, 2**40, 1) == torch.int64


def test_status_says_which_path_runs(monkeypatch):
    monkeypatch.setenv("SPIKETWIN_NATIVE", "0")
    assert native.library("stbif") is None and "SPIKETWIN_NATIVE=0" in native.status("stbif")
    with native.disabled():
        assert not native.enabled()


def test_without_a_compiler_the_torch_path_runs(tmp_path):
    """A fresh process with no usable compiler and an empty cache: STBIF still runs, on its torch path, and
    the status names the missing compiler."""
    code = ("import torch, spiketwin\nfrom spiketwin import native\nfrom spiketwin.neurons import STBIF\n"
            "x = torch.ones(2, 3, 4)\nout = STBIF(0.5, -4, 3)(x)\n"
            "print(native.status('stbif')); print(out.sum().item())")
    env = {**os.environ, "CC": "no-such-compiler-xyz", "SPIKETWIN_CACHE": str(tmp_path)}
    env.pop("SPIKETWIN_NATIVE", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    status, total = done.stdout.strip().splitlines()
    assert "torch path" in status and "no-such-compiler-xyz" in status
    assert float(total) == 3 * 4 * 2 * 0.5  # 12 neurons, one spike of 0.5 per step (targets 2, 4 run ahead)


@needs_native
def test_build_is_cached_per_source(tmp_path):
    """The library is compiled into the cache directory once; another process loads it without compiling."""
    code = "from spiketwin import native\nprint(native.status('stbif'))"
    env = {**os.environ, "SPIKETWIN_CACHE": str(tmp_path)}
    env.pop("SPIKETWIN_NATIVE", None)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    built = sorted((tmp_path / "native").glob("stbif-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    done = subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, text=True)
    assert "native C kernel" in done.stdout and built[0].stat().st_mtime_ns == stamp
    assert sorted((tmp_path / "native").iterdir()) == built  # no temporary files left behind
