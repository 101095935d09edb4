"""ViT: timm's keys and logits (fixture made by tests/fixtures/make_timm_vit.py), named configs, parameter
counts, any number of leading dimensions, clear errors for bad checkpoints and inputs."""

import json
from pathlib import Path

import pytest
import torch

from spiketwin.models import ViT, create, load_timm_safetensors

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_timm_checkpoint_loads_by_key_and_gives_timm_logits():
    from safetensors import safe_open
    from safetensors.torch import load_file

    io = load_file(str(FIXTURES / "timm_vit_io.safetensors"))
    with safe_open(str(FIXTURES / "timm_vit_io.safetensors"), "pt") as f:
        config = json.loads(f.metadata()["config"])
    model = load_timm_safetensors(ViT(**config, act="gelu").double(), FIXTURES / "timm_vit.safetensors")
    with torch.no_grad():
        logits = model.eval()(io["x"])
    torch.testing.assert_close(logits, io["logits"], rtol=1e-12, atol=1e-12)


def test_checkpoint_errors_name_missing_unexpected_and_mismatched_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(str(FIXTURES / "timm_vit.safetensors"))
    del state["head.bias"]
    state["fc_norm.weight"] = torch.ones(8, dtype=torch.float64)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    model = ViT(img_size=16, patch_size=4, in_chans=1, num_classes=3, embed_dim=8, depth=2, num_heads=2,
                mlp_ratio=2.0).double()
    with pytest.raises(ValueError) as err:
        load_timm_safetensors(model, path)
    msg = str(err.value)
    assert "missing keys" in msg and "head.bias" in msg
    assert "unexpected keys" in msg and "fc_norm.weight" in msg
    assert "pos_embed: file (1, 5, 8) vs model (1, 17, 8)" in msg
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_timm_safetensors(model, tmp_path / "nope.safetensors")


# counts printed by timm 1.0.31 (timm.create_model(name) on the meta device)
@pytest.mark.parametrize("name, params", [("vit_tiny_patch16_224", 5_717_416), ("vit_small_patch16_224", 22_050_664),
                                          ("vit_base_patch16_224", 86_567_656),
                                          ("vit_large_patch16_224", 304_326_632)])
def test_named_configs_have_timm_parameter_counts(name, params):
    with torch.device("meta"):
        model = create(name)
    assert sum(p.numel() for p in model.parameters()) == params


def test_small_configs_run():
    for name, shape in [("vit_digits", (2, 1, 8, 8)), ("vit_mnist", (2, 1, 28, 28))]:
        assert create(name)(torch.rand(shape)).shape == (2, 10)


def test_bad_inputs_and_keywords_give_clear_errors():
    model = create("vit_digits")
    with pytest.raises(ValueError, match=r"expected images \[B, 1, 8, 8\], got \(2, 1, 7, 8\)"):
        model(torch.rand(2, 1, 7, 8))
    with pytest.raises(ValueError, match="act must be one of"):
        ViT(act="tanh")
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        ViT(embed_dim=10, num_heads=3)
