"""Energy report: counts worked out by hand, SPEC's formula on a Spikformer-like block, both clocks agree."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spiketwin import StatefulModule, TimeFold, reset, set_step_mode
from spiketwin.energy import HOROWITZ_45NM, PRESETS, NotSpikingError, register_product, report
from spiketwin.neurons import IF, LIF, STBIF
from spiketwin.ops import MatMul


class Tiny(nn.Module):
    """Linear(4->3) -> IF(1) -> Linear(3->2), on [T, B, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 3, bias=False)
        self.neuron = IF(v_threshold=1.0)
        self.fc2 = nn.Linear(3, 2)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]]))

    def forward(self, x):
        return self.fc2(self.neuron(self.fc1(x)))


def tiny_input() -> torch.Tensor:
    x = torch.zeros(2, 2, 4)  # [T, B, 4]
    x[0, 0] = x[1, 0] = torch.tensor([1.0, 2, 0, 0])  # sample 0: the same input twice -> computed once
    x[0, 1, 0], x[1, 1, 0] = 0.5, 0.25  # sample 1: a new input at each step -> computed twice
    return x


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_tiny_network_matches_hand_counts(step_mode):
    # fc1: 4*3 = 12 FLOPs; analog input computed 1 (sample 0) and 2 (sample 1) times -> 1.5 * 12 = 18 MACs.
    # IF inputs: sample 0 [1, 2, 3] at both steps -> all fire; sample 1 [.5, 0, .5] then sums [.75, 0, .75]
    # -> silent. fc2 input rate: 3 of 6 at each step = 0.5; SOPs = 0.5 * T(2) * FLOPs(6) = 6.
    r = report(Tiny(), tiny_input(), step_mode=step_mode)
    fc1, fc2 = r.layers
    assert (fc1.name, fc1.coding, fc1.flops, fc1.macs, fc1.sops) == ("fc1", "analog", 12, 18, 0)
    assert (fc2.name, fc2.coding, fc2.flops, fc2.rate_per_step, fc2.sops, fc2.macs) == \
        ("fc2", "spike", 6, [0.5, 0.5], 6, 0)
    assert (r.T, r.batch) == (2, 2)
    assert r.totals["energy_pj"] == pytest.approx(4.6 * 18 + 0.9 * 6)
    assert r.totals["ann_energy_pj"] == pytest.approx(4.6 * (12 + 6))
    assert fc1.energy_pj == pytest.approx(4.6 * 18) and fc2.ann_energy_pj == pytest.approx(4.6 * 6)


def test_chunked_run_matches_one_call():
    torch.manual_seed(0)
    x = torch.rand(5, 2, 6)
    net = nn.Sequential(nn.Linear(6, 8), LIF(), nn.Linear(8, 4), LIF(v_threshold=0.3))
    whole = report(net, x * 4)
    chunked = report(net, x * 4, run=lambda m, seq: [m(seq[:2]), m(seq[2:])])  # state carries over
    stepped = report(net, x * 4, step_mode="s")
    for r in (chunked, stepped):
        assert r.T == whole.T == 5 and r.batch == 2
        for a, b in zip(r.layers, whole.layers):
            assert (a.flops, a.sops, a.macs, a.rate_per_step) == (b.flops, b.sops, b.macs, b.rate_per_step)
    assert whole.layers[1].sops > 0


class StatefulLinear(StatefulModule):
    """A stateful layer that applies its ``.layer``'s weight itself (like SpikeZIP-TF's bias-once Linear)."""

    state_names = ("started",)

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.layer = layer

    def single_step(self, x):
        y = F.linear(x, self.layer.weight, None if self.started else self.layer.bias)
        self.started = True
        return y

    def multi_step(self, x_seq):
        return torch.stack([self.single_step(x) for x in x_seq])


