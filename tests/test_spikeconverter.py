"""SpikeConverter: with k = 2 the iLIF SNN's decoded values equal the QANN's, per sample and per layer
(float64, 1e-9 relative), pipelined or not, step by step or period by period; other k, rate coding and
bad input are reported, not hidden."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spiketwin.convert import to_qann, to_snn, verify
from spiketwin.convert.graph import module_path
from spiketwin.convert.report import EquivalenceReport
from spiketwin.convert.spikeconverter import Delay, ILIFSNN, SpikeMaxPool2d, ilif_threshold
from spiketwin.models import create
from spiketwin.models.cnn import ResNetSmall, VGGSmall
from spiketwin.models.vit import ViT
from spiketwin.neurons import ILIF
from spiketwin.quant import Quantizer
from spiketwin.simulate import simulate
from spiketwin.train import TrainConfig, fit


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny float64 convolutions run far faster on one thread than on two busy ones; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Tangle(nn.Module):
    """Exercises what the model zoo does not: functional ReLUs, ``torch.add``, ``.view``, overlapping max
    pooling with padding, two neurons in a row, and a shortcut that skips two neurons (a 2-period delay)."""

    def __init__(self, c: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.conv0, self.bn0 = nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.Conv2d(c, c, 1)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(c * 4, classes)

    def forward(self, x):
        a = self.pool(F.relu(self.bn0(self.conv0(x))))  # 8x8 -> 4x4
        b = self.conv2(torch.relu(self.conv1(a)).relu())
        c = self.avg(F.relu(torch.add(b, a)))
        return self.fc(c.view(c.size(0), -1))


class Shared(nn.Module):
    """One ReLU, one max pooling and one (weight-tied) convolution, each called at two places."""

    def __init__(self, c: int = 3) -> None:
        super().__init__()
        self.conv0, self.conv = nn.Conv2d(1, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.relu, self.pool = nn.ReLU(), nn.MaxPool2d(2)
        self.fc = nn.Linear(c * 4, 4)

    def forward(self, x):
        x = self.pool(self.relu(self.conv0(x)))  # 8x8 -> 4x4
        x = self.pool(self.relu(self.conv(self.relu(self.conv(x)))))  # 4x4 -> 2x2
        return self.fc(torch.flatten(x, 1))


class TinyViT(nn.Module):
    """A one-block ViT written out (batch first everywhere); the conversion places SpikeZIP-TF's quantizers:
    patch embedding, LayerNorm, q/k/v, softmax, attn @ v, proj, MLP; class token and position embedding."""

    def __init__(self, dim: int = 8, heads: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.patch = nn.Conv2d(1, dim, 4, 4)  # 8x8 -> 4 tokens
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, 5, dim) * 0.5)
        self.norm1, self.qkv = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim)
        self.proj, self.norm2 = nn.Linear(dim, dim), nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)  # [B, 4, D]
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], 1) + self.pos_embed
        qkv = self.qkv(self.norm1(t)).unflatten(-1, (3, self.heads, self.head_dim))
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [B, H, N, d]
        scores = torch.matmul(q * self.head_dim ** -0.5, k.transpose(-2, -1))
        out = torch.softmax(scores, -1) @ v
        t = t + self.proj(out.transpose(1, 2).flatten(2))
        t = t + self.fc2(F.relu(self.fc1(self.norm2(t))))
        return self.head(t[:, 0])


def randomize_batchnorm(model: nn.Module, g: torch.Generator) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, so that folding matters."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.6 - 0.3)
    return model.eval()


def random_cnn(kind: str, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=g))]
    torch.manual_seed(seed)
    if kind == "vgg":
        stages = pick([1, 2])
        model = VGGSmall(channels=[pick([3, 4, 6]) for _ in range(stages)], num_classes=pick([3, 7]),
                         pools=[pick(["max", "avg"]) for _ in range(stages - 1)] + [pick(["max", "avg", None])],
                         convs_per_stage=pick([1, 2]), hidden=pick([8, 12]))
    elif kind == "resnet":
        model = ResNetSmall(channels=[pick([3, 4]), pick([4, 6])], num_classes=pick([3, 7]),
                            blocks_per_stage=pick([1, 2]), stem_pool=pick(["max", "avg", None]))
    elif kind == "shared":
        model = Shared()
    else:
        model = Tangle()
    return randomize_batchnorm(model.double(), g)


def convert(model: nn.Module, T: int, seed: int, n: int = 5):
    g = torch.Generator().manual_seed(1000 + seed)
    calibration = torch.rand(24, 1, 8, 8, generator=g, dtype=torch.float64)
    qann = to_qann(model, levels=2 ** T, neuron="ilif", calibration=calibration)
    return qann, to_snn(qann), torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64)


CASES = [("vgg", 2, 0), ("vgg", 5, 1), ("vgg", 8, 2), ("resnet", 3, 3), ("resnet", 6, 4), ("resnet", 8, 5),
         ("tangle", 4, 6), ("tangle", 7, 7), ("shared", 5, 9)]


@pytest.mark.parametrize("kind,T,seed", CASES)
def test_k2_snn_equals_qann_per_sample_and_per_layer(kind, T, seed):
    qann, snn, x = convert(random_cnn(kind, seed), T, seed)
    report = verify(qann, snn, x)
    assert report.ok, str(report)
    per_sample = report.rel.amax(0)  # every row, the logits' included
    assert per_sample.shape == (len(x),) and bool((per_sample <= 1e-9).all())
    neurons = [name for name, kind in zip(report.layers, report.kinds) if kind == "Quantizer"]
    assert neurons == list(qann.quantizers())
    assert report.periods[-1] == snn.depth and bool((report.settle_step == snn.latency).all())
    result = snn.simulate(x)
    with torch.no_grad():
        want = qann(x)
    torch.testing.assert_close(result.output, want, rtol=1e-9, atol=1e-9 * float(want.abs().max()))
    assert result.per_step.shape[0] == snn.latency == (snn.depth + 1) * T
    assert bool((result.settle_step == snn.latency).all())
    # the layers really are quantized to 2^T levels and the network is not trivially silent
    for q in qann.quantizers().values():
        assert isinstance(q, Quantizer) and q.levels == 2 ** T
    assert float(want.abs().max()) > 0


@pytest.mark.parametrize("kind,T,seed", [("resnet", 4, 11), ("tangle", 3, 12), ("vgg", 6, 13)])
def test_pipelined_and_unpipelined_schedules_give_identical_outputs(kind, T, seed):
    qann, snn, x = convert(random_cnn(kind, seed), T, seed, n=4)
    stream = snn.simulate(x, pipelined=True)
    one_by_one = [snn.simulate(x[i:i + 1]) for i in range(len(x))]
    for i, alone in enumerate(one_by_one):  # same arithmetic (batch of one): bit for bit
        assert torch.equal(stream.per_step[:, i], alone.per_step[:, 0])
    assert verify(qann, snn, x, pipelined=True).ok
    batch = snn.simulate(x)  # a batch of 4 changes only the convolutions' summation order
    torch.testing.assert_close(batch.per_step, stream.per_step, rtol=1e-12, atol=1e-15)
    assert torch.equal(batch.output.argmax(-1), stream.output.argmax(-1))


@pytest.mark.parametrize("kind,pipelined", [("tangle", False), ("tangle", True), ("shared", False)])
def test_step_by_step_and_period_by_period_are_identical(kind, pipelined):
    qann, snn, x = convert(random_cnn(kind, 21), 3, 21, n=3)
    a = snn.simulate(x, step_mode="m", pipelined=pipelined)
    b = snn.simulate(x, step_mode="s", pipelined=pipelined)
    # the same schedule; only the number of rows each convolution sees (and so its summation order) differs
    torch.testing.assert_close(a.per_step, b.per_step, rtol=1e-12, atol=1e-15)
    assert torch.equal(a.settle_step, b.settle_step)
    assert verify(qann, snn, x, step_mode="s", pipelined=pipelined).ok


def test_depth_latency_and_shortcut_delay():
    model = randomize_batchnorm(VGGSmall(channels=(3, 4), pools=("max", "avg"), hidden=6).double(),
                                torch.Generator().manual_seed(0))
    _, snn, x = convert(model, 4, 0)
    assert snn.depth == 3 and snn.latency == 16  # conv-relu, conv-relu, linear-relu, then the readout period
    _, snn, _ = convert(random_cnn("tangle", 0), 4, 0)
    delays = [m for m in snn.net.modules() if isinstance(m, Delay)]
    assert len(delays) == 1 and delays[0].steps == 2 * 4  # the shortcut skips two neurons


def test_readout_is_zero_before_its_period_and_partial_during_it():
    qann, snn, x = convert(random_cnn("vgg", 3), 4, 3)
    result = snn.simulate(x, max_steps=snn.latency + 5)
    start = snn.depth * 4
    assert torch.equal(result.per_step[:start], torch.zeros_like(result.per_step[:start]))
    assert torch.equal(result.per_step[snn.latency - 1:], result.output.expand(6, *result.output.shape))
    assert torch.equal(simulate(snn, x, snn.latency + 5, "m", k=2.0).per_step, result.per_step)  # entry point
    early = snn.simulate(x, max_steps=snn.latency - 1)
    assert bool((early.settle_step == -1).all())
    assert torch.equal(early.per_step, result.per_step[:snn.latency - 1])


def binary_train(values: torch.Tensor, T: int) -> torch.Tensor:
    """``[T, ...]`` bits of integers ``values`` (most significant first)."""
    return torch.stack([(values // 2 ** (T - 1 - j)) % 2 for j in range(T)]).double()


def decode(train: torch.Tensor, k: float = 2.0) -> torch.Tensor:
    T = train.shape[0]
    return sum(k ** (T - 1 - j) * train[j] for j in range(T))


@pytest.mark.parametrize("T", [2, 4, 8])
def test_spike_max_pool_is_the_max_of_the_decoded_trains(T):
    g = torch.Generator().manual_seed(T)
    values = torch.randint(0, 2 ** T, (3, 2, 6, 6), generator=g)
    pool = SpikeMaxPool2d(nn.MaxPool2d(3, 2, 1), T)
    trains = torch.cat([binary_train(values, T), binary_train(values.flip(0), T)])  # two periods in a row
    out = pool(trains)
    expected = F.max_pool2d(values.double(), 3, 2, 1)
    assert torch.equal(decode(out[:T]), expected)
    assert torch.equal(decode(out[T:]), F.max_pool2d(values.flip(0).double(), 3, 2, 1))
    per_step_max = torch.stack([F.max_pool2d(s, 3, 2, 1) for s in trains[:T]])
    assert not torch.equal(decode(per_step_max), expected)  # the naive per-step max is wrong


def test_ilif_and_engine_snns_report_alike_and_a_wrong_qann_is_named():
    """Both kinds of SNN answer ``verify`` with one report type; a QANN that is not the SNN's fails, at its layer."""
    qann, snn, x = convert(random_cnn("vgg", 0), 3, 0)
    torch.manual_seed(0)
    vit = ViT(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=1, num_heads=1).double()
    engine_qann = to_qann(vit, levels=4)
    engine_qann(x)  # calibrate the quantizer steps
    engine_report, report = verify(engine_qann.eval(), to_snn(engine_qann), x), verify(qann, snn, x)
    assert type(report) is type(engine_report) is EquivalenceReport and report.ok and engine_report.ok
    assert engine_report.kinds is None and report.kinds[-1] == "output" and len(report.periods) == len(report.layers)
    assert str(engine_report).endswith(f"OK: max relative difference {engine_report.max_rel:.3e}")
    assert str(report).endswith(f"OK: max relative difference {report.max_rel:.3e}")
    assert "kind" in str(report).splitlines()[1] and "kind" not in str(engine_report).splitlines()[1]
    (conv,) = [n for n in qann.net.graph.nodes if module_path(n) == "features.3"]  # the second convolution
    with torch.no_grad():
        qann.net.get_parameter(conv.args[1].target)[0].view(-1)[0] += 1.0
    wrong = verify(qann, snn, x)
    assert not wrong.ok and wrong.settled
    failing = [name for name, (_, rel, _) in zip(wrong.layers, wrong.worst) if rel > wrong.rtol]
    assert failing[0] == conv.name and failing[-1] == "<output>"
    assert all(rel <= wrong.rtol for _, rel, _ in wrong.worst[:wrong.layers.index(conv.name)])
    line = next(line for line in str(wrong).splitlines() if line.strip().startswith(conv.name + " "))
    assert "conv2d" in line and line.endswith("<-- exceeds rtol") and "FAILED" in str(wrong)


