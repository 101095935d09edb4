"""The conversion engine on unmodified models: any traced graph -> QANN -> SNN equal to the QANN.

Float64, tiny random configurations, several seeds: the exact-state SNN's logits and every neuron's summed output
are bit-identical to the QANN's; the event-driven SNN equals it to 1e-9 relative, with the same settle steps and
the same spike trains; text batches with padding give every real token the result it has alone.
"""

from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch
from torch import nn

from spiketwin import reset
from spiketwin.convert import to_qann, to_snn, verify
from spiketwin.convert.graph import ConversionError

transformers = pytest.importorskip("transformers", reason="the nlp extra (transformers) is not installed")
D = torch.float64


def _text_inputs(causal: bool, seed: int, batch: int = 3, length: int = 9) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 60, (batch, length), generator=g)
    if causal:
        return {"input_ids": ids, "use_cache": False}
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, length - 3:] = 0
    mask[2, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _hf(name: str):
    T = transformers
    small = dict(vocab_size=64, max_position_embeddings=32)
    return {
        "bert": lambda: T.BertForSequenceClassification(T.BertConfig(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, **small)),
        "roberta": lambda: T.RobertaForSequenceClassification(T.RobertaConfig(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, vocab_size=64,
            max_position_embeddings=40)),
        "distilbert": lambda: T.DistilBertForSequenceClassification(T.DistilBertConfig(
            dim=16, n_layers=2, n_heads=2, hidden_dim=32, **small)),
        "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32,
                                                       bos_token_id=0, eos_token_id=0)),
        "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=32,
            **small)),
        "vit": lambda: T.ViTForImageClassification(T.ViTConfig(
            image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, num_labels=5)),
        "deit": lambda: T.DeiTForImageClassification(T.DeiTConfig(
            image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, num_labels=5)),
    }[name]()


def _inputs(name: str, seed: int) -> dict:
    if name in ("vit", "deit"):
        return {"pixel_values": torch.randn(3, 3, 16, 16, dtype=D, generator=torch.Generator().manual_seed(seed))}
    return _text_inputs(name in ("gpt2", "llama"), seed)


def _calibrated(model: nn.Module, inputs, levels: int = 16, **options):
    qann = to_qann(model, levels=levels, example_inputs=inputs, **options)
    qann.train()
    qann(**inputs) if isinstance(inputs, dict) else qann(inputs)
    return qann.eval()


ARCHS = ["bert", "roberta", "distilbert", "gpt2", "llama", "vit", "deit"]


def assert_same_run(a, b) -> None:
    """Two simulations of the same inputs whose batches lost settled samples at different steps (another chunk, a
    late read, another device): the same output and settle steps, bit for bit, and the same per-step outputs from a
    sample's settle step on; before it a running sample computed beside other samples, and a matrix product may
    round its row differently in another batch (docs/spikezip.md), so there they agree to a few ulps."""
    assert torch.equal(a.output, b.output) and torch.equal(a.settle_step, b.settle_step)
    assert a.per_step.shape == b.per_step.shape
    steps = torch.arange(1, len(a.per_step) + 1)[:, None]
    settled = (a.settle_step >= 0) & (steps >= a.settle_step)  # [T, B]
    settled = settled[(..., *[None] * (a.per_step.dim() - 2))].expand_as(a.per_step)
    assert torch.equal(a.per_step[settled], b.per_step[settled])
    scale = float(a.output.abs().max())
    torch.testing.assert_close(a.per_step, b.per_step, rtol=0, atol=64 * torch.finfo(a.output.dtype).eps * scale)


