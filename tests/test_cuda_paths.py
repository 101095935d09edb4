"""spiketwin's CUDA code paths, run without a GPU on the stand-in device of ``stand_in_cuda.py``: the same results as
on the CPU, nothing left on the CPU, and the host reads the GPU would wait for counted (docs/gpu.md's rule: one per
chunk of steps in the time loop)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from spiketwin.convert import to_snn, verify
from spiketwin.data import load_digits
from spiketwin.energy import report as energy_report
from spiketwin.energy import simulation_run
from spiketwin.models import create
from spiketwin.simulate import SimResult
from spiketwin.simulate import evaluate_per_step
from spiketwin.train import TrainConfig, evaluate, fit
from stand_in_cuda import DeviceMismatch, stand_in_cuda

pytest.importorskip("triton", reason="the gpu extra (triton) is not installed")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a real GPU is here: tests/test_kernels.py uses it")


def _on_cuda(inputs):
    if isinstance(inputs, dict):
        return {k: v.to("cuda") if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return inputs.to("cuda")


def _calls(monkeypatch, module, name: str) -> list:
    """Count the calls of ``module.name`` (a Triton launch wrapper)."""
    calls, original = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def test_the_stand_in_refuses_what_cuda_refuses():
    with stand_in_cuda() as reads:
        x = torch.ones(3, device="cuda")
        assert x.is_cuda and x.device == torch.device("cuda", 0)
        with pytest.raises(DeviceMismatch):
            x + torch.ones(3)
        assert float((x * torch.tensor(2.0)).sum()) == 6.0  # a 0-dim CPU tensor is a scalar, as on CUDA
        with pytest.raises(TypeError):
            x.numpy()
        assert not x.cpu().is_cuda
        assert [what for what, _ in reads] == ["aten._local_scalar_dense.default", "copy to the host"]


@pytest.mark.parametrize("name,state,m,dtype", [("vit", "exact", 1, "float64"), ("llama", "exact", 1, "float64"),
                                                ("bert", "exact", 1, "float64"), ("vit", "events", 1, "float64"),
                                                ("vit", "exact", 4, "float64"), ("vit", "exact", 1, "bfloat16")])
def test_engine_snn_on_cuda_same_bits_and_one_host_read_per_chunk(name, state, m, dtype, monkeypatch):
    """The conversion engine's SNN on the CUDA path (the neuron operators' CUDA implementations, their Triton kernels):
    the CPU's output and settle steps bit for bit (per-step outputs: ``assert_same_run``); the time loop reads the
    host once per chunk of 8 steps, and never with ``read_late`` (which copies without blocking). In bfloat16 the
    CPU takes the torch path (its native kernels are float32 / float64) and CUDA the Triton kernel."""
    from spiketwin.kernels import stbif_triton
    from test_engine import D, _calibrated, _cast, _hf, _inputs, assert_same_run

    torch.manual_seed(3)
    qann = _calibrated(_hf(name).to(D).eval(), _inputs(name, 0), levels=32).to(getattr(torch, dtype))
    snn, inputs = to_snn(qann, state=state, spikes_per_step=m), _cast(_inputs(name, 2), getattr(torch, dtype))
    on_cpu = snn.simulate(inputs)
    steps = int(on_cpu.settle_step.max())
    assert steps >= (10 if m == 1 else 3), steps  # with m = 1, enough steps for a read per step to show
    launches = _calls(monkeypatch, stbif_triton, "stbif_exact_step" if state == "exact" else "stbif_steps")
    with stand_in_cuda() as reads:
        snn.to("cuda")
        for late in (False, True):
            reads.clear()
            result = snn.simulate(_on_cuda(inputs), read_late=late, chunk=1 if late else None)
            per_run = 4  # input check, confirmation, end: docs/gpu.md's table
            checks = 0 if late else math.ceil(steps / 8) + 1
            assert len(reads) <= checks + per_run, reads
            assert result.output.is_cuda
            assert_same_run(SimResult(*(getattr(result, f).cpu() for f in ("output", "per_step", "settle_step"))),
                            on_cpu)  # the CPU checks every step, CUDA every 8: samples leave at other steps
    assert launches, "the Triton kernel did not run"


def test_spikformer_training_on_cuda_equals_the_cpu_kernels(monkeypatch):
    """``fit`` on the CUDA path (the LIF operators' Triton kernels, the BatchNorm -> LIF recompute of
    ``memory.pack``) gives the parameters that the CPU's native kernels give, bit for bit; two host reads an epoch."""
    from spiketwin.kernels import lif_triton

    x, y, x_test, y_test = load_digits()
    torch.manual_seed(0)
    model = create("spikformer_cifar10", img_size=8, in_channels=1, dim=32, depth=1, num_heads=2, T=2)
    on_gpu = copy.deepcopy(model)
    config = TrainConfig(epochs=1, lr=2e-3, batch_size=16, seed=1)
    fit(model, x[:48], y[:48], config)
    forward, backward = _calls(monkeypatch, lif_triton, "forward"), _calls(monkeypatch, lif_triton, "backward")
    with stand_in_cuda() as reads:
        on_gpu.to("cuda")
        fit(on_gpu, x[:48], y[:48], config)
        assert len(reads) <= 2, reads
        assert evaluate(on_gpu, x_test[:32], y_test[:32]) == evaluate(model, x_test[:32], y_test[:32])
    for (name, a), b in zip(model.state_dict().items(), on_gpu.state_dict().values()):
        assert torch.equal(a, b.cpu()), name
    assert forward and backward, "the Triton LIF kernels did not run"


