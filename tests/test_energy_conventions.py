"""Counting conventions: each preset against a hand count, published counts of Spikformer, syops-counter itself,
graded (multi-spike) ST-BIF inputs, and several conventions from one run."""

from __future__ import annotations

import csv
import importlib.util
import io
import json

import pytest
import torch
from torch import nn

from spiketwin import reset
from spiketwin.energy import CONVENTIONS, Convention, compare, comparison_table, csv_text, report
from spiketwin.neurons import IF, LIF, STBIF
from test_energy import Tiny, tiny_input

# The two-layer network of test_energy.py: fc1 Linear(4->3, no bias) on analog input [T=2, B=2, 4]
# (sample 0 the same [1, 2, 0, 0] twice, sample 1 [0.5, 0, 0, 0] then [0.25, 0, 0, 0]) -> IF (3 neurons: sample 0
# fires all three at both steps, sample 1 never) -> fc2 Linear(3->2, bias). Per sample and step fc1 has 12 FLOPs,
# fc2 6 and 2 bias additions; fc2's input is binary at rate 0.5; the IF gets 3 inputs per sample and step.
HAND = {  # per sample: (fc1 MACs, fc2 MACs, fc2 accumulates, extra accumulates)
    # fc1 once per distinct input (sample 0: 1 step, sample 1: 2 -> 1.5 x 12); fc2 0.5 x 2 steps x 6
    "spiketwin": (18, 0, 6, 0),
    # fc1 not binary: MACs at both steps; fc2 binary: (6 + 2 bias) x 2 steps x rate 0.5
    "spikingformer": (24, 0, 8, 0),
    "spikingformer-calc1": (24, 0, 8, 0),  # fc1's 0.5 and 0.25 are no spike counts either
    # fc2's bias once per call: (24 + 2) x 0.5 / 2 samples = 6.5; the IF: one accumulate per input, 3 x 2 steps
    "syops": (24, 0, 6.5, 6),
    # per step, {1, 2, 0.5} is not ternary: MACs; fc2 as spikingformer; the IF as syops
    "spikezip": (24, 0, 8, 6),
    # fc2: exact uses, 1.5 non-zero inputs per sample and step x 2 outputs x 2 steps; no bias
    "spikingjelly": (24, 0, 6, 0),
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_each_preset_matches_a_hand_count(name):
    r = report(Tiny(), tiny_input(), convention=name)
    (fc1, fc2), extra = ([x for x in r.layers if x.kind == "linear"], [x for x in r.layers if x.kind != "linear"])
    assert (fc1.name, fc2.name) == ("fc1", "fc2") and r.convention == name
    assert (fc1.macs, fc2.macs, fc2.sops, sum(x.sops for x in extra)) == HAND[name]
    assert fc1.sops == 0 and all(x.macs == 0 for x in extra)
    assert [x.kind for x in extra] == (["neurons"] if "neurons" in CONVENTIONS[name].extras else [])
    assert r.totals["energy_pj"] == pytest.approx(4.6 * (HAND[name][0] + HAND[name][1]) + 0.9 * sum(HAND[name][2:]))
    assert r.totals["ann_energy_pj"] == pytest.approx(4.6 * (12 + 6))  # the ANN is the same under every one


def test_spikingjelly_counts_exact_convolution_uses():
    """One spike in the corner of a 3x3 map reaches 4 of the 9 outputs of a 3x3 convolution (padding 1): with
    2 output channels 8 weight uses, where the rate estimate gives (1/9) x 9 outputs x 9 taps x 2 = 18."""
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    model = nn.Sequential(IF(v_threshold=0.5), nn.Flatten(0, 1), conv)
    x = torch.zeros(1, 1, 1, 3, 3)  # [T, B, C, H, W]
    x[..., 0, 0] = 1.0
    exact, rates = compare(model, x, ["spikingjelly", "spiketwin"], analog="none").values()
    assert exact.layers[0].sops == 8 and rates.layers[0].sops == pytest.approx(18)


def test_graded_spikes_count_every_spike_and_report_events():
    """An ST-BIF output of graded spikes k θ (|k| <= m, a multi-spike neuron): every spike is an accumulate per
    fan-out (|k| of them), each non-zero value one event, also through a view of the neuron's output."""

    class Burst(STBIF):  # emits the spike counts it is given, times θ
        def forward(self, k):
            return k * self.threshold.to(k.dtype)

    class Net(nn.Module):
        def __init__(self, path: str):
            super().__init__()
            self.neuron, self.fc, self.path = Burst(0.5, -8, 8), nn.Linear(4, 3, bias=False), path

        def forward(self, k):  # [T, B, 4] or [T, B, 2, 2] spike counts
            s = self.neuron(k)
            if self.path == "view":
                s = s.flatten(2)
            elif self.path == "copy":  # a reshape after a transpose copies: the same spikes in a new tensor
                s = s.transpose(-1, -2).reshape(*s.shape[:2], 4)
            return self.fc(s)

    k = torch.tensor([[[3.0, 0, -2, 1]], [[0, 0, 1, 0]]])  # T = 2, B = 1: spikes 6 + 1 = 7, non-zero 3 + 1 = 4
    for path, counts in (("direct", k), ("view", k.reshape(2, 1, 2, 2)), ("copy", k.reshape(2, 1, 2, 2))):
        r = report(Net(path), counts, analog="none")
        fc = r.layers[0]
        assert (fc.sops, fc.sop_events, fc.rate) == (7 * 3, 4 * 3, 0.5)  # fan-out 3
        assert r.totals["energy_pj"] == pytest.approx(0.9 * 21) and r.totals["sop_events"] == 12
        assert "events" in r.table().splitlines()[0]
    # the same values from a neuron that is not an ST-BIF: each non-zero value is one spike
    net = nn.Sequential(IF(v_threshold=100.0), nn.Linear(4, 3, bias=False))
    net[0].register_forward_hook(lambda m, a, o: k * 0.5)
    r = report(net, torch.zeros(2, 1, 4), analog="none")
    assert (r.layers[0].sops, r.layers[0].sop_events) == (12, 12) and "events" not in r.table().splitlines()[0]


def test_spikformer_8_512_first_layer_counts_every_step():
    """Spikformer-8-512's first convolution (3 -> 64 channels, 3x3, 224x224): 86,704,128 MACs per step, counted
    at each of the T = 4 steps by the reference counters (Spikingformer's published log: 346,816,512)."""
    from spiketwin.models import create

    model = create("spikformer_8_512")
    img = torch.rand(1, 3, 224, 224)
    reports = compare(model.patch_embed, img.unsqueeze(0).expand(4, *img.shape))  # SPS sees the repeated image
    for name, r in reports.items():
        first = r.layers[0]
        assert first.name == "stages.0.conv_bn.layer.0" and first.flops == 86_704_128
        assert first.macs == (86_704_128 if name == "spiketwin" else 346_816_512), name


@pytest.fixture(scope="module")
def cifar_spikformer():
    from spiketwin.models import create

    torch.manual_seed(0)
    model = create("spikformer_cifar10").eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.data.fill_(8.0)  # gain enough for every layer to fire with random weights
    return model, torch.rand(2, 3, 32, 32)


def test_spikformer_cifar10_first_layer_and_head_under_spikingformer(cifar_spikformer):
    """4 x 1,327,104 (3 -> 48 channels, 3x3, 32x32, every step) + the head's 384 x 10 + 10 bias = 5,312,266."""
    model, x = cifar_spikformer
    r = report(model, x, convention="spikingformer")
    rows = {layer.name: layer for layer in r.layers}
    assert r.layers[0].macs + rows["head"].macs == 5_312_266
    assert rows["head"].coding == "analog" and rows["head"].sops == 0
    assert all(x.rate > 0 for x in r.layers)  # every layer gets some input
    # the attention formula: T H N d^2 (min(r_k, r_v) + r_q) per block, split over its two products
    qk, av = rows["block.0.attn.qk"], rows["block.0.attn.av"]
    base = 4 * 12 * 64 * 32 ** 2
    assert qk.sops == pytest.approx(base * qk.rate) and av.sops == pytest.approx(base * min(qk.rate_b, av.rate_b))


@pytest.mark.skipif(importlib.util.find_spec("syops") is None,
                    reason="syops-counter not installed (pip install --no-deps syops==0.0.5 "
                           "spikingjelly==0.0.0.0.14 progress: spikingjelly's own dependencies pull torchvision)")
def test_total_operations_equal_syops_counter(cifar_spikformer):
    """syops-counter itself on the same model and input (our LIF and our max pooling, a MaxPool2d subclass,
    mapped to its LIF and pooling hooks): the same MACs and accumulates per sample as the ``syops`` convention."""
    from syops import get_model_complexity_info
    from syops.ops import LIF_syops_counter_hook, pool_syops_counter_hook

    from spiketwin.memory import CompactMaxPool2d

    model, x = cifar_spikformer
    ours = report(model, x, convention="syops").totals
    reset(model)
    counts, _ = get_model_complexity_info(model, tuple(x.shape[1:]), dataloader=[(x, torch.zeros(2))],
                                          as_strings=False, print_per_layer_stat=False,
                                          custom_modules_hooks={LIF: LIF_syops_counter_hook,
                                                                CompactMaxPool2d: pool_syops_counter_hook})
    reset(model)
    assert counts[2] == pytest.approx(ours["macs"], rel=1e-9)
    assert counts[1] == pytest.approx(ours["sops"], rel=1e-6)  # syops takes each rate as a float32 mean


def test_compare_runs_once_and_renders_every_convention(tmp_path):
    calls = []
    model = Tiny()
    model.register_forward_hook(lambda *a: calls.append(1))
    reports = compare(model, tiny_input())
    assert len(calls) == 1 and list(reports) == list(CONVENTIONS)
    table = comparison_table(reports)
    assert all(name in table for name in CONVENTIONS) and len(table.splitlines()) == 2 + len(CONVENTIONS)
    rows = list(csv.DictReader(io.StringIO(csv_text(list(reports.values())))))
    assert {row["convention"] for row in rows} == set(CONVENTIONS)
    assert json.loads(reports["syops"].to_json())["convention"] == "syops"
    assert "convention spikezip" in reports["spikezip"].table().splitlines()[-1]


def test_a_custom_convention_and_bad_ones():
    mine = Convention("macs-everywhere", analog="binary", analog_steps="all", accumulates="values",
                      products="none")
    r = report(Tiny(), tiny_input(), convention=mine)
    assert r.convention == "macs-everywhere" and r.layers[0].macs == 24
    with pytest.raises(ValueError, match="convention must be"):
        report(Tiny(), tiny_input(), convention="loihi")
    with pytest.raises(ValueError, match="analog_steps='changed' needs analog='first'"):
        Convention("bad", analog="binary")
    with pytest.raises(ValueError, match="unknown extras"):
        Convention("bad", extras=("dropout",))
    with pytest.raises(ValueError, match="products must be one of"):
        Convention("bad", products="fast")


def test_a_lif_network_in_step_mode_gives_the_same_counts_under_every_convention():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), LIF(), nn.Linear(8, 4), LIF(v_threshold=0.3))
    x = torch.rand(5, 2, 6) * 4
    for name in CONVENTIONS:
        if CONVENTIONS[name].test_per == "call":
            continue  # a call-wide test sees the whole sequence at once, a step-mode call one step
        a, b = report(net, x, convention=name), report(net, x, step_mode="s", convention=name)
        assert [v for x in a.layers for v in (x.macs, x.sops)] == \
            pytest.approx([v for x in b.layers for v in (x.macs, x.sops)], rel=1e-12)
