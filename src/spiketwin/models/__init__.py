"""Model definitions and the registry of named configurations: ``create(name, **overrides)``."""

from .registry import available, create, model_class, register
from .roberta import Roberta, RobertaConfig
from .vit import ViT, load_timm_safetensors

__all__ = ["Roberta", "RobertaConfig", "ViT", "available", "create", "load_timm_safetensors", "model_class",
           "register"]
