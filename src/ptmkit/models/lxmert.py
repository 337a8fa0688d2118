"""Two-stream vision-language encoder: ViLBERT (Lu et al. 2019, "ViLBERT: Pretraining Task-Agnostic Visiolinguistic
Representations for Vision-and-Language Tasks") and LXMERT (Tan & Bansal 2019, "LXMERT: Learning Cross-Modality
Encoder Representations from Transformers"). The caption and the image are encoded by separate streams — a language
encoder of BERT layers, an object-relationship encoder over the region (here: patch) tokens — then joined by
cross-modality layers in which each stream attends to the other (ViLBERT §3.1's co-attention: "the keys and values
from each modality are passed as input to the other modality's multi-headed attention block").

Each cross-modality layer is, per stream, self-attention, cross-attention to the other stream's states from the
previous layer, and a feed-forward net, each post-norm (nn/block.py's PostNormDecoderBlock, used without causality;
LXMERT §2.2 puts the cross-attention before the self-attention, ViLBERT has no self-attention inside its co-attention
block: the streams differ from both papers in that order only). The two directions have their own weights, as in
ViLBERT (LXMERT shares one cross-attention module between them). [CLS]'s pooled state is the pair's vector (LXMERT
§2.2 "cross-modality output"). Regions are image patches (models/vl_base.py). No transformers form: its LxmertModel
reads detector features and boxes, not pixels.

Dimension legend: B batch, T text tokens, N patches, H hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptmkit.config import check_positive
from ptmkit.models.base import Backbone, stack_forward
from ptmkit.models.bert import bert_embeddings
from ptmkit.models.vl_base import ImageTokenEmbeddings, Pooler, VLConfig, VLOutput, check_text, post_norm_stack
from ptmkit.nn import MLP, AttentionConfig, CrossAttention, PostNormDecoderBlock, SelfAttention, build_mask


@dataclass
class LxmertConfig(VLConfig):
    # LXMERT §3.1: 9 language layers, 5 object-relationship layers, 5 cross-modality layers
    num_text_layers: int = 9
    num_image_layers: int = 5
    num_cross_layers: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(type(self).__name__, num_text_layers=self.num_text_layers,
                       num_image_layers=self.num_image_layers, num_cross_layers=self.num_cross_layers)

    @property
    def num_layers(self) -> int:  # read by code that sizes a model by depth (the trainer's logs)
        return self.num_text_layers + self.num_image_layers + 2 * self.num_cross_layers


def co_attention_block(c: VLConfig) -> PostNormDecoderBlock:
    """One stream's half of a cross-modality layer: self-attention, attention to the other stream, MLP."""
    attn = AttentionConfig(c.hidden_size, c.num_heads, dropout=c.attention_dropout)
    return PostNormDecoderBlock(SelfAttention(attn), CrossAttention(attn), MLP(c.hidden_size, c.intermediate_size,
                                c.hidden_act), *(nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps) for _ in range(3)),
                                c.dropout)


class CoAttentionLayer(nn.Module):
    """Both streams read each other's previous states at once (ViLBERT Fig. 2b), so neither direction goes first."""

    def __init__(self, c: VLConfig):
        super().__init__()
        self.text = co_attention_block(c)
        self.image = co_attention_block(c)

    def forward(self, text: torch.Tensor, image: torch.Tensor, text_mask: torch.Tensor | None):
        # text_mask: (B, 1, 1, T) bool or None; images have no padding
        new_text = self.text(text, image, mask=text_mask)  # (B, T, H)
        new_image = self.image(image, text, memory_mask=text_mask)  # (B, N, H)
        return new_text, new_image


class LxmertEncoder(Backbone):
    family = "lxmert"
    causal = False
    takes_soft_prompt = False

    def __init__(self, config: LxmertConfig):
        super().__init__()
        self.config = c = config
        self.embeddings = bert_embeddings(c, c.hidden_size)
        self.image = ImageTokenEmbeddings(c)
        # the block stacks are named `layers` (nn/stacks.py finds every such ModuleList: checkpointing, LayerDrop)
        self.text_encoder = nn.Module()
        self.text_encoder.layers = post_norm_stack(c, c.num_text_layers)
        self.image_encoder = nn.Module()
        self.image_encoder.layers = post_norm_stack(c, c.num_image_layers)
        self.cross = nn.ModuleList(CoAttentionLayer(c) for _ in range(c.num_cross_layers))
        self.pooler = Pooler(c.hidden_size)
        self.apply(self.init_weights)

    def encode_text_stream(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                           token_type_ids: torch.Tensor | None = None):
        """The language encoder alone: ((B, T, H) text states, the (B, 1, 1, T) text key mask or None). It never
        sees the image, so retrieval encodes each caption once (analysis/image_text.py)."""
        check_text(self.config, input_ids)
        b, t = input_ids.shape
        pos = torch.arange(t, device=input_ids.device)[None].expand(b, t)  # (B, T)
        text = self.embeddings(input_ids, pos, token_type_ids)  # (B, T, H)
        mask, _ = build_mask(attention_mask, t, t, causal=False, device=text.device)  # (B, 1, 1, T) or None
        text, _ = stack_forward(self.text_encoder.layers, text, mask, False, None, None, False)
        return text, mask

    def encode_image_stream(self, pixel_values: torch.Tensor, image_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The object-relationship encoder alone: (B, N, H) image states, independent of any caption."""
        image = self.image(pixel_values, image_mask)  # (B, N, H)
        image, _ = stack_forward(self.image_encoder.layers, image, None, False, None, None, False)
        return image

    def encode_streams(self, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                       attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                       image_mask: torch.Tensor | None = None):
        """The single-modality encoders: ((B, T, H) text states, (B, N, H) image states, the text key mask)."""
        text, mask = self.encode_text_stream(input_ids, attention_mask, token_type_ids)
        return text, self.encode_image_stream(pixel_values, image_mask), mask

    def fuse(self, text: torch.Tensor, image: torch.Tensor, mask: torch.Tensor | None,
             output_hidden_states: bool = False) -> VLOutput:
        """The cross-modality layers over encoded streams (row i of text with row i of image)."""
        hidden = [torch.cat([text, image], 1)] if output_hidden_states else None
        for layer in self.cross:
            text, image = layer(text, image, mask)
            if hidden is not None:
                hidden.append(torch.cat([text, image], 1))  # (B, T + N, H)
        return VLOutput(text, image, self.pooler(text[:, 0]), tuple(hidden) if hidden else None)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                image_mask: torch.Tensor | None = None, output_hidden_states: bool = False) -> VLOutput:
        text, image, mask = self.encode_streams(input_ids, pixel_values, attention_mask, token_type_ids, image_mask)
        return self.fuse(text, image, mask, output_hidden_states)
