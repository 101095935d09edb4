"""RoBERTa for sequence classification, with Hugging Face's parameter names, written for exact SNN conversion.

:class:`Roberta` is Hugging Face's ``RobertaForSequenceClassification`` (post-norm encoder, ``<s>``-token
classification head with ``dense -> tanh -> out_proj``) as an explicit module tree: every operator a
conversion swaps is a module (``nn.Linear``, ``nn.LayerNorm``, :class:`MaskedSoftmax`, ``nn.Tanh``,
:class:`~spiketwin.ops.MatMul` for ``q @ kᵀ`` and ``attn @ v``), and ``nn.Identity`` slots named ``*_quant``
mark where SpikeZIP-TF puts its quantizers. Its state-dict keys are Hugging Face's
(``roberta.embeddings.word_embeddings``, ``roberta.encoder.layer.i.attention.self.query``, ...,
``classifier.out_proj``), so weights move both ways with ``load_state_dict``.

The encoder indexes from the end (``[..., N, D]``), so the same modules run one batch ``[B, N, D]``
(ANN, QANN, one SNN step) and a sequence ``[T, B, N, D]`` (the SNN's sequence path). ``transformers`` is
only needed to read a Hugging Face model or directory (:meth:`Roberta.from_hf`, :meth:`Roberta.from_pretrained`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import load_state_dict_checked
from ..extras import require
from ..ops import MatMul
from . import register

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


@dataclass
class RobertaConfig:
    """The fields of Hugging Face's ``RobertaConfig`` that define the classifier (same names, same meaning)."""

    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    num_labels: int = 2
    classifier_dropout: float | None = None

    def __post_init__(self) -> None:
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"RobertaConfig.hidden_act: {self.hidden_act!r} is not supported; "
                             f"use one of {sorted(ACTIVATIONS)} (SpikeZIP-TF replaces gelu by relu)")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"RobertaConfig: hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if not 0 <= self.pad_token_id < min(self.vocab_size, self.max_position_embeddings):
            raise ValueError(f"RobertaConfig.pad_token_id {self.pad_token_id} must index both the vocabulary "
                             f"({self.vocab_size}) and the position table ({self.max_position_embeddings})")

    @classmethod
    def from_hf(cls, config) -> RobertaConfig:
        """Read a ``transformers.RobertaConfig``; refuses what this model does not implement, naming the field."""
        unsupported = {
            "is_decoder": (getattr(config, "is_decoder", False), False),
            "add_cross_attention": (getattr(config, "add_cross_attention", False), False),
            "position_embedding_type": (getattr(config, "position_embedding_type", "absolute"), "absolute"),
        }
        for name, (value, wanted) in unsupported.items():
            if value != wanted:
                raise ValueError(f"RobertaConfig.{name}={value!r} is not supported (only {wanted!r})")
        values = {f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)}
        return cls(**values)


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, N]`` 0/1 key mask -> ``[B, 1, 1, N]`` additive mask: 0 for real tokens, the dtype's lowest
    value for padding (as Hugging Face does), so a padded key gets exactly zero attention weight."""
    keep = attention_mask.to(dtype)[:, None, None, :]
    return (1.0 - keep) * torch.finfo(dtype).min


class MaskedSoftmax(nn.Module):
    """``softmax(x + mask)`` over the last dimension; ``mask`` is additive and broadcasts against ``x``.

    The mask is an argument (not part of ``x``) so that a spiking softmax can accumulate the scores while
    applying the same mask at every step.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x + mask, dim=-1)


