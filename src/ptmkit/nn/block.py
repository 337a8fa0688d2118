"""Transformer blocks: post-norm (original Transformer, BERT) and pre-norm (GPT-2, LLaMA; Xiong et al. 2020),
for encoders/decoders (two sub-layers) and encoder-decoder decoders (self-attn, cross-attn, FFN).

Dimension legend: B batch, T length, H hidden size.
"""

from __future__ import annotations

import torch
from torch import nn

from ptmkit.nn.attention import CrossAttention, CrossKVCache, KVCache, SelfAttention


class PostNormBlock(nn.Module):
    """x → norm1(x + attn(x)) → norm2(h + ffn(h)): normalise after each residual sum (BERT)."""

    def __init__(self, attn: SelfAttention, ffn: nn.Module, norm1: nn.Module, norm2: nn.Module, dropout: float):
        super().__init__()
        self.attn, self.ffn, self.norm1, self.norm2 = attn, ffn, norm1, norm2
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask=None, is_causal=False, rotary=None, cache: KVCache | None = None, layer=0):
        x = self.norm1(x + self.drop(self.attn(x, mask, is_causal, rotary, cache, layer)))
        return self.norm2(x + self.drop(self.ffn(x)))  # (B, T, H)


class PreNormBlock(nn.Module):
    """x → x + attn(norm1(x)) → h + ffn(norm2(h)): normalise each sub-layer's input (GPT-2, LLaMA)."""

    def __init__(self, attn: SelfAttention, ffn: nn.Module, norm1: nn.Module, norm2: nn.Module, dropout: float):
        super().__init__()
        self.attn, self.ffn, self.norm1, self.norm2 = attn, ffn, norm1, norm2
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask=None, is_causal=False, rotary=None, cache: KVCache | None = None, layer=0):
        x = x + self.drop(self.attn(self.norm1(x), mask, is_causal, rotary, cache, layer))
        return x + self.drop(self.ffn(self.norm2(x)))  # (B, T, H)


class PostNormDecoderBlock(nn.Module):
    """Encoder-decoder layer, post-norm (original Transformer, BART): self-attn, cross-attn, FFN, each
    followed by residual sum and norm."""

    def __init__(self, attn: SelfAttention, cross: CrossAttention, ffn: nn.Module, norm1: nn.Module,
                 norm2: nn.Module, norm3: nn.Module, dropout: float):
        super().__init__()
        self.attn, self.cross, self.ffn = attn, cross, ffn
        self.norm1, self.norm2, self.norm3 = norm1, norm2, norm3
        self.drop = nn.Dropout(dropout)

    def forward(self, x, memory, mask=None, is_causal=False, memory_mask=None, cache: KVCache | None = None,
                cross_cache: CrossKVCache | None = None, layer=0):
        x = self.norm1(x + self.drop(self.attn(x, mask, is_causal, None, cache, layer)))
        x = self.norm2(x + self.drop(self.cross(x, memory, memory_mask, cross_cache, layer)))
        return self.norm3(x + self.drop(self.ffn(x)))  # (B, T, H)


class PreNormDecoderBlock(nn.Module):
    """Encoder-decoder layer, pre-norm (T5, mBART): each sub-layer reads a normalised copy of the residual."""

    def __init__(self, attn: SelfAttention, cross: CrossAttention, ffn: nn.Module, norm1: nn.Module,
                 norm2: nn.Module, norm3: nn.Module, dropout: float):
        super().__init__()
        self.attn, self.cross, self.ffn = attn, cross, ffn
        self.norm1, self.norm2, self.norm3 = norm1, norm2, norm3
        self.drop = nn.Dropout(dropout)

    def forward(self, x, memory, mask=None, is_causal=False, memory_mask=None, cache: KVCache | None = None,
                cross_cache: CrossKVCache | None = None, layer=0):
        x = x + self.drop(self.attn(self.norm1(x), mask, is_causal, None, cache, layer))
        x = x + self.drop(self.cross(self.norm2(x), memory, memory_mask, cross_cache, layer))
        return x + self.drop(self.ffn(self.norm3(x)))  # (B, T, H)
