"""Mixed-precision training (TrainConfig.amp): bf16 autocast runs a Spikformer step close to float32, fp16 scales
the loss and its scaler state survives a resume, a wrong mode is refused by name."""

import json

import pytest
import torch
from test_train import tiny_spikformer, toy_data

from spiketwin.amp import MixedPrecision
from spiketwin.base import reset
from spiketwin.checkpoint import read_metadata
from spiketwin.train import CHECKPOINT, TrainConfig, fit


def _loss_and_grads(model, x, y, mode):
    precision = MixedPrecision(mode, torch.device("cpu"))
    model.train()
    with precision.autocast():
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    reset(model)
    grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])
    return logits.detach().float(), float(loss.detach()), grads


def test_a_bf16_spikformer_step_stays_close_to_float32():
    torch.manual_seed(0)
    model = tiny_spikformer()
    x, y = toy_data(16)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    logits32, loss32, grads32 = _loss_and_grads(model, x, y, None)
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)
    logits16, loss16, grads16 = _loss_and_grads(model, x, y, "bf16")
    assert not torch.equal(logits16, logits32)  # autocast really ran the layers in bfloat16
    assert torch.isfinite(grads16).all()
    assert loss16 == pytest.approx(loss32, rel=0.02)
    # a spike may flip where bf16 rounds a potential across the threshold; the gradient keeps its direction
    assert torch.nn.functional.cosine_similarity(grads16, grads32, 0) > 0.8


def test_fp16_training_scales_the_loss_and_resumes_with_the_scaler_state(tmp_path, monkeypatch):
    torch.manual_seed(0)
    x, y = toy_data(32)
    config = dict(epochs=1, batch_size=16, warmup_epochs=0, lr=1e-3, progress=False, amp="fp16",
                  out_dir=str(tmp_path))
    history = fit(tiny_spikformer(), x, y, TrainConfig(**config))
    assert len(history) == 1 and history[0]["loss"] == history[0]["loss"]  # finite, not NaN
    meta = json.loads(read_metadata(tmp_path / CHECKPOINT, "checkpoint")["spiketwin.train"])
    assert meta["amp"]["scale"] > 0 and meta["config"]["amp"] == "fp16"

    restored = []
    original = MixedPrecision.load_state_dict
    monkeypatch.setattr(MixedPrecision, "load_state_dict", lambda self, s: (restored.append(s), original(self, s)))
    history = fit(tiny_spikformer(), x, y, TrainConfig(**{**config, "epochs": 2, "resume": True}))
    assert restored == [meta["amp"]]
    assert [r["epoch"] for r in history] == [1, 2]


def test_an_unknown_amp_mode_is_refused_by_name():
    x, y = toy_data(8)
    with pytest.raises(ValueError, match="TrainConfig.amp.*'bf16'.*'fp16'"):
        fit(tiny_spikformer(), x, y, TrainConfig(epochs=1, progress=False, amp="fp8"))