def test_evaluation_verification_and_energy_on_cuda_equal_the_cpu():
    """``evaluate_per_step`` (labels on the GPU too), ``verify`` and the energy report (one read a step: its ``T`` is
    the settle step, as on the CPU) of a ViT SNN on the CUDA path: the CPU's figures."""
    from test_engine import D, _calibrated, _hf, _inputs

    torch.manual_seed(4)
    qann = _calibrated(_hf("vit").to(D).eval(), _inputs("vit", 0), levels=8)
    snn, x = to_snn(qann), _inputs("vit", 1)["pixel_values"]
    y = torch.arange(len(x)) % 5
    on_cpu = (evaluate_per_step(snn, {"pixel_values": x}, y, batch_size=2), verify(qann, snn, {"pixel_values": x}),
              energy_report(snn, {"pixel_values": x}))
    with stand_in_cuda() as reads:
        snn.to("cuda"), qann.to("cuda")
        got = (evaluate_per_step(snn, {"pixel_values": _on_cuda(x)}, _on_cuda(y), batch_size=2),
               verify(qann, snn, {"pixel_values": _on_cuda(x)}))
        reads.clear()
        got += (energy_report(snn, {"pixel_values": _on_cuda(x)}),)
        during = [read for read in reads if "(finish)" not in read[1]]  # the counts come to the host after the run
        assert len(during) <= on_cpu[2].T + 3, during  # a read a step; the input check; spike_coded (2 reads)
    assert got[2].to_dict() == on_cpu[2].to_dict()
    for field in ("accuracy", "settle_step", "prediction"):
        assert torch.equal(getattr(got[0], field).cpu(), getattr(on_cpu[0], field)), field
    assert got[1].ok and got[1].max_rel == on_cpu[1].max_rel == 0.0


def test_ilif_snn_and_energy_on_cuda_equal_the_cpu():
    """SpikeConverter's iLIF SNN (pipelined) and its energy report on the CUDA path."""
    from test_spikeconverter import convert, random_cnn

    qann, snn, x = convert(random_cnn("resnet", 3), 4, 3)
    on_cpu = snn.simulate(x, pipelined=True)
    energy = energy_report(snn, x, run=simulation_run(64))
    with stand_in_cuda() as reads:
        snn.to("cuda")
        result = snn.simulate(_on_cuda(x), pipelined=True)
        assert len(reads) <= 1, reads  # the input check
        got = energy_report(snn, _on_cuda(x), run=simulation_run(64))
    assert torch.equal(result.output.cpu(), on_cpu.output)
    assert got.to_dict() == energy.to_dict()