def test_converted_snn_in_uneven_chunks():
    """A network of stateful layers run like a converted SNN: input at step 1 only, chunks of 3 steps and a
    last shorter one, or step by step: the counts do not depend on how the run is cut."""
    torch.manual_seed(1)
    net = nn.Sequential(StatefulLinear(nn.Linear(6, 8)), STBIF(0.2, -4, 3), StatefulLinear(nn.Linear(8, 3)))
    x = torch.rand(4, 6)

    def simulate(model, x, chunk, steps=8):
        set_step_mode(model, "s" if chunk == 1 else "m")
        for start in range(0, steps, chunk):
            seq = x.new_zeros(min(chunk, steps - start), *x.shape)
            if start == 0:
                seq[0] = x
            model(seq[0] if chunk == 1 else seq)

    reports = [report(net, x, run=lambda m, x, c=c: simulate(m, x, c)) for c in (8, 3, 1)]
    for r in reports:
        assert (r.T, r.batch) == (8, 4)
        assert [layer.macs for layer in r.layers] == [6 * 8, 0]  # the input enters once: 1 computing step
        assert [(a.sops, a.rate_per_step) for a in r.layers] == [(b.sops, b.rate_per_step) for b in reports[0].layers]
    assert reports[0].layers[1].sops > 0


def test_spike_coded_input_is_not_analog():
    events = (torch.rand(3, 4, 4) > 0.6).float()  # binary frames [T, B, 4], as from an event camera
    r = report(Tiny(), events)
    assert r.layers[0].coding == "spike" and r.layers[0].macs == 0
    assert r.layers[0].sops == pytest.approx(float(events.ne(0).double().mean()) * 3 * 12)


def test_presets_are_horowitz_45nm_mult_plus_add():
    # Horowitz, ISSCC 2014 (45 nm, 0.9 V): MAC = multiply + add, AC = add
    assert HOROWITZ_45NM == {"fp32": {"mult": 3.7, "add": 0.9}, "fp16": {"mult": 1.1, "add": 0.4},
                             "int32": {"mult": 3.1, "add": 0.1}, "int8": {"mult": 0.2, "add": 0.03}}
    assert PRESETS == {"fp32": (4.6, 0.9), "fp16": (1.5, 0.4), "int32": (3.2, 0.1), "int8": (0.23, 0.03)}


def test_presets_and_overrides():
    r = report(Tiny(), tiny_input(), preset="int8")
    assert (r.e_mac, r.e_ac) == PRESETS["int8"] == (0.23, 0.03)
    r = report(Tiny(), tiny_input(), e_mac=2.0, e_ac=1.0, analog="none")
    assert r.layers[0].coding == "spike" and r.layers[0].macs == 0
    # fc1 input non-zero: sample 0 2/4, sample 1 1/4 at each step -> rate 3/8; SOPs = 3/8 * 2 * 12 = 9
    assert r.layers[0].sops == 9 and r.totals["energy_pj"] == pytest.approx(1.0 * (9 + 6))
    with pytest.raises(ValueError, match="preset"):
        report(Tiny(), tiny_input(), preset="fp64")
    with pytest.raises(ValueError, match="not module paths"):
        report(Tiny(), tiny_input(), analog=["fc9"])


def test_a_model_without_spiking_modules_raises_not_spiking_error():
    ann = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(NotSpikingError, match="no spiking module of Sequential ran") as caught:
        report(ann, torch.rand(2, 3, 4))
    assert isinstance(caught.value, RuntimeError)  # callers catching RuntimeError still catch it