@pytest.mark.parametrize("name", ARCHS)
def test_hugging_face_models_convert_exactly(name):
    torch.manual_seed(ARCHS.index(name))
    model = _hf(name).to(D).eval()
    qann = _calibrated(model, _inputs(name, 0))
    exact, events = to_snn(qann), to_snn(qann, state="events")
    for seed in (1,):  # new inputs, and another batch size / sequence length than traced
        inputs = _inputs(name, seed)
        if "input_ids" in inputs:
            inputs = {k: v[:, :7].repeat(2, 1) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        report = verify(qann, exact, inputs)
        assert report.ok and report.max_rel == 0.0, str(report)
        result = exact.simulate(inputs)  # stops at the last settle step, whether samples can leave or not (GPT-2)
        assert len(result.per_step) == int(result.settle_step.max())
        report_events = verify(qann, events, inputs)
        assert report_events.ok, str(report_events)
        assert torch.equal(report.settle_step, report_events.settle_step)


def _cast(inputs: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in inputs.items()}


@pytest.mark.parametrize("name,dtype", [("gpt2", torch.bfloat16), ("vit", torch.float16)])
def test_a_qann_moved_to_another_dtype_computes_as_one_traced_in_it(name, dtype):
    """A graph traced in float32 fixes float32 in its casts and tensor-making nodes; moved to bfloat16 or float16 it
    must compute as the same model traced in that dtype with the same quantizer steps does, bit for bit (not fail
    on a float32 cast before a half-precision matrix product, nor compute partly in float32)."""
    torch.manual_seed(4)
    model = _hf(name).eval()
    moved = copy.deepcopy(_calibrated(model, _cast(_inputs(name, 0), torch.float32))).to(dtype)
    traced = to_qann(copy.deepcopy(model).to(dtype), example_inputs=_cast(_inputs(name, 0), dtype)).eval()
    traced.load_state_dict(moved.state_dict())
    inputs = _cast(_inputs(name, 1), dtype)
    with torch.no_grad():
        expected = traced(**inputs).logits
        assert expected.dtype == dtype and torch.equal(moved(**inputs).logits, expected)


@pytest.mark.parametrize("name,dtype,traced_in", [("bert", torch.bfloat16, "float32"), ("llama", torch.float16, "half"),
                                                  ("vit", torch.bfloat16, "half")])
def test_half_precision_snn_is_bit_identical(name, dtype, traced_in):
    """The exact state in bfloat16 / float16 (the QANN traced in it, or traced in float32 and moved): every neuron's
    summed output and the logits equal the QANN's bit for bit, as in float32 and float64."""
    torch.manual_seed(5)
    model = _hf(name).eval()
    if traced_in == "float32":
        qann = _calibrated(model, _cast(_inputs(name, 0), torch.float32)).to(dtype)
    else:
        qann = _calibrated(model.to(dtype), _cast(_inputs(name, 0), dtype))
    report = verify(qann, to_snn(qann), _cast(_inputs(name, 1), dtype))
    assert report.ok and report.max_rel == 0.0, str(report)


@pytest.mark.parametrize("name", ["bert", "vit", "roberta"])
def test_ten_quantizers_per_block(name):
    torch.manual_seed(0)
    qann = to_qann(_hf(name).eval(), example_inputs={k: v.float() if v.is_floating_point() else v
                                                      for k, v in _inputs(name, 0).items()})
    assert len(qann.labels) == 10 * 2 + 2, qann.labels
    unsigned = [label for label, q in qann.quantizers() if not q.signed]
    assert len(unsigned) == 2 * (1 if name != "vit" else 1) and all("softmax" in u for u in unsigned)


def test_padding_never_changes_a_real_token():
    torch.manual_seed(3)
    model = _hf("bert").to(D).eval()
    qann = _calibrated(model, _inputs("bert", 0))
    snn = to_snn(qann)
    inputs = _text_inputs(False, 5)
    alone = {"input_ids": inputs["input_ids"][2:3, :4], "attention_mask": inputs["attention_mask"][2:3, :4]}
    padded = snn.simulate(inputs).output[2]
    assert torch.allclose(snn.simulate(alone).output[0], padded, rtol=1e-12, atol=1e-12)


def test_exact_and_event_spike_trains_are_identical():
    torch.manual_seed(4)
    model = _hf("llama").to(D).eval()
    inputs = _inputs("llama", 0)
    qann = _calibrated(model, inputs)
    trains = {}
    for state in ("exact", "events"):
        snn = to_snn(qann, state=state)
        reset(snn.model)
        trains[state] = []
        for _ in range(30):
            snn(**inputs)
            trains[state].append([n.spikes.clone() for n in snn.neurons])
    assert any(bool(s.ne(0).any()) for step in trains["exact"] for s in step)
    for exact, events in zip(trains["exact"], trains["events"]):
        for a, b in zip(exact, events):
            assert torch.equal(a, b)


def test_relu_activation_swap_and_cnn_with_batch_norm_and_max_pool():
    torch.manual_seed(5)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.GELU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(6, 3)).to(D)
    for bn in (cnn[1], cnn[5]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 1, 8, 8, dtype=D)
    qann = _calibrated(cnn.eval(), x, activation="relu")
    assert all(not q.signed for _, q in qann.quantizers())  # after ReLU / max pool: unsigned
    assert not any("gelu" in str(n.target) for n in qann.model.graph.nodes)
    for state in ("exact", "events"):
        report = verify(qann, to_snn(qann, state=state), torch.randn(5, 1, 8, 8, dtype=D))
        assert report.ok, str(report)


