"""mBART (Liu et al. 2020, "Multilingual denoising pre-training for neural machine translation").

BART's denoising recipe on 25 (later 50) languages with one change to the network: pre-norm layers
(Xiong et al. 2020) with a final LayerNorm on top of each stack, for stable training at 12+12 layers. Token
embeddings are scaled by sqrt(d_model); decoding starts from a language-id token rather than a fixed one.
Dimension legend: B batch, S source length, T target length, H hidden size (d_model).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ptmkit.models.bart import BartConfig, BartEncoderDecoder
from ptmkit.nn import MLP, CrossAttention, PreNormBlock, PreNormDecoderBlock, SelfAttention


@dataclass
class MBartConfig(BartConfig):
    vocab_size: int = 250027
    scale_embedding: bool = True
    decoder_start_token_id: int | None = None  # the target language code; pass it to generate()


class MBartEncoderDecoder(BartEncoderDecoder):
    family = "mbart"

    def encoder_block(self, c: MBartConfig) -> nn.Module:
        return PreNormBlock(
            SelfAttention(self.attn_config(c, c.num_heads)),
            MLP(c.hidden_size, c.intermediate_size, c.hidden_act, dropout=c.activation_dropout),
            self.norm(c), self.norm(c), c.dropout,
        )

    def decoder_block(self, c: MBartConfig) -> nn.Module:
        return PreNormDecoderBlock(
            SelfAttention(self.attn_config(c, c.num_decoder_heads)),
            CrossAttention(self.attn_config(c, c.num_decoder_heads)),
            MLP(c.hidden_size, c.decoder_intermediate_size, c.hidden_act, dropout=c.activation_dropout),
            self.norm(c), self.norm(c), self.norm(c), c.dropout,
        )

    def final_norm(self, c: MBartConfig) -> nn.Module:
        return self.norm(c)  # pre-norm stacks end in a LayerNorm ("layer_norm" in HF checkpoints)
