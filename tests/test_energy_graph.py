"""Energy reports, spike records and the CLI raster on converted graph SNNs (``to_snn`` of any traced model).

Expected counts are recomputed from the neurons themselves, stepped by hand: a weight layer reading a neuron costs
``fan-out x Σ|count change|`` accumulates (a graded spike of k counts k) and ``fan-out x (changes != 0)`` events; a
product costs ``FLOPs x Σ_t s_a(t) s_b(t)``. The exact and the events state give identical reports in float64 under
every convention (same spike trains), on spiketwin's ViT and on tiny Hugging Face BERT and Llama models.
"""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from spiketwin import reset
from spiketwin.convert import to_qann, to_snn
from spiketwin.energy import CONVENTIONS, compare, report, simulation_run
from spiketwin.models import create

D = torch.float64


def _calibrated(model: nn.Module, inputs, levels: int = 16):
    qann = to_qann(model.to(D).eval(), levels, example_inputs=inputs)
    qann.train()
    qann(**inputs) if isinstance(inputs, dict) else qann(inputs)
    return qann.eval()


class Gated(nn.Module):
    """Two branches of the input multiplied elementwise (a product of two signals), then a projection."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = nn.Linear(6, 5), nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.out(self.a(x) * self.b(x))


def _changes(snn, x, steps: int) -> list[list[torch.Tensor]]:
    """Every neuron's spike count change ``[B, ...]`` at each step, stepping the SNN by hand."""
    reset(snn.model)
    per_step = []
    for _ in range(steps):
        snn(x)
        per_step.append([(n.spikes / n.threshold).round() for n in snn.neurons])
    reset(snn.model)
    return per_step


def _same(a, b) -> None:
    """Two reports agree on every count, rate and energy. A neuron row's input rate (conventions that charge neuron
    updates) is left out: the non-zeros of a float increment (a softmax's ``f(X_t) - f(X_{t-1})``) may differ by
    rounding between the states; its operation count (one per input element and step) does not."""
    assert [r.name for r in a.layers] == [r.name for r in b.layers]
    for ra, rb in zip(a.layers, b.layers):
        for key in ("steps", "flops", "sops", "macs", "sop_events", "rate", "rate_b", "sops_exact", "energy_pj"):
            if not (key == "rate" and ra.kind == "neurons"):
                assert getattr(ra, key) == getattr(rb, key), (a.convention, ra.name, key)
    assert a.totals == b.totals


@pytest.mark.parametrize("spikes_per_step", [1, 3])
def test_weight_layer_counts_every_spike_of_its_neuron(spikes_per_step):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(4, 6, dtype=D)
    qann = _calibrated(mlp, x)
    snn = to_snn(qann, spikes_per_step=spikes_per_step)
    steps = 12
    r = report(snn, x, run=simulation_run(steps))
    assert [row.name for row in r.layers] == ["0", "2"] and r.T == steps
    first, second = r.layers
    assert (first.coding, first.macs, first.sops) == ("analog", 5 * 6, 0)  # the input enters once: 30 MACs
    changes = [step[0] for step in _changes(snn, x, steps)]
    k = sum(float(c.abs().sum()) for c in changes)
    assert k > 0 and second.coding == "spike"
    assert second.sops == pytest.approx(3 * k / 4, rel=1e-12)  # fan-out 3, per sample
    assert second.sop_events == pytest.approx(3 * sum(int(c.ne(0).sum()) for c in changes) / 4, rel=1e-12)
    if spikes_per_step > 1:
        assert max(float(c.abs().max()) for c in changes) > 1  # graded spikes happened, and cost |k|
        assert second.sops > second.sop_events


