"""Model definitions and the registry of named configurations: ``create(name, **overrides)``."""

from .registry import available, create, model_class, register
from .vit import ViT, load_timm_safetensors

__all__ = ["ViT", "available", "create", "load_timm_safetensors", "model_class", "register"]