def test_float32_exact_state_is_bit_identical_and_multi_spike_settles_faster():
    torch.manual_seed(6)
    model = _hf("vit").eval()
    x = {"pixel_values": torch.randn(6, 3, 16, 16)}
    qann = _calibrated(model, x, levels=32)
    one = to_snn(qann).simulate(x)
    many = to_snn(qann, spikes_per_step=32).simulate(x)
    reference = qann(**x).logits
    assert torch.equal(one.output, reference) and torch.equal(many.output, reference)
    assert int(many.settle_step.max()) < int(one.settle_step.min())


def test_wide_levels_keep_16_bit_counts_and_stay_bit_identical():
    """512 levels: the neurons' counts need int16 (the native kernel's 16-bit variant), still the QANN's bits."""
    torch.manual_seed(7)
    x = {"pixel_values": torch.randn(4, 3, 16, 16)}
    qann = _calibrated(_hf("vit").eval(), x, levels=512)
    snn = to_snn(qann, spikes_per_step=64)
    result = snn.simulate(x)
    assert {n.count.dtype for n in snn.neurons} == {torch.int16}
    assert torch.equal(result.output, qann(**x).logits)


class _Argmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x).argmax(-1)  # an integer out of the signal: no spike train carries it


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent Python control flow
            return self.fc(x)
        return -self.fc(x)


class _ReturnsACache(nn.Module):
    class KeyValueCache:
        """Stands for a key-value cache: an object torch.export cannot return."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x), self.KeyValueCache()


def test_uncovered_node_and_untraceable_model_get_clear_errors():
    with pytest.raises(ConversionError, match=r"argmax.*test_engine.py.*torch.int64 value that leaves"):
        to_qann(_Argmax(), example_inputs=torch.randn(2, 4))
    with pytest.raises(ConversionError, match="torch.export could not trace _Untraceable.*control flow"):
        to_qann(_Untraceable(), example_inputs=torch.randn(2, 4))
    with pytest.raises(ConversionError, match="KeyValueCache.*needs use_cache=False among example_inputs"):
        to_qann(_ReturnsACache(), example_inputs=torch.randn(2, 4))
    with pytest.raises(ValueError, match="example_inputs"):
        to_qann(nn.Linear(3, 3))


def test_python_values_among_keyword_inputs_are_fixed_into_the_graph():
    """BERT takes ``return_dict`` through ``**kwargs``, where torch.export cannot give a mix of tensors and Python
    values dynamic shapes: such a value is fixed into the graph, which is then called without it or with that value."""
    torch.manual_seed(0)
    inputs = {**_inputs("bert", 0), "return_dict": False}
    qann = _calibrated(_hf("bert").to(D).eval(), inputs)
    tensors = {k: v for k, v in inputs.items() if k != "return_dict"}
    out = qann(**inputs)
    assert isinstance(out, tuple) and torch.equal(out[0], qann(**tensors)[0])
    snn = to_snn(qann)
    report = verify(qann, snn, inputs)
    assert report.ok and report.max_rel == 0.0, str(report)
    wrong = {**inputs, "return_dict": True}
    with pytest.raises(ValueError, match="return_dict=True was fixed to False when the model was traced"):
        qann(**wrong)
    with pytest.raises(ValueError, match="return_dict=True was fixed to False when the model was traced"):
        snn.simulate(wrong)


def test_a_causal_model_is_traced_without_its_key_value_cache_unless_told():
    """GPT-2 returns a key-value cache by default, which torch.export cannot return: traced from its token ids alone,
    it gets ``use_cache=False`` (a cache serves generation, not a spiking forward) and converts exactly."""
    torch.manual_seed(0)
    inputs = {"input_ids": _text_inputs(True, 0)["input_ids"]}
    qann = _calibrated(_hf("gpt2").to(D).eval(), inputs)
    assert qann.fixed == {"use_cache": False}
    report = verify(qann, to_snn(qann), {"input_ids": _text_inputs(True, 1)["input_ids"]})
    assert report.ok and report.max_rel == 0.0, str(report)


class _MaskInKwargs(nn.Module):
    """Takes its mask under ``**kwargs`` and writes into its input, as some models' forwards do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x, scale: float = 1.0, **kwargs):
        x.mul_(scale)
        return self.fc2((self.fc1(x) * kwargs["mask"]).relu())


