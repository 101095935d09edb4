"""NIR files for snnTorch and Norse: loaded by the real packages (not by our reader), they reproduce spiketwin's
spikes at every neuron, on scnn and on an MLP with residual sums, including potentials exactly on a threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

nir = pytest.importorskip("nir", reason="NIR export needs the 'nir' extra")
pytest.importorskip("nirtorch", reason="reading NIR needs the 'nir' extra (nirtorch)")

from spiketwin import TimeFold  # noqa: E402
from spiketwin.export import NIRExportError, check, from_nir, to_nir  # noqa: E402
from spiketwin.models import create  # noqa: E402
from spiketwin.neurons import IF, LIF  # noqa: E402
from spiketwin.plots import record  # noqa: E402

_INSTALL = "install it with: pip install --no-deps -r requirements-nodeps.txt"


def _sanitized(name: str) -> str:
    return name.replace(".", "_")


def load(target: str, path):
    """A function running the real consumer's module for ``path`` (ours for ``"nir"``) step by step:
    ``run(x)`` -> ``(outputs [T, ...], {neuron module name: spikes [T, ...]})``."""
    if target == "nir":
        module = step = from_nir(path)
        neuron_types = ("_NIRNeuron",)
    elif target == "snntorch":
        pytest.importorskip("snntorch", reason=f"snntorch is not installed; {_INSTALL}")
        from snntorch.import_nir import import_from_nir

        module = import_from_nir(nir.read(path))
        step = lambda x_t, state: (module(x_t)[0], None)  # snnTorch keeps the potentials in its modules
        neuron_types = ("Leaky",)
    else:
        pytest.importorskip("norse", reason=f"norse is not installed; {_INSTALL}")
        import norse.torch

        module = norse.torch.from_nir(nir.read(path))
        step = module
        neuron_types = ("LIFBoxCell", "IAFCell")

    def run(x: torch.Tensor):
        spikes: dict[str, list[torch.Tensor]] = {}
        hooks = [m.register_forward_hook(lambda m, a, o, name=name: spikes.setdefault(name, []).append(
                 (o[0] if isinstance(o, tuple) else o).detach()))
                 for name, m in module.named_modules() if type(m).__name__ in neuron_types]
        outputs, state = [], None
        with torch.no_grad():
            for x_t in x:
                y, state = step(x_t, state)
                outputs.append(y)
        for h in hooks:
            h.remove()
        return torch.stack(outputs), {name: torch.stack(s) for name, s in spikes.items()}

    return run


def assert_same_spikes(target, path, net, x, neurons):
    """Every neuron layer of ``net`` (names ``neurons``) fires exactly as in the consumer, and the outputs agree."""
    with torch.no_grad():
        ours = net(x)
    out, theirs = load(target, path)(x)
    assert sorted(theirs) == sorted(_sanitized(n) for n in neurons)
    for name in neurons:
        mine = record(net, x, name)
        assert 0.02 < mine.mean() < 0.98, (name, float(mine.mean()))  # an active layer: the check means something
        assert torch.equal(theirs[_sanitized(name)], mine), (target, name)
    torch.testing.assert_close(out, ours, rtol=0, atol=1e-5)


def scnn(grid: bool) -> nn.Module:
    """The digits scnn's per-step network. ``grid``: weights, BatchNorm and inputs on a binary grid, as after
    quantized training: potentials land exactly on the threshold, so the tie at ``v == θ`` is exercised."""
    torch.manual_seed(0)
    net = create("scnn").step_network.eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.25, 0.25)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(0.0, 0.5)
                if grid:
                    # var + eps == 1 in float32 (eps below its resolution at 1; torch 2.11 refuses eps = 0)
                    m.eps, m.running_var[:], m.weight[:] = 1e-12, 1.0, 1.0
                    m.running_mean.mul_(8).round_().div_(8)
                    m.bias.mul_(8).round_().div_(8)
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(4)
                if grid:
                    m.weight.mul_(8).round_().div_(8)
    return net


@pytest.mark.parametrize("target", ["snntorch", "norse", "nir"])
@pytest.mark.parametrize("grid", [False, True])
def test_scnn_reproduced_by_the_consumer(tmp_path, target, grid):
    net = scnn(grid)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 17, (8, 6, 1, 8, 8), generator=g) / 16.0  # digits-like pixels k/16, T = 8
    path = tmp_path / f"scnn_{target}.nir"
    to_nir(net, x, path, target=target)
    assert_same_spikes(target, path, net, x, ["1", "4"])
    assert check(net, path, x) < 1e-5  # our own reader agrees too
    if grid:  # the same file with each threshold written as θ itself: the consumer misses the spikes at v == θ
        graph = nir.read(path)
        for node in graph.nodes.values():
            if isinstance(node, nir.LIF):
                node.v_threshold = np.nextafter(node.v_threshold.astype(np.float32), np.float32(np.inf))
        nir.write(tmp_path / "untied.nir", graph)
        out, _ = load(target, tmp_path / "untied.nir")(x)
        with torch.no_grad():
            assert not torch.equal(out, net(x))


class ResidualMLP(nn.Module):
    """Flatten-Linear-LIF, Linear-IF (v_reset != 0), their sum into Linear-BN-LIF (decay_input=False, tau 4,
    v_reset != 0), and a residual sum straight into the output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = TimeFold(nn.Sequential(nn.Flatten(), nn.Linear(16, 12)))
        self.lif1 = LIF()
        self.fc2 = TimeFold(nn.Linear(12, 12))
        self.if2 = IF(v_threshold=0.75, v_reset=-0.25)
        self.fc3 = TimeFold(nn.Sequential(nn.Linear(12, 12), nn.BatchNorm1d(12)))
        self.lif3 = LIF(tau=4.0, decay_input=False, v_reset=-0.5)

    def forward(self, x):  # [T, B, 1, 4, 4] -> [T, B, 12]
        a = self.lif1(self.fc1(x))
        b = self.if2(self.fc2(a))
        return self.lif3(self.fc3(a + b)) + a


