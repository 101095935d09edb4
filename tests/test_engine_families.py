"""Other architectures of the same families convert without new code (issue 13): tiny random Hugging Face models whose
blocks differ from the seven of ``test_engine.py`` (factorised and shared layers, relative position biases,
disentangled attention, Fourier token mixing, ALiBi, layer scale, parallel attention and MLP, partial rotary
embeddings, GELU-tanh and SwiGLU gates, shifted windows, spatially reduced attention, depthwise convolutions,
channel-last LayerNorm, convolutions unfolded into patches, sliding-window layers, pooled queries, an
encoder-decoder, audio front ends, a selective state-space scan), one output of encoders without a head, and queries
that see no key. Float64: the exact-state SNN's logits and every neuron's summed output are bit-identical to the
QANN's on new inputs, the event-driven SNN equals them to 1e-9 relative.
"""

from __future__ import annotations

import pytest
import torch
from test_engine import D, _calibrated, _hf, _text_inputs
from test_engine import _inputs as _core_inputs
from torch import nn

from spiketwin import simulate
from spiketwin.convert import to_qann, to_snn, verify
from spiketwin.convert.graph import ConversionError, tensor_args
from spiketwin.energy import report as report_energy
from spiketwin.inputs import select

transformers = pytest.importorskip("transformers", reason="the nlp extra (transformers) is not installed")

LAYERS = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
TEXT = dict(vocab_size=64, max_position_embeddings=64)


def _model(name: str):
    T = transformers
    return {
        "albert": lambda: T.AlbertForSequenceClassification(T.AlbertConfig(embedding_size=8, **LAYERS, **TEXT)),
        "mpnet": lambda: T.MPNetForSequenceClassification(T.MPNetConfig(**LAYERS, **TEXT)),
        "fnet": lambda: T.FNetForSequenceClassification(T.FNetConfig(  # attention_mask lands in its **kwargs
            vocab_size=64, hidden_size=16, num_hidden_layers=1, intermediate_size=32, max_position_embeddings=64)),
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
        "gemma2": lambda: T.Gemma2ForCausalLM(T.Gemma2Config(num_key_value_heads=1, head_dim=8, **LAYERS, **TEXT)),
        "mamba": lambda: T.MambaForCausalLM(T.MambaConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=2, state_size=4, expand=2)),
        "modernbert": lambda: T.ModernBertForSequenceClassification(T.ModernBertConfig(
            global_attn_every_n_layers=2, local_attention=4, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            cls_token_id=1, sep_token_id=2, **LAYERS, **TEXT)),
        "funnel": lambda: T.FunnelForSequenceClassification(T.FunnelConfig(
            vocab_size=64, block_sizes=[1, 1], d_model=16, n_head=2, d_head=8, d_inner=32)),
        "t5": lambda: T.T5ForConditionalGeneration(T.T5Config(
            vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)),
        "whisper": lambda: T.WhisperForAudioClassification(T.WhisperConfig(
            d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32, num_mel_bins=8,
            max_source_positions=8, num_labels=3)),
        "wav2vec2": lambda: T.Wav2Vec2ForSequenceClassification(T.Wav2Vec2Config(
            conv_dim=(8, 8), conv_stride=(4, 2), conv_kernel=(8, 4), num_conv_pos_embeddings=4,
            num_conv_pos_embedding_groups=2, vocab_size=8, num_labels=3, **LAYERS)),
        "levit": lambda: T.LevitForImageClassification(T.LevitConfig(
            image_size=32, hidden_sizes=[16, 32, 32], num_attention_heads=[1, 2, 2], depths=[1, 1, 1],
            key_dim=[8, 8, 8], num_labels=5)),
        "mixtral": lambda: T.MixtralForCausalLM(T.MixtralConfig(
            num_local_experts=4, num_experts_per_tok=2, num_key_value_heads=1, **LAYERS, **TEXT)),
        "qwen2-moe": lambda: T.Qwen2MoeForCausalLM(T.Qwen2MoeConfig(
            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8, shared_expert_intermediate_size=16,
            num_key_value_heads=1, **LAYERS, **TEXT)),
        "gpt-oss": lambda: T.GptOssForCausalLM(T.GptOssConfig(
            num_local_experts=4, num_experts_per_tok=2, num_key_value_heads=1, head_dim=8, sliding_window=4,
            layer_types=["sliding_attention", "full_attention"], **LAYERS, **TEXT)),
        "deepseek-v3": lambda: T.DeepseekV3ForCausalLM(T.DeepseekV3Config(
            n_routed_experts=4, num_experts_per_tok=2, n_group=2, topk_group=1, moe_intermediate_size=8,
            first_k_dense_replace=1, kv_lora_rank=8, q_lora_rank=8, qk_rope_head_dim=8, qk_nope_head_dim=8,
            v_head_dim=8, num_key_value_heads=2, **LAYERS, **TEXT)),
        "segformer": lambda: T.SegformerForImageClassification(T.SegformerConfig(
            num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], num_attention_heads=[1, 2],
            patch_sizes=[3, 3], strides=[2, 2], mlp_ratios=[2, 2], num_labels=5)),
    }[name]()