@pytest.mark.parametrize("k", [1.5, 3.0])
def test_other_k_is_a_reported_conversion_error(k):
    qann, snn, x = convert(random_cnn("vgg", 8), 6, 8)
    exact = snn.simulate(x).output
    other = snn.simulate(x, k=k).output
    assert snn.k == 2.0 and torch.equal(snn.simulate(x).output, exact)  # the override does not stick
    assert not torch.allclose(other, exact)
    assert not verify(qann, ILIFSNN(qann, k), x).ok
    # each layer keeps its range: an all-ones train decodes to the top level s (2^T - 1)
    step = torch.tensor(0.3, dtype=torch.float64)
    theta = ilif_threshold(step, 6, k)
    neuron = ILIF(theta, k=k, phase_steps=6, step_mode="s")
    assert float(neuron.spike_amplitude * sum(k ** j for j in range(6))) == pytest.approx(0.3 * 63, rel=1e-12)


def test_rate_coded_baseline_approaches_the_clipped_relu_with_many_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x = torch.rand(16, 6, dtype=torch.float64)
    qann = to_qann(model, levels=16, neuron="ilif", calibration=x)
    theta = float(qann.quantizers()["_1"].step.detach() * 16)
    with torch.no_grad():
        want = model[2](model[0](x).clamp(0, theta))
    rate = qann.to_rate_snn()
    steps = 2000
    result = rate.simulate(x, max_steps=steps)
    bound = model[2].weight.detach().abs().sum(1).max() * theta / steps * 1.01  # each hidden rate is off by < θ/steps
    assert float((result.output - want).abs().max()) <= float(bound)
    assert bool((result.settle_step == -1).all()) and result.per_step.shape == (steps, 16, 3)
    few = rate.simulate(x, max_steps=4).output
    assert float((few - want).abs().max()) > float(bound)


