"""SpikeZIP-TF on spiketwin's ViT through the conversion engine: the SNN is equivalent to its QANN.

Properties proved on random ViT configurations (depth, width, heads, patch size, channels, levels 4..32,
seeds) in float64: every neuron's summed output equals its quantizer's output for every sample, and so do the
logits (bit for bit in the exact state, to 1e-9 relative in the events state); the step and chunked paths agree
bit for bit; once a sample's settle step is reached, 32 more steps change nothing. In float32 the exact state's
logits are the QANN's, bit for bit. Plus the quantizer placement of SPEC A and clear errors.
"""

import pytest
import torch
from torch import nn

import spiketwin
from spiketwin.convert import to_qann, to_snn, verify
from spiketwin.convert.graph import ConversionError
from spiketwin.models import ViT, create
from spiketwin.quant import Quantizer

# depth, embed_dim, heads, img_size, patch, in_chans, levels, act, seed
CONFIGS = [
    (1, 8, 1, 8, 4, 1, 4, "relu", 0),
    (2, 16, 2, 8, 2, 1, 8, "gelu", 1),
    (2, 12, 3, 12, 4, 3, 16, "relu", 2),
    (3, 16, 4, 8, 4, 2, 32, "relu", 3),
    (1, 24, 2, 6, 3, 1, 32, "gelu", 4),
]


def random_qann(depth, dim, heads, img, patch, chans, levels, act, seed, dtype=torch.float64, batch=5):
    """A random ViT (every parameter drawn, biases and LayerNorm affines included), its QANN with quantizer
    steps initialised on a random batch, and a fresh random input batch."""
    torch.manual_seed(seed)
    model = ViT(img_size=img, patch_size=patch, in_chans=chans, num_classes=7, embed_dim=dim, depth=depth,
                num_heads=heads, mlp_ratio=2.0, act=act).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.4)
    qann = to_qann(model, levels=levels)
    qann(torch.rand(8, chans, img, img, dtype=dtype))  # calibrate the quantizer steps
    return qann.eval(), torch.rand(batch, chans, img, img, dtype=dtype)


EVENTS = [(CONFIGS[1], "events"), (CONFIGS[3], "events")]


@pytest.mark.parametrize("config,state", [(c, "exact") for c in CONFIGS] + EVENTS,
                         ids=[f"d{c[0]}w{c[1]}h{c[2]}p{c[4]}L{c[6]}" for c in CONFIGS] + ["events-L8", "events-L32"])
def test_snn_equals_qann_per_sample_and_per_layer(config, state):
    qann, x = random_qann(*config)
    snn = to_snn(qann, state=state)
    report = verify(qann, snn, x)
    assert report.ok, str(report)
    assert report.max_rel <= (0.0 if state == "exact" else 1e-9)
    assert len(report.layers) == 1 + len(qann.labels)
    assert (report.settle_step >= 2).all()  # neurons really spiked over several steps
    with torch.no_grad():
        expected = qann(x)
    result = spiketwin.simulate(snn, x)
    torch.testing.assert_close(result.output, expected, rtol=0 if state == "exact" else 1e-9, atol=0 if
                               state == "exact" else 1e-12)