class OwnWeight(nn.Module):
    """A wrapper that holds a Linear in ``.layer`` but applies the weight itself (like a bias-once layer)."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return F.linear(x, self.layer.weight)


def test_wrappers_are_counted_once():
    model = nn.Sequential(TimeFold(nn.Linear(4, 3)), LIF(), OwnWeight(nn.Linear(3, 5)), LIF())
    r = report(model, torch.rand(3, 2, 4))
    assert [(x.name, x.flops) for x in r.layers] == [("0.layer", 12), ("2", 15)]


def test_conv_flops_and_per_sequence_layer():
    conv = nn.Conv2d(2, 4, 3, padding=1, groups=2)  # out 4x5x5 = 100 elements, 1*9 MACs each

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.lif, self.head = TimeFold(conv), LIF(), nn.Linear(100, 3)

        def forward(self, x):  # [T, B, 2, 5, 5]; the head runs once on the time-averaged spikes
            return self.head(self.lif(self.conv(x)).flatten(2).mean(0))

    r = report(Net(), torch.rand(4, 3, 2, 5, 5))
    conv_row, head = r.layers
    assert conv_row.flops == 900 and conv_row.steps == 4
    assert head.steps == 1 and head.flops == 300 and len(head.rate_per_step) == 1


def test_outputs_json_csv_table(tmp_path):
    r = report(Tiny(), tiny_input())
    data = json.loads(r.to_json(tmp_path / "e.json"))
    assert data["totals"]["sops"] == 6 and data["layers"][1]["rate_per_step"] == [0.5, 0.5]
    assert json.loads((tmp_path / "e.json").read_text()) == data
    rows = list(csv.DictReader(io.StringIO(r.to_csv(tmp_path / "e.csv"))))
    assert [row["name"] for row in rows] == ["fc1", "fc2", "total"] and float(rows[-1]["macs"]) == 18
    assert (tmp_path / "e.csv").read_text() == r.to_csv()
    table = r.table()
    assert "fc1" in table and "ANN/SNN" in table and len(table.splitlines()) == 7


def test_state_and_step_mode_restored():
    model = Tiny()
    report(model, tiny_input(), step_mode="s")
    assert model.neuron.step_mode == "m" and model.neuron.v is None and model.training


class SpikformerLike(nn.Module):
    """Conv-BN-LIF encoder on a repeated image, tokens, SSA without softmax (Q Kᵀ, attn V), proj, head."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.conv = TimeFold(nn.Sequential(nn.Conv2d(1, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim)))
        self.lif0 = LIF()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.q_lif, self.k_lif, self.v_lif = LIF(), LIF(), LIF()
        self.qk, self.av = MatMul(), MatMul()
        self.attn_lif = LIF(v_threshold=0.5)
        self.proj, self.proj_lif = nn.Linear(dim, dim), LIF()
        self.head = nn.Linear(dim, 3)

    def split(self, x):
        return x.unflatten(-1, (self.heads, -1)).transpose(-2, -3)

    def forward(self, img):  # [B, 1, H, W] repeated T = 4 times
        x = self.lif0(self.conv(img.unsqueeze(0).expand(4, *img.shape)))
        x = x.flatten(-2).transpose(-1, -2)  # [T, B, N, D]
        q, k, v = (self.split(lif(lin(x))) for lin, lif in ((self.q, self.q_lif), (self.k, self.k_lif),
                                                              (self.v, self.v_lif)))
        attn = self.qk(q, k.transpose(-2, -1)) * 0.125
        y = self.proj_lif(self.proj(self.attn_lif(self.av(attn, v).transpose(-2, -3).flatten(-2))))
        return self.head((x + y).mean(2).mean(0))