CAUSAL = ("qwen2", "gemma", "phi", "gpt-neox", "bloom", "gemma2", "mamba", "mixtral", "qwen2-moe", "gpt-oss",
          "deepseek-v3")
MIXTURES = ("mixtral", "qwen2-moe", "gpt-oss", "deepseek-v3")
DYNAMIC = {"swin": "batch", "mobilevit": "batch"}
"""Models traced with only the batch dynamic: symbolic image sizes through Swin's windows took torch.export 116 s."""
IMAGE_SIZE = {"beit": 16, "dinov2": 16, "swin": 16, "convnext": 32, "resnet": 32, "mobilevit": 32, "segformer": 32,
              "levit": 32}
AUDIO = {"whisper": ("input_features", (8, 16)), "wav2vec2": ("input_values", (200,))}
"""Whisper takes log-mel features [B, mel bins, frames], wav2vec 2.0 the waveform [B, samples]."""


def _inputs(name: str, seed: int) -> dict:
    if name in IMAGE_SIZE:
        size = IMAGE_SIZE[name]
        return {"pixel_values": torch.randn(3, 3, size, size, dtype=D, generator=torch.Generator().manual_seed(seed))}
    if name in AUDIO:
        key, shape = AUDIO[name]
        return {key: torch.randn(3, *shape, dtype=D, generator=torch.Generator().manual_seed(seed))}
    inputs = _text_inputs(name in CAUSAL, seed)
    if name == "t5":  # an encoder-decoder: the decoder reads the first tokens
        inputs = {"input_ids": inputs["input_ids"], "decoder_input_ids": inputs["input_ids"][:, :5], "use_cache": False}
    return inputs


@pytest.mark.parametrize("name", ["albert", "mpnet", "fnet", "deberta-v2", "qwen2", "gemma", "phi", "gpt-neox", "bloom",
                                  "gemma2", "mamba", "modernbert", "funnel", "t5", "whisper", "wav2vec2", "mixtral",
                                  "qwen2-moe", "gpt-oss", "deepseek-v3", "beit", "dinov2", "swin", "convnext",
                                  "mobilevit", "segformer", "levit"])
def test_other_architectures_convert_exactly_without_new_code(name):
    torch.manual_seed(0)
    qann = _calibrated(_model(name).to(D).eval(), _inputs(name, 0), dynamic=DYNAMIC.get(name, "all"))
    inputs = _inputs(name, 1)
    report = verify(qann, to_snn(qann), inputs)
    assert report.ok and report.max_rel == 0.0, str(report)
    assert verify(qann, to_snn(qann, state="events"), inputs).ok
    if name in MIXTURES:  # the experts spike: neurons inside them, not one analog function around the whole layer
        assert sum(".experts" in label for label in qann.labels) >= 3, qann.labels


def test_a_product_written_with_baddbmm_multiplies_spike_trains():
    """BLOOM adds its ALiBi bias to ``q @ kᵀ`` with ``baddbmm``; traced as PyTorch decomposes it
    (``beta * bias + alpha * bmm``), both attention products multiply neurons' outputs, as in every other model,
    instead of ``q @ kᵀ`` being part of one non-linear function with the softmax."""

    def from_neuron(node) -> bool:  # through reshapes and transposes
        while node.op == "call_function" and len(tensor_args(node)) == 1:
            node = tensor_args(node)[0]
        return node.op == "call_module" and str(node.target).startswith("quantizers.")

    torch.manual_seed(0)
    qann = _calibrated(_model("bloom").to(D).eval(), _inputs("bloom", 0))
    products = [n for n in qann.model.graph.nodes if n.target is torch.ops.aten.bmm.default]
    assert len(products) == 4 and all(from_neuron(a) for n in products for a in n.args), products


