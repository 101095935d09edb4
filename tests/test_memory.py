"""What autograd keeps (spiketwin.memory): every saving must give the gradients of the plain path, exactly."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from spiketwin import reset
from spiketwin.memory import (CompactMaxPool2d, batch_norm_lif, counts_saved_as_uint8, float_saves,
                              spikes_saved_as_bool)
from spiketwin.neurons import LIF

LIF_VARIANTS = [dict(), dict(v_threshold=0.5), dict(v_reset=None), dict(tau=3.0, v_reset=-0.1),
                dict(tau=None), dict(detach_reset=False)]
BN_VARIANTS = [dict(), dict(momentum=None), dict(track_running_stats=False), dict(affine=False)]


def _unit(seed: int, conv: bool, bn_kwargs: dict, lif_kwargs: dict):
    """A Linear/Conv -> BN -> LIF unit on a [T, B, ...] sequence, float64, its BN parameters randomised."""
    g = torch.Generator().manual_seed(seed)
    T, B, C = 6, 4, 5
    layer = nn.Conv2d(2, C, 3, padding=1) if conv else nn.Linear(6, C)
    bn = (nn.BatchNorm2d if conv else nn.BatchNorm1d)(C, **bn_kwargs)
    layer.double(), bn.double()
    with torch.no_grad():
        for p in (*layer.parameters(), *bn.parameters()):
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        if bn.affine:
            bn.weight.mul_(2).abs_()
            bn.bias.add_(0.8)
    x = torch.randn((T, B, 2, 4, 4) if conv else (T, B, 7, 6), generator=g, dtype=torch.float64)
    return layer, bn, LIF(**lif_kwargs), x


def _run(layer, bn, lif, x, v0, compact: bool):
    lif.reset()
    if v0 is not None:
        lif.v = v0
    with contextlib.nullcontext() if compact else float_saves():
        z = layer(x.flatten(0, 1 if isinstance(layer, nn.Conv2d) else 2))
        shape = (*x.shape[:-3], *z.shape[-3:]) if isinstance(layer, nn.Conv2d) else (*x.shape[:-1], z.shape[-1])
        s = batch_norm_lif(z, bn, lif, shape)
    g = torch.Generator().manual_seed(99)
    loss = (s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum() + (lif.v * 0.3).sum()
    params = [p for p in (*layer.parameters(), *bn.parameters())] + ([v0] if v0 is not None else [])
    grads = torch.autograd.grad(loss, params)
    return s.detach(), grads, {k: v.clone() for k, v in bn.state_dict().items()}


@pytest.mark.parametrize("lif_kwargs", LIF_VARIANTS)
@pytest.mark.parametrize("bn_kwargs", BN_VARIANTS)
@pytest.mark.parametrize("conv", [False, True])
def test_batch_norm_lif_gradients_and_running_stats_equal_the_plain_path(conv, bn_kwargs, lif_kwargs):
    fired = 0
    for seed in range(3):
        results = []
        for compact in (True, False):
            layer, bn, lif, x = _unit(seed, conv, bn_kwargs, lif_kwargs)
            v0 = None
            if seed == 2:  # a LIF that carries state from an earlier call, with a gradient into it
                g = torch.Generator().manual_seed(7)
                v0 = (torch.rand(x.shape[1:-3] + (5, 4, 4) if conv else x.shape[1:-1] + (5,), generator=g,
                                 dtype=torch.float64) * 0.9).requires_grad_()
            for _ in range(2):  # two steps: running statistics (and num_batches_tracked) move twice
                out = _run(layer, bn, lif, x, v0, compact)
            results.append(out)
        (s1, g1, st1), (s2, g2, st2) = results
        fired += int(s1.sum())
        assert torch.equal(s1, s2)
        for a, b in zip(g1, g2):
            assert torch.equal(a, b)
        assert st1.keys() == st2.keys()
        for k in st1:
            assert torch.equal(st1[k], st2[k]), k
    assert fired > 0, "no spikes: the test would not see the reset"


def test_batch_norm_lif_recomputes_the_potentials_bit_for_bit():
    layer, bn, lif, x = _unit(0, True, {}, {})
    saved = []
    for compact in (True, False):
        lif.reset()
        with contextlib.nullcontext() if compact else float_saves():
            z = layer(x.flatten(0, 1))
            s = batch_norm_lif(z, bn, lif, (*x.shape[:2], *z.shape[1:]))
        saved.append(s.grad_fn.saved_tensors[0])  # compact: computed again here from the BN input
    assert torch.equal(saved[0], saved[1])


def test_batch_norm_lif_refuses_an_input_changed_in_place():
    layer, bn, lif, x = _unit(1, False, {}, {})
    z = layer(x.flatten(0, 2))
    s = batch_norm_lif(z, bn, lif, (*x.shape[:-1], z.shape[-1]))
    with torch.no_grad():
        z.mul_(2)
    with pytest.raises(RuntimeError, match="modified"):
        s.sum().backward()


def test_batch_norm_lif_in_eval_mode_and_step_mode_is_the_plain_composition():
    layer, bn, lif, x = _unit(3, False, {}, {})
    z = layer(x.flatten(0, 2)).detach().requires_grad_()
    shape = (*x.shape[:-1], z.shape[-1])
    bn.eval()
    out = batch_norm_lif(z, bn, lif, shape)
    reset(lif)
    assert torch.equal(out, lif(bn(z).view(shape)))
    reset(lif)
    bn.train()
    lif.step_mode = "s"
    one_step = z.view(shape[0], -1, shape[-1])[0]  # the first step's rows
    state = {k: v.clone() for k, v in bn.state_dict().items()}
    out = batch_norm_lif(one_step, bn, lif, shape[1:])
    bn.load_state_dict(state)
    reset(lif)
    assert torch.equal(out, lif(bn(one_step).view(shape[1:])))


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("shape", [(6, 3, 9, 9), (1, 2, 190, 190)])  # int16, then int32 indices
@pytest.mark.parametrize("spikes", [True, False])
def test_compact_max_pool_gives_the_output_and_gradient_of_max_pool(ceil_mode, shape, spikes):
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(shape, generator=g) < 0.3).double() if spikes else torch.randn(shape, generator=g).double()
    grad = torch.randn(nn.MaxPool2d(3, 2, 1, ceil_mode=ceil_mode)(x).shape, generator=g, dtype=torch.float64)
    results = []
    for pool in (CompactMaxPool2d(3, 2, 1, ceil_mode=ceil_mode), nn.MaxPool2d(3, 2, 1, ceil_mode=ceil_mode)):
        xi = x.clone().requires_grad_()
        y = pool(xi)
        y.backward(grad)
        results.append((y.detach(), xi.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])  # ties (many, with spikes) resolved alike


@pytest.mark.parametrize("step", [1.0, 0.125, 0.1, 1 / 3])
def test_counts_come_back_bit_for_bit(step):
    g = torch.Generator().manual_seed(int(step * 1000))
    whole = torch.randint(0, 256, (40, 30), generator=g).float()
    counts = (whole * step).requires_grad_()
    w = torch.randn(30, 20, generator=g, requires_grad=True)
    with counts_saved_as_uint8(counts, step=step):
        out = counts @ w
    unpacked = out.grad_fn._saved_self
    assert torch.equal(unpacked, counts.detach())
    out.sum().backward()
    torch.testing.assert_close(w.grad, counts.detach().sum(0)[:, None].expand(30, 20))


def test_nested_blocks_pack_both_kinds():
    g = torch.Generator().manual_seed(0)
    spikes = (torch.rand(8, 16, generator=g) < 0.5).float()
    counts = torch.randint(0, 4, (8, 16), generator=g).float()
    w1, w2 = torch.randn(16, 4, requires_grad=True), torch.randn(16, 4, requires_grad=True)
    with spikes_saved_as_bool(spikes), counts_saved_as_uint8(counts):  # the inner block packs the spikes too
        a, b, c = spikes @ w1, counts @ w1, counts @ w2
    assert a.grad_fn._saved_self.dtype == b.grad_fn._saved_self.dtype == torch.float32
    assert torch.equal(a.grad_fn._saved_self, spikes) and torch.equal(b.grad_fn._saved_self, counts)
    (a.sum() + b.sum() + c.sum()).backward()
    torch.testing.assert_close(w1.grad, (spikes + counts).sum(0)[:, None].expand(16, 4))
