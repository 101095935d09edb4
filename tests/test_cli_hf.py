"""The command line on Hugging Face models from local directories (--hf DIR): a tiny BERT fine-tuned with QAT on
SST-2-format text (its tokenizer built offline beside it) and a tiny ViT on the bundled digits, each through qat,
convert, simulate and verify on their checkpoints; nothing is downloaded."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("safetensors", reason="CLI checkpoints are safetensors")
transformers = pytest.importorskip("transformers", reason="Hugging Face models need transformers")
pytest.importorskip("tokenizers", reason="the text model's tokenizer needs tokenizers")

from spiketwin import checkpoint  # noqa: E402
from spiketwin.cli import main  # noqa: E402

SENTENCES = ["a fine film", "an awful movie", "fine acting and a fine story", "awful , dull and long",
             "the story is fine", "dull acting", "a moving , fine film", "long and awful"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _sst2(root):
    root.mkdir()
    rows = "".join(f"{s}\t{int('fine' in s or 'moving' in s)}\n" for s in SENTENCES)
    for split in ("train", "dev"):
        (root / f"{split}.tsv").write_text("sentence\tlabel\n" + rows * (3 if split == "train" else 1))
    return root


def _bert(directory):
    from spiketwin.data.text import train_tokenizer

    tokenizer = train_tokenizer(SENTENCES, vocab_size=60, min_frequency=1)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=32, pad_token_id=tokenizer.pad_token_id)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _vit(directory, labels=10):
    torch.manual_seed(0)
    transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=24, num_labels=labels)).save_pretrained(directory)
    return directory


def _journey(capsys, tmp_path, source, data, convert_flags=()):
    qann, snn = tmp_path / "qann.safetensors", tmp_path / "snn.safetensors"
    steps = [["qat", *source, *data, "--levels", "8", "--epochs", "1", "--batch-size", "8", "--out", str(qann)],
             ["convert", "--checkpoint", str(qann), *data, "--batch-size", "3", *convert_flags, "--out", str(snn)],
             ["simulate", "--checkpoint", str(snn), *data, "--max-steps", "24"],
             ["verify", "--checkpoint", str(snn), *data, "--batch-size", "2"]]
    outputs = []
    for argv in steps:
        code, out, err = run(capsys, *argv, "--quiet")
        assert code == 0, (argv, err)
        outputs.append(out)
    assert "OK: max relative difference" in outputs[1] and "OK: max relative difference" in outputs[3]
    assert "QANN accuracy" in outputs[2] and "SNN accuracy at T: 1:" in outputs[2]
    return checkpoint.read_info(qann), checkpoint.read_info(snn), outputs


@pytest.mark.slow
def test_qat_on_sst2_with_a_hugging_face_bert_and_its_tokenizer(tmp_path, capsys):
    bert, root = _bert(tmp_path / "bert"), _sst2(tmp_path / "sst2")
    data = ["--data", "sst2", "--data-root", str(root), "--max-length", "12"]
    qann, snn, outputs = _journey(capsys, tmp_path, ["--hf", str(bert)], data, ["--state", "events"])
    assert qann["hf"]["architecture"] == "BertForSequenceClassification" and qann["hf"]["dir"] == str(bert.resolve())
    assert set(qann["qann"]["example_inputs"]["dict"]) == {"input_ids", "attention_mask"}
    assert snn["snn"] == {"state": "events"} and "rtol 1e-09" in outputs[1]  # events: equal to round-off
    code, out, err = run(capsys, "energy", "--checkpoint", str(tmp_path / "snn.safetensors"), *data, "--samples", "3",
                         "--max-steps", "8", "--quiet")  # token batches (a dict of tensors) are counted too
    assert code == 0, err
    assert "bert.encoder.layer.0.attention.self.query" in out and "ANN/SNN = " in out


@pytest.mark.slow
def test_hugging_face_vit_on_digits_from_train_to_verify(tmp_path, capsys):
    vit = _vit(tmp_path / "vit")
    ann = tmp_path / "ann.safetensors"
    code, out, err = run(capsys, "train", "--hf", str(vit), "--limit", "40", "--epochs", "1", "--quiet",
                         "--out", str(ann))
    assert code == 0, err
    data = ["--limit", "30"]
    qann, snn, _ = _journey(capsys, tmp_path, ["--checkpoint", str(ann), "--dynamic", "batch"], data,
                            ["--spikes-per-step", "3"])
    assert qann["qann"]["example_inputs"] == {"tensor": {"shape": [2, 1, 8, 8], "dtype": "float32"}}
    assert qann["qann"]["dynamic"] == snn["qann"]["dynamic"] == "batch"
    assert snn["snn"] == {"spikes_per_step": 3}


def test_hf_option_errors(tmp_path, capsys):
    vit = _vit(tmp_path / "vit", labels=3)
    code, _, err = run(capsys, "qat", "--hf", str(vit), "--model", "vit_digits")
    assert code == 2 and "--model NAME or --hf DIR, not both" in err
    code, _, err = run(capsys, "qat", "--hf", str(vit), "--set", "depth=2")
    assert code == 2 and "config.json" in err
    code, _, err = run(capsys, "qat", "--hf", str(vit), "--limit", "20")
    assert code == 1 and "num_labels=3 but the data has 10 classes" in err
    sst2 = ["--data", "sst2", "--data-root", str(_sst2(tmp_path / "s"))]
    code, _, err = run(capsys, "qat", "--hf", str(vit), *sst2)
    assert code == 1 and "has no tokenizer files" in err
    code, _, err = run(capsys, "train", "--model", "scnn", *sst2)
    assert code == 2 and "--data sst2 is text: give --tokenizer DIR" in err
    code, _, err = run(capsys, "qat", "--hf", str(tmp_path / "nothing"))
    assert code == 1 and "no config.json" in err
    code, _, err = run(capsys, "convert", "--hf", str(vit))
    assert code == 2 and "--checkpoint is required" in err
