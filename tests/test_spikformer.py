"""Spikformer: parameter counts of every official config, forwards on every config's input shape, and the
neuron, attention, patch-splitting and head semantics against their formulas."""

import contextlib

import pytest
import torch
from torch import nn

from spiketwin import reset
from spiketwin.models import create
from spiketwin.models.spikformer import SSA, LinearBN, Spikformer
from spiketwin.neurons import LIF
from spiketwin.surrogate import Sigmoid

CONFIGS = ["spikformer_cifar10", "spikformer_cifar100", "spikformer_dvs", "spikformer_8_384", "spikformer_8_512",
           "spikformer_10_512", "spikformer_8_768"]


def official_count(dim, depth, in_channels, classes, qkv_bias, dvs_extras=False, tokens=64):
    """Parameters of the official code's model, counted layer by layer from its source."""
    chans = [in_channels, dim // 8, dim // 4, dim // 2, dim]
    sps = sum(chans[i] * chans[i + 1] * 9 + 2 * chans[i + 1] for i in range(4)) + dim * dim * 9 + 2 * dim
    qkv = 3 * (dim * dim + (dim if qkv_bias else 0) + 2 * dim)
    proj = dim * dim + dim + 2 * dim
    mlp = (dim * 4 * dim + 4 * dim + 2 * 4 * dim) + (4 * dim * dim + dim + 2 * dim)
    layer_norms = 2 * 2 * dim
    extras = tokens * dim + 2 * dim if dvs_extras else 0
    return sps + depth * (qkv + proj + mlp + layer_norms) + extras + dim * classes + classes


def count(name):
    with torch.device("meta"):
        model = create(name)
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_official_code():
    # the exact figures for CIFAR
    assert count("spikformer_cifar10") == 9_330_874
    assert count("spikformer_cifar100") == 9_365_524
    assert official_count(384, 4, 3, 10, qkv_bias=True) == 9_330_874
    # DVS and ImageNet: the official code's layers, counted independently
    assert count("spikformer_dvs") == official_count(256, 2, 2, 10, qkv_bias=False, dvs_extras=True) == 2_585_610
    imagenet = {"spikformer_8_384": (384, 8, 16.81), "spikformer_8_512": (512, 8, 29.68),
                "spikformer_10_512": (512, 10, 36.01), "spikformer_8_768": (768, 8, 66.34)}
    for name, (dim, depth, paper_m) in imagenet.items():
        n = count(name)
        assert n == official_count(dim, depth, 3, 1000, qkv_bias=False), name
        # the paper's rounded figures sit within 0.03 M of the official code (they leave out its unused LayerNorms)
        assert abs(n / 1e6 - paper_m) < 0.03, (name, n)


def test_unused_official_parameters_count_as_trainable_get_no_gradient_and_can_be_dropped():
    # the official train.py prints sum(p.numel() for p in model.parameters() if p.requires_grad): 9,330,874
    with torch.device("meta"):
        full = create("spikformer_cifar10")
    assert sum(p.numel() for p in full.parameters() if p.requires_grad) == 9_330_874
    model = create("spikformer_dvs", img_size=32, dim=32, num_heads=4)
    unused = model.unused_parameter_names()
    assert sorted(unused) == ["block.0.norm1.bias", "block.0.norm1.weight", "block.0.norm2.bias",
                              "block.0.norm2.weight", "block.1.norm1.bias", "block.1.norm1.weight",
                              "block.1.norm2.bias", "block.1.norm2.weight", "norm.bias", "norm.weight", "pos_embed"]
    assert all(p.requires_grad for p in model.parameters())
    model(torch.rand(2, 2, 2, 32, 32)).sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n in unused)
    assert all(p.grad is not None for n, p in model.named_parameters() if n not in unused)
    lean = create("spikformer_dvs", img_size=32, dim=32, num_heads=4, unused=())
    assert lean.unused_parameter_names() == []
    used = sum(p.numel() for n, p in model.named_parameters() if n not in unused)
    assert sum(p.numel() for p in lean.parameters()) == used


@pytest.mark.parametrize("name,shape,tokens", [
    ("spikformer_cifar10", (2, 3, 32, 32), 64), ("spikformer_cifar100", (2, 3, 32, 32), 64),
    ("spikformer_dvs", (16, 2, 2, 128, 128), 64), ("spikformer_8_384", (2, 3, 224, 224), 196),
    ("spikformer_8_512", (2, 3, 224, 224), 196), ("spikformer_10_512", (2, 3, 224, 224), 196),
    ("spikformer_8_768", (2, 3, 224, 224), 196)])
