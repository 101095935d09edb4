"""Other architectures of the same families convert without new code (issue 13): tiny random Hugging Face models whose
blocks differ from the seven of ``test_engine.py`` (factorised and shared layers, relative position biases,
disentangled attention, ALiBi, layer scale, parallel attention and MLP, partial rotary embeddings, GELU-tanh and
SwiGLU gates, shifted windows, spatially reduced attention, depthwise convolutions, channel-last LayerNorm,
convolutions unfolded into patches). Float64: the exact-state SNN's logits and every neuron's summed output are
bit-identical to the QANN's on new inputs, the event-driven SNN equals them to 1e-9 relative.
"""

from __future__ import annotations

import pytest
import torch
from test_engine import D, _calibrated, _text_inputs
from torch import nn

from spiketwin.convert import to_qann, to_snn, verify
from spiketwin.energy import report as report_energy

transformers = pytest.importorskip("transformers", reason="the nlp extra (transformers) is not installed")

LAYERS = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
TEXT = dict(vocab_size=64, max_position_embeddings=64)


def _model(name: str):
    T = transformers
    return {
        "albert": lambda: T.AlbertForSequenceClassification(T.AlbertConfig(embedding_size=8, **LAYERS, **TEXT)),
        "mpnet": lambda: T.MPNetForSequenceClassification(T.MPNetConfig(**LAYERS, **TEXT)),
        "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(num_key_value_heads=1, **LAYERS, **TEXT)),
        "gemma": lambda: T.GemmaForCausalLM(T.GemmaConfig(num_key_value_heads=1, head_dim=8, **LAYERS, **TEXT)),
        "phi": lambda: T.PhiForCausalLM(T.PhiConfig(**LAYERS, **TEXT)),
        "gpt-neox": lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**LAYERS, **TEXT)),
        "bloom": lambda: T.BloomForCausalLM(T.BloomConfig(vocab_size=64, hidden_size=16, n_layer=2, n_head=2)),
        "deberta-v2": lambda: T.DebertaV2ForSequenceClassification(T.DebertaV2Config(**LAYERS, **TEXT)),
        "beit": lambda: T.BeitForImageClassification(T.BeitConfig(
            image_size=16, patch_size=4, use_relative_position_bias=True, use_absolute_position_embeddings=True,
            **LAYERS, num_labels=5)),
        "dinov2": lambda: T.Dinov2ForImageClassification(T.Dinov2Config(
            image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
            use_swiglu_ffn=True, num_labels=5)),
        "swin": lambda: T.SwinForImageClassification(T.SwinConfig(
            image_size=16, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[2, 2], window_size=2, num_labels=5)),
        "convnext": lambda: T.ConvNextForImageClassification(T.ConvNextConfig(
            num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)),
        "resnet": lambda: T.ResNetForImageClassification(T.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)),
        "mobilevit": lambda: T.MobileViTForImageClassification(T.MobileViTConfig(
            image_size=32, hidden_sizes=[16, 16, 16], neck_hidden_sizes=[8, 8, 16, 16, 16, 16, 32], num_labels=5)),
        "segformer": lambda: T.SegformerForImageClassification(T.SegformerConfig(
            num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], num_attention_heads=[1, 2],
            patch_sizes=[3, 3], strides=[2, 2], mlp_ratios=[2, 2], num_labels=5)),
    }[name]()


CAUSAL = ("qwen2", "gemma", "phi", "gpt-neox", "bloom")
DYNAMIC = {"swin": "batch", "mobilevit": "batch"}
"""Models traced with only the batch dynamic: symbolic image sizes through Swin's windows took torch.export 116 s."""
IMAGE_SIZE = {"beit": 16, "dinov2": 16, "swin": 16, "convnext": 32, "resnet": 32, "mobilevit": 32, "segformer": 32}


def _inputs(name: str, seed: int) -> dict:
    if name in IMAGE_SIZE:
        size = IMAGE_SIZE[name]
        return {"pixel_values": torch.randn(3, 3, size, size, dtype=D, generator=torch.Generator().manual_seed(seed))}
    return _text_inputs(name in CAUSAL, seed)


@pytest.mark.parametrize("name", ["albert", "mpnet", "deberta-v2", "qwen2", "gemma", "phi", "gpt-neox", "bloom",
                                  "beit", "dinov2", "swin", "convnext", "mobilevit", "segformer"])
def test_other_architectures_convert_exactly_without_new_code(name):
    torch.manual_seed(0)
    qann = _calibrated(_model(name).to(D).eval(), _inputs(name, 0), dynamic=DYNAMIC.get(name, "all"))
    inputs = _inputs(name, 1)
    report = verify(qann, to_snn(qann), inputs)
    assert report.ok and report.max_rel == 0.0, str(report)
    assert verify(qann, to_snn(qann, state="events"), inputs).ok


