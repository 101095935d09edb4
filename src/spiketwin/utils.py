"""Helpers every layer of spiketwin shares; this module imports nothing of spiketwin but :mod:`.extras`.

- :func:`atomic_write`: create or replace a file so that a crash never leaves half of it;
- :func:`safetensors_torch`, :func:`read_metadata`: the safetensors module (an optional extra) and a file's
  metadata, with errors that name the file;
- :func:`load_state_dict_checked`: load a state dict whose keys and shapes are exactly the model's;
- :func:`cache_dir`: where spiketwin keeps what it computes once (``$SPIKETWIN_CACHE``);
- :func:`progress_bar`: a progress bar when tqdm is installed and one is wanted.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from .extras import require


def safetensors_torch():
    """The ``safetensors.torch`` module, or an ``ImportError`` that says how to install it."""
    return require("safetensors.torch", "io", "spiketwin checkpoints")


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Create or replace ``path`` atomically: ``write(tmp)`` fills a temporary file beside it, which is synced
    to disk and renamed over ``path``; a crash leaves the old file (or none), never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_metadata(path: str | Path, what: str) -> dict[str, str]:
    """The metadata of the safetensors file at ``path`` (empty when it has none); errors name it as ``what``
    (e.g. "checkpoint"): a ``FileNotFoundError`` when it is missing, a ``ValueError`` when it is not safetensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    safetensors_torch()  # a clear ImportError when it is missing
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:
        raise ValueError(f"{what} {path} is not a safetensors file: {e}") from e


def load_state_dict_checked(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Load ``state`` into ``model`` when its keys and shapes are exactly the model's; otherwise raise a
    ``ValueError`` that starts with ``source`` (the file or format at fault) and lists the missing keys (in the
    model, not in ``state``), the unexpected ones and the shape mismatches. Returns ``model``."""
    own = model.state_dict()
    problems = []
    if missing := sorted(set(own) - set(state)):
        problems.append(f"missing keys (in the model, not in the file): {', '.join(missing)}")
    if unexpected := sorted(set(state) - set(own)):
        problems.append(f"unexpected keys (in the file, not in the model): {', '.join(unexpected)}")
    if mismatched := [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                      for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]:
        problems.append("shape mismatches: " + "; ".join(mismatched))
    if problems:
        raise ValueError(f"{source} does not fit {type(model).__name__}: " + " | ".join(problems))
    model.load_state_dict(state)
    return model


def cache_dir(kind: str) -> Path:
    """The folder for cached ``kind`` (``frames``, ``native``, ...): ``$SPIKETWIN_CACHE/kind`` when that variable
    is set and not empty, else ``~/.cache/spiketwin/kind``."""
    return Path(os.environ.get("SPIKETWIN_CACHE") or Path.home() / ".cache" / "spiketwin").expanduser() / kind


def progress_bar(iterable: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    """``iterable`` behind a tqdm progress bar (``total`` items, labelled ``desc``) when ``enabled`` and tqdm is
    installed; else ``iterable`` itself."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False)


def logits_of(out, who: str = "simulate") -> torch.Tensor:
    """The logits of a model's output: a tensor itself, ``.logits`` / ``["logits"]``, or its only tensor."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) and "logits" in out:
        return out["logits"]
    tensors = [v for v in (out.values() if isinstance(out, dict) else out) if isinstance(v, torch.Tensor)]
    if len(tensors) == 1:
        return tensors[0]
    what = (f"tensors {[k for k, v in out.items() if isinstance(v, torch.Tensor)]}" if isinstance(out, dict)
            else f"{len(tensors)} tensors")
    raise TypeError(f"{who}: the model returns {type(out).__name__} with {what} and no 'logits'; return one "
                    "tensor (or an object with .logits); to_qann(..., output=NAME) keeps one output of a model")
