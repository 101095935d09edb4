"""Mixture-of-experts layers of Hugging Face models, traced as dense gated sums.

Transformers' experts modules (Mixtral, Qwen-MoE, OLMoE, DeepSeek, GPT-OSS and every other class its
``use_experts_implementation`` decorates) send each token to the ``k`` experts its router chose, through shapes
that depend on the choice (``nonzero``, sorting, grouped matrix products): a graph that changes with the data,
which neither ``torch.export`` nor a spiking network can carry. The same sum, written densely, is a fixed graph:

    y = Σ_e g_e(x) · E_e(x),   g = the router's top-k weights scattered into [tokens, experts] (zero elsewhere)

:func:`dense_experts` makes the model compute its experts that way while it is traced (transformers' own
``ExpertsInterface``, its hook for other implementations of the same layer). In the engine the gates are a
non-linear region of the router's output (top-k, scatter: their integer indices never leave it), each expert a
weighted layer, and the weighting a product of two signals, as in a gated MLP. The cost: every expert runs on
every token, ``E / k`` times the expert arithmetic of the sparse dispatch, in the QANN and in the SNN (and so in
the energy report); the outputs are the sparse layer's up to float rounding of the sum.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

IMPLEMENTATION = "spiketwin_dense"


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool) -> torch.Tensor:
    """Every expert's linear layer on every token: ``x`` [tokens, in] or [tokens, experts, in] -> [tokens, experts,
    out]; ``weight`` is [experts, out, in] (transformers' ``is_transposed``: [experts, in, out])."""
    out = torch.einsum(f"{'ni' if x.dim() == 2 else 'nei'},{'eio' if transposed else 'eoi'}->neo", x, weight)
    return out if bias is None else out + bias


def dense_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                  top_k_weights: torch.Tensor) -> torch.Tensor:
    """An experts module's forward (``[tokens, hidden]``, the router's ``[tokens, k]`` choices and weights), dense."""
    up = self.gate_up_proj if self.has_gate else self.up_proj
    gates = top_k_weights.new_zeros(top_k_weights.shape[0], up.shape[0]).scatter(-1, top_k_index, top_k_weights)
    bias = (self.gate_up_proj_bias if self.has_gate else self.up_proj_bias) if self.has_bias else None
    h = _linear(hidden_states, up, bias, self.is_transposed)
    h = self._apply_gate(h) if self.has_gate else self.act_fn(h)
    h = _linear(h, self.down_proj, self.down_proj_bias if self.has_bias else None, self.is_transposed)
    if getattr(self, "has_post_expert_norm", False):  # older transformers (5.17) have none
        h = self.post_expert_norm(h)
    return (h * gates[..., None]).sum(1).to(hidden_states.dtype)


@contextlib.contextmanager
def dense_experts(model: nn.Module):
    """Within the block, ``model``'s transformers experts modules run :func:`dense_forward`; nothing changes for a
    model without them (or without transformers)."""
    configs = {id(m.config): m.config for m in model.modules()
               if hasattr(m, "is_concatenated") and hasattr(m, "has_gate") and hasattr(m, "config")}
    if not configs:
        yield
        return
    from transformers.integrations.moe import ExpertsInterface

    ExpertsInterface.register(IMPLEMENTATION, dense_forward)
    before = {key: config._experts_implementation for key, config in configs.items()}
    try:
        for config in configs.values():
            config._experts_implementation = IMPLEMENTATION
        yield
    finally:
        for key, config in configs.items():
            config._experts_implementation = before[key]
