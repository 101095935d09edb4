"""Dead-row elimination (spiketwin.convert.rows): a traced graph computes only the rows its output keeps.

The pruned graph gives the unpruned graph's result (float64, to round-off: a matrix product over fewer rows may
round in another order) and its values after the selection's ops hold only the kept rows; values that something
else needs whole (keys, values, the residual stream before the last attention) keep all their rows.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from spiketwin.convert import graph as G
from spiketwin.convert import to_qann, to_snn
from spiketwin.convert.rows import prune_rows
from spiketwin.models import create
from spiketwin.simulate import simulate

D = torch.float64


def _traced(model: nn.Module, x) -> tuple:
    gm, _ = G.trace(copy.deepcopy(model).to(D), x)
    pruned = copy.deepcopy(gm)
    return gm, pruned, prune_rows(pruned)


def _shapes(gm, x) -> dict[str, tuple]:
    """The shape of every call's value on ``x`` (an interpreter run)."""
    seen = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            if isinstance(out, torch.Tensor):
                seen[node.name] = tuple(out.shape)
            return out

    Recorder(gm).run(x)
    return seen


class Rows(nn.Module):
    """Every rule of the pass between a token-mixing op and a selected token: views, transposes, permutes, a
    softmax and a norm over other dimensions, a reduction kept as a dimension, broadcast operands, cat."""

    def __init__(self, d: int = 8, heads: int = 2, index: int = 0) -> None:
        super().__init__()
        self.heads, self.index = heads, index
        self.qkv, self.proj, self.fc = nn.Linear(d, 3 * d), nn.Linear(d, d), nn.Linear(2 * d, 5)
        self.norm = nn.LayerNorm(d)
        self.gate = nn.Parameter(torch.randn(d))

    def forward(self, x):  # [B, N, d]
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = torch.softmax(q @ k.transpose(-2, -1) * 0.5, -1) @ v  # [B, H, N, d/H]
        out = self.proj(out.transpose(1, 2).reshape(b, n, d))
        y = self.norm(x + out) * self.gate
        y = y - y.mean(-1, keepdim=True)
        y = torch.cat([torch.relu(y), torch.tanh(y)], -1)
        return self.fc(y[:, self.index])


@pytest.mark.parametrize("index", [0, 3, -1])
def test_selected_token_rows_only(index):
    torch.manual_seed(index % 7)
    x = torch.randn(3, 6, 8, dtype=D)
    full, pruned, changed = _traced(Rows(index=index), x)
    assert changed
    torch.testing.assert_close(pruned(x), full(x), rtol=1e-12, atol=1e-12)
    shapes = _shapes(pruned, x)
    assert shapes["softmax"][-2:] == (1, 6)  # one query row, every key
    assert shapes["layer_norm"] == (3, 1, 8)
    assert (3, 6, 24) in shapes.values()  # the qkv projection still has every token (keys and values need them)
    # the batch size stays free
    x5 = torch.randn(5, 6, 8, dtype=D)
    torch.testing.assert_close(pruned(x5), full(x5), rtol=1e-12, atol=1e-12)


def test_whole_outputs_untouched():
    """A model that also returns every token keeps every row (a full-range slice, ``y[:, 0]``'s ``[:]``, may go)."""

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            y = self.fc(x)
            return y, y[:, 0]

    x = torch.randn(2, 5, 4, dtype=D)
    full, pruned, changed = _traced(Tokens(), x)
    assert not changed
    before, after = _shapes(full, x), _shapes(pruned, x)
    assert all(before[name] == shape for name, shape in after.items())
    assert all(torch.equal(a, b) for a, b in zip(pruned(x), full(x)))


def test_vit_last_block_and_snn():
    """spiketwin's ViT: after the last attention only the class token is computed, and the last fused q, k, v
    projection splits so that only the class token's q is; the QANN's quantizers there hold one row, and the
    exact-state SNN still equals the QANN bit for bit (both states: events to 1e-9)."""
    torch.manual_seed(0)
    model = create("vit_mnist", depth=2, embed_dim=16, num_heads=2).to(D)
    x = torch.randn(4, 1, 28, 28, dtype=D)
    qann = to_qann(model, levels=8)
    qann.train()
    qann(x)
    qann.eval()
    sizes = {}
    hooks = [q.register_forward_hook(lambda m, i, o, k=k: sizes.__setitem__(k, tuple(o.shape)))
             for k, q in enumerate(qann.model.quantizers)]
    expected = qann(x)
    for h in hooks:
        h.remove()
    linears = [tuple(n.meta["val"].shape[1:]) for n in qann.model.graph.nodes
               if n.target is torch.ops.aten.linear.default]
    assert (1, 16) in linears and (50, 32) in linears  # the last qkv split: q of the class token, k and v of all
    last = [k for k, label in enumerate(qann.labels) if label.startswith("blocks.1.mlp")]
    assert last and all(sizes[k][1] == 1 for k in last)
    assert sizes[[k for k, label in enumerate(qann.labels) if label.startswith("blocks.0.mlp")][0]][1] == 50
    result = simulate(to_snn(qann), x)
    assert bool((result.output == expected).all())
    events = simulate(to_snn(qann, state="events"), x)
    torch.testing.assert_close(events.output, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["bert", "vit"])
def test_hugging_face_classifiers_compute_one_token_in_the_last_layer(name):
    """BERT's pooler and HF ViT's classifier read the first token: the last layer's MLP quantizers hold one row
    per sample, the first layer's all of them; the SNN still equals the QANN bit for bit (float64)."""
    pytest.importorskip("transformers", reason="the nlp extra (transformers) is not installed")
    from test_engine import _calibrated, _hf, _inputs

    torch.manual_seed(1)
    inputs = _inputs(name, 0)
    qann = _calibrated(_hf(name).to(D).eval(), inputs)
    rows = {}
    hooks = [q.register_forward_hook(lambda m, i, o, k=k: rows.__setitem__(k, o.shape[1]))
             for k, q in enumerate(qann.model.quantizers)]
    with torch.no_grad():
        expected = qann(**inputs).logits
    for h in hooks:
        h.remove()
    act = [k for k, label in enumerate(qann.labels) if "intermediate" in label or "activation_fn" in label]
    assert len(act) == 2 and rows[act[0]] > 1 and rows[act[1]] == 1
    result = simulate(to_snn(qann), inputs)
    assert bool((result.output == expected).all())
