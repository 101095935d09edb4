"""Text data: TSV reading with errors naming file and line, tokenizers (trained, local directory), padded
encodings, and training a RoBERTa on dict inputs with the shared loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spiketwin.data.text import encode, load_sst2, load_tokenizer, read_tsv, train_tokenizer
from spiketwin.models import create
from spiketwin.train import TrainConfig, evaluate, fit

SST2 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sst2"
SENTENCES = ["a charming and often affecting journey .", "unflinchingly bleak and desperate",
             "it 's a charming journey", "bleak , desperate and dull", "charming"] * 4


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "data.tsv"
    path.write_text(text, encoding="utf-8")
    return path


def test_read_tsv(tmp_path):
    texts, labels = read_tsv(write(tmp_path, "text\tlabel\nfine film \t1\n\nawful\t0\n"))
    assert texts == ["fine film", "awful"]
    assert labels.tolist() == [1, 0] and labels.dtype == torch.int64
    texts, _ = read_tsv(write(tmp_path, "label\tsentence\n0\tawful\n"))  # GLUE's original column name and order
    assert texts == ["awful"]


@pytest.mark.parametrize("content,message", [
    ("words\tlabel\nx\t1\n", r"data.tsv:1: header"),
    ("text\tlabel\nfine\t1\nbad\n", r"data.tsv:3: expected 2 tab-separated fields, got 1"),
    ("text\tlabel\nfine\tpositive\n", r"data.tsv:2: label 'positive' is not an integer"),
    ("text\tlabel\n", r"no rows after the header"),
])
def test_read_tsv_errors_name_file_and_line(tmp_path, content, message):
    with pytest.raises(ValueError, match=message):
        read_tsv(write(tmp_path, content))


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="dev.tsv"):
        load_sst2(tmp_path, "dev")
    with pytest.raises(ValueError, match="split"):
        load_sst2(tmp_path, "test")


def test_real_sst2():
    if not SST2.is_dir():
        pytest.skip(f"SST-2 not found at {SST2}")
    texts, labels = load_sst2(SST2, "dev")
    assert len(texts) == 872 and set(labels.tolist()) == {0, 1}
    texts, labels = load_sst2(SST2, "train")
    assert len(texts) == 67349


def test_trained_tokenizer_uses_roberta_ids_and_round_trips(tmp_path):
    pytest.importorskip("tokenizers", reason="the nlp extra is not installed")
    tok = train_tokenizer(SENTENCES, vocab_size=120, min_frequency=1)
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    batch = encode(tok, ["charming", "a charming and often affecting journey ."], max_length=6)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[1] <= 6
    assert ids[:, 0].tolist() == [0, 0] and mask[0].tolist() == [1, 1, 1, 0, 0, 0]
    assert ids[0, 2] == 2 and bool((ids[0, 3:] == 1).all())  # </s> then <pad> on the right
    tok.save_pretrained(tmp_path)
    again = encode(load_tokenizer(tmp_path), ["charming", "a charming and often affecting journey ."], 6)
    assert torch.equal(again["input_ids"], ids)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_tokenizer(tmp_path / "absent")


def test_fit_on_token_batches():
    """The shared training loop takes a dict of keyword inputs: a tiny RoBERTa learns which words are bleak."""
    pytest.importorskip("tokenizers", reason="the nlp extra is not installed")
    pytest.importorskip("transformers", reason="the nlp extra is not installed")
    tok = train_tokenizer(SENTENCES, vocab_size=120, min_frequency=1)
    x = encode(tok, SENTENCES * 4, max_length=12)
    y = torch.tensor([1, 0, 1, 0, 1] * 16)
    torch.manual_seed(0)
    model = create("roberta_sst2_small", vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                   num_attention_heads=2, intermediate_size=32, max_position_embeddings=16)  # Hugging Face's model
    history = fit(model, x, y, TrainConfig(epochs=15, lr=3e-3, batch_size=16, progress=False), eval_data=(x, y))
    assert history[-1]["loss"] < history[0]["loss"]
    assert evaluate(model, x, y) == 1.0


def test_sst2_data_set_and_training_on_model_output_objects(tmp_path):
    """get_dataset('sst2') encodes with the given tokenizer; a --limit subset is padded to its own longest sentence;
    fit / evaluate take models that return an object holding the logits (a Hugging Face output)."""
    pytest.importorskip("tokenizers", reason="the nlp extra is not installed")
    from spiketwin.data import get_dataset, train_test
    from spiketwin.data.text import TextData

    rows = "".join(f"{s}\t{int('charming' in s)}\n" for s in SENTENCES)
    for split in ("train", "dev"):
        (tmp_path / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    tok = train_tokenizer(SENTENCES, vocab_size=120, min_frequency=1)
    with pytest.raises(ValueError, match="needs tokenizer="):
        get_dataset("sst2", tmp_path)
    full = get_dataset("sst2", tmp_path, "test", tokenizer=tok)
    train, test = train_test("sst2", tmp_path, limit=2, tokenizer=tok, max_length=12)
    assert isinstance(train, TextData) and train.classes == ["negative", "positive"] and len(test) == 2
    assert sorted(train.targets) == [0, 1] and train.tensors[0]["attention_mask"][:, -1].any()
    assert full.tensors[0]["input_ids"].shape[1] > train.tensors[0]["input_ids"].shape[1]

    class Wrapped(torch.nn.Module):  # returns {"logits": ...} as Hugging Face models do (ModelOutput is a dict)
        def __init__(self):
            super().__init__()
            self.model = create("roberta_sst2_small", vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=32, max_position_embeddings=16)

        def forward(self, **x):
            return {"logits": self.model(**x).logits, "hidden": torch.zeros(1)}

    torch.manual_seed(0)
    model = Wrapped()
    x, y = full.tensors
    history = fit(model, x, y, TrainConfig(epochs=10, lr=3e-3, batch_size=8, progress=False), eval_data=(x, y))
    assert history[-1]["loss"] < history[0]["loss"] and evaluate(model, x, y) == history[-1]["accuracy"]
