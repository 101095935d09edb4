"""RoBERTa: the module tree is Hugging Face's model; its SNN equals its QANN (float64, per sample, per layer);
padding never changes a real token's result; step and sequence paths agree; errors name what is wrong."""

from __future__ import annotations

import pytest
import torch

from spiketwin import simulate
from spiketwin.convert import to_qann, to_snn, verify
from spiketwin.models import Roberta, RobertaConfig

PAD = 1


def nlp():
    """The ``transformers`` module, or a skip when the nlp extra is missing (only these tests need it)."""
    return pytest.importorskip("transformers", reason="the nlp extra (transformers) is not installed")


def tiny(seed: int, layers: int = 1, hidden: int = 32, heads: int = 2, act: str = "relu", labels: int = 2,
         vocab: int = 60) -> Roberta:
    torch.manual_seed(seed)
    return Roberta(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                   intermediate_size=2 * hidden, hidden_act=act, max_position_embeddings=40, type_vocab_size=2,
                   num_labels=labels).double()


def padded_batch(lengths: list[int], vocab: int = 60, seed: int = 0, width: int | None = None):
    """Sentences ``<s> w ... </s>`` of the given lengths, right-padded with ``<pad>`` to ``width``."""
    g = torch.Generator().manual_seed(seed)
    width = width or max(lengths)
    ids = torch.full((len(lengths), width), PAD, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(4, vocab, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = 0, 2
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


def calibrated_qann(model, levels: int, batch: dict):
    """QANN whose quantizer steps come from a batch (as the first QAT batch would set them)."""
    qann = to_qann(model, levels)
    with torch.no_grad():
        qann.train()(**batch)
    return qann.eval()


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_module_tree_is_hugging_face_roberta(act, tmp_path):
    transformers = nlp()
    hf_model = transformers.RobertaForSequenceClassification(transformers.RobertaConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=40, hidden_act=act, num_labels=3, layer_norm_eps=1e-5)).double().eval()
    with torch.no_grad():  # weights that float32 cannot hold: a copy through float32 would show
        for p in hf_model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    batch = padded_batch([9, 4, 12, 6])
    expected = hf_model(**batch).logits
    ours = Roberta.from_hf(hf_model).eval()
    assert torch.allclose(ours(**batch), expected, rtol=1e-12, atol=1e-14)
    assert torch.allclose(ours.to_hf().eval()(**batch).logits, expected, rtol=1e-12, atol=1e-14)
    hf_model.save_pretrained(tmp_path)  # a local directory: nothing is downloaded
    loaded = Roberta.from_pretrained(tmp_path).double().eval()
    assert torch.allclose(loaded(**batch), expected, rtol=1e-12, atol=1e-14)


CASES = [  # (seed, layers, hidden, heads, levels, labels)
    (0, 1, 32, 2, 16, 2),
    (1, 2, 32, 4, 8, 2),
    (2, 2, 64, 4, 16, 3),
    (3, 1, 48, 3, 4, 2),
    (4, 2, 32, 2, 32, 5),
]


@pytest.mark.parametrize("seed,layers,hidden,heads,levels,labels", CASES)
def test_snn_equals_qann_float64(seed, layers, hidden, heads, levels, labels):
    model = tiny(seed, layers, hidden, heads, "gelu" if seed % 2 else "relu", labels)
    batch = padded_batch([11, 3, 7, 11, 5, 9], seed=seed)
    qann = calibrated_qann(model, levels, batch)
    assert len(qann.quantizers()) == 10 * layers + 2  # 10 per layer, after the embedding norm, after the tanh
    assert not any(isinstance(m, (torch.nn.GELU, torch.nn.ReLU)) for m in qann.modules())  # absorbed
    snn = to_snn(qann)
    report = verify(qann, snn, batch, max_steps=512)
    assert report.ok, str(report)
    assert report.rel.shape == (len(report.layers), 6)
    result = simulate(snn, batch, max_steps=512)
    expected = qann(**batch)
    rel = (result.output - expected).abs().amax(1) / expected.abs().amax(1)
    assert bool((rel <= 1e-9).all()), rel
    assert bool((result.settle_step > 0).all())


def test_hugging_face_model_converts_directly():
    transformers = nlp()
    torch.manual_seed(5)
    hf_model = transformers.RobertaForSequenceClassification(transformers.RobertaConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=40, num_labels=2)).double()
    batch = padded_batch([6, 10, 2])
    qann = calibrated_qann(hf_model, 16, batch)
    report = verify(qann, to_snn(qann), batch)
    assert report.ok, str(report)


def test_padding_never_changes_a_real_token():
    model = tiny(7, layers=2, hidden=32, heads=4)
    lengths = [12, 4, 8]
    batch = padded_batch(lengths, seed=3, width=16)
    qann = calibrated_qann(model, 16, batch)
    snn = to_snn(qann)
    last = qann.model.roberta.encoder.layer[-1].output.norm_quant
    captured = []
    handle = last.register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        logits = qann(**batch)
        for i, n in enumerate(lengths):
            alone = {k: v[i:i + 1, :n] for k, v in batch.items()}  # the same sentence, no padding at all
            assert torch.allclose(qann(**alone), logits[i:i + 1], rtol=1e-9, atol=1e-12)
            assert torch.allclose(captured[-1][0], captured[0][i, :n], rtol=1e-9, atol=1e-12)  # every real token
    handle.remove()
    together = simulate(snn, batch, max_steps=512)
    for i, n in enumerate(lengths):
        alone = simulate(snn, {k: v[i:i + 1, :n] for k, v in batch.items()}, max_steps=512)
        assert torch.allclose(alone.output, together.output[i:i + 1], rtol=1e-9, atol=1e-12)


