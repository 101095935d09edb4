"""RoBERTa: Hugging Face's ``RobertaForSequenceClassification`` itself goes through the conversion engine; its SNN
equals its QANN (float64, per sample, per neuron); padding never changes a real token's result; step and chunked
paths agree; settled means final."""

from __future__ import annotations

import pytest
import torch

from spiketwin import simulate
from spiketwin.convert import to_qann, to_snn, verify

transformers = pytest.importorskip("transformers", reason="the nlp extra (transformers) is not installed")
PAD = 1


def tiny(seed: int, layers: int = 1, hidden: int = 32, heads: int = 2, act: str = "relu", labels: int = 2,
         vocab: int = 60):
    torch.manual_seed(seed)
    config = transformers.RobertaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                        num_attention_heads=heads, intermediate_size=2 * hidden, hidden_act=act,
                                        max_position_embeddings=40, type_vocab_size=2, num_labels=labels)
    return transformers.RobertaForSequenceClassification(config).double().eval()


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


def calibrated_qann(model, levels: int, batch: dict, **options):
    """QANN whose quantizer steps come from a batch (as the first QAT batch would set them)."""
    qann = to_qann(model, levels, example_inputs=batch, **options)
    with torch.no_grad():
        qann.train()(**batch)
    return qann.eval()


CASES = [  # (seed, layers, hidden, heads, levels, labels)
    (0, 1, 32, 2, 16, 2),
    (1, 2, 32, 4, 8, 2),
    (2, 2, 64, 4, 16, 3),
    (4, 2, 32, 2, 32, 5),
]


@pytest.mark.parametrize("seed,layers,hidden,heads,levels,labels", CASES)
def test_snn_equals_qann_float64(seed, layers, hidden, heads, levels, labels):
    model = tiny(seed, layers, hidden, heads, "gelu" if seed % 2 else "relu", labels)
    batch = padded_batch([11, 3, 7, 11, 5, 9], seed=seed)
    qann = calibrated_qann(model, levels, batch, activation="relu")
    assert len(qann.quantizers()) == 10 * layers + 2  # 10 per layer, the final norm's <s> token, the tanh
    assert not any("gelu" in str(n.target) for n in qann.model.graph.nodes)  # GELU -> ReLU
    for state in ("exact", "events"):
        snn = to_snn(qann, state=state)
        report = verify(qann, snn, batch, max_steps=512)
        assert report.ok, str(report)
        assert report.rel.shape[1] == 6
    result = simulate(to_snn(qann), batch, max_steps=512)
    assert torch.equal(result.output, qann(**batch).logits)
    assert bool((result.settle_step > 0).all())


def test_padding_never_changes_a_real_token():
    model = tiny(7, layers=2, hidden=32, heads=4)
    lengths = [12, 4, 8]
    batch = padded_batch(lengths, seed=3, width=16)
    qann = calibrated_qann(model, 16, batch)
    snn = to_snn(qann)
    with torch.no_grad():
        logits = qann(**batch).logits
        for i, n in enumerate(lengths):
            alone = {k: v[i:i + 1, :n] for k, v in batch.items()}  # the same sentence, no padding at all
            assert torch.allclose(qann(**alone).logits, logits[i:i + 1], rtol=1e-9, atol=1e-12)
    together = simulate(snn, batch, max_steps=512)
    for i, n in enumerate(lengths):
        alone = simulate(snn, {k: v[i:i + 1, :n] for k, v in batch.items()}, max_steps=512)
        assert torch.allclose(alone.output, together.output[i:i + 1], rtol=1e-9, atol=1e-12)
        assert alone.settle_step[0] == together.settle_step[i]


def test_step_and_sequence_paths_agree_and_settled_means_final():
    model = tiny(9, layers=2)
    batch = padded_batch([10, 6, 3, 8], seed=9)
    batch["token_type_ids"] = (torch.arange(10) > 3).long().expand(4, 10).contiguous()
    snn = to_snn(calibrated_qann(model, 8, batch))
    seq = simulate(snn, batch, max_steps=256, step_mode="m")
    step = simulate(snn, batch, max_steps=256, step_mode="s")
    assert torch.equal(seq.settle_step, step.settle_step)
    assert torch.equal(seq.per_step, step.per_step)
    longer = simulate(snn, batch, max_steps=int(seq.settle_step.max()) + 32, early_exit=False)
    for i, s in enumerate(seq.settle_step.tolist()):
        assert torch.equal(longer.per_step[s - 1:, i], longer.per_step[-1, i].expand_as(longer.per_step[s - 1:, i]))
    assert torch.equal(longer.output, seq.output)


def test_errors_name_the_problem():
    model = tiny(11)
    batch = padded_batch([5, 3])
    qann = to_qann(model, 16, example_inputs=batch)
    with pytest.raises(ValueError, match="never initialised"):
        to_snn(qann)
    qann = calibrated_qann(model, 16, batch)
    with pytest.raises(ValueError, match="do not fit the traced model"):
        simulate(to_snn(qann), {**batch, "labels": torch.zeros(2)})