def test_tensors_under_var_keyword_are_inputs_and_inputs_written_in_place_stay_unchanged():
    """torch.export 2.13 fails on tensors under ``**kwargs`` ("Must provide a tree_name"; FNet's ignored
    ``attention_mask``); they are traced as named inputs (the model keeps its own ``forward``). A forward that
    writes into its input leaves the caller's tensor alone once converted: the graph computes from its own copy."""
    torch.manual_seed(0)
    model = _MaskInKwargs().to(D)
    x, mask = torch.randn(3, 4, dtype=D), (torch.rand(3, 8) > 0.3).to(D)
    qann = _calibrated(model, {"x": x, "mask": mask, "scale": 2.0})
    assert "forward" not in vars(model)
    before = x.clone()
    y = qann(x=x, mask=mask)
    assert torch.equal(x, before)
    expected = model(x.clone(), 2.0, mask=mask)  # the float model; the QANN is its quantized twin
    torch.testing.assert_close(y, expected, rtol=0.2, atol=0.2)
    assert not torch.equal(qann(x=x, mask=torch.zeros_like(mask)), y)  # the mask reaches the graph
    report = verify(qann, to_snn(qann), {"x": x, "mask": mask})
    assert report.ok and report.max_rel == 0.0, str(report)
    assert torch.equal(x, before)


class _RescalesOnFirstCall(nn.Module):
    """Halves a weight in place on its first call in eval mode, as RWKV rescales its layers; or, with ``every``,
    counts its calls in a buffer."""

    def __init__(self, every: bool = False) -> None:
        super().__init__()
        self.fc1, self.fc2, self.rescaled, self.every = nn.Linear(4, 8), nn.Linear(8, 3), False, every
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        if not self.training and not self.rescaled:
            with torch.no_grad():
                self.fc2.weight.div_(2)
            self.rescaled = True
        if self.every:
            self.calls.add_(1)
        return self.fc2(self.fc1(x).relu())


def test_a_model_that_changes_its_own_weights_on_its_first_call_converts_as_it_computes_after():
    """A forward that writes into its parameters keeps state from call to call; traced as it is, the graph would
    write again at every call (QAT: "a leaf Variable that requires grad is being used in an in-place operation").
    A change made on the first call only (RWKV) is made once on the traced copy, which is traced again: the QANN
    computes what the model computes, the user's model is left as it was. A change at every call is refused."""
    torch.manual_seed(0)
    model, x = _RescalesOnFirstCall().to(D).eval(), torch.randn(3, 4, dtype=D)
    weight = model.fc2.weight.clone()
    qann = _calibrated(model, x)
    assert torch.equal(model.fc2.weight, weight) and not model.rescaled
    twin = _RescalesOnFirstCall().to(D).eval()
    twin.load_state_dict(model.state_dict())
    twin.fc2.weight.data.div_(2)
    twin.rescaled = True
    assert torch.equal(qann.model.fc2.weight, twin.fc2.weight)
    report = verify(qann, to_snn(qann), torch.randn(3, 4, dtype=D))
    assert report.ok and report.max_rel == 0.0, str(report)
    with pytest.raises(ConversionError, match=r"_RescalesOnFirstCall.forward changes its own calls in place at every"):
        to_qann(_RescalesOnFirstCall(every=True), example_inputs=torch.randn(3, 4))


class _WeightsInAFunction(nn.Module):
    """Weights applied by ops the rules do not know as products (``nn.Bilinear``, ``tensordot``), or, with
    ``linear``, by a linear layer."""

    def __init__(self, linear: bool = False) -> None:
        super().__init__()
        self.fc, self.linear = nn.Linear(4, 6), linear
        self.bilinear, self.w, self.out = nn.Bilinear(6, 6, 6), nn.Parameter(torch.randn(6, 6)), nn.Linear(6, 3)

    def forward(self, x):
        h = self.fc(x).relu()
        if self.linear:
            return self.out(nn.functional.linear(h, self.w))
        return self.out(self.bilinear(h, h) + torch.tensordot(h, self.w.t(), dims=([1], [0])))


