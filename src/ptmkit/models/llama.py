"""LLaMA-style decoder (Touvron et al. 2023): pre-RMSNorm, rotary positions, SwiGLU, grouped-query attention.

Dimension legend: B batch, T length, H hidden size, D head dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ptmkit.config import ConfigError, check_positive
from ptmkit.models.decoder import DecoderBackbone
from ptmkit.nn import AttentionConfig, Embeddings, GatedMLP, PreNormBlock, RMSNorm, RotaryEmbedding, SelfAttention
from ptmkit.nn.moe import MoEConfig, SparseMoE, resolve_moe


@dataclass
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int | None = None  # None = num_heads; fewer = grouped-query attention
    head_dim: int | None = None  # None = hidden_size // num_heads
    intermediate_size: int = 11008
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling_factor: float = 1.0  # linear position interpolation; 1.0 = none
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None
    attention_kernel: str = "sdpa"  # a key of ptmkit.nn.ATTENTION (dense or efficient kernels)
    attention_options: dict[str, Any] = field(default_factory=dict)  # that kernel's settings, e.g. {"window": 256}
    moe: MoEConfig | dict[str, Any] | None = None  # sparse SwiGLU experts (Mixtral: every 1, top_k 2)

    def __post_init__(self) -> None:
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        check_positive(
            "LlamaConfig", vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_layers=self.num_layers,
            num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, intermediate_size=self.intermediate_size,
        )
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ConfigError(
                    f"LlamaConfig: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
                )
            self.head_dim = self.hidden_size // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"LlamaConfig: num_kv_heads {self.num_kv_heads} must divide num_heads {self.num_heads} "
                "(grouped-query attention shares each key/value head among an equal group of query heads)"
            )
        self.moe = resolve_moe("LlamaConfig", self.moe, self.num_layers)


class LlamaDecoder(DecoderBackbone):
    family = "llama"
    supports_tensor_parallel = True  # ptmkit.parallel.tensor splits its blocks
    supports_pipeline = True  # ptmkit.parallel.pipeline cuts it into stages

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = c = config
        self.embeddings = Embeddings(c.vocab_size, c.hidden_size)
        attn = AttentionConfig(
            c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, bias=c.attention_bias,
            out_bias=c.attention_bias, dropout=c.attention_dropout, kernel=c.attention_kernel,
            kernel_options=c.attention_options,
        )
        self.layers = nn.ModuleList(
            PreNormBlock(
                SelfAttention(attn),
                SparseMoE(c.moe, c.hidden_size, c.intermediate_size, c.hidden_act, bias=c.mlp_bias, gated=True,
                          init_std=c.initializer_range)
                if c.moe is not None and c.moe.sparse_layer(i)
                else GatedMLP(c.hidden_size, c.intermediate_size, c.hidden_act, bias=c.mlp_bias),
                RMSNorm(c.hidden_size, c.rms_norm_eps),
                RMSNorm(c.hidden_size, c.rms_norm_eps),
                0.0,
            )
            for i in range(c.num_layers)
        )
        self.norm_f = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.rotary = RotaryEmbedding(c.head_dim, c.rope_theta, c.rope_scaling_factor)
        self.apply(self.init_weights)