class Embeddings(nn.Module):
    """Word + position + token-type embeddings (:meth:`forward`, ``[B, N]`` ids -> ``[B, N, D]``), then
    LayerNorm, dropout and the ``quant`` slot (:meth:`normalize`).

    The split is the SNN's input boundary: the summed lookups are the analog input that enters at the first
    time step; the LayerNorm and the quantizer (the first neurons) run inside the SNN. Positions follow
    RoBERTa: real tokens count from ``pad_token_id + 1``, padding sits at ``pad_token_id``.
    """

    def __init__(self, cfg: RobertaConfig) -> None:
        super().__init__()
        self.padding_idx = cfg.pad_token_id
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size,
                                                padding_idx=cfg.pad_token_id)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.quant = nn.Identity()

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        real = input_ids.ne(self.padding_idx).long()
        return real.cumsum(dim=1) * real + self.padding_idx

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        return (self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
                + self.position_embeddings(self.position_ids(input_ids)))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., N, D] -> [..., N, D]``: LayerNorm, dropout, quantizer slot."""
        return self.quant(self.dropout(self.LayerNorm(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a key mask: ``[..., N, D] -> [..., N, D]``, Hugging Face's maths.

    Quantizer slots: ``query_quant``, ``key_quant``, ``value_quant`` (signed), ``attn_quant`` after the
    softmax (unsigned), ``out_quant`` after ``attn @ v`` (signed).
    """

    def __init__(self, cfg: RobertaConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.num_heads, self.head_dim = cfg.num_attention_heads, d // cfg.num_attention_heads
        self.scale = self.head_dim ** -0.5
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.query_quant, self.key_quant, self.value_quant = nn.Identity(), nn.Identity(), nn.Identity()
        self.matmul_qk = MatMul()
        self.softmax = MaskedSoftmax()
        self.dropout = nn.Dropout(cfg.attention_probs_dropout_prob)
        self.attn_quant = nn.Identity()
        self.matmul_av = MatMul()
        self.out_quant = nn.Identity()

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., N, D] -> [..., H, N, d]``."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = self.heads(self.query_quant(self.query(x)))
        k = self.heads(self.key_quant(self.key(x)))
        v = self.heads(self.value_quant(self.value(x)))
        scores = self.matmul_qk(q, k.transpose(-2, -1)) * self.scale  # [..., H, N, N]
        attn = self.attn_quant(self.dropout(self.softmax(scores, mask)))
        out = self.out_quant(self.matmul_av(attn, v))  # [..., H, N, d]
        return out.transpose(-3, -2).flatten(-2)


class AddNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)`` (post-norm); slots ``dense_quant`` (signed) and ``norm_quant`` (signed)."""

    def __init__(self, d_in: int, d_out: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.dense_quant = nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)
        self.norm_quant = nn.Identity()

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.norm_quant(self.LayerNorm(self.dropout(self.dense_quant(self.dense(x))) + residual))


class Attention(nn.Module):
    """``attention.self`` then ``attention.output`` (Hugging Face's nesting, so the keys match)."""

    def __init__(self, cfg: RobertaConfig) -> None:
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = AddNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps, cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    """``act(dense(x))``; slot ``act_quant`` (unsigned: with ReLU the quantizer makes the ReLU redundant)."""

    def __init__(self, cfg: RobertaConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.intermediate_act_fn = ACTIVATIONS[cfg.hidden_act]()
        self.act_quant = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_quant(self.intermediate_act_fn(self.dense(x)))


class Layer(nn.Module):
    """One post-norm encoder layer: attention + add & norm, then feed-forward + add & norm."""

    def __init__(self, cfg: RobertaConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = AddNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps, cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, cfg: RobertaConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))


class Backbone(nn.Module):
    """``roberta.*``: the embeddings and the encoder layers (no pooler, as in the classifier)."""

    def __init__(self, cfg: RobertaConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)


class ClassificationHead(nn.Module):
    """``out_proj(act_quant(tanh(dense(x))))`` on the ``<s>`` token; ``[..., D] -> [..., num_labels]``.

    ``act_quant`` (signed) after the tanh lets ``out_proj`` take spikes in the SNN, like every other linear layer.
    """

    def __init__(self, cfg: RobertaConfig) -> None:
        super().__init__()
        p = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.act = nn.Tanh()
        self.act_quant = nn.Identity()
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_quant(self.act(self.dense(self.dropout(x))))
        return self.out_proj(self.dropout(x))


class Roberta(nn.Module):
    """``RobertaForSequenceClassification`` as explicit modules; same keywords and state-dict keys.

    ``forward(input_ids [B, N], attention_mask [B, N] = None, token_type_ids [B, N] = None)`` returns the
    logits ``[B, num_labels]``. Padding (``attention_mask == 0``) never changes a real token's result.
    """

    def __init__(self, config: RobertaConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is not None and kwargs:
            raise TypeError("Roberta: give either a RobertaConfig or keyword fields, not both")
        self.config = config if config is not None else RobertaConfig(**kwargs)
        self.roberta = Backbone(self.config)
        self.classifier = ClassificationHead(self.config)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Hugging Face's initialisation: normal(0, 0.02) weights, zero biases, zero padding embeddings."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)
                elif m.padding_idx is not None:
                    m.weight[m.padding_idx].zero_()

    @classmethod
    def from_hf(cls, model: nn.Module) -> Roberta:
        """A copy of a ``transformers.RobertaForSequenceClassification`` (same config and weights)."""
        if type(model).__name__ != "RobertaForSequenceClassification":
            raise TypeError(f"Roberta.from_hf expects a transformers RobertaForSequenceClassification, "
                            f"got {type(model).__name__}")
        param = next(model.parameters())
        ours = cls(RobertaConfig.from_hf(model.config)).to(device=param.device, dtype=param.dtype)
        ours.load_hf_state_dict(model.state_dict())  # copied in the model's own dtype: nothing is rounded
        return ours

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Roberta:
        """Load a local Hugging Face model directory (``config.json`` + weights); never downloads."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"Roberta.from_pretrained: {path} has no config.json "
                                    "(expected a directory written by save_pretrained)")
        transformers = require("transformers", "nlp", "Roberta.from_pretrained")
        return cls.from_hf(transformers.RobertaForSequenceClassification.from_pretrained(str(path),
                                                                                         local_files_only=True))

    def to_hf(self) -> nn.Module:
        """The ``transformers.RobertaForSequenceClassification`` with this model's config and weights."""
        from transformers import RobertaConfig as HFConfig
        from transformers import RobertaForSequenceClassification

        param = next(self.parameters())
        hf = RobertaForSequenceClassification(HFConfig(**asdict(self.config))).to(device=param.device,
                                                                                    dtype=param.dtype)
        hf.load_state_dict(self.state_dict())
        return hf

    def load_hf_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load Hugging Face's keys; a clear ``ValueError`` lists missing, unexpected and mis-shaped keys."""
        state = {k: v for k, v in state.items() if not k.endswith(("position_ids", "token_type_ids"))}
        load_state_dict_checked(self, state, "Roberta.load_hf_state_dict: the state dict")

    def check_input(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    token_type_ids: torch.Tensor | None) -> None:
        """Raise a ``ValueError`` naming the field at fault unless the inputs are valid ``[B, N]`` batches."""
        cfg = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"Roberta: input_ids must be an integer tensor [B, N], got {got}")
        longest = cfg.max_position_embeddings - cfg.pad_token_id - 1
        if input_ids.shape[1] > longest:
            raise ValueError(f"Roberta: input_ids has {input_ids.shape[1]} tokens; max_position_embeddings "
                             f"{cfg.max_position_embeddings} allows at most {longest}")
        if input_ids.numel() and not bool(((input_ids >= 0) & (input_ids < cfg.vocab_size)).all()):
            raise ValueError(f"Roberta: input_ids must lie in [0, {cfg.vocab_size}) (vocab_size)")
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and (not isinstance(t, torch.Tensor) or t.shape != input_ids.shape):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"Roberta: {name} must have input_ids' shape {tuple(input_ids.shape)}, got {got}")
        if token_type_ids is not None and not bool(((token_type_ids >= 0)
                                                    & (token_type_ids < cfg.type_vocab_size)).all()):
            raise ValueError(f"Roberta: token_type_ids must lie in [0, {cfg.type_vocab_size}) (type_vocab_size)")
        if attention_mask is not None and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("Roberta: attention_mask must hold only 0 (padding) and 1 (real token)")
        if attention_mask is not None and attention_mask.numel() and not bool(attention_mask[:, 0].all()):
            raise ValueError("Roberta: attention_mask[:, 0] must be 1: the classifier reads the <s> token at "
                             "position 0, so pad on the right (tokenizer padding_side='right')")

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Check the inputs; return the summed embedding lookups ``[B, N, D]`` (the SNN's analog input) and
        the additive attention mask ``[B, 1, 1, N]``. Trailing columns that are padding in every row are
        dropped (``N`` may shrink); they cannot change a result."""
        self.check_input(input_ids, attention_mask, token_type_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif attention_mask.numel():  # trailing columns that pad every row cannot change any result: drop them
            used = attention_mask.ne(0).any(0).nonzero()
            length = int(used.max()) + 1 if len(used) else 1
            input_ids, attention_mask = input_ids[:, :length], attention_mask[:, :length]
            token_type_ids = None if token_type_ids is None else token_type_ids[:, :length]
        x = self.roberta.embeddings(input_ids, token_type_ids)
        return x, additive_mask(attention_mask, x.dtype)

    def forward_embedded(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Summed embeddings ``[..., N, D]`` and additive mask -> logits ``[..., num_labels]`` (from the ``<s>``
        token at position 0)."""
        x = self.roberta.embeddings.normalize(x)
        for layer in self.roberta.encoder.layer:
            x = layer(x, mask)
        return self.classifier(x[..., 0, :])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_embedded(*self.embed(input_ids, attention_mask, token_type_ids))


@register("roberta_sst2_small")
def roberta_sst2_small(**overrides) -> Roberta:
    """A small ReLU RoBERTa that trains from scratch on SST-2 on a CPU in minutes (the benchmark's model)."""
    defaults = dict(vocab_size=8192, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=128, hidden_act="relu", max_position_embeddings=66, type_vocab_size=1)
    return Roberta(**{**defaults, **overrides})