def test_weights_applied_inside_a_non_linear_function_are_named_in_a_warning():
    """An op the rules do not know as a product becomes part of a non-linear function: the SNN stays exact, but
    those weights do not act on spikes; the user is told which, and where."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, dtype=D)
    with pytest.warns(UserWarning, match=r"aten.bilinear in bilinear .* the signal by bilinear.weight") as seen:
        qann = _calibrated(_WeightsInAFunction().to(D), x)
    assert any(re.search(r"aten.tensordot in the model .*test_engine.py.* by w inside", str(w.message)) for w in seen)
    report = verify(qann, to_snn(qann), x)
    assert report.ok and report.max_rel == 0.0, str(report)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="to_qann")
        _calibrated(_WeightsInAFunction(linear=True).to(D), x)


@pytest.mark.slow
def test_vit_s_16_224_float32_bit_identical_and_hugging_face_vit_s_float64():
    """Issue 19's scale check (spiketwin's ViT-S/16-224, random weights, 16 levels: float32 logits bit-identical
    to the QANN's, where the event-driven SNN flips neurons) and issue 13's (a ViT-S-sized Hugging Face ViT
    converts and verifies in float64)."""
    from spiketwin.models import create

    torch.manual_seed(7)
    x = torch.randn(2, 3, 224, 224)
    qann = _calibrated(create("vit_small_patch16_224").eval(), torch.randn(4, 3, 224, 224))
    result = to_snn(qann).simulate(x)
    assert bool((result.settle_step > 0).all())
    with torch.no_grad():
        assert torch.equal(result.output, qann(x))
    vit_s = transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
        intermediate_size=1536, num_labels=1000)).to(D).eval()
    images = {"pixel_values": torch.randn(2, 3, 224, 224, dtype=D)}
    qann = _calibrated(vit_s, images)
    report = verify(qann, to_snn(qann, state="events"), images)
    assert report.ok, str(report)


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama", "vit"])
def test_a_step_can_start_before_every_attention_weights_neurons(name):
    """The softmax neurons are the last of an attention to settle; a cut before them carries three values (the
    residual stream or the block's input, v's neuron output, the softmax output) and must exist in every block, or
    the steps until they settle run from the block's first norm."""
    torch.manual_seed(3)
    snn = to_snn(_calibrated(_hf(name).to(D).eval(), _inputs(name, 0), levels=8))
    cuts = snn._resume()
    softmax = [i for i, label in enumerate(snn.labels) if "softmax" in label.split(":")[-1]]  # masked: _safe_softmax
    before = {cuts.order[rank]: carried for rank, carried in zip(cuts.ranks, cuts.carried) if rank < len(cuts.order)}
    assert len(softmax) == 2 and all(i in before and len(before[i]) == 3 for i in softmax), before


def test_moving_a_qann_moves_the_graphs_tensor_making_nodes():
    """A traced graph fixes the device of its ``arange`` / ``zeros`` nodes; ``.to(device)`` points them at the new one
    (checked with the meta device, which needs no GPU)."""
    torch.manual_seed(8)
    qann = to_qann(_hf("llama").eval(), example_inputs=_inputs("llama", 0))
    made = [n for n in qann.model.graph.nodes if isinstance(n.kwargs.get("device"), torch.device)]
    assert made and all(n.kwargs["device"].type == "cpu" for n in made)
    qann.to("meta")
    assert all(n.kwargs["device"].type == "meta" for n in made)
    assert all(p.device.type == "meta" for p in qann.parameters())


@pytest.mark.parametrize("chunk", [1, 3])
def test_the_start_moves_as_far_as_the_values_recorded_between_two_checks_reach(chunk, monkeypatch):
    """Between two settle checks (``chunk`` steps) the settled head may pass several cuts per step; every step
    records the values of the next ``AHEAD * chunk`` cuts, so at a check the start moves to the last cut before the
    first pending neuron, or ``AHEAD * chunk`` cuts on, whichever is nearer (``AHEAD = 1`` here: one cut a step)."""
    from spiketwin.convert import resume
    from spiketwin.convert.resume import Resume

    monkeypatch.setattr(resume, "AHEAD", 1)
    torch.manual_seed(3)
    qann = _calibrated(_hf("vit").to(D).eval(), _inputs("vit", 0), levels=8)
    snn, inputs = to_snn(qann), _inputs("vit", 2)
    moves = []
    start = Resume.start

    def checked(self, busy):
        first = busy.index(True) if True in busy else len(busy)
        before = max(i for i, rank in enumerate(self.ranks) if rank <= first)
        moves.append((self.current, before, start(self, busy)))
        self.current = moves[-1][-1]
        return self.current

    monkeypatch.setattr(Resume, "current", 0, raising=False)
    monkeypatch.setattr(Resume, "start", checked)
    result = snn.simulate(inputs, chunk=chunk)
    assert all(min(before, current + chunk) <= new <= before for current, before, new in moves), moves
    assert any(before - current >= 2 for current, before, _ in moves)  # the head passed several cuts in a chunk
    assert snn._resume(chunk).values == {}  # nothing recorded is held past the run
    with torch.no_grad():
        assert torch.equal(result.output, qann(**inputs).logits)


