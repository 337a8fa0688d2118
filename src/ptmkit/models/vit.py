"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale"): an image as a sequence of patch tokens (nn/patches.py) with a class token, a pre-norm Transformer encoder
(§3.1 eq. 2-3: LayerNorm before attention and MLP, residual after), a final LayerNorm on every token (eq. 4), and
transformers' ViTModel pooler (dense + tanh on the class token), so that ViTModel checkpoints load and export whole.

`patch_tokens(pixel_values)` gives the encoder's (B, N, H) patch states without the class token: the image tokens a
single-stream or two-stream vision-language model reads; the embedding module (`embeddings.patches`) works alone.

Dimension legend: B batch, C channels, S image side, N patches, T = 1 + N tokens, H hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptmkit.config import ConfigError, check_positive
from ptmkit.models.base import Backbone, init_normal, stack_forward
from ptmkit.nn import MLP, AttentionConfig, PreNormBlock, SelfAttention
from ptmkit.nn.feedforward import get_activation
from ptmkit.nn.patches import ImageEmbeddings, check_patch_grid


@dataclass
class ViTConfig:
    # Defaults: ViT-Base/16 at 224 px (Dosovitskiy et al. 2021, Table 1)
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    dropout: float = 0.0  # after the embeddings and on each sub-layer's output (transformers' hidden_dropout_prob)
    attention_dropout: float = 0.0
    qkv_bias: bool = True
    pooler_act: str = "tanh"  # the pooler's activation (transformers' ViTPooler)
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        check_positive("ViTConfig", hidden_size=self.hidden_size, num_layers=self.num_layers,
                       num_heads=self.num_heads, intermediate_size=self.intermediate_size,
                       num_channels=self.num_channels)
        check_patch_grid("ViTConfig", self.image_size, self.patch_size)
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"ViTConfig: hidden_size {self.hidden_size} is not divisible by num_heads "
                              f"{self.num_heads}; pick a head count that divides it (e.g. {self.hidden_size // 64 or 1})")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"ViTConfig: {name} must be in [0, 1)")
        get_activation(self.hidden_act), get_activation(self.pooler_act)  # unknown names fail here

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def pre_norm_stack(hidden: int, heads: int, intermediate: int, layers: int, act: str, eps: float, dropout: float,
                   attention_dropout: float, qkv_bias: bool = True) -> nn.ModuleList:
    """The pre-norm encoder blocks shared by ViT and both CLIP towers (ViT eq. 2-3; Radford et al. 2021 use the
    same block): x + attn(LN(x)), then x + MLP(LN(x))."""
    attn = AttentionConfig(hidden, heads, bias=qkv_bias, dropout=attention_dropout)
    return nn.ModuleList(
        PreNormBlock(SelfAttention(attn), MLP(hidden, intermediate, act), nn.LayerNorm(hidden, eps=eps),
                     nn.LayerNorm(hidden, eps=eps), dropout)
        for _ in range(layers)
    )


@dataclass
class VisionOutput:
    last_hidden_state: torch.Tensor  # (B, T, H): class token first, then the patches in row-major order
    pooler_output: torch.Tensor  # (B, H)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings output, then each block's


class ViTEncoder(Backbone):
    family = "vit"
    causal = False
    takes_soft_prompt = False  # its input is pixels, not token embeddings

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = c = config
        self.embeddings = ImageEmbeddings(c.image_size, c.patch_size, c.num_channels, c.hidden_size,
                                          patch_bias=True, dropout=c.dropout)
        self.layers = pre_norm_stack(c.hidden_size, c.num_heads, c.intermediate_size, c.num_layers, c.hidden_act,
                                     c.layer_norm_eps, c.dropout, c.attention_dropout, c.qkv_bias)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)  # ViT eq. 4, on every token
        self.pooler = nn.Linear(c.hidden_size, c.hidden_size)
        self.pooler_act = get_activation(c.pooler_act)
        self.apply(lambda m: init_normal(m, c.initializer_range))
        self.embeddings.init_weights(c.initializer_range)

    @property
    def vocab_size(self) -> int:
        raise AttributeError("a ViT reads pixels: it has no token vocabulary")

    def input_embeddings(self) -> nn.Module:
        return self.embeddings.patches

    def encode(self, pixel_values: torch.Tensor, output_hidden_states: bool = False):
        x = self.embeddings(pixel_values)  # (B, T, H)
        x, hidden = stack_forward(self.layers, x, None, False, None, None, output_hidden_states)
        return self.norm(x), hidden  # (B, T, H)

    def patch_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, N, H) final states of the patches (class token dropped): image tokens for vision-language models."""
        return self.encode(pixel_values)[0][:, 1:]

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> VisionOutput:
        x, hidden = self.encode(pixel_values, output_hidden_states)
        pooled = self.pooler_act(self.pooler(x[:, 0]))  # (B, H): transformers' ViTPooler on the class token
        return VisionOutput(x, pooled, tuple(hidden) if hidden else None)