@pytest.mark.parametrize("name", ["mixtral", "gpt-oss"])
def test_experts_traced_densely_compute_what_the_sparse_layer_does(name):
    """Mixtures of experts trace with every expert on every token, weighted by the router's top-k weights scattered
    into a dense gate (``convert.experts``): the same logits as transformers' sparse dispatch (its ``eager``
    implementation; its default grouped matrix product takes no float64), and the model's own implementation is
    back after the trace."""
    from spiketwin.convert.experts import dense_experts

    torch.manual_seed(0)
    model = _model(name).to(D).eval()
    before = model.config._experts_implementation
    inputs = _inputs(name, 1)
    model.config._experts_implementation = "eager"
    sparse = model(**inputs).logits
    with dense_experts(model):
        dense = model(**inputs).logits
    assert model.config._experts_implementation == "eager"
    torch.testing.assert_close(dense, sparse, rtol=1e-12, atol=1e-12)
    model.config._experts_implementation = before
    to_qann(model, example_inputs=_inputs(name, 0))
    assert model.config._experts_implementation == before


def test_a_sparse_mixture_path_is_named_in_a_warning(monkeypatch):
    """Without the dense route, transformers' grouped expert product becomes part of one non-linear function: exact,
    but the experts' weights do not act on spikes. The warning names them."""
    import contextlib

    import spiketwin.convert.graph as graph

    monkeypatch.setattr(graph, "dense_experts", lambda model: contextlib.nullcontext())
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"in model.layers.0.mlp.experts .* by model.layers.0.mlp.experts.gate_up_pr"):
        to_qann(_model("mixtral").to(D).eval(), example_inputs=_inputs("mixtral", 0))


@pytest.mark.parametrize("name", ["gpt2", "mixtral", "swin"])
def test_samples_folded_into_one_dimension_settle_one_by_one(name):
    """GPT-2's Conv1D and a mixture of experts flatten ``[B, L, H]`` to ``[B*L, H]``, Swin folds its windows into
    the batch; the neurons there read such a value with the samples unfolded (``convert.samples``), so each sample
    leaves the batch at its own settle step, the one it has when simulated alone (before, the batch's samples
    settled together at the last one's step). The event-driven SNN's running sums and differences there keep their
    samples folded and drop them the same way."""
    torch.manual_seed(0)
    model, inputs = (_hf(name), _core_inputs) if name == "gpt2" else (_model(name), _inputs)
    qann = _calibrated(model.to(D).eval(), inputs(name, 0), dynamic=DYNAMIC.get(name, "all"))
    x = inputs(name, 1)
    assert all(dim is not None for dim in qann.batch_dims)
    for state in ("exact", "events"):
        snn = to_snn(qann, state=state)
        assert snn.droppable, state
        together = simulate(snn, x)
        alone = [int(simulate(snn, select(x, torch.tensor([b]))).settle_step[0]) for b in range(3)]
        assert together.settle_step.tolist() == alone and len(set(alone)) > 1, (state, together.settle_step, alone)
        torch.testing.assert_close(together.output, qann(**x).logits, rtol=1e-9 if state == "events" else 0, atol=0)