def test_spikformer_like_block_matches_spec_formula():
    torch.manual_seed(0)
    model = SpikformerLike()
    with torch.no_grad():
        for layer in (model.conv.layer[0], model.q, model.k, model.v, model.proj):
            layer.weight.mul_(10)  # enough input for every neuron to fire sometimes
    img = torch.rand(3, 1, 6, 6)
    got = report(model, img)

    # The same quantities recomputed by hand from the intermediate tensors (SPEC "Energy").
    model.eval()
    captured = {}
    for name in ("proj", "head", "q", "k", "v"):
        getattr(model, name).register_forward_hook(lambda m, a, o, name=name: captured.__setitem__(name, a[0]))
    for name in ("qk", "av"):
        getattr(model, name).register_forward_hook(lambda m, a, o, name=name: captured.__setitem__(name, a))
    with torch.no_grad():
        reset(model)
        model(img)
    T, B, N, D = captured["q"].shape

    def rate(t):  # [T] per-step fraction of non-zero elements
        return t.reshape(T, -1).ne(0).double().mean(1)

    flops = {"conv.layer.0": 8 * 36 * 9, "q": N * D * D, "k": N * D * D, "v": N * D * D, "proj": N * D * D,
             "qk": 2 * N * N * (D // 2), "av": 2 * N * (D // 2) * N, "head": D * 3}
    sops = {name: rate(captured[name]).mean() * T * flops[name] for name in ("q", "k", "v", "proj")}
    for name in ("qk", "av"):
        a, b = captured[name]
        sops[name] = (rate(a) * rate(b)).sum() * flops[name]
    sops["head"] = captured["head"].ne(0).double().mean() * 1 * flops["head"]  # runs once (T = 1)
    energy = 4.6 * flops["conv.layer.0"] * 1 + 0.9 * sum(sops.values())  # the image is computed once

    assert {x.name: x.flops for x in got.layers} == flops
    assert {x.name: x.sops for x in got.layers if x.name != "conv.layer.0"} == pytest.approx(
        {k: float(v) for k, v in sops.items()}, rel=1e-12)
    assert got.totals["energy_pj"] == pytest.approx(float(energy), rel=1e-12)
    assert got.totals["ann_energy_pj"] == pytest.approx(4.6 * sum(flops.values()), rel=1e-12)
    assert all(0 < x.rate < 1 for x in got.layers if x.name not in ("conv.layer.0", "head"))  # non-trivial
    # the exact count of non-zero operand pairs, beside the rate-product estimate
    a, b = captured["qk"]
    exact = (a.ne(0).double() @ b.ne(0).double()).sum() / B
    assert got.layers[[x.name for x in got.layers].index("qk")].sops_exact == pytest.approx(float(exact))


def test_registered_product_type_is_counted():
    @register_product
    class Outer(nn.Module):
        def forward(self, a, b):
            return a @ b

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lif, self.p = LIF(v_threshold=0.5), Outer()

        def forward(self, x):  # [T, B, n, k]
            s = self.lif(x)
            return self.p(s, s.transpose(-2, -1))

    r = report(Net(), torch.rand(2, 3, 4, 5), analog="none")
    assert [(x.name, x.kind, x.flops) for x in r.layers] == [("p", "product", 4 * 4 * 5)]


def test_spikezip_vit_snn_counts_do_not_depend_on_the_clock():
    """A converted SpikeZIP-TF ViT run by its own simulate, step by step and in chunks of 4: identical counts;
    the image enters once (MACs = FLOPs of the patch embedding); SESA products are counted by both rates."""
    from spiketwin.convert import to_qann, to_snn
    from spiketwin.models import create

    torch.manual_seed(0)
    qann = to_qann(create("vit_digits", embed_dim=16, depth=1, num_heads=2), levels=8).eval()
    x = torch.rand(6, 1, 8, 8)
    qann(x)  # initialises the quantizer steps
    snn = to_snn(qann)
    runs = [report(snn, x, run=lambda m, x, mode=mode: m.simulate(x, max_steps=12, step_mode=mode,
                                                                    early_exit=False))
            for mode in ("s", "m")]
    for a, b in zip(*(r.layers for r in runs)):
        assert (a.name, a.sops, a.macs, a.rate_per_step, a.sops_exact) == \
            (b.name, b.sops, b.macs, b.rate_per_step, b.sops_exact)
    layers = {layer.name: layer for layer in runs[0].layers}
    embed = layers["patch_embed.proj"]
    assert embed.coding == "analog" and embed.macs == embed.flops == 16 * 16 * 4  # 16 patches x 16 dims x 2x2
    qk = layers["blocks.0.attn.matmul_qk"]
    assert qk.kind == "product" and qk.sops > 0 and qk.sops_exact > 0
    assert runs[0].T == 12 and runs[0].batch == 6


def test_roberta_snn_starts_with_spikes():
    """RoBERTa's SNN gets its analog input as embeddings (lookups, no MACs) that a neuron turns into spikes:
    the first counted layer has spike-coded input, so nothing is priced as a MAC."""
    from spiketwin.convert import to_qann, to_snn
    from spiketwin.models import create

    torch.manual_seed(0)
    model = create("roberta_sst2_small", vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=32)
    qann = to_qann(model, levels=8).eval()
    ids, mask = torch.randint(3, 100, (3, 7)), torch.ones(3, 7, dtype=torch.long)
    qann(ids, attention_mask=mask)  # initialises the quantizer steps
    r = report(to_snn(qann), {"input_ids": ids, "attention_mask": mask},
               run=lambda m, x: m.simulate(x, max_steps=10, early_exit=False))
    assert r.layers[0].name.endswith("attention.self.query") and r.layers[0].coding == "spike"
    assert r.totals["macs"] == 0 and r.totals["sops"] > 0