def test_calibration_sets_steps_from_the_percentile_and_qat_trains():
    torch.manual_seed(0)
    model = create("vgg_small", channels=(4, 4), hidden=8).eval()
    x = torch.rand(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    qann = to_qann(model, levels=8, neuron="ilif", calibration=x, percentile=100.0)
    with torch.no_grad():
        first = model.features[2](model.features[1](model.features[0](x)))
    step = lambda: float(qann.quantizers()["features_2"].step.detach())
    assert step() == pytest.approx(float(first.max()) / 8, rel=1e-6)
    before = step()
    history = fit(qann, x, y, TrainConfig(epochs=1, batch_size=32, progress=False))
    assert history[0]["loss"] == history[0]["loss"] and step() != before
    assert model.features[1].__class__ is nn.BatchNorm2d  # the ANN is untouched


def test_registered_cnns_build_and_run():
    for name, size in [("vgg_small", 8), ("resnet_small", 8), ("vgg_mnist", 28), ("resnet_mnist", 28)]:
        assert create(name)(torch.rand(2, 1, size, size)).shape == (2, 10)
    with pytest.raises(ValueError, match="odd"):
        VGGSmall(image_size=6, channels=(4, 4, 4), pools=("max", "max", "max"))


class BNFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn, self.fc = nn.BatchNorm1d(4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.relu(self.bn(x)))


@pytest.mark.parametrize("T,seed", [(3, 0), (5, 1), (8, 2)])
def test_transformer_operators_convert_exactly(T, seed):
    """Signed quantizers, LayerNorm, softmax, q kᵀ and attn v, class token and position embedding."""
    torch.manual_seed(seed)
    qann, snn, x = convert(TinyViT().double().eval(), T, seed, n=4)
    report = verify(qann, snn, x)
    assert report.ok, str(report)
    kinds = set(report.kinds)
    assert {"layer_norm", "softmax", "matmul", "Quantizer"} <= kinds
    assert report.kinds.count("Quantizer") == 12  # SpikeZIP-TF's 10 per block, the patch embedding, the head's input
    assert torch.equal(snn.simulate(x, pipelined=True).output, torch.stack(
        [snn.simulate(x[i:i + 1]).output[0] for i in range(len(x))]))
    with pytest.raises(TypeError, match="rate-coded baseline converts ReLU CNNs only"):
        qann.to_rate_snn()


@pytest.mark.parametrize("T,depth,heads,seed", [(2, 1, 2, 0), (4, 2, 1, 1), (6, 1, 4, 2)])
def test_vit_converts_with_ilif_exactly(T, depth, heads, seed):
    """The library's plain ViT (timm's structure) in iLIF coding, with SpikeZIP-TF's quantizer places."""
    torch.manual_seed(seed)
    vit = ViT(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=depth, num_heads=heads,
              act="relu").double().eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    qann, snn, x = convert(vit, T, seed, n=3)
    report = verify(qann, snn, x)
    assert report.ok, str(report)
    assert snn.depth == 13 * depth + 3  # a block's longest path crosses 13 neurons or period operators
    assert report.kinds.count("Quantizer") == 10 * depth + 2


def test_clear_errors():
    x = torch.rand(4, 1, 8, 8)
    model = create("vgg_small")
    with pytest.raises(ValueError, match="levels must be 2\\*\\*T"):
        to_qann(model, levels=12, neuron="ilif", calibration=x)
    with pytest.raises(ValueError, match="calibration="):
        to_qann(model, levels=16, neuron="ilif")
    with pytest.raises(ValueError, match="got dict; the iLIF SNN takes one input tensor, the model's first argument"):
        to_qann(model, levels=16, neuron="ilif", calibration={"pixel_values": x})
    with pytest.raises(ValueError, match="BatchNorm 'bn'"):
        to_qann(BNFirst(), levels=4, neuron="ilif", calibration=torch.rand(4, 4))
    with pytest.raises(TypeError, match="'1' \\(Tanh\\)"):
        to_qann(nn.Sequential(nn.Linear(4, 4), nn.Tanh()), levels=4, neuron="ilif", calibration=torch.rand(4, 4))
    with pytest.raises(TypeError, match="'1' \\(MaxPool2d\\) takes conv2d"):
        to_qann(nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.ReLU()), levels=4, neuron="ilif",
                calibration=x)
    snn = to_snn(to_qann(model, levels=4, neuron="ilif", calibration=x))
    with pytest.raises(ValueError, match="NaN"):
        snn.simulate(torch.full((1, 1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="step_mode"):
        snn.simulate(x, step_mode="x")
    with pytest.raises(ValueError, match="k must be > 1"):
        snn.simulate(x, k=1.0)