class _FoldedMixing(nn.Module):
    """Tokens flattened to ``[B*L, H]``, then a softmax or a roll along that dimension: rows of one sample read rows
    of another."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.embed, self.mix, self.head, self.op = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4), op

    def forward(self, x):
        h = self.embed(x).flatten(0, 1)
        h = h.softmax(0) if self.op == "softmax" else h.roll(1, 0)
        return self.head(self.mix(h).unflatten(0, (x.shape[0], -1))).mean(1)


@pytest.mark.parametrize("op", ["softmax", "roll"])
def test_samples_that_an_op_mixes_along_their_folded_dimension_stay_together(op):
    torch.manual_seed(0)
    x0, x1 = (torch.randn(3, 5, 8, dtype=D, generator=torch.Generator().manual_seed(s)) for s in (0, 1))
    qann = _calibrated(_FoldedMixing(op).to(D).eval(), x0)
    snn = to_snn(qann)
    assert not snn.droppable
    report = verify(qann, snn, x1)
    assert report.ok and report.max_rel == 0.0, str(report)


@pytest.mark.parametrize("name", ["resnet", "convnext"])
def test_ilif_converts_hugging_face_vision_models(name):
    """SpikeConverter on the same front end: a ResNet (BatchNorm folded, residual adds, max pooling; each ReLU a
    quantizer) and a ConvNeXt (GELU, LayerNorm: the engine's placement) convert with no code of their own, called as
    they are (``pixel_values`` first; ``output="logits"`` keeps the logits of their output object)."""
    torch.manual_seed(0)
    calibration = _inputs(name, 0)["pixel_values"]
    qann = to_qann(_model(name).to(D).eval(), levels=2 ** 4, neuron="ilif", calibration=calibration, output="logits")
    report = verify(qann, to_snn(qann), _inputs(name, 1)["pixel_values"])
    assert report.ok and report.max_rel < 1e-12, str(report)


HEADLESS = {
    "clip-vision": (lambda: transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        image_size=16, patch_size=4, projection_dim=8, **LAYERS)), "image_embeds"),
    "bert": (lambda: transformers.BertModel(transformers.BertConfig(**LAYERS, **TEXT)), "last_hidden_state"),
}


@pytest.mark.parametrize("name", list(HEADLESS))
def test_one_output_of_a_model_without_logits_converts_exactly(name):
    """``output=`` keeps one output of an encoder without a head (CLIP's image embedding, BERT's last hidden state):
    the QANN returns the tensor a QANN of the whole output returns there, bit for bit, with only the quantizers that
    tensor needs (not the CLS row BERT's pooler reads), and its SNN is exact."""
    make, output = HEADLESS[name]
    inputs = (lambda seed: _inputs("beit", seed)) if name == "clip-vision" else (lambda seed: _text_inputs(False, seed))
    torch.manual_seed(0)
    model = make().to(D).eval()
    whole, one = _calibrated(model, inputs(0)), _calibrated(model, inputs(0), output=output)
    assert set(one.labels) <= set(whole.labels)
    steps = dict(whole.quantizers())  # calibrated on the rows each graph computes: CLIP's last layer, the CLS row
    for label, quantizer in one.quantizers():
        quantizer.load_state_dict(steps[label].state_dict())
    with torch.no_grad():
        assert torch.equal(one(**inputs(1)), whole(**inputs(1))[output])
    if name == "bert":
        assert [label for label in whole.labels if label not in one.labels] == ["pooler:select"]
    report = verify(one, to_snn(one), inputs(1))
    assert report.ok and report.max_rel == 0.0, str(report)
    assert verify(one, to_snn(one, state="events"), inputs(1)).ok


def test_a_graph_that_refuses_a_batch_of_one_keeps_a_settled_sample_beside_the_last_running_one():
    """SigLIP traced with every dimension dynamic gets a guard that refuses one image (PyTorch's reshape algorithm,
    over its symbolic number of patches L: L mod (B*L) != 0): samples leaving the batch must not leave one alone.
    Traced with only the batch dynamic, it takes one image."""
    torch.manual_seed(0)
    model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(image_size=16, patch_size=4, **LAYERS))
    qann = _calibrated(model.to(D).eval(), _inputs("beit", 0), output="pooler_output")
    x = _inputs("beit", 1)
    one = select(x, torch.tensor([0]))
    with pytest.raises(ValueError, match="do not fit the traced model: Guard failed"):
        qann(**one)
    fixed_size = _calibrated(model, _inputs("beit", 0), output="pooler_output", dynamic="batch")
    torch.testing.assert_close(fixed_size(**one), fixed_size(**x)[:1], rtol=1e-12, atol=1e-12)  # BLAS row blocks
    for state in ("exact", "events"):
        report = verify(qann, to_snn(qann, state=state), x)
        assert report.ok and (state == "events" or report.max_rel == 0.0), str(report)
        steps = sorted(report.settle_step.tolist())
        assert steps[-1] > steps[-2], steps  # one sample ran after every other had settled


def test_bart_classifier_converts_exactly():
    """BART's classifier (an encoder-decoder reading the decoder's last end-of-sequence token), traced from token ids
    alone (its key-value cache, returned by default, is switched off)."""
    config = transformers.BartConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1,
                                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                     decoder_ffn_dim=32, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BartForSequenceClassification(config).to(D).eval()

    def inputs(seed):
        ids = _text_inputs(False, seed)["input_ids"].clone()
        ids[:, -1] = config.eos_token_id
        return {"input_ids": ids}

    qann = _calibrated(model, inputs(0))
    report = verify(qann, to_snn(qann), inputs(1))
    assert report.ok and report.max_rel == 0.0, str(report)


def test_clip_image_text_logits_convert_exactly():
    """The whole CLIP (a text and a vision tower, images x texts logits, kept with ``output=``): exact, and its samples
    settle together (each logit reads an image and a text)."""
    config = transformers.CLIPConfig(text_config={**LAYERS, **TEXT}, vision_config=dict(image_size=16, patch_size=4,
                                                                                         **LAYERS), projection_dim=8)

    def inputs(seed):
        return {**_text_inputs(False, seed), **_inputs("beit", seed)}

    torch.manual_seed(0)
    qann = _calibrated(transformers.CLIPModel(config).to(D).eval(), inputs(0), output="logits_per_image")
    snn = to_snn(qann)
    report = verify(qann, snn, inputs(1))
    assert report.ok and report.max_rel == 0.0 and not snn.droppable, str(report)
    assert verify(qann, to_snn(qann, state="events"), inputs(1)).ok


def test_a_sliced_example_input_does_not_fix_the_layout_of_later_inputs():
    """T5's example decoder ids are a slice (``ids[:, :5]``, not contiguous) and torch.export guards the strides it
    traces: traced as given, the QANN refused contiguous ids ("Guard failed: decoder_input_ids.stride()[0] != ...").
    Examples are traced contiguous; both layouts then give the same logits."""
    torch.manual_seed(0)
    x, y = _inputs("t5", 0), _inputs("t5", 1)
    assert not x["decoder_input_ids"].is_contiguous()
    qann = _calibrated(_model("t5").to(D).eval(), x)
    contiguous = {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in y.items()}
    assert torch.equal(qann(**contiguous).logits, qann(**y).logits)


def test_output_names_one_tensor_of_what_the_model_returns():
    model = HEADLESS["bert"][0]().to(D).eval()
    with pytest.raises(ConversionError, match=r"output='logits' is not one tensor of the model's "
                                              r"BaseModelOutputWithPooling.*its outputs: \['last_hidden_state', "
                                              r"'pooler_output'\]"):
        to_qann(model, example_inputs=_text_inputs(False, 0), output="logits")
    with pytest.raises(ConversionError, match="output=2 is not one tensor"):
        to_qann(model, example_inputs=_text_inputs(False, 0), output=2)
    with pytest.raises(ConversionError, match="output=0, but the model returns one tensor"):
        to_qann(nn.Linear(4, 3).to(D), example_inputs=torch.randn(2, 4, dtype=D), output=0)
    whole = _calibrated(model, _text_inputs(False, 0))  # without output=: which tensor to compare is not known
    with pytest.raises(TypeError, match=r"with tensors \['last_hidden_state', 'pooler_output'\].*output=NAME"):
        verify(whole, to_snn(whole), _text_inputs(False, 1))


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


class _SdpaAttention(nn.Module):
    """Causal ``scaled_dot_product_attention`` (the last token read), or with a mask that lets each query see only the
    tokens before it (all tokens read): the first sees none, and PyTorch's sdpa gives it zeros."""

    def __init__(self, earlier_only: bool) -> None:
        super().__init__()
        self.qkv, self.head, self.earlier_only = nn.Linear(8, 24), nn.Linear(8, 4), earlier_only

    def forward(self, x):
        q, k, v = self.qkv(x).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)
        if not self.earlier_only:
            out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.head(out.transpose(1, 2).flatten(2))[:, -1]
        earlier = torch.ones(x.size(1), x.size(1), dtype=torch.bool, device=x.device).tril(-1)
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=earlier)
        return self.head(out.transpose(1, 2).flatten(2)).mean(1)