@pytest.mark.parametrize("target", ["snntorch", "norse"])
@pytest.mark.parametrize("seed", [0, 1])
def test_residual_mlp_reproduced_by_the_consumer(tmp_path, target, seed):
    torch.manual_seed(seed)
    net = ResidualMLP().eval()
    with torch.no_grad():
        net.fc1.layer[1].weight.mul_(4)
        net.fc2.layer.weight.mul_(2)
        bn = net.fc3.layer[1]
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(1.0, 3.0)
    x = torch.rand(10, 5, 1, 4, 4) * 2
    path = tmp_path / f"mlp_{target}.nir"
    graph = to_nir(net, x, path, target=target)
    assert not any(isinstance(n, nir.Scale) for n in graph.nodes.values())  # snnTorch rejects it, Norse drops it
    assert_same_spikes(target, path, net, x, ["lif1", "if2", "lif3"])
    with torch.no_grad():
        assert net(x).max() == 2  # the output really sums two spike trains


def test_norse_refuses_branches_it_would_run_out_of_order():
    class Diamond(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = TimeFold(nn.Linear(4, 4)), TimeFold(nn.Linear(4, 4))
            self.lif_a, self.lif_b = LIF(), LIF()

        def forward(self, x):
            return self.lif_a(self.a(x)) + self.lif_b(self.b(x))

    x = torch.rand(3, 2, 4)
    with pytest.raises(NIRExportError, match="depth first"):
        to_nir(Diamond(), x, target="norse")
    to_nir(Diamond(), x, target="snntorch")  # nirtorch's executor orders the graph itself


def test_target_specific_refusals():
    net = nn.Sequential(TimeFold(nn.Conv2d(1, 2, 3)), LIF(), TimeFold(nn.AvgPool2d(2, padding=1)),
                        TimeFold(nn.Flatten()), TimeFold(nn.Linear(18, 2)), LIF())
    x = torch.rand(3, 2, 1, 6, 6)
    to_nir(net, x, target="snntorch")
    with pytest.raises(NIRExportError, match="AvgPool2d with padding: Norse"):
        to_nir(net, x, target="norse")
    with pytest.raises(ValueError, match="snnTorch's importer assumes dt = 1e-4"):
        to_nir(net, x, target="snntorch", dt=1e-3)
    with pytest.raises(ValueError, match="unknown target 'sinabs'"):
        to_nir(net, x, target="sinabs")
    conv1d = nn.Sequential(TimeFold(nn.Conv1d(1, 2, 3)), LIF())
    with pytest.raises(NIRExportError, match="Conv1d: snntorch's NIR importer has no Conv1d"):
        to_nir(conv1d, torch.rand(3, 2, 1, 8), target="snntorch")


def test_target_dt_and_metadata():
    net = nn.Sequential(TimeFold(nn.Linear(4, 4)), LIF(tau=2.0))
    x = torch.rand(3, 2, 4)
    for target, dt in [("nir", 1.0), ("snntorch", 1e-4), ("norse", 1e-3)]:
        graph = to_nir(net, x, target=target)
        assert float(graph.metadata["dt"]) == dt and graph.metadata["target"] == target
        assert float(graph.nodes["1"].tau.flat[0]) == pytest.approx(2 * dt, rel=1e-6)
    assert float(to_nir(net, x, target="norse", dt=0.5).metadata["dt"]) == 0.5
