"""T5 (Raffel et al. 2020, "Exploring the limits of transfer learning with a unified text-to-text Transformer").

Pre-norm encoder-decoder with a scale-only RMS "T5LayerNorm" (no mean, no bias), no biases anywhere, no
absolute positions: a relative position bias (bucketed, computed in the first layer and shared by all
layers of a stack; bidirectional in the encoder, causal in the decoder) is added to unscaled q·k logits.
FFN: ReLU (T5 v1.0) or gated-GELU (T5 v1.1, Shazeer 2020). With tied embeddings the decoder output is
scaled by d_model ** -0.5 before the LM head. Pre-training corrupts spans and replaces each with a
sentinel token; sentinels are the last ids of the tokenizer (`<extra_id_0>` = size - 1, counting down).
Dimension legend: B batch, S source length, T target length, H hidden size (d_model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptmkit.config import ConfigError, check_positive
from ptmkit.models.base import Backbone, BackboneOutput, init_normal
from ptmkit.models.encdec import DecoderStack, EncoderDecoderBackbone, EncoderStack
from ptmkit.nn import (
    ACTIVATIONS, MLP, AttentionConfig, CrossAttention, GatedMLP, PreNormBlock, PreNormDecoderBlock,
    RelativeBiasConfig, RelativePositionBias, RMSNorm, SelfAttention,
)


@dataclass
class T5Config:
    vocab_size: int = 32128
    hidden_size: int = 512  # d_model
    num_layers: int = 6  # encoder layers
    num_decoder_layers: int | None = None  # None = num_layers
    num_heads: int = 8
    head_dim: int | None = None  # d_kv; None = hidden_size // num_heads (T5-3B/11B set it explicitly)
    intermediate_size: int = 2048  # d_ff
    feed_forward_proj: str = "relu"  # "relu" (v1.0) | "gated-gelu" (v1.1, tanh GELU) | "<act>" | "gated-<act>"
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_eps: float = 1e-6
    dropout: float = 0.1
    tie_word_embeddings: bool = True  # v1.0 ties (and rescales the output); v1.1 does not
    initializer_factor: float = 1.0
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0  # T5 starts decoding from the padding token
    attention_kernel: str = "sdpa"

    def __post_init__(self) -> None:
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        check_positive(
            "T5Config", vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_layers=self.num_layers,
            num_decoder_layers=self.num_decoder_layers, num_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            relative_attention_max_distance=self.relative_attention_max_distance,
            layer_norm_eps=self.layer_norm_eps, initializer_factor=self.initializer_factor,
        )
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ConfigError(
                    f"T5Config: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; "
                    "change one of them or set head_dim (d_kv) explicitly"
                )
            self.head_dim = self.hidden_size // self.num_heads
        check_positive("T5Config", head_dim=self.head_dim)
        if self.relative_attention_num_buckets < 2:
            raise ConfigError(
                f"T5Config: relative_attention_num_buckets must be >= 2, got {self.relative_attention_num_buckets} "
                "(T5 uses 32)"
            )
        _ = self.activation  # validates feed_forward_proj
        RelativeBiasConfig(self.num_heads, self.relative_attention_num_buckets, self.relative_attention_max_distance,
                           bidirectional=True)  # validates the bucket layout with a clear message
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"T5Config: dropout must be in [0, 1), got {self.dropout}")

    @property
    def gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ConfigError(
                f"T5Config: feed_forward_proj {self.feed_forward_proj!r} must be '<act>' or 'gated-<act>' "
                "(e.g. 'relu' for T5 v1.0, 'gated-gelu' for v1.1)"
            )
        act = parts[-1]
        if self.feed_forward_proj == "gated-gelu":
            act = "gelu_new"  # T5 v1.1 checkpoints were trained with the tanh approximation
        if act not in ACTIVATIONS:
            raise ConfigError(
                f"T5Config: unknown activation {act!r} in feed_forward_proj; choose from {sorted(ACTIVATIONS)}"
            )
        return act

    @property
    def initializer_range(self) -> float:
        # What task heads (classifiers) use: Mesh TensorFlow's d_model ** -0.5 scaled by the factor.
        return self.initializer_factor * self.hidden_size ** -0.5


def _attn_config(c: T5Config) -> AttentionConfig:
    # Raffel et al. 2020 / Mesh TF: no biases and no 1/sqrt(d) scaling (folded into the initialisation).
    return AttentionConfig(c.hidden_size, c.num_heads, head_dim=c.head_dim, bias=False, out_bias=False,
                           dropout=c.dropout, kernel=c.attention_kernel, scale=1.0)


def _ffn(c: T5Config) -> nn.Module:
    if c.gated:
        return GatedMLP(c.hidden_size, c.intermediate_size, c.activation, bias=False, dropout=c.dropout)
    return MLP(c.hidden_size, c.intermediate_size, c.activation, bias=False, dropout=c.dropout)


def _encoder_stack(c: T5Config) -> EncoderStack:
    layers = nn.ModuleList(
        PreNormBlock(SelfAttention(_attn_config(c)), _ffn(c), RMSNorm(c.hidden_size, c.layer_norm_eps),
                     RMSNorm(c.hidden_size, c.layer_norm_eps), c.dropout)
        for _ in range(c.num_layers)
    )
    bias = RelativePositionBias(RelativeBiasConfig(c.num_heads, c.relative_attention_num_buckets,
                                                   c.relative_attention_max_distance, bidirectional=True))
    return EncoderStack(layers, rel_bias=bias, final_norm=RMSNorm(c.hidden_size, c.layer_norm_eps),
                        dropout=c.dropout, out_dropout=c.dropout)


def _init_t5(stacks, shared: nn.Embedding, c: T5Config) -> None:
    """Mesh TensorFlow initialisation (as transformers' T5PreTrainedModel._init_weights)."""
    f, d, inner = c.initializer_factor, c.hidden_size, c.num_heads * c.head_dim
    nn.init.normal_(shared.weight, std=f)
    for stack in stacks:
        nn.init.normal_(stack.rel_bias.embedding.weight, std=f * d ** -0.5)
        for block in stack.layers:
            a = block.attn
            grouped = a.qkv.weight.view(a.kv, -1, a.qkv.weight.shape[1])  # per head: [q; k; v] rows (fuse_qkv)
            q, kv = grouped[:, : a.d * (a.h // a.kv)], grouped[:, a.d * (a.h // a.kv):]
            with torch.no_grad():
                q.normal_(std=f * (d * c.head_dim) ** -0.5)  # absorbs the missing 1/sqrt(d_kv) scaling
                kv.normal_(std=f * d ** -0.5)
            nn.init.normal_(a.out.weight, std=f * inner ** -0.5)
            if hasattr(block, "cross"):
                nn.init.normal_(block.cross.q.weight, std=f * (d * c.head_dim) ** -0.5)
                nn.init.normal_(block.cross.kv.weight, std=f * d ** -0.5)
                nn.init.normal_(block.cross.out.weight, std=f * inner ** -0.5)
            up = block.ffn.gate_up if c.gated else block.ffn.up
            nn.init.normal_(up.weight, std=f * d ** -0.5)
            nn.init.normal_(block.ffn.down.weight, std=f * c.intermediate_size ** -0.5)


class T5EncoderDecoder(EncoderDecoderBackbone):
    family = "t5"

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = c = config
        self.shared = nn.Embedding(c.vocab_size, c.hidden_size)
        self.encoder = _encoder_stack(c)
        layers = nn.ModuleList(
            PreNormDecoderBlock(
                SelfAttention(_attn_config(c)), CrossAttention(_attn_config(c)), _ffn(c),
                RMSNorm(c.hidden_size, c.layer_norm_eps), RMSNorm(c.hidden_size, c.layer_norm_eps),
                RMSNorm(c.hidden_size, c.layer_norm_eps), c.dropout,
            )
            for _ in range(c.num_decoder_layers)
        )
        bias = RelativePositionBias(RelativeBiasConfig(c.num_heads, c.relative_attention_num_buckets,
                                                       c.relative_attention_max_distance, bidirectional=False))
        self.decoder = DecoderStack(layers, rel_bias=bias, final_norm=RMSNorm(c.hidden_size, c.layer_norm_eps),
                                    dropout=c.dropout, out_dropout=c.dropout)
        _init_t5((self.encoder, self.decoder), self.shared, c)

    def output_scale(self) -> float:
        # Mesh TF: with a shared input/output embedding, rescale the decoder output by d_model ** -0.5.
        return self.config.hidden_size ** -0.5 if self.config.tie_word_embeddings else 1.0

    def init_output(self, lm_head: nn.Linear) -> None:
        nn.init.normal_(lm_head.weight, std=self.config.initializer_factor)


class T5Encoder(Backbone):
    """The T5 encoder alone (transformers' T5EncoderModel): sentence embeddings, classification, retrieval."""

    family = "t5-encoder"
    causal = False

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = c = config
        self.shared = nn.Embedding(c.vocab_size, c.hidden_size)
        self.encoder = _encoder_stack(c)
        _init_t5((self.encoder,), self.shared, c)

    def input_embeddings(self) -> nn.Embedding:
        return self.shared

    def init_weights(self, module: nn.Module) -> None:
        init_normal(module, self.config.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, S)
        attention_mask: torch.Tensor | None = None,  # (B, S)
        token_type_ids: torch.Tensor | None = None,  # unused: T5 has no segments (signature shared with BERT)
        position_ids: torch.Tensor | None = None,  # unused: positions are relative
        inputs_embeds: torch.Tensor | None = None,  # (B, S, H)
        output_hidden_states: bool = False,
    ) -> BackboneOutput:
        if token_type_ids is not None or position_ids is not None:
            raise ValueError(
                "T5 has no segment embeddings or absolute positions: pass neither token_type_ids nor position_ids"
            )
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.shared(input_ids) if inputs_embeds is None else inputs_embeds  # (B, S, H)
        return self.encoder(x, attention_mask, output_hidden_states)


def sentinel_ids(n: int, tokenizer_size: int) -> list[int]:
    """Ids of `<extra_id_0>` ... `<extra_id_{n-1}>`: T5's span-corruption sentinels are the tokenizer's last ids,
    counting down (Raffel et al. 2020 §3.1.4). `tokenizer_size` is len(tokenizer), not the padded vocab_size."""
    if not 0 < n < tokenizer_size:
        raise ValueError(f"need 0 < n ({n}) < tokenizer_size ({tokenizer_size})")
    return [tokenizer_size - 1 - i for i in range(n)]