class _SwitchExperts(nn.Module):
    """A top-1 mixture of experts written densely (Switch Transformer's routing): the router's ``argmax`` picks each
    token's expert, its probability weights that expert's output. The integer choice stays inside the gate's
    non-linear function."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.router, self.head = nn.Linear(8, 16), nn.Linear(16, 3), nn.Linear(16, 4)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(3))

    def forward(self, x):
        h = self.embed(x)
        probs = self.router(h).softmax(-1)
        gate = probs * nn.functional.one_hot(probs.argmax(-1), len(self.experts)).to(probs.dtype)
        return self.head(h + sum(gate[..., e, None] * expert(h) for e, expert in enumerate(self.experts))).mean(1)


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
         "causal-sdpa": (lambda: _SdpaAttention(False), (6, 8)),
         "earlier-tokens-sdpa": (lambda: _SdpaAttention(True), (6, 8)),
         "switch-experts": (_SwitchExperts, (6, 8)), "group-norm-cnn": (_GroupNormCNN, (3, 8, 8))}


@pytest.mark.parametrize("name", list(PLAIN))
def test_plain_pytorch_modules_convert_exactly(name):
    """PyTorch's own blocks (``nn.TransformerEncoder``, ``nn.MultiheadAttention``), attention written with ``einsum``
    (PyTorch's decomposition: permutes, reshapes, ``bmm``) or causal ``scaled_dot_product_attention``, a mask that
    leaves a query no key (its row of weights is zeros, as in PyTorch's sdpa, not NaN), GroupNorm."""
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


class _OnesMasked(nn.Module):
    """A mask made with ``new_ones`` on a signal tensor: it reads only the tensor's dtype and device (its size is
    given), so it is a constant (Funnel's attention mask)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.gate, self.head = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = self.embed(x)
        return self.head(self.gate(x) * h.new_ones(h.shape[-1]).cumsum(0))


def test_a_tensor_made_with_new_ones_on_a_signal_is_a_constant():
    """The mask multiplies as a constant (no neuron for it, no product of two spike trains): one quantizer, before
    the head, and the SNN exact."""
    torch.manual_seed(0)
    x0, x1 = torch.randn(3, 8, dtype=D), torch.randn(3, 8, dtype=D)
    qann = _calibrated(_OnesMasked().to(D), x0)
    assert len(qann.labels) == 1, qann.labels
    report = verify(qann, to_snn(qann), x1)
    assert report.ok and report.max_rel == 0.0, str(report)


class _Contrastive(nn.Module):
    """Two towers and their similarity matrix ``[B, B]`` (CLIP's image-text logits): each row reads every sample."""

    def __init__(self) -> None:
        super().__init__()
        self.image, self.text = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)), \
            nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))

    def forward(self, x):
        return self.image(x) @ self.text(x).T