@pytest.mark.parametrize("name,ahead", [("bert", 12), ("gpt2", 12), ("llama", 12), ("vit", 12), ("vit", 1)])
def test_starting_after_the_settled_head_of_the_graph_changes_no_bit(name, ahead, monkeypatch):
    """``simulate`` starts each step after the neurons at the head of the graph that can no longer move, from the
    values they left (:mod:`spiketwin.convert.resume`): the same outputs, per-step outputs and settle steps as
    running the whole graph every step, with padded text and samples leaving the batch (the confirmation forward of
    the whole batch starts after the head too); also when only the next cut's values are recorded (``AHEAD = 1``: the
    start advances one recorded cut at a time)."""
    from spiketwin.convert import resume
    from spiketwin.convert.resume import Resume

    monkeypatch.setattr(resume, "AHEAD", ahead)
    torch.manual_seed(3)
    qann = _calibrated(_hf(name).to(D).eval(), _inputs(name, 0), levels=8)
    snn = to_snn(qann)
    inputs = _inputs(name, 2)
    started = []
    run = Resume.run
    monkeypatch.setattr(Resume, "run", lambda self, cut, *a: started.append(cut) or run(self, cut, *a))
    skipping = snn.simulate(inputs)
    whole = snn.simulate(inputs, skip_settled=False)
    assert len(started) - len(skipping.per_step) in (0, 1)  # and the confirmation forward when samples left
    assert max(started) > 0 or name == "gpt2"  # later steps started at a later cut (not in this GPT-2: its 5th
    # neuron moves until the last step)
    assert torch.equal(skipping.output, whole.output) and torch.equal(skipping.per_step, whole.per_step)
    assert torch.equal(skipping.settle_step, whole.settle_step)
    with torch.no_grad():
        assert torch.equal(skipping.output, qann(**inputs).logits)


@pytest.mark.parametrize("name,chunk", [("bert", 1), ("llama", 1), ("vit", 1), ("vit", 3)])
def test_reading_the_settle_flags_one_check_late_changes_no_bit(name, chunk, monkeypatch):
    """``read_late``: each check decides from the flags the check before copied to the host (on CUDA the host then
    never waits for the steps just queued). Samples leave (one at a time here) and the start moves a check later;
    outputs and settle steps stay those of the checks read at once (per-step outputs too, to round-off before a
    sample settles, as samples leave later), and the QANN's bits."""
    from spiketwin.convert import snn as snn_module

    monkeypatch.setattr(snn_module, "LEAVE_AT", 10 ** 6)  # every settled sample leaves at the next decision
    torch.manual_seed(3)
    qann = _calibrated(_hf(name).to(D).eval(), _inputs(name, 0), levels=8)
    snn, inputs = to_snn(qann), _inputs(name, 2)
    at_once, late = snn.simulate(inputs, chunk=chunk), snn.simulate(inputs, chunk=chunk, read_late=True)
    assert_same_run(late, at_once)
    assert len(set(at_once.settle_step.tolist())) > 1  # samples settled at different steps, so some left early
    with torch.no_grad():
        out = qann(**inputs)
        assert torch.equal(late.output, getattr(out, "logits", out))


def test_a_late_check_moves_the_start_one_check_later(monkeypatch):
    """Without early exit (no samples leave), the cut each step starts at with ``read_late`` is the one the step
    before started at when the flags are read at once."""
    from spiketwin.convert.resume import Resume

    torch.manual_seed(3)
    qann = _calibrated(_hf("vit").to(D).eval(), _inputs("vit", 0), levels=8)
    snn, inputs = to_snn(qann), _inputs("vit", 2)
    started = {}
    run = Resume.run
    for late in (False, True):
        started[late] = []
        monkeypatch.setattr(Resume, "run",
                            lambda self, cut, *a, log=started[late]: log.append(cut) or run(self, cut, *a))
        snn.simulate(inputs, max_steps=24, early_exit=False, read_late=late)
    assert len(set(started[False])) > 2, started  # the start moved several times
    assert started[True] == [0, *started[False][:-1]], started