def test_step_and_sequence_paths_agree_and_settled_means_final():
    model = tiny(9, layers=2)
    batch = padded_batch([10, 6, 3, 8], seed=9)
    snn = to_snn(calibrated_qann(model, 8, batch))
    seq = simulate(snn, batch, max_steps=256, step_mode="m")
    step = simulate(snn, batch, max_steps=256, step_mode="s")
    assert torch.equal(seq.settle_step, step.settle_step)
    assert torch.equal(seq.per_step, step.per_step)
    longer = simulate(snn, batch, max_steps=int(seq.settle_step.max()) + 32, early_exit=False)
    for i, s in enumerate(seq.settle_step.tolist()):
        assert torch.equal(longer.per_step[s - 1:, i], longer.per_step[-1, i].expand_as(longer.per_step[s - 1:, i]))
    assert torch.equal(longer.output, seq.output)


def test_inputs_as_keywords_and_token_types():
    model = tiny(10)
    batch = padded_batch([7, 4])
    batch["token_type_ids"] = (torch.arange(7) > 3).long().expand(2, 7).contiguous()
    qann = calibrated_qann(model, 16, batch)
    snn = to_snn(qann)
    a = simulate(snn, batch["input_ids"], attention_mask=batch["attention_mask"],
                 token_type_ids=batch["token_type_ids"])
    assert torch.allclose(a.output, qann(**batch), rtol=1e-9, atol=1e-12)


def test_state_dict_keys_and_shapes_are_checked():
    model, other = tiny(12), tiny(13)
    state = {**other.state_dict(), "roberta.embeddings.position_ids": torch.arange(40)}  # HF buffer: ignored
    model.load_hf_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    state = dict(tiny(14, hidden=16, heads=2).state_dict())
    del state["classifier.out_proj.bias"]
    state["pooler.dense.weight"] = torch.zeros(2, 2)
    with pytest.raises(ValueError) as err:
        model.load_hf_state_dict(state)
    msg = str(err.value)
    assert msg.startswith("Roberta.load_hf_state_dict: the state dict does not fit Roberta")
    assert "missing keys (in the model, not in the file): classifier.out_proj.bias" in msg
    assert "unexpected keys (in the file, not in the model): pooler.dense.weight" in msg
    assert "classifier.dense.weight: file (16, 16) vs model (32, 32)" in msg


def test_errors_name_the_problem():
    model = tiny(11)
    batch = padded_batch([5, 3])
    with pytest.raises(ValueError, match="input_ids must be an integer tensor"):
        model(batch["input_ids"].double())
    with pytest.raises(ValueError, match="attention_mask must have input_ids' shape"):
        model(batch["input_ids"], batch["attention_mask"][:, :3])
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 60\)"):
        model(batch["input_ids"] + 100)
    with pytest.raises(ValueError, match=r"token_type_ids must lie in \[0, 2\)"):
        model(batch["input_ids"], token_type_ids=torch.full_like(batch["input_ids"], 2))
    with pytest.raises(ValueError, match="pad on the right"):
        model(batch["input_ids"], batch["attention_mask"].flip(1))
    with pytest.raises(ValueError, match="at most 38"):
        model(torch.zeros(1, 39, dtype=torch.int64))
    qann = to_qann(model, 16)
    with pytest.raises(ValueError, match="never initialised"):
        to_snn(qann)
    qann = calibrated_qann(model, 16, batch)
    with pytest.raises(ValueError, match="got keys"):
        simulate(to_snn(qann), {**batch, "labels": torch.zeros(2)})
    with pytest.raises(ValueError, match="hidden_act"):
        RobertaConfig(hidden_act="silu")
    transformers = nlp()
    hf_model = transformers.RobertaForSequenceClassification(transformers.RobertaConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=40, is_decoder=True))
    with pytest.raises(ValueError, match="is_decoder"):
        to_qann(hf_model)


def test_event_driven_sequence_path_is_the_dense_path_with_padding(monkeypatch):
    """Computing only the samples with work (forced at any density) gives the dense path's results exactly,
    with the attention mask cut to the same samples."""
    import spiketwin.ops

    monkeypatch.setattr(spiketwin.ops, "SPARSE_MAX_FRACTION", 1.0)
    model = tiny(11, layers=2)
    batch = padded_batch([10, 6, 3, 8, 2], seed=11)
    snn = to_snn(calibrated_qann(model, 16, batch))
    results = []
    for flag in (True, False):
        for m in snn.modules():
            if hasattr(m, "sparse"):
                m.sparse = flag
        results.append(simulate(snn, batch, max_steps=256))
    assert torch.equal(results[0].per_step, results[1].per_step)
    assert torch.equal(results[0].settle_step, results[1].settle_step)
    assert torch.equal(results[0].per_step, simulate(snn, batch, max_steps=256, step_mode="s").per_step)