class _BatchCentred(nn.Module):
    """Each sample's features minus the batch mean: a reduction over the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = self.embed(x)
        return self.head(nn.functional.gelu(h - h.mean(0)))


@pytest.mark.parametrize("make", [_Contrastive, _BatchCentred], ids=["contrastive", "batch-centred"])
def test_a_model_whose_samples_mix_lets_them_settle_together(make):
    """No output row is done before every sample is, so no sample leaves the batch early: the SNN gives the QANN's
    output on the whole batch (samples leaving made it crash on ``[B, B]`` and compute another batch mean)."""
    torch.manual_seed(0)
    x0 = torch.randn(6, 8, dtype=D)
    x1 = torch.randn(6, 8, dtype=D) * torch.tensor([0.01, 3.0, 0.1, 1.0, 0.02, 2.0], dtype=D)[:, None]
    qann = _calibrated(make().to(D), x0)
    snn = to_snn(qann)
    assert not snn.droppable and snn.labels
    result = snn.simulate(x1, max_steps=256)
    with torch.no_grad():
        assert torch.equal(result.output, qann(x1))
    assert len(set(result.settle_step.tolist())) == 1, result.settle_step
    assert verify(qann, to_snn(qann, state="events"), x1).ok
    assert to_snn(_calibrated(_SdpaAttention(True).to(D), torch.randn(3, 6, 8, dtype=D))).droppable  # per sample


def test_a_left_padded_causal_model_converts_exactly():
    """Left padding (batched generation): a causal model's padded queries see no key. PyTorch's sdpa gives them zeros
    and so does the traced graph; with a plain softmax they were NaN, which made the calibrated steps NaN."""
    def inputs(seed):
        ids = torch.randint(3, 60, (3, 9), generator=torch.Generator().manual_seed(seed))
        mask = torch.ones(3, 9, dtype=torch.long)
        mask[1, :3] = 0
        mask[2, :5] = 0
        return {"input_ids": ids, "attention_mask": mask, "use_cache": False}

    torch.manual_seed(0)
    qann = _calibrated(_model("qwen2").to(D).eval(), inputs(0))
    assert all(bool(torch.isfinite(q.step).all()) for _, q in qann.quantizers())
    report = verify(qann, to_snn(qann), inputs(1))
    assert report.ok and report.max_rel == 0.0, str(report)


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
