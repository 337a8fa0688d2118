"""BART (Lewis et al. 2020, "BART: denoising sequence-to-sequence pre-training"): a post-norm encoder-decoder.

A standard Transformer (Vaswani et al. 2017) with GELU, learned absolute positions (fairseq numbering: rows
0 and 1 of the table are reserved, so position p reads row p + 2), a LayerNorm on the embeddings of each stack
("layernorm_embedding"), optionally sqrt(d_model)-scaled token embeddings, a shared token embedding tied to the
LM head, and a fixed `final_logits_bias` added to the logits. Pre-training reconstructs text corrupted by token
masking, deletion, span infilling, sentence permutation and document rotation (objectives/, not here).
Dimension legend: B batch, S source length, T target length, H hidden size (d_model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from ptmkit.config import ConfigError, check_positive
from ptmkit.models.encdec import DecoderStack, EncoderDecoderBackbone, EncoderStack
from ptmkit.nn import (
    ACTIVATIONS, MLP, AttentionConfig, CrossAttention, PostNormBlock, PostNormDecoderBlock, SelfAttention,
)

POSITION_OFFSET = 2  # fairseq reserves the first two rows of the position table (padding_idx + 1)
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which BART checkpoints were trained with (not configurable in HF)


@dataclass
class BartConfig:
    vocab_size: int = 50265
    hidden_size: int = 1024  # d_model
    num_layers: int = 12  # encoder layers
    num_decoder_layers: int | None = None  # None = num_layers
    num_heads: int = 16  # encoder attention heads
    num_decoder_heads: int | None = None  # None = num_heads
    intermediate_size: int = 4096  # encoder FFN width
    decoder_intermediate_size: int | None = None  # None = intermediate_size
    max_position_embeddings: int = 1024
    hidden_act: str = "gelu"
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    scale_embedding: bool = False  # multiply token embeddings by sqrt(hidden_size)
    initializer_range: float = 0.02
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    decoder_start_token_id: int | None = 2  # BART starts decoding from </s>
    tie_word_embeddings: bool = True
    attention_kernel: str = "sdpa"

    def __post_init__(self) -> None:
        name = type(self).__name__
        for attr, default in (("num_decoder_layers", "num_layers"), ("num_decoder_heads", "num_heads"),
                              ("decoder_intermediate_size", "intermediate_size")):
            if getattr(self, attr) is None:
                setattr(self, attr, getattr(self, default))
        check_positive(
            name, vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_layers=self.num_layers,
            num_decoder_layers=self.num_decoder_layers, num_heads=self.num_heads,
            num_decoder_heads=self.num_decoder_heads, intermediate_size=self.intermediate_size,
            decoder_intermediate_size=self.decoder_intermediate_size,
            max_position_embeddings=self.max_position_embeddings, initializer_range=self.initializer_range,
        )
        for attr in ("num_heads", "num_decoder_heads"):
            heads = getattr(self, attr)
            if self.hidden_size % heads:
                raise ConfigError(
                    f"{name}: hidden_size {self.hidden_size} is not divisible by {attr} {heads}; "
                    f"pick a head count that divides it (e.g. {max(1, self.hidden_size // 64)})"
                )
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"{name}: unknown hidden_act {self.hidden_act!r}; choose from {sorted(ACTIVATIONS)}")
        for attr in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, attr) < 1.0:
                raise ConfigError(f"{name}: {attr} must be in [0, 1), got {getattr(self, attr)}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(
                f"{name}: pad_token_id {self.pad_token_id} is outside the vocabulary of {self.vocab_size}"
            )


class BartEncoderDecoder(EncoderDecoderBackbone):
    family = "bart"
    lm_bias = True

    def __init__(self, config: BartConfig):
        super().__init__()
        self.config = c = config
        self.embed_scale = math.sqrt(c.hidden_size) if c.scale_embedding else 1.0
        self.shared = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.encoder = EncoderStack(
            nn.ModuleList(self.encoder_block(c) for _ in range(c.num_layers)),
            positions=nn.Embedding(c.max_position_embeddings + POSITION_OFFSET, c.hidden_size),
            position_offset=POSITION_OFFSET, embed_norm=self.norm(c), final_norm=self.final_norm(c),
            dropout=c.dropout,
        )
        self.decoder = DecoderStack(
            nn.ModuleList(self.decoder_block(c) for _ in range(c.num_decoder_layers)),
            positions=nn.Embedding(c.max_position_embeddings + POSITION_OFFSET, c.hidden_size),
            position_offset=POSITION_OFFSET, embed_norm=self.norm(c), final_norm=self.final_norm(c),
            dropout=c.dropout,
        )
        self.apply(self.init_weights)

    @staticmethod
    def norm(c: BartConfig) -> nn.LayerNorm:
        return nn.LayerNorm(c.hidden_size, eps=LAYER_NORM_EPS)

    @staticmethod
    def attn_config(c: BartConfig, heads: int) -> AttentionConfig:
        return AttentionConfig(c.hidden_size, heads, dropout=c.attention_dropout, kernel=c.attention_kernel)

    # The three places where mBART differs (models/mbart.py): block norm placement and the final norms.
    def encoder_block(self, c: BartConfig) -> nn.Module:
        return PostNormBlock(
            SelfAttention(self.attn_config(c, c.num_heads)),
            MLP(c.hidden_size, c.intermediate_size, c.hidden_act, dropout=c.activation_dropout),
            self.norm(c), self.norm(c), c.dropout,
        )

    def decoder_block(self, c: BartConfig) -> nn.Module:
        return PostNormDecoderBlock(
            SelfAttention(self.attn_config(c, c.num_decoder_heads)),
            CrossAttention(self.attn_config(c, c.num_decoder_heads)),
            MLP(c.hidden_size, c.decoder_intermediate_size, c.hidden_act, dropout=c.activation_dropout),
            self.norm(c), self.norm(c), self.norm(c), c.dropout,
        )

    def final_norm(self, c: BartConfig) -> nn.Module | None:
        return None  # post-norm: every block already ends in a LayerNorm