def test_product_of_two_signals_and_exact_equals_events():
    torch.manual_seed(1)
    x = torch.randn(5, 6, dtype=D)
    qann = _calibrated(Gated(), x)
    assert len(qann.labels) == 3  # both factors and the product
    reports = {state: compare(to_snn(qann, state=state), x, run=simulation_run(10)) for state in ("exact", "events")}
    for name in CONVENTIONS:
        _same(reports["exact"][name], reports["events"][name])
    r = reports["exact"]["spiketwin"]
    names = [row.name for row in r.layers]
    assert names == ["a", "b", "mul", "out"], names
    product = r.layers[2]
    assert product.kind == "product" and product.flops == 5
    snn = to_snn(qann)
    qa, qb = (qann.labels.index(next(label for label in qann.labels if label.startswith(p))) for p in ("a:", "b:"))
    changes = _changes(snn, x, 10)
    rates = [(float(s[qa].abs().sum()) / s[qa].numel(), float(s[qb].abs().sum()) / s[qb].numel()) for s in changes]
    assert product.sops == pytest.approx(5 * sum(a * b for a, b in rates), rel=1e-12)
    pairs = sum(float((s[qa].ne(0) & s[qb].ne(0)).sum()) for s in changes)
    assert pairs > 0 and product.sops_exact == pytest.approx(pairs / 5, rel=1e-12)


def test_vit_exact_and_events_agree_under_every_convention():
    torch.manual_seed(2)
    x = torch.rand(3, 1, 8, 8, dtype=D)
    qann = _calibrated(create("vit_digits"), x)
    exact = compare(to_snn(qann), x)  # default run: step until every sample settles
    events = compare(to_snn(qann, state="events"), x)
    for name in CONVENTIONS:
        _same(exact[name], events[name])
    r = exact["spiketwin"]
    names = [row.name for row in r.layers]
    assert names[:4] == ["patch_embed.proj", "blocks.0.attn.qkv", "blocks.0.attn.matmul_qk", "blocks.0.attn.matmul_av"]
    assert names[-1] == "head" and len(names) == 1 + 6 * 2 + 1 + 1  # the last qkv is two linears (rows.py): the
    assert [n for n in names if n.startswith("blocks.1.attn.qkv")] == ["blocks.1.attn.qkv.linear",  # class token's q
                                                                       "blocks.1.attn.qkv.linear_1"]  # all k and v
    assert r.layers[0].coding == "analog" and all(row.coding == "spike" for row in r.layers[1:])
    assert [row.name for row in exact["syops"].layers if row.kind == "neurons"] == qann.labels  # neuron updates
    norms = [row for row in exact["spikezip"].layers if row.kind == "layernorm"]  # 2 MACs per element and step
    assert [row.name for row in norms] == [f"blocks.{i}.norm{j}" for i in (0, 1) for j in (1, 2)] + ["norm"]
    rows = {"blocks.1.norm2": 1, "norm": 1}  # after the last attention only the class token is computed (rows.py)
    assert all(row.macs == 2 * rows.get(row.name, 17) * 32 * row.steps for row in norms)  # 16 patches + class, dim 32
    assert r.totals["sops"] > 0 and r.T == int(to_snn(qann).simulate(x).settle_step.max())


