"""spiketwin.memory.pack(model): the savings applied to a plain model from outside. What it keeps is what the
hand-placed blocks kept (spikes as bool, counts as uint8, no BN -> LIF potentials), the gradients are exactly the
plain model's, and it leaves nothing behind when a forward ends (normally or not)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from spiketwin import reset
from spiketwin.memory import CompactMaxPool2d, float_saves, pack
from spiketwin.memory.saving import _saving_hooks, _tracker
from spiketwin.models.spikformer import Spikformer
from spiketwin.neurons import LIF
from spiketwin.train import TrainConfig, fit


@contextlib.contextmanager
def _stored_dtypes():
    """(dtype, bytes) of what autograd stores in the block, after any packing hooks (wrapped to see their result);
    parameters and a storage seen before are not counted."""
    stored: list[tuple[torch.dtype, int]] = []
    seen: set[int] = set()
    hooks = torch.autograd.graph.saved_tensors_hooks

    def record(packed):
        t = packed[0] if isinstance(packed, tuple) else packed
        if isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter):
            ptr = t.untyped_storage().data_ptr()
            stored.append((t.dtype, 0 if ptr in seen else t.untyped_storage().nbytes()))
            seen.add(ptr)
        return packed

    class Recording(hooks):
        def __init__(self, pack_hook, unpack_hook) -> None:
            super().__init__(lambda t: record(pack_hook(t)), unpack_hook)

    torch.autograd.graph.saved_tensors_hooks = Recording
    try:
        with hooks(record, lambda t: t):
            yield stored
    finally:
        torch.autograd.graph.saved_tensors_hooks = hooks


class _Toy(nn.Module):
    """LIF spikes, their sum (counts 0..2), a product of spike matrices times 0.25 and a spike tensor changed in
    place, each saved by a layer."""

    def __init__(self) -> None:
        super().__init__()
        self.lif, self.lif2 = LIF(), LIF()
        self.fc = nn.Linear(6, 6)
        self.in_place = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, s2 = self.lif(x), self.lif2(x * 1.5)
        counts = s + s2
        if self.in_place:
            counts.mul_(0.3)  # no longer whole numbers
        attn = (s @ s2.transpose(-2, -1)) * 0.25
        return self.fc(counts).sum() + (attn @ s).sum()


@pytest.mark.parametrize("in_place", [False, True])
def test_pack_follows_spikes_and_counts_and_gives_the_plain_gradients(in_place):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 5, 6, generator=g, dtype=torch.float64) + 0.8
    grads, dtypes = [], []
    for packed in (False, True):
        torch.manual_seed(1)
        model = _Toy().double()
        model.in_place = in_place
        if packed:
            pack(model)
        xi = x.clone().requires_grad_()
        with _stored_dtypes() as stored:
            loss = model(xi)
        loss.backward()
        reset(model)
        grads.append([xi.grad, *(p.grad for p in model.parameters())])
        dtypes.append([dtype for dtype, _ in stored])
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    assert torch.bool not in dtypes[0] and torch.uint8 not in dtypes[0]
    assert torch.bool in dtypes[1]  # s as attn @ s's operand
    assert torch.uint8 in dtypes[1]  # Q Kᵀ-like counts times 0.25
    if in_place:  # counts written in place are forgotten: fc keeps its input as float
        assert dtypes[1].count(torch.uint8) == 1


def test_pack_keeps_what_the_blocks_kept_and_no_potentials():
    torch.manual_seed(0)
    model = Spikformer(img_size=16, dim=32, depth=1, num_heads=4, T=2)
    x = torch.rand(2, 3, 16, 16)
    with _stored_dtypes() as plain:
        model(x)
    reset(model)
    pack(model)
    assert isinstance(model.patch_embed.pool.layer, CompactMaxPool2d)
    with _stored_dtypes() as packed:
        model(x)
    reset(model)
    kinds = {dtype for dtype, _ in packed}
    assert {torch.bool, torch.uint8, torch.int16} <= kinds
    assert torch.int64 not in kinds  # max pooling indices as int16
    assert sum(n for _, n in packed) < 0.5 * sum(n for _, n in plain)
    with float_saves(), _stored_dtypes() as off:
        model(x)
    reset(model)
    assert sum(n for _, n in off) == sum(n for _, n in plain)


def test_pack_leaves_no_tracking_behind():
    torch.manual_seed(0)
    model = pack(Spikformer(img_size=16, dim=32, depth=1, num_heads=4, T=2))
    with torch.no_grad():
        model(torch.rand(2, 3, 16, 16))
    assert _tracker() is None
    reset(model)
    with pytest.raises(ValueError, match="input has 1 channels"):
        model(torch.rand(2, 1, 16, 16))  # fails inside the forward
    assert _tracker() is None
    model(torch.rand(2, 3, 16, 16)).sum().backward()
    assert _tracker() is None
    assert pack(model) is model  # twice: no second set of hooks
    assert len(model._forward_pre_hooks) == 1


def test_fit_packs_by_default_and_not_when_told():
    x, y = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    for flag in (True, False):
        model = Spikformer(img_size=16, dim=32, depth=1, num_heads=4, T=2)
        fit(model, x, y, TrainConfig(epochs=0, progress=False, pack_memory=flag))
        assert isinstance(model.patch_embed.pool.layer, CompactMaxPool2d) is flag



def test_a_new_registration_of_an_address_gets_its_own_packed_copy():
    g = torch.Generator().manual_seed(3)
    spikes = (torch.rand(5, 4, generator=g) < 0.5).float()
    w1, w2 = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    codes = {}
    hooks = _saving_hooks(codes.get)  # one forward's hooks: a packed copy may be shared within a registration
    ptr = spikes.untyped_storage().data_ptr()
    codes[ptr] = (torch.bool, 1.0, 1)
    with hooks:
        first = spikes @ w1  # packs the spikes as they are now
    spikes.copy_((torch.rand(5, 4, generator=g) < 0.5).float())  # new values at the same address: as a freed
    codes[ptr] = (torch.bool, 1.0, 2)  # tensor's address taken by the next one, registered anew
    with hooks:
        second = spikes @ w2
    (first.sum() + second.sum()).backward()
    assert torch.equal(w2.grad, spikes.sum(0)[:, None].expand(4, 3))