def test_forward_on_every_config_input_shape(name, shape, tokens):
    with torch.device("meta"):  # shapes through every layer, without the memory and time of the real sizes
        model = create(name)
        features = model.forward_features(torch.empty(shape))
        logits = model.forward_head(features)
    T = shape[0] if len(shape) == 5 else 4
    assert features.shape == (T, 2, tokens, model.head.in_features)
    assert logits.shape == (2, model.head.out_features)


def test_real_forward_and_backward_cifar10_and_dvs():
    torch.manual_seed(0)
    model = create("spikformer_cifar10")
    logits = model(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert model.patch_embed.stages[0].conv_bn.layer[0].weight.grad.abs().sum() > 0
    dvs = create("spikformer_dvs")
    frames = (torch.rand(16, 1, 2, 128, 128) < 0.1).float()
    with torch.no_grad():
        assert dvs(frames).shape == (1, 10)


def test_neurons_follow_the_official_configuration():
    model = create("spikformer_cifar10", dim=32, num_heads=4, depth=1)
    lifs = {n: m for n, m in model.named_modules() if isinstance(m, LIF)}
    assert len(lifs) == 5 + 1 * (5 + 2)  # SPS 4 + RPE, per block: q k v attn proj + 2 MLP
    for name, lif in lifs.items():
        p = lif.params
        assert (p.tau, p.v_reset, p.decay_input, p.detach_reset) == (2.0, 0.0, True, True), name
        assert p.v_threshold == (0.5 if name.endswith("attn_lif") else 1.0), name
        assert isinstance(lif.surrogate, Sigmoid) and lif.surrogate.alpha == 4.0


def test_lif_dynamics_against_the_formulas():
    # H = V + (X - V)/2; S = [H >= V_th]; V = H (1 - S); dS/dX at step t = sigmoid'(4 (H - V_th)) / 2 directly
    x = torch.tensor([2.5, 0.0, 3.0, 1.0], dtype=torch.float64).reshape(4, 1).requires_grad_()
    spikes = LIF()(x)
    assert spikes.flatten().tolist() == [1.0, 0.0, 1.0, 0.0]  # H = 1.25, 0, 1.5, 0.5
    attn = LIF(v_threshold=0.5)(x.detach())
    assert attn.flatten().tolist() == [1.0, 0.0, 1.0, 1.0]  # H = 0.5 reaches the attention threshold
    spikes[3].sum().backward()
    sig = torch.sigmoid(torch.tensor(4 * (0.5 - 1.0), dtype=torch.float64))
    assert x.grad[3].item() == pytest.approx((4 * sig * (1 - sig) / 2).item(), rel=1e-12)
    # the reset is detached: V after the spike at t=3 is 0, so t=4 sees nothing from t <= 3 through V
    assert x.grad[:3].abs().sum().item() == pytest.approx(0.0, abs=1e-15)


def test_ssa_is_spiking_attention_without_softmax():
    torch.manual_seed(1)
    dim, heads, T, B, N = 16, 4, 3, 2, 5
    ssa = SSA(dim, heads, scale=0.125, qkv_bias=True)
    x = (torch.rand(T, B, N, dim) < 0.4).float()
    calls = []
    for mm in (ssa.qk, ssa.av):
        mm.register_forward_hook(lambda m, i, o: calls.append(o))
    out = ssa(x)
    reset(ssa)
    # the formula, written out per head with the module's own layers
    q, k, v = ssa.q_lif(ssa.q(x)), ssa.k_lif(ssa.k(x)), ssa.v_lif(ssa.v(x))
    reset(ssa)
    split = lambda t: t.reshape(T, B, N, heads, dim // heads)
    attn = torch.einsum("tbnhd,tbmhd->tbhnm", split(q), split(k)) * 0.125
    mixed = torch.einsum("tbhnm,tbmhd->tbnhd", attn, split(v)).reshape(T, B, N, dim)
    expected = ssa.proj_lif(ssa.proj(ssa.attn_lif(mixed)))
    assert torch.equal(out, expected)
    assert len(calls) == 2  # both products go through spiketwin.ops.MatMul
    counts = calls[0] / 0.125
    assert torch.equal(counts, counts.round()) and counts.min() >= 0  # coincident-spike counts, not softmax
    assert not torch.allclose(calls[0].sum(-1), torch.ones(()))
    assert set(out.unique().tolist()) <= {0.0, 1.0}


def test_linear_bn_equals_the_official_transposed_batchnorm():
    torch.manual_seed(2)
    layer = LinearBN(8, 6)
    x = torch.randn(4, 3, 7, 8, dtype=torch.float64)
    layer.double()
    y = layer(x)
    ref = layer.linear(x.flatten(0, 1))  # official: [T*B, N, C] -> BN1d over [T*B, C, N]
    bn = nn.BatchNorm1d(6).double()
    ref = bn(ref.transpose(-1, -2)).transpose(-1, -2).reshape(4, 3, 7, 6)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.bn.running_var, bn.running_var, rtol=1e-12, atol=1e-12)


def test_patch_splitting_pools_where_the_official_code_does():
    cifar = Spikformer(img_size=32, dim=32, depth=0, num_heads=4, pool_after=(2, 3))
    imagenet = Spikformer(img_size=64, dim=32, depth=0, num_heads=4, pool_after=(0, 1, 2, 3))
    seen = []
    for stage in cifar.patch_embed.stages:
        stage.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
    assert cifar.forward_features(torch.rand(1, 3, 32, 32)).shape == (4, 1, 64, 32)
    assert seen == [32, 32, 32, 16]  # stages 0-2 at full size; pooled after stage 2 and after stage 3
    assert imagenet.forward_features(torch.rand(1, 3, 64, 64)).shape == (4, 1, 16, 32)
    # RPE is added to its input: spikes plus spikes, values in {0, 1, 2}
    assert set(cifar.patch_embed(torch.rand(4, 1, 3, 32, 32)).unique().tolist()) <= {0.0, 1.0, 2.0}


def test_static_image_is_repeated_T_times_and_head_averages_tokens_then_time():
    torch.manual_seed(3)
    model = Spikformer(img_size=16, dim=32, depth=1, num_heads=4, T=3).eval()
    img = torch.rand(2, 3, 16, 16)
    logits = model(img)
    reset(model)
    assert torch.equal(model(img.unsqueeze(0).repeat(3, 1, 1, 1, 1)), logits)
    reset(model)
    features = model.forward_features(img)
    reset(model)
    torch.testing.assert_close(logits, model.head(features.mean(2).mean(0)))


def test_bad_inputs_are_refused_with_clear_errors():
    model = Spikformer(img_size=16, dim=32, depth=1, num_heads=4)
    with pytest.raises(ValueError, match=r"expects images \[B, C, H, W\] or sequences"):
        model(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="input has 1 channels"):
        model(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        Spikformer(dim=32, num_heads=5)
    with pytest.raises(ValueError, match="unused must be a subset"):
        Spikformer(unused=("dropout",))


def test_spikes_saved_as_bool_give_identical_gradients():
    from spiketwin.memory import float_saves, pack

    torch.manual_seed(4)
    model = pack(Spikformer(img_size=16, dim=32, depth=1, num_heads=4, T=2))
    x, y = torch.rand(3, 3, 16, 16), torch.tensor([0, 3, 7])
    grads = []
    for compact in (True, False):
        model.zero_grad()
        with torch.enable_grad(), (contextlib.nullcontext() if compact else float_saves()):
            nn.functional.cross_entropy(model(x), y).backward()
        reset(model)
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_bool_packing_only_touches_the_given_spike_storage():
    from spiketwin.memory import spikes_saved_as_bool

    spikes = (torch.rand(4, 5) < 0.5).float().requires_grad_()
    analog = torch.randn(5, 3, requires_grad=True)
    with spikes_saved_as_bool(spikes):  # the analog operand must be saved as it is, or its gradient breaks
        out = spikes @ analog
    out.sum().backward()
    torch.testing.assert_close(analog.grad, spikes.detach().sum(0)[:, None].expand(5, 3))
    torch.testing.assert_close(spikes.grad, analog.detach().sum(1).expand(4, 5))


@pytest.mark.parametrize("kwargs", [dict(), dict(v_threshold=0.5), dict(v_reset=None), dict(tau=3.0, v_reset=-0.1)])
def test_lif_scan_without_grad_equals_the_scan_with_grad(kwargs):
    x = torch.randn(5, 3, 7, dtype=torch.float64) + 0.7
    with_grad, without = LIF(**kwargs), LIF(**kwargs)
    s1 = with_grad(x.clone().requires_grad_())
    with torch.no_grad():
        s2 = without(x)
    assert torch.equal(s1.detach(), s2) and torch.equal(with_grad.v.detach(), without.v)
    assert 0 < s2.sum() < s2.numel()
