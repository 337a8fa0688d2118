"""BERT encoder (Devlin et al. 2019): post-norm Transformer with token, position and segment embeddings.

Dimension legend: B batch, T length, H hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ptmkit.config import ConfigError, check_positive
from ptmkit.models.base import Backbone, BackboneOutput, stack_forward
from ptmkit.nn import MLP, AttentionConfig, Embeddings, PostNormBlock, SelfAttention, build_mask
from ptmkit.nn.moe import MoEConfig, SparseMoE, resolve_moe


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: int = 0
    initializer_range: float = 0.02
    attention_kernel: str = "sdpa"  # a key of ptmkit.nn.ATTENTION (dense or efficient kernels)
    attention_options: dict[str, Any] = field(default_factory=dict)  # that kernel's settings, e.g. {"window": 256}
    moe: MoEConfig | dict[str, Any] | None = None  # sparse MoE FFN in every moe.every-th block (nn/moe.py)

    def __post_init__(self) -> None:
        check_positive(
            type(self).__name__, vocab_size=self.vocab_size, hidden_size=self.hidden_size,
            num_layers=self.num_layers, num_heads=self.num_heads, intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
        )
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"{type(self).__name__}: hidden_size {self.hidden_size} is not divisible by num_heads "
                f"{self.num_heads}; pick a head count that divides it (e.g. {self.hidden_size // 64 or 1})"
            )
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{type(self).__name__}: {name} must be in [0, 1)")
        self.moe = resolve_moe(type(self).__name__, self.moe, self.num_layers)


def bert_embeddings(c: BertConfig, width: int) -> Embeddings:
    """Token + position + segment embeddings, LayerNorm, dropout; `width` is ELECTRA's embedding_size (§3.2)."""
    return Embeddings(
        c.vocab_size, width, c.max_position_embeddings, c.type_vocab_size,
        norm=nn.LayerNorm(width, eps=c.layer_norm_eps), dropout=c.dropout, padding_idx=c.pad_token_id,
    )


def post_norm_layers(c: BertConfig, block: type[nn.Module] = PostNormBlock) -> nn.ModuleList:
    """BERT's stack of c.num_layers post-norm blocks (ELECTRA reuses it unchanged; Megatron-BERT passes the
    pre-norm block)."""
    attn = AttentionConfig(c.hidden_size, c.num_heads, dropout=c.attention_dropout, kernel=c.attention_kernel,
                           kernel_options=c.attention_options)
    return nn.ModuleList(
        block(
            SelfAttention(attn),
            SparseMoE(c.moe, c.hidden_size, c.intermediate_size, c.hidden_act, init_std=c.initializer_range)
            if c.moe is not None and c.moe.sparse_layer(i)
            else MLP(c.hidden_size, c.intermediate_size, c.hidden_act),
            nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps),
            nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps),
            c.dropout,
        )
        for i in range(c.num_layers)
    )


class BertEncoder(Backbone):
    family = "bert"
    supports_tensor_parallel = True  # ptmkit.parallel.tensor splits its blocks
    causal = False

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = c = config
        self.embeddings = bert_embeddings(c, c.hidden_size)
        self.layers = post_norm_layers(c)
        self.apply(self.init_weights)

    def default_positions(self, input_ids: torch.Tensor | None, b: int, t: int, device) -> torch.Tensor:
        return torch.arange(t, device=device)[None].expand(b, t)  # (B, T)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T), 1 = token, 0 = padding
        token_type_ids: torch.Tensor | None = None,  # (B, T)
        position_ids: torch.Tensor | None = None,  # (B, T)
        inputs_embeds: torch.Tensor | None = None,  # (B, T, H)
        output_hidden_states: bool = False,
    ) -> BackboneOutput:
        ref = input_ids if input_ids is not None else inputs_embeds
        b, t = ref.shape[0], ref.shape[1]
        if position_ids is None:
            position_ids = self.default_positions(input_ids, b, t, ref.device)
        x = self.embeddings(input_ids, position_ids, token_type_ids, inputs_embeds)  # (B, T, H)
        mask, _ = build_mask(attention_mask, t, t, causal=False, device=x.device)
        x, hidden = stack_forward(self.layers, x, mask, False, None, None, output_hidden_states)
        final_norm = self._modules.get("final_norm")  # pre-norm stacks (Megatron-BERT) normalise once, at the end
        if final_norm is not None:
            x = final_norm(x)
            if hidden:
                hidden[-1] = x  # as transformers: the last hidden state is the normalised one
        return BackboneOutput(x, tuple(hidden) if hidden else None)
