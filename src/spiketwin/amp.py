"""Mixed-precision training (``TrainConfig(amp="bf16" | "fp16")``, ``spiketwin train --amp``): autocast, and for
float16 a gradient scaler, as the official Spikformer code trained with AMP.

Under autocast, convolutions and linear layers compute in the low precision while losses and normalisations stay
in float32; the LIF neurons take whatever dtype reaches them (their torch path; the native CPU kernels are for
float32/float64). bfloat16 has float32's range and needs no loss scaling; float16 does: :class:`MixedPrecision`
scales the loss, skips a step whose gradients overflowed and adapts the scale, and its state travels in the
training checkpoint so that a resumed run continues with the same scale. Without ``amp`` nothing changes.
"""

from __future__ import annotations

import contextlib

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class MixedPrecision:
    """Autocast and loss scaling for one training run; ``mode`` None means full precision (a no-op)."""

    def __init__(self, mode: str | None, device: torch.device) -> None:
        if mode is not None and mode not in AMP_DTYPES:
            raise ValueError(f"TrainConfig.amp must be one of {', '.join(map(repr, AMP_DTYPES))} or None (full "
                             f"precision), got {mode!r}")
        self.mode, self.device_type = mode, torch.device(device).type
        self.scaler = torch.amp.GradScaler(self.device_type) if mode == "fp16" else None

    def autocast(self):
        """The context for the forward pass and the loss."""
        if self.mode is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=AMP_DTYPES[self.mode])

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward from ``loss`` and one optimizer step (scaled, and skipped on overflow, for float16)."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict | None:
        """The scaler's state (numbers only: it goes into the checkpoint's JSON metadata); None without one."""
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
