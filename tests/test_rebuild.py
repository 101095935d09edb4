"""Checkpoints of the conversion engine's QANNs and SNNs: saved with spiketwin.checkpoint, rebuilt with
spiketwin.rebuild.from_checkpoint from JSON metadata alone (registry models and Hugging Face models from a local
directory), traced again on placeholder inputs into the same quantizers in the same order, loaded strictly."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("safetensors", reason="checkpoints are safetensors")

from spiketwin import checkpoint  # noqa: E402
from spiketwin.convert import to_qann  # noqa: E402
from spiketwin.convert.qann import GraphQANN  # noqa: E402
from spiketwin.utils import logits_of  # noqa: E402
from spiketwin.convert.snn import GraphSNN  # noqa: E402
from spiketwin.inputs import call, describe, placeholder  # noqa: E402
from spiketwin.models import create  # noqa: E402
from spiketwin.rebuild import from_checkpoint  # noqa: E402


def _calibrated(model, x, levels=8, **options):
    qann = to_qann(model, levels, example_inputs=x, **options)
    call(qann.train(), x)
    return qann.eval()


def _same_qann(rebuilt, qann, x):
    assert isinstance(rebuilt, GraphQANN) and rebuilt.labels == qann.labels
    assert list(rebuilt.state_dict()) == list(qann.state_dict())  # same tracing: same quantizers, same order
    rebuilt.load_state_dict(qann.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(logits_of(call(rebuilt, x)), logits_of(call(qann, x)))


def test_inputs_described_as_json_and_rebuilt_as_zeros():
    x = {"input_ids": torch.ones(2, 5, dtype=torch.long), "scale": torch.rand(2, 3), "use_cache": False}
    spec = json.loads(json.dumps(describe(x)))
    again = placeholder(spec, torch.float64)
    assert again["input_ids"].dtype == torch.long and again["input_ids"].shape == (2, 5)
    assert again["scale"].dtype == torch.float64 and not again["scale"].any() and again["use_cache"] is False
    assert placeholder(describe((torch.rand(1, 2), 3)))[1] == 3
    with pytest.raises(TypeError, match="input 'past'.*list"):
        describe({"past": [torch.zeros(1)]})
    with pytest.raises(ValueError, match="dtype"):
        placeholder({"tensor": {"shape": [1], "dtype": "os.system"}})


def test_registry_model_qann_and_snn_checkpoints(tmp_path):
    torch.manual_seed(0)
    model = create("vit_digits", depth=1, embed_dim=16)
    x = torch.rand(3, 1, 8, 8)
    qann = _calibrated(model, x)
    path = checkpoint.save(qann, tmp_path / "q.safetensors", {"model": "vit_digits", "stage": "qann",
                                                              "overrides": {"depth": 1, "embed_dim": 16}})
    info = checkpoint.read_info(path)
    assert info["qann"] == {"levels": 8, "neuron": "stbif", "activation": "keep", "dynamic": "all", "output": None,
                            "example_inputs": {"tensor": {"shape": [3, 1, 8, 8], "dtype": "float32"}}}
    rebuilt, _ = from_checkpoint(path)
    _same_qann(rebuilt, qann, torch.rand(5, 1, 8, 8))

    snn_path = checkpoint.save(qann, tmp_path / "s.safetensors",
                               {**info, "stage": "snn", "snn": {"state": "events"}})
    snn, info = from_checkpoint(snn_path)
    assert isinstance(snn, GraphSNN) and snn.state == "events" and info["snn"] == {"state": "events"}
    _same_qann(from_checkpoint(snn_path, snn=False)[0], qann, x)
    with pytest.raises(ValueError, match=r"info\['snn'\] takes"):
        checkpoint.save(qann, tmp_path / "x.safetensors", {**info, "snn": {"steps": 3}})


def test_a_checkpoint_keeps_which_input_sizes_the_qann_was_traced_for(tmp_path):
    """``dynamic="batch"`` is part of the recipe: the rebuilt QANN is traced the same way (any batch, the example's
    image size)."""
    torch.manual_seed(0)
    qann = _calibrated(create("vit_digits", depth=1, embed_dim=16), torch.rand(3, 1, 8, 8), dynamic="batch")
    path = checkpoint.save(qann, tmp_path / "q.safetensors", {"model": "vit_digits", "stage": "qann",
                                                              "overrides": {"depth": 1, "embed_dim": 16}})
    rebuilt, info = from_checkpoint(path)
    assert info["qann"]["dynamic"] == rebuilt.recipe["dynamic"] == "batch"
    _same_qann(rebuilt, qann, torch.rand(5, 1, 8, 8))


def test_a_checkpoint_keeps_which_output_the_qann_returns(tmp_path):
    """``output="pooler_output"`` of a Hugging Face encoder without a head: the rebuilt QANN returns that tensor."""
    from spiketwin.models.huggingface import describe as describe_hf

    transformers = pytest.importorskip("transformers", reason="Hugging Face models need transformers")
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                                           num_attention_heads=2, intermediate_size=24))
    x = {"input_ids": torch.randint(0, 40, (3, 6))}
    qann = _calibrated(model, x, output="pooler_output")
    path = checkpoint.save(qann, tmp_path / "q.safetensors", {"model": "BertModel", "hf": describe_hf(model),
                                                              "stage": "qann"})
    rebuilt, info = from_checkpoint(path)
    assert info["qann"]["output"] == rebuilt.recipe["output"] == "pooler_output"
    assert call(rebuilt, x).shape == (3, 16)
    _same_qann(rebuilt, qann, {"input_ids": torch.randint(0, 40, (2, 4))})


def _tiny_bert(directory):
    transformers = pytest.importorskip("transformers", reason="Hugging Face models need transformers")
    torch.manual_seed(1)
    model = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=16))
    model.save_pretrained(directory)
    return model


def test_hugging_face_model_from_a_local_directory(tmp_path):
    from spiketwin.models.huggingface import describe as describe_hf, load_pretrained

    original = _tiny_bert(tmp_path / "bert")
    model = load_pretrained(tmp_path / "bert")
    ids = torch.randint(0, 40, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 4:] = 0
    x = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        assert torch.equal(model(**x).logits, original.eval()(**x).logits)
    qann = _calibrated(model, x)
    info = {"model": "BertForSequenceClassification", "hf": describe_hf(model, tmp_path / "bert"), "stage": "snn",
            "snn": {"spikes_per_step": 3}}
    path = checkpoint.save(qann, tmp_path / "bert.safetensors", info)
    (tmp_path / "bert" / "model.safetensors").unlink()  # the checkpoint alone rebuilds the model
    rebuilt, stored = from_checkpoint(path, snn=False)
    assert stored["hf"]["dir"] == str((tmp_path / "bert").resolve())
    assert stored["hf"]["architecture"] == "BertForSequenceClassification"
    _same_qann(rebuilt, qann, {"input_ids": ids[:2, :5], "attention_mask": mask[:2, :5]})
    assert all(n.spikes_per_step == 3 for n in from_checkpoint(path)[0].neurons)

    info["hf"]["config"]["num_hidden_layers"] = 2  # another model than the tensors': refused, keys named
    checkpoint.save(qann, tmp_path / "bad.safetensors", info)
    with pytest.raises(ValueError, match="missing .*layer.1"):
        from_checkpoint(tmp_path / "bad.safetensors")


def test_hugging_face_directories_that_would_run_code_or_are_incomplete_are_refused(tmp_path):
    from spiketwin.models.huggingface import load_pretrained

    _tiny_bert(tmp_path / "bert")
    config = tmp_path / "bert" / "config.json"
    data = json.loads(config.read_text())
    config.write_text(json.dumps({**data, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="'GPT2LMHeadModel' is not a transformers class for model type 'bert'"):
        load_pretrained(tmp_path / "bert")
    config.write_text(json.dumps({**data, "auto_map": {"AutoModel": "mine.Model"}}))
    with pytest.raises(ValueError, match="auto_map.*never runs"):
        load_pretrained(tmp_path / "bert")
    (tmp_path / "bert" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_pretrained(tmp_path / "bert")
