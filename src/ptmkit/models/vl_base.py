"""What the single-stream (models/visualbert.py) and two-stream (models/lxmert.py) vision-language encoders share:
their config fields, the image-token embedder and the output record.

No region detector exists in ptmkit, so the "regions" of these models are image patches: a strided convolution cuts
the image into P x P patches (nn/patches.py, as ViT) and each patch is one image token, where VisualBERT, VL-BERT,
UNITER, ViLBERT and LXMERT read the pooled features of Faster R-CNN boxes. Patch positions play the part of their box
coordinates (UNITER §3.1: "a 7-dimensional location feature"; here one learned position per grid cell, as ViT), and
the raw pixels of a patch are its "region feature" for the masked-region objectives (objectives/vlp.py).

Dimension legend: B batch, T text tokens, S image side, N patches, H hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptmkit.config import ConfigError, check_positive
from ptmkit.nn import MLP, AttentionConfig, PostNormBlock, SelfAttention
from ptmkit.nn.feedforward import get_activation
from ptmkit.nn.patches import PatchEmbedding, check_patch_grid


@dataclass
class VLConfig:
    """Fields of both vision-language families. Defaults: BERT-Base text side (VisualBERT, UNITER-base and LXMERT
    start from BERT-Base), ViT-B/16 patches at 224 px."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512  # the longest caption, in tokens with [CLS] and [SEP]
    type_vocab_size: int = 2  # segment table of the text embeddings
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: int = 0
    initializer_range: float = 0.02
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    # masked region classification predicts a patch's k-means codeword (objectives/codebook.py): this many classes
    num_visual_classes: int = 256

    def __post_init__(self) -> None:
        where = type(self).__name__
        check_positive(where, vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_heads=self.num_heads,
                       intermediate_size=self.intermediate_size, max_position_embeddings=self.max_position_embeddings,
                       type_vocab_size=self.type_vocab_size, num_channels=self.num_channels,
                       num_visual_classes=self.num_visual_classes)
        check_patch_grid(where, self.image_size, self.patch_size)
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"{where}: hidden_size {self.hidden_size} is not divisible by num_heads "
                              f"{self.num_heads}; pick a head count that divides it (e.g. {self.hidden_size // 64 or 1})")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{where}: {name} must be in [0, 1)")
        get_activation(self.hidden_act)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        """Length of a patch's raw-pixel feature: the regression target and codebook width."""
        return self.patch_size * self.patch_size * self.num_channels


def post_norm_stack(c: VLConfig, layers: int) -> nn.ModuleList:
    """`layers` BERT blocks (post-norm self-attention + MLP) of width c.hidden_size."""
    attn = AttentionConfig(c.hidden_size, c.num_heads, dropout=c.attention_dropout)
    return nn.ModuleList(
        PostNormBlock(SelfAttention(attn), MLP(c.hidden_size, c.intermediate_size, c.hidden_act),
                      nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps),
                      nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps), c.dropout)
        for _ in range(layers)
    )


class ImageTokenEmbeddings(nn.Module):
    """(B, C, S, S) pixels -> (B, N, H) image tokens: patch projection, a learned [MASK] vector in place of masked
    patches, learned grid positions, LayerNorm, dropout (UNITER §3.1's image embedder, with patches for boxes).

    A masked patch keeps its position (UNITER masks the region feature, not its location), so masked region
    modelling asks "what is at this place", not "where"."""

    bias_names = ("mask_token",)  # no weight decay on the [MASK] vector (train/optim.py reads this)

    def __init__(self, c: VLConfig):
        super().__init__()
        # no bias: the learned positions (and a single-stream model's type vector) already add per-token constants
        self.patches = PatchEmbedding(c.image_size, c.patch_size, c.num_channels, c.hidden_size, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(c.hidden_size))  # (H,)
        self.pos = nn.Embedding(self.patches.num_patches, c.hidden_size)  # (N, H)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, pixel_values: torch.Tensor, image_mask: torch.Tensor | None = None,
                type_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """type_embedding: (H,) a modality vector added to every image token before the LayerNorm (single-stream)."""
        x = self.patches(pixel_values)  # (B, N, H)
        if image_mask is not None:
            if image_mask.shape != x.shape[:2]:
                raise ValueError(f"image_mask is {tuple(image_mask.shape)} but the images have {x.shape[1]} patches "
                                 f"each: give one bool per patch, (B, {x.shape[1]})")
            x = torch.where(image_mask[..., None], self.mask_token.to(x.dtype), x)
        x = x + self.pos.weight.to(x.dtype)
        if type_embedding is not None:
            x = x + type_embedding.to(x.dtype)
        return self.drop(self.norm(x))  # (B, N, H)


@dataclass
class VLOutput:
    text_states: torch.Tensor  # (B, T, H) final states of the caption tokens
    image_states: torch.Tensor  # (B, N, H) final states of the patches
    pooler_output: torch.Tensor  # (B, H): tanh(dense([CLS])), the pair's vector (image-text matching reads it)
    hidden_states: tuple[torch.Tensor, ...] | None = None


class Pooler(nn.Module):
    """BERT's pooler on the [CLS] state (Devlin et al. 2019 §3): the vector image-text matching scores."""

    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, first: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(first))  # (B, H)


def check_text(c: VLConfig, input_ids: torch.Tensor) -> None:
    if input_ids.shape[1] > c.max_position_embeddings:
        raise ValueError(f"captions of {input_ids.shape[1]} tokens exceed the text side's {c.max_position_embeddings} "
                         "positions; lower data.seq_len or raise model.config.max_position_embeddings")