class _Logits(torch.nn.Module):
    """A Hugging Face vision model as the iLIF SNN takes it: one input tensor in, the logits out."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


@pytest.mark.parametrize("name", ["resnet", "convnext"])
def test_ilif_converts_hugging_face_vision_models(name):
    """SpikeConverter on the same front end: a ResNet (BatchNorm folded, residual adds, max pooling; each ReLU a
    quantizer) and a ConvNeXt (GELU, LayerNorm: the engine's placement) convert with no code of their own."""
    torch.manual_seed(0)
    qann = to_qann(_Logits(_model(name).to(D).eval()), levels=2 ** 4, neuron="ilif",
                   calibration=_inputs(name, 0)["pixel_values"])
    report = verify(qann, to_snn(qann), _inputs(name, 1)["pixel_values"])
    assert report.ok and report.max_rel < 1e-12, str(report)


class _EncoderClassifier(nn.Module):
    def __init__(self, norm_first: bool, activation: str) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, activation=activation, batch_first=True,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


class _MultiheadAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.attention, self.head = nn.Linear(8, 16), nn.MultiheadAttention(16, 2, batch_first=True), \
            nn.Linear(16, 4)

    def forward(self, x):
        h = self.embed(x)
        return self.head((h + self.attention(h, h, h, need_weights=False)[0])[:, 0])


class _EinsumAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.head = nn.Linear(8, 24), nn.Linear(8, 4)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        attention = torch.einsum("bnd,bmd->bnm", q, k).softmax(-1)
        return self.head(torch.einsum("bnm,bmd->bnd", attention, v).mean(1))


class _CausalAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.head = nn.Linear(8, 24), nn.Linear(8, 4)

    def forward(self, x):
        q, k, v = self.qkv(x).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(out.transpose(1, 2).flatten(2))[:, -1]


class _GroupNormCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.norm = nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8)
        self.conv2, self.head = nn.Conv2d(8, 8, 3, stride=2), nn.Linear(8, 4)

    def forward(self, x):
        h = nn.functional.silu(self.conv2(nn.functional.gelu(self.norm(self.conv1(x)))))
        return self.head(nn.functional.adaptive_avg_pool2d(h, 1).flatten(1))


PLAIN = {"encoder-post-norm": (lambda: _EncoderClassifier(False, "relu"), (6, 8)),
         "encoder-pre-norm-gelu": (lambda: _EncoderClassifier(True, "gelu"), (6, 8)),
         "multihead-attention": (_MultiheadAttention, (6, 8)), "einsum-attention": (_EinsumAttention, (6, 8)),
         "causal-sdpa": (_CausalAttention, (6, 8)), "group-norm-cnn": (_GroupNormCNN, (3, 8, 8))}


@pytest.mark.parametrize("name", list(PLAIN))
def test_plain_pytorch_modules_convert_exactly(name):
    """PyTorch's own blocks (``nn.TransformerEncoder``, ``nn.MultiheadAttention``), attention written with ``einsum``
    (PyTorch's decomposition: permutes, reshapes, ``bmm``) or causal ``scaled_dot_product_attention``, GroupNorm."""
    make, shape = PLAIN[name]
    torch.manual_seed(0)
    x0, x1 = (torch.randn(3, *shape, dtype=D, generator=torch.Generator().manual_seed(s)) for s in (0, 1))
    qann = _calibrated(make().to(D).eval(), x0)
    report = verify(qann, to_snn(qann), x1)
    assert report.ok and report.max_rel == 0.0, str(report)
    assert verify(qann, to_snn(qann, state="events"), x1).ok
    if name == "einsum-attention":  # its two products are counted as products of two spike trains
        kinds = [row.kind for row in report_energy(to_snn(qann), x1).layers]
        assert kinds.count("product") == 2, kinds


@pytest.mark.parametrize("dynamic", ["all", "batch"])
def test_dynamic_says_which_input_sizes_the_qann_and_snn_take(dynamic):
    """``dynamic="all"``: the QANN and its SNN run any batch and sequence length (as a QANN traced at that size);
    ``dynamic="batch"``: any batch, and another sequence length fails with the guard that names the input's
    dimension and the traced size."""
    torch.manual_seed(0)
    model = _EncoderClassifier(True, "gelu").to(D).eval()
    x0 = torch.randn(3, 6, 8, dtype=D)
    qann = _calibrated(model, x0, dynamic=dynamic)
    assert qann.recipe["dynamic"] == dynamic
    snn = to_snn(qann)
    for x in (torch.randn(5, 6, 8, dtype=D), torch.randn(2, 9, 8, dtype=D)):
        if x.shape[1] != 6 and dynamic == "batch":
            for run in (qann, snn):
                with pytest.raises(ValueError, match=r"\(2, 9, 8\).*do not fit.*Guard failed: x\.size\(\)\[1\] == 6"):
                    run(x)
            continue
        assert verify(qann, snn, x).max_rel == 0.0
        traced_there = to_qann(model, example_inputs=x, dynamic=dynamic)
        traced_there.load_state_dict(qann.state_dict())
        assert torch.equal(qann(x), traced_there(x))  # computes what a QANN traced at this size computes
    with pytest.raises(ValueError, match="dynamic must be one of"):
        to_qann(model, example_inputs=x0, dynamic="sequence")
