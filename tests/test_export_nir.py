"""NIR export: a round trip through the file and nirtorch reproduces our spikes; the rest is refused by name."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

nir = pytest.importorskip("nir", reason="NIR export needs the 'nir' extra")
pytest.importorskip("nirtorch", reason="reading NIR back needs the 'nir' extra (nirtorch)")

from spiketwin import TimeFold  # noqa: E402
from spiketwin.export import NIRExportError, check, from_nir, to_nir  # noqa: E402
from spiketwin.neurons import IF, LIF, STBIF  # noqa: E402
from spiketwin.ops import MatMul  # noqa: E402
from spiketwin.plots import record  # noqa: E402


class ConvNet(nn.Module):
    """Conv-BN-LIF, Conv-IF, residual sum, AvgPool, Flatten, Linear-BN-LIF (decay_input=False)."""

    def __init__(self, residual_out: bool = False) -> None:
        super().__init__()
        self.residual_out = residual_out
        self.conv = TimeFold(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)))
        self.lif1 = LIF()
        self.conv2 = TimeFold(nn.Conv2d(4, 4, 3, padding=1, bias=False))
        self.if2 = IF(v_threshold=0.7)
        self.pool = TimeFold(nn.AvgPool2d(2))
        self.fc = TimeFold(nn.Sequential(nn.Flatten(), nn.Linear(36, 6), nn.BatchNorm1d(6)))
        self.lif3 = LIF(tau=3.0, decay_input=False, v_reset=-0.1)

    def forward(self, x):  # [T, B, 2, 6, 6] -> [T, B, 6]
        a = self.lif1(self.conv(x))
        b = self.if2(self.conv2(a))
        if self.residual_out:
            return a + b
        return self.lif3(self.fc(self.pool(a + b)))


def make(seed: int, residual_out: bool = False) -> ConvNet:
    torch.manual_seed(seed)
    net = ConvNet(residual_out).double().eval()
    with torch.no_grad():
        for bn in (net.conv.layer[1], net.fc.layer[2]):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(1.0, 3.0)
            bn.bias.uniform_(0.0, 0.5)
        net.conv2.layer.weight.mul_(4)
    return net


def run_nir(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    state, out = None, []
    for x_t in x:
        y, state = module(x_t, state)
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_reproduces_spikes(tmp_path, seed):
    net = make(seed)
    x = torch.rand(10, 3, 2, 6, 6, dtype=torch.float64) * 2
    with torch.no_grad():
        ours = net(x)
    for name in ("lif1", "if2", "lif3"):  # every neuron layer is active, so the comparison means something
        assert 0.02 < record(net, x, name).mean() < 0.98, name
    path = tmp_path / "net.nir"
    to_nir(net, x, path)
    graph = nir.read(path)
    kinds = {name: type(node).__name__ for name, node in graph.nodes.items()}
    assert kinds == {"input": "Input", "conv.layer.0": "Conv2d", "lif1": "LIF", "conv2.layer": "Conv2d",
                     "if2": "IF", "pool.layer": "AvgPool2d", "fc.layer.0": "Flatten", "fc.layer.1": "Affine",
                     "lif3": "LIF", "output": "Output"}  # both BatchNorms folded away
    assert ("lif1", "pool.layer") in graph.edges and ("if2", "pool.layer") in graph.edges  # the residual sum
    back = run_nir(from_nir(path, dtype=torch.float64), x)
    assert torch.equal(back, ours)


def test_dt_is_stored_and_used(tmp_path):
    net = make(0)
    x = torch.rand(6, 2, 2, 6, 6, dtype=torch.float64) * 2
    with torch.no_grad():
        ours = net(x)
    to_nir(net, x, tmp_path / "dt.nir", dt=0.5)
    graph = nir.read(tmp_path / "dt.nir")
    assert float(graph.metadata["dt"]) == 0.5
    assert float(graph.nodes["lif1"].tau.flat[0]) == 1.0 and float(graph.nodes["if2"].r.flat[0]) == 2.0
    assert torch.equal(run_nir(from_nir(tmp_path / "dt.nir", dtype=torch.float64), x), ours)


def test_residual_sum_as_output(tmp_path):
    net = make(3, residual_out=True)
    x = torch.rand(5, 2, 2, 6, 6, dtype=torch.float64) * 2
    with torch.no_grad():
        ours = net(x)
    back = run_nir(from_nir(to_nir(net, x), dtype=torch.float64), x)
    assert torch.equal(back, ours) and ours.max() == 2  # spikes of both branches summed


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(4, 8), LIF())
        self.norm = nn.LayerNorm(8)
        self.qk = MatMul()
        self.soft = LIF(v_reset=None)
        self.pool = TimeFold(nn.MaxPool1d(2))
        self.quant = STBIF(0.5, -4, 3)
        self.unused = nn.LayerNorm(8)

    def forward(self, x):
        s = self.embed(x)
        return self.quant(self.pool(self.soft(self.qk(self.norm(s), s.transpose(-2, -1)))))


def test_unsupported_modules_are_listed_by_path():
    with pytest.raises(NIRExportError) as err:
        to_nir(Attention(), torch.rand(2, 3, 4))
    msg = str(err.value)
    for path, why in [("norm", "LayerNorm"), ("qk", "product"), ("soft", "soft reset"), ("pool.layer", "max pool"),
                      ("quant", "ST-BIF")]:
        assert f"  {path}: " in msg and why in msg, (path, msg)
    assert "embed" not in msg and "submodule" in msg
    assert "unused" not in msg  # a module that never runs (like the official Spikformer's LayerNorms) is no obstacle


def test_expressible_submodule_is_exported(tmp_path):
    model = Attention()
    x = torch.rand(5, 2, 4)  # [T, B, 4]: the model is in sequence mode
    graph = to_nir(model, x, tmp_path / "embed.nir", submodule="embed")
    assert sorted(type(n).__name__ for n in graph.nodes.values()) == ["Affine", "Input", "LIF", "Output"]
    with torch.no_grad():
        assert torch.equal(run_nir(from_nir(tmp_path / "embed.nir"), x), model.embed(x))
    assert check(model, graph, x, submodule="embed") == 0.0
    with torch.no_grad():
        model.embed[0].weight.add_(0.5)  # the file no longer matches the model
    assert check(model, graph, x, submodule="embed") > 0.0
    with pytest.raises(KeyError, match="no submodule 'nope'"):
        to_nir(model, x, submodule="nope")


def test_functional_ops_are_refused_with_their_module():
    class Soft(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return torch.softmax(self.fc(x), -1)

    net = nn.Sequential(nn.Linear(4, 4), LIF())
    net.add_module("head", Soft())
    with pytest.raises(NIRExportError, match=r"head: operation 'softmax'"):
        to_nir(net, torch.rand(3, 2, 4))
    with pytest.raises(NIRExportError, match=r"0: Linear on a per-sample input of shape \[3, 4\]"):
        to_nir(nn.Sequential(nn.Linear(4, 4), LIF()), torch.rand(5, 2, 3, 4))


def snntorch_style_graph(net: nn.Module, beta: float = 0.5) -> object:
    """The graph snnTorch 1.0's exporter writes for ``net`` (Conv2d, Leaky, AvgPool2d(2), Flatten, Linear): tau
    for dt = 1e-4 with r = tau / dt, pooling sizes as single numbers, Flatten dims without the batch, no dt."""
    conv, fc = net[0].layer, net[3].layer[1]
    tau = np.full((4, 6, 6), 1e-4 / (1 - beta))
    nodes = {"input": nir.Input(input_type=np.array([1, 6, 6])),
             "conv": nir.Conv2d(input_shape=None, weight=conv.weight.detach().numpy(), stride=1, padding=1,
                                dilation=1, groups=1, bias=conv.bias.detach().numpy()),
             "lif": nir.LIF(tau=tau, r=tau / 1e-4, v_leak=np.zeros_like(tau), v_threshold=np.ones_like(tau),
                            v_reset=np.zeros_like(tau)),
             "pool": nir.AvgPool2d(kernel_size=np.int64(2), stride=np.int64(2), padding=(0, 0)),
             "flat": nir.Flatten(input_type=None, start_dim=0, end_dim=-1),
             "fc": nir.Affine(weight=fc.weight.detach().numpy(), bias=fc.bias.detach().numpy()),
             "output": nir.Output(output_type=np.array([3]))}
    edges = [("input", "conv"), ("conv", "lif"), ("lif", "pool"), ("pool", "flat"), ("flat", "fc"), ("fc", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges)


def test_from_nir_reads_other_producers_files(tmp_path):
    torch.manual_seed(0)  # ours with decay_input=False is snnTorch's U <- beta U + I with beta = 1 - 1/tau
    net = nn.Sequential(TimeFold(nn.Conv2d(1, 4, 3, padding=1)), LIF(tau=2.0, decay_input=False),
                        TimeFold(nn.AvgPool2d(2)), TimeFold(nn.Sequential(nn.Flatten(), nn.Linear(36, 3))))
    with torch.no_grad():
        net[0].layer.weight.mul_(3)
    x = torch.rand(6, 4, 1, 6, 6)
    nir.write(tmp_path / "snn.nir", snntorch_style_graph(net))
    with pytest.warns(UserWarning) as caught:
        from_nir(tmp_path / "snn.nir")
    messages = [str(w.message) for w in caught]
    assert any("stores no dt" in m and "snn.nir" in m and "dt = 1e-4" in m for m in messages), messages
    assert any("dt / tau = 5000 > 1" in m and "'lif'" in m for m in messages), messages
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right dt: no warning
        module = from_nir(tmp_path / "snn.nir", dt=1e-4)
    with torch.no_grad():
        ours = net(x)
    assert 0.02 < record(net, x, "1").mean() < 0.98
    torch.testing.assert_close(run_nir(module, x), ours, rtol=0, atol=1e-5)


def test_modules_carry_their_own_refusal():
    from spiketwin.base import StatefulModule
    from spiketwin.convert.spikeconverter import PeriodBias
    from spiketwin.export import unsupported

    class Custom(StatefulModule):
        nir_refusal = "a custom operator: no NIR node for it"

    class Plain(StatefulModule):
        pass

    net = nn.Sequential(Custom(), Plain(), LIF(), LIF(v_reset=None),
                        TimeFold(nn.AvgPool2d(3, padding=1, count_include_pad=False)))
    assert unsupported(net) == [("0", "Custom: a custom operator: no NIR node for it"),
                                ("1", "Plain: a stateful spiking operator with no NIR node"),
                                ("3", "LIF: soft reset (v -= threshold): NIR's LIF / IF reset the potential to "
                                      "v_reset"),
                                ("4.layer", "AvgPool2d: AvgPool2d with count_include_pad=False and padding: NIR's "
                                            "AvgPool2d divides by the whole window")]
    assert "once per period" in PeriodBias.nir_refusal
