"""GPT-2 decoder (Radford et al. 2019): pre-norm Transformer, learned positions, tanh-GELU, tied output.

Dimension legend: B batch, T length, H hidden size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ptmkit.config import ConfigError, check_positive
from ptmkit.models.decoder import DecoderBackbone
from ptmkit.nn import MLP, AttentionConfig, Embeddings, PreNormBlock, SelfAttention
from ptmkit.nn.moe import MoEConfig, SparseMoE, resolve_moe


@dataclass
class GPT2Config:
    vocab_size: int = 50257
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int | None = None  # None = 4 * hidden_size
    max_position_embeddings: int = 1024
    hidden_act: str = "gelu_new"
    layer_norm_eps: float = 1e-5
    dropout: float = 0.1
    attention_dropout: float = 0.1
    embedding_dropout: float = 0.1
    initializer_range: float = 0.02
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    pad_token_id: int | None = None  # GPT-2 has no padding token; set one for batched classification
    attention_kernel: str = "sdpa"  # a key of ptmkit.nn.ATTENTION (dense or efficient kernels)
    attention_options: dict[str, Any] = field(default_factory=dict)  # that kernel's settings, e.g. {"window": 256}
    moe: MoEConfig | dict[str, Any] | None = None  # sparse MoE FFN in every moe.every-th block (nn/moe.py)

    def __post_init__(self) -> None:
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        check_positive(
            "GPT2Config", vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_layers=self.num_layers,
            num_heads=self.num_heads, intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
        )
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"GPT2Config: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        self.moe = resolve_moe("GPT2Config", self.moe, self.num_layers)


class GPT2Decoder(DecoderBackbone):
    family = "gpt2"
    supports_tensor_parallel = True  # ptmkit.parallel.tensor splits its blocks
    supports_pipeline = True  # ptmkit.parallel.pipeline cuts it into stages

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = c = config
        self.embeddings = Embeddings(c.vocab_size, c.hidden_size, c.max_position_embeddings, dropout=c.embedding_dropout)
        attn = AttentionConfig(c.hidden_size, c.num_heads, dropout=c.attention_dropout, kernel=c.attention_kernel,
                               kernel_options=c.attention_options)
        self.layers = nn.ModuleList(
            PreNormBlock(
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
        self.norm_f = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.rotary = None  # positions are learned embeddings
        self.apply(self.init_weights)
        # GPT-2 §2.3: scale the residual output projections by 1/sqrt(2 * layers) at initialisation.
        for block in self.layers:
            ffn_out = block.ffn.w_out if isinstance(block.ffn, SparseMoE) else block.ffn.down.weight  # every expert's
            for weight in (block.attn.out.weight, ffn_out):
                nn.init.normal_(weight, std=c.initializer_range / math.sqrt(2 * c.num_layers))