@pytest.mark.parametrize("config", CONFIGS[1:4], ids=["L8", "L16", "L32"])
def test_step_and_sequence_paths_agree_exactly(config):
    qann, x = random_qann(*config)
    snn = to_snn(qann)
    steps = snn.simulate(x, step_mode="s")
    for chunk in (1, 3, 8, 64):  # settle checks every chunk steps: samples leave the batch later
        seq = snn.simulate(x, step_mode="m", chunk=chunk)
        assert torch.equal(seq.settle_step, steps.settle_step)
        assert torch.equal(seq.output, steps.output)  # confirmed on the whole batch: bit for bit
        # running outputs before a sample settles are computed in batches of other compositions (other samples
        # had left): the same values up to the GEMM kernels' row-blocking rounding
        torch.testing.assert_close(seq.per_step, steps.per_step, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("config", CONFIGS[2:4], ids=["L16", "L32"])
def test_nothing_changes_after_the_settle_step(config):
    qann, x = random_qann(*config)
    snn = to_snn(qann)
    early = snn.simulate(x)
    horizon = int(early.settle_step.max()) + 1 + 32
    for mode in ("s", "m"):
        full = snn.simulate(x, max_steps=horizon, early_exit=False, step_mode=mode)
        assert full.per_step.shape[0] == horizon
        assert torch.equal(full.settle_step, early.settle_step)
        for b, s in enumerate(early.settle_step.tolist()):
            # after s steps the running output is final: every later running sum is the same
            assert torch.equal(full.per_step[s - 1:, b], full.per_step[-1, b].expand_as(full.per_step[s - 1:, b]))
        assert torch.equal(full.output, early.output)


@pytest.mark.parametrize("config", CONFIGS[:3], ids=["L4", "L8", "L16"])
def test_settle_step_is_the_last_step_with_a_spike(config):
    """The settle step is read from the neurons' counts after each step (nothing pending); it must be exactly
    the last step at which any neuron of the sample spiked (at least 1), found here by watching every spike."""
    qann, x = random_qann(*config)
    snn = to_snn(qann)
    horizon = int(snn.simulate(x).settle_step.max()) + 8
    spiked = []
    hooks = [m.register_forward_hook(lambda m, i, o: spiked.append(m.change.flatten(1).ne(0).any(1)))
             for m in snn.neurons]
    full = snn.simulate(x, max_steps=horizon, early_exit=False, step_mode="s", skip_settled=False)  # every neuron
    # runs at every step (skipping leaves the settled head of the graph uncalled)
    for h in hooks:
        h.remove()
    per_step = torch.stack(spiked).view(horizon, -1, len(x)).any(1)  # [T, B]: any neuron spiked at step t
    steps = torch.arange(1, horizon + 1).unsqueeze(1).expand_as(per_step)
    last = torch.where(per_step, steps, 1).amax(0)
    assert torch.equal(full.settle_step, last)
    assert torch.equal(snn.simulate(x).settle_step, last)


def test_accuracy_per_step_comes_from_one_run():
    qann, x = random_qann(*CONFIGS[2], batch=9)
    result = to_snn(qann).simulate(x)
    labels = qann(x).argmax(-1)
    curve = result.accuracy_per_step(labels)
    assert curve.shape == (result.per_step.shape[0],)
    assert curve[-1] == 1.0  # the settled SNN predicts what the QANN predicts


def test_float32_logits_are_the_qanns_bit_for_bit():
    qann, x = random_qann(*CONFIGS[3], dtype=torch.float32, batch=64)
    x[::2] *= 0.2  # samples settle at different steps: the run ends with the whole-batch confirmation
    result = to_snn(qann).simulate(x)
    assert len(set(result.settle_step.tolist())) > 1
    with torch.no_grad():
        assert torch.equal(result.output, qann(x))  # SPEC A asks >= 99.9 % agreement; the exact state gives 100 %


@pytest.mark.parametrize("activation", ["keep", "relu"])
def test_quantizers_sit_where_spec_a_puts_them(activation):
    model = create("vit_digits", act="gelu", depth=3)
    qann = to_qann(model, levels=8, activation=activation)
    quant = dict(qann.quantizers())
    assert len(quant) == 10 * 3 + 2
    unsigned = {n.split(":")[0] for n, q in quant.items() if not q.signed}
    expected = {f"blocks.{i}.{p}" for i in range(3) for p in (("attn.softmax", "mlp.act") if activation == "relu"
                                                                 else ("attn.softmax",))}
    assert unsigned == expected
    places = [n.split(":")[0] for n in quant]
    assert places[0] == "patch_embed.proj" and places[-1] == "<root>"  # the patch embedding; the final norm's token
    for i in range(3):
        assert [p for p in places if p.startswith(f"blocks.{i}.")] == [
            f"blocks.{i}.norm1", *[f"blocks.{i}.attn"] * 3, f"blocks.{i}.attn.softmax", f"blocks.{i}.attn",
            f"blocks.{i}.attn.proj", f"blocks.{i}.norm2", f"blocks.{i}.mlp.act", f"blocks.{i}.mlp.fc2"]
    assert all(q.levels == 8 for q in quant.values())
    gelu = [n for n in qann.model.graph.nodes if "gelu" in str(n.target)]
    assert bool(gelu) == (activation == "keep")
    assert not any(isinstance(m, Quantizer) for m in model.modules())  # the ANN is untouched
    assert [n for n in qann.model.graph.nodes if n.op == "call_module"][-1].target == f"quantizers.{len(quant) - 1}"
    assert set(model.state_dict()) <= {k.removeprefix("model.") for k in qann.state_dict()}


def test_qann_trains_with_qat():
    qann = to_qann(create("vit_digits"), levels=16)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    nn.functional.cross_entropy(qann(x), y).backward()
    grads = [q.step.grad for _, q in qann.quantizers()]
    assert all(g is not None and torch.isfinite(g) for g in grads)
    assert qann.model.get_parameter("blocks.0.attn.qkv.weight").grad.abs().sum() > 0


def test_snn_neurons_take_the_quantizer_steps():
    qann, _ = random_qann(*CONFIGS[0])
    snn = to_snn(qann)
    for (_, q), neuron in zip(qann.quantizers(), snn.neurons):
        assert (neuron.n_min, neuron.n_max) == (q.n_min, q.n_max)
        assert float(neuron.threshold) == float(q.step.detach())


def test_unsettled_samples_are_reported():
    qann, x = random_qann(*CONFIGS[3])
    snn = to_snn(qann)
    result = snn.simulate(x, max_steps=2)
    assert (result.settle_step == -1).all() and result.per_step.shape[0] == 2
    report = snn.verify(qann, x, max_steps=2)
    assert not report.ok and "NOT SETTLED" in str(report)


def test_clear_errors():
    qann, x = random_qann(*CONFIGS[0])
    snn = to_snn(qann)
    bad = x.clone()
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf values in samples \[1\]"):
        snn.simulate(bad)
    with pytest.raises(ValueError, match=r"do not fit the traced model.*x.size\(\)\[2\] == 8"):
        snn.simulate(torch.rand(2, 1, 9, 9, dtype=torch.float64))
    with pytest.raises(ValueError, match="do not fit the traced model"):
        snn.simulate(torch.zeros(2, 1, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="never initialised"):
        to_snn(to_qann(create("vit_digits")))
    with pytest.raises(ValueError, match="state must be one of"):
        to_snn(qann, state="chip")

    odd = create("vit_digits")
    odd.blocks[0].mlp.act = nn.Softmax(dim=0)  # fine: any function converts
    to_qann(odd)
    with pytest.raises(ConversionError, match=r"argmax.*test_spikezip.py"):
        to_qann(_ArgmaxHead(), example_inputs=torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="cannot infer the input of Sequential; pass example_inputs"):
        to_qann(nn.Sequential(nn.Linear(2, 2)))  # any model converts (the engine), given its input


class _ArgmaxHead(nn.Module):
    """A ViT whose output is an index: no spiking network carries it."""

    def __init__(self):
        super().__init__()
        self.vit = create("vit_digits")

    def forward(self, x):
        return self.vit(x).argmax(-1)