def test_nir_export_of_a_model_on_cuda_equals_the_cpu_export(tmp_path):
    """``to_nir`` of a LIF/IF network on the GPU (it copies the model, runs it, reads its weights back): the CPU's
    graph, array for array."""
    nir = pytest.importorskip("nir", reason="the nir extra is not installed")
    import numpy as np

    from spiketwin.export import to_nir
    from test_export_nir import make

    net, x = make(0), torch.rand(6, 3, 2, 6, 6, dtype=torch.float64) * 2
    to_nir(net, x, tmp_path / "cpu.nir")
    with stand_in_cuda():
        net.to("cuda")
        to_nir(net, x.to("cuda"), tmp_path / "cuda.nir")
    cpu, cuda = nir.read(tmp_path / "cpu.nir"), nir.read(tmp_path / "cuda.nir")
    assert cpu.nodes.keys() == cuda.nodes.keys() and cpu.edges == cuda.edges
    for name, node in cpu.nodes.items():
        for field, value in vars(node).items():
            if isinstance(value, np.ndarray):
                assert np.array_equal(value, getattr(cuda.nodes[name], field)), (name, field)


def test_training_resumes_on_cuda_from_its_checkpoint(tmp_path):
    """``fit`` on CUDA writes its checkpoint (from device tensors), and a resumed run on CUDA, given a model of other
    weights, loads it back onto the device (copies from the CPU, which CUDA allows) and ends where two epochs in one
    run on the CPU end, bit for bit."""
    x, y, _, _ = load_digits()

    def model(seed: int):
        torch.manual_seed(seed)
        return create("spikformer_cifar10", img_size=8, in_channels=1, dim=32, depth=1, num_heads=2, T=2)
    config = dict(lr=2e-3, batch_size=16, seed=1)
    straight = model(0)
    fit(straight, x[:32], y[:32], TrainConfig(epochs=2, **config))
    with stand_in_cuda():
        first, resumed = model(0).to("cuda"), model(99).to("cuda")
        fit(first, x[:32], y[:32], TrainConfig(epochs=1, out_dir=str(tmp_path), **config))
        fit(resumed, x[:32], y[:32], TrainConfig(epochs=2, out_dir=str(tmp_path), resume=True, **config))
    for (name, want), got in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert got.is_cuda and torch.equal(got.cpu(), want), name


def test_a_converted_model_follows_cuda_and_cpu_as_it_follows_to():
    """``.cuda()`` and ``.cpu()`` (which do not call ``.to()``) move the traced graph's tensor-making nodes (BERT's
    mask: their device was fixed when the model was traced) with the parameters: the QANN and SNN there give the
    CPU's bits."""
    from test_engine import D, _calibrated, _hf, _inputs

    torch.manual_seed(5)
    qann = _calibrated(_hf("bert").to(D).eval(), _inputs("bert", 0))
    snn, inputs = to_snn(qann), _inputs("bert", 1)
    assert any(isinstance(n.kwargs.get("device"), torch.device) for n in snn.model.graph.nodes), "nothing to move"
    want = qann(**inputs).logits, snn.simulate(inputs).output
    with stand_in_cuda():
        qann.cuda(), snn.cuda()
        got = qann(**_on_cuda(inputs)).logits, snn.simulate(_on_cuda(inputs)).output
        assert all(torch.equal(g.cpu(), w) for g, w in zip(got, want))
        qann.cpu(), snn.cpu()
        assert all(torch.equal(g, w) for g, w in zip((qann(**inputs).logits, snn.simulate(inputs).output), want))
