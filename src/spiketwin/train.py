"""Training: ANN, QAT (a QANN trains like any model) and direct BPTT training of spiking models.

``fit`` is the loop: AdamW, linear warm-up then cosine decay, label smoothing, spiking state reset after
every batch. Data is a pair of tensors ``(x, y)`` or any iterable of ``(x, y)`` batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .base import reset


@dataclass
class TrainConfig:
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 64
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    seed: int = 0
    progress: bool = True


Inputs = torch.Tensor | dict[str, torch.Tensor]
"""A model input: one tensor, or a dict of tensors passed as keyword arguments (``input_ids``, ...)."""


def _select(x: Inputs, idx: torch.Tensor) -> Inputs:
    return {k: v[idx] for k, v in x.items()} if isinstance(x, dict) else x[idx]


def _to(x: Inputs, device: torch.device) -> Inputs:
    return {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)


def _call(model: nn.Module, x: Inputs) -> torch.Tensor:
    return model(**x) if isinstance(x, dict) else model(x)


def batches(x: Inputs, y: torch.Tensor, batch_size: int, shuffle: bool = False,
            generator: torch.Generator | None = None) -> Iterable[tuple[Inputs, torch.Tensor]]:
    """Mini-batches of ``(x, y)`` (shuffled with ``generator`` when ``shuffle``); ``x`` is a tensor or a
    dict of tensors with ``len(y)`` rows each."""
    for name, v in (x.items() if isinstance(x, dict) else [("x", x)]):
        if len(v) != len(y):
            raise ValueError(f"{name} has {len(v)} samples but y has {len(y)}")
    order = torch.randperm(len(y), generator=generator) if shuffle else torch.arange(len(y))
    for i in range(0, len(y), batch_size):
        idx = order[i:i + batch_size]
        yield _select(x, idx), y[idx]


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False)


def fit(model: nn.Module, x: Inputs, y: torch.Tensor, config: TrainConfig | None = None,
        eval_data: tuple[Inputs, torch.Tensor] | None = None) -> list[dict]:
    """Train ``model`` on ``x`` (a tensor, or a dict of keyword inputs) and ``y`` (class labels). Returns one
    record per epoch (``epoch``, ``loss``, ``lr`` and ``accuracy`` on ``eval_data`` when given)."""
    cfg = config or TrainConfig()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(y) / cfg.batch_size)
    total, warmup = cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_warmup(s, total, warmup))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        running, seen = 0.0, 0
        for xb, yb in _progress(batches(x, y, cfg.batch_size, True, generator), steps_per_epoch,
                                f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress):
            xb, yb = _to(xb, device), yb.to(device)
            loss = loss_fn(_call(model, xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            reset(model)
            running += loss.item() * len(yb)
            seen += len(yb)
        record = {"epoch": epoch + 1, "loss": running / seen, "lr": scheduler.get_last_lr()[0]}
        if eval_data is not None:
            record["accuracy"] = evaluate(model, *eval_data, batch_size=cfg.batch_size)
        history.append(record)
    return history


@torch.no_grad()
def evaluate(model: nn.Module, x: Inputs, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``, in ``[0, 1]``."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for xb, yb in batches(x, y, batch_size):
        correct += (_call(model, _to(xb, device)).argmax(-1).cpu() == yb).sum().item()
        reset(model)
    return correct / len(y)
