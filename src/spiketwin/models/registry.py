"""The registry of named model configurations: ``@register(name)`` on a factory, ``create(name, **overrides)``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Decorator: register a factory ``fn(**overrides) -> nn.Module`` under ``name``."""
    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn
    return wrap


def available() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def _factory(name: str) -> Callable[..., nn.Module]:
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create(name: str, **overrides) -> nn.Module:
    """Build the named configuration, with keyword ``overrides`` (e.g. ``num_classes=10``)."""
    return _factory(name)(**overrides)


def model_class(name: str) -> type[nn.Module]:
    """The class that ``create(name)`` builds, read from its factory's return annotation (nothing is built)."""
    import typing

    factory = _factory(name)
    builds = getattr(factory, "model_class", None)  # a factory of an optional library's class names it lazily
    cls = builds() if builds is not None else typing.get_type_hints(factory).get("return")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"models.model_class: the factory of {name!r} ({factory.__module__}.{factory.__qualname__}) "
                        f"needs a return annotation naming the nn.Module class it builds, got {cls!r}")
    return cls


def _load_all() -> None:
    """Import the model modules so that their ``@register`` calls run."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__package__}.{info.name}")
