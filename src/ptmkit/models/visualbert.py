"""Single-stream vision-language encoder: VisualBERT (Li et al. 2019, "VisualBERT: A Simple and Performant Baseline
for Vision and Language"), VL-BERT (Su et al. 2020) and UNITER (Chen et al. 2020) read the caption's tokens and the
image's region tokens as one sequence through one BERT encoder, so every layer attends across both modalities
(VisualBERT §3.1: "implicitly align elements of an input text and regions in an associated input image with
self-attention"). Text tokens carry token + position + segment embeddings (BERT); image tokens carry their projected
feature, their location and an image-type embedding (VisualBERT §3.2's segment embedding "indicating it is an image
embedding as opposed to a text embedding"). Here the regions are image patches (models/vl_base.py says why).

The sequence is [CLS] caption [SEP] patch_1 ... patch_N; [CLS]'s pooled state is the pair's vector (image-text
matching, UNITER §3.2). No transformers form: its VisualBertModel reads detector features (visual_embeds), not pixels.

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
from ptmkit.nn import build_mask


@dataclass
class VisualBertConfig(VLConfig):
    num_layers: int = 12  # one encoder over [text; image] (VisualBERT and UNITER-base: 12 layers, BERT-Base)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(type(self).__name__, num_layers=self.num_layers)


class VisualBertEncoder(Backbone):
    family = "visualbert"
    causal = False
    takes_soft_prompt = False  # its input is tokens and pixels

    def __init__(self, config: VisualBertConfig):
        super().__init__()
        self.config = c = config
        self.embeddings = bert_embeddings(c, c.hidden_size)  # text: token + position + segment, LayerNorm, dropout
        self.image = ImageTokenEmbeddings(c)
        # VisualBERT §3.2: the image tokens' own segment embedding, added before the image embedder's LayerNorm
        self.image_type = nn.Parameter(torch.zeros(c.hidden_size))  # (H,)
        self.layers = post_norm_stack(c, c.num_layers)
        self.pooler = Pooler(c.hidden_size)
        self.apply(self.init_weights)
        nn.init.normal_(self.image_type, std=c.initializer_range)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                attention_mask: torch.Tensor | None = None,  # (B, T) caption padding, 1 = token
                token_type_ids: torch.Tensor | None = None,  # (B, T)
                image_mask: torch.Tensor | None = None,  # (B, N) bool, True = patch masked (masked region modelling)
                output_hidden_states: bool = False) -> VLOutput:
        check_text(self.config, input_ids)
        b, t = input_ids.shape
        pos = torch.arange(t, device=input_ids.device)[None].expand(b, t)  # (B, T)
        text = self.embeddings(input_ids, pos, token_type_ids)  # (B, T, H)
        image = self.image(pixel_values, image_mask, self.image_type)  # (B, N, H)
        x = torch.cat([text, image], dim=1)  # (B, T + N, H): one stream
        keep = None
        if attention_mask is not None:  # images have no padding: every patch is a key
            keep = torch.cat([attention_mask, attention_mask.new_ones(b, image.shape[1])], dim=1)  # (B, T + N)
        mask, _ = build_mask(keep, x.shape[1], x.shape[1], causal=False, device=x.device)
        x, hidden = stack_forward(self.layers, x, mask, False, None, None, output_hidden_states)
        return VLOutput(x[:, :t], x[:, t:], self.pooler(x[:, 0]), tuple(hidden) if hidden else None)