def _text(batch: int = 3, length: int = 7) -> dict:
    ids = torch.randint(3, 60, (batch, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_hugging_face_exact_and_events_agree(arch):
    T = pytest.importorskip("transformers", reason="the nlp extra (transformers) is not installed")
    torch.manual_seed(3)
    small = dict(vocab_size=64, max_position_embeddings=32, hidden_size=16, num_hidden_layers=2, intermediate_size=32)
    if arch == "bert":
        model, inputs = T.BertForSequenceClassification(T.BertConfig(num_attention_heads=2, **small)), _text()
    else:
        model = T.LlamaForCausalLM(T.LlamaConfig(num_attention_heads=4, num_key_value_heads=2, **small))
        inputs = {"input_ids": _text()["input_ids"], "use_cache": False}
    qann = _calibrated(model, inputs)
    exact = compare(to_snn(qann), inputs, ["spiketwin", "spikingformer", "spikingjelly"])
    events = compare(to_snn(qann, state="events"), inputs, ["spiketwin", "spikingformer", "spikingjelly"])
    for name in exact:
        _same(exact[name], events[name])
    rows = exact["spiketwin"].layers
    products = [row.name for row in rows if row.kind == "product"]
    assert len(products) == 2 * (3 if arch == "llama" else 2), products  # Q Kᵀ, A V (and SwiGLU's gate x up)
    assert sum(row.kind == "linear" for row in rows) >= 2 * 6
    assert all(row.coding == "spike" for row in rows)  # the embeddings enter through a neuron
    assert exact["spiketwin"].totals["sops"] > 0


def test_analog_list_names_graph_ops():
    torch.manual_seed(4)
    x = torch.randn(4, 6, dtype=D)
    snn = to_snn(_calibrated(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), x))
    r = report(snn, x, analog=["2"], run=simulation_run(8))
    assert [row.coding for row in r.layers] == ["spike", "analog"]
    with pytest.raises(ValueError, match="not counted ops of the graph SNN"):
        report(snn, x, analog=["0.weight"])


def test_record_and_cli_raster_on_graph_snns(tmp_path):
    plots = pytest.importorskip("spiketwin.plots")
    pytest.importorskip("matplotlib", reason="plots need the 'plot' extra (matplotlib)")
    from spiketwin.cli.raster import write_raster

    torch.manual_seed(5)
    x = torch.rand(3, 1, 8, 8, dtype=D)
    qann = _calibrated(create("vit_digits"), x)
    label = qann.labels[3]
    exact, events = to_snn(qann), to_snn(qann, state="events")
    spikes = plots.record(exact, x, label)
    assert torch.equal(spikes, plots.record(events, x, label))  # count changes x θ == event spikes
    theta = exact.neurons[3].threshold
    assert spikes.shape[1] == 3 and bool(spikes.ne(0).any()) and torch.equal((spikes / theta).round() * theta, spikes)
    assert plots.spike_raster(spikes, tmp_path / "r.png").stat().st_size > 1000
    with pytest.raises(KeyError, match="neurons: "):
        plots.record(exact, x, "no.such.neuron")
    args = argparse.Namespace(raster=str(tmp_path / "cli.png"), raster_module=None, raster_neurons="0,1",
                              command="energy")
    write_raster(exact, x, args, run=simulation_run(20))
    assert (tmp_path / "cli.png").stat().st_size > 1000


@pytest.mark.slow
def test_cli_energy_and_raster_on_a_converted_hugging_face_vit(tmp_path, capsys):
    transformers = pytest.importorskip("transformers", reason="the nlp extra (transformers) is not installed")
    pytest.importorskip("safetensors", reason="CLI checkpoints are safetensors")
    pytest.importorskip("matplotlib", reason="--raster needs the 'plot' extra (matplotlib)")
    from spiketwin.cli import main

    torch.manual_seed(0)
    transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=24, num_labels=10)).save_pretrained(tmp_path / "vit")
    qann, snn = tmp_path / "qann.safetensors", tmp_path / "snn.safetensors"
    for argv in (["qat", "--hf", str(tmp_path / "vit"), "--limit", "20", "--levels", "8", "--epochs", "1",
                  "--out", str(qann)],
                 ["convert", "--checkpoint", str(qann), "--limit", "20", "--state", "events", "--out", str(snn)],
                 ["energy", "--checkpoint", str(snn), "--limit", "20", "--samples", "4", "--max-steps", "16",
                  "--convention", "spiketwin,syops", "--raster", str(tmp_path / "r.png")]):
        assert main([*argv, "--quiet"] if argv[0] != "energy" else argv) == 0, argv
    out = capsys.readouterr().out
    assert "vit.layers.0.attention.matmul " in out and "vit.layers.0.mlp.fc1" in out and "syops" in out
    assert (tmp_path / "r.png").stat().st_size > 1000
