"""The pre-training heads of the vision-language encoders (single-stream models/visualbert.py, two-stream
models/lxmert.py), task "vl-pretraining", trained by objectives/vlp.py:

- masked language modelling on image-conditioned text: BERT's MLM head, tied to the token embeddings;
- masked region feature regression (UNITER §3.2 MRFR, LXMERT's "RoI-feature regression"): a transform, then a linear
  map to the masked patch's raw pixels;
- masked region classification (UNITER §3.2 MRC): the same transform shape, then logits over the k-means codewords of
  patch pixels (the `codebook` buffer, fitted from the training images by objectives/codebook.py and saved with the
  model: with no detector there are no object classes, so the codewords are the "visual vocabulary");
- image-text matching (UNITER §3.2 ITM, LXMERT's cross-modality matching): a linear layer on the pooled [CLS] state,
  logits (mismatch, match). `match_score` is what retrieval ranks by (UNITER §4: retrieval by the ITM score).

Dimension legend: B batch, T text tokens, N patches, H hidden size, V vocabulary, K codewords, F patch pixels,
M scored tokens, R scored patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.models.base import Backbone
from ptmkit.models.heads import MLMHead, TaskModel
from ptmkit.nn import build_mask
from ptmkit.nn.feedforward import get_activation


class RegionHead(nn.Module):
    """dense -> activation -> LayerNorm -> linear (UNITER's region heads; BERT's MLM transform, untied output)."""

    def __init__(self, hidden: int, out: int, activation: str, eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.act = get_activation(activation)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.out = nn.Linear(hidden, out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.act(self.dense(h))))


@dataclass
class VLPreTrainingOutput:
    mlm_logits: torch.Tensor  # (M, V) at score_positions (every text token when none are given)
    region_features: torch.Tensor  # (R, F) at the masked patches (every patch when no image_mask)
    region_logits: torch.Tensor  # (R, K)
    itm_logits: torch.Tensor  # (B, 2): (mismatch, match)
    text_states: torch.Tensor  # (B, T, H)
    image_states: torch.Tensor  # (B, N, H)


class VLPreTraining(TaskModel):
    task = "vl-pretraining"

    def __init__(self, backbone: Backbone):
        super().__init__(backbone)
        c = backbone.config
        self.head = MLMHead(c.hidden_size, c.vocab_size, c.hidden_act, c.layer_norm_eps)
        self.region_feature = RegionHead(c.hidden_size, c.patch_dim, c.hidden_act, c.layer_norm_eps)
        self.region_class = RegionHead(c.hidden_size, c.num_visual_classes, c.hidden_act, c.layer_norm_eps)
        self.itm = nn.Linear(c.hidden_size, 2)
        # (K, F) k-means centres of raw patch pixels; all zeros until fitted (objectives/vlp.py refuses that)
        self.register_buffer("codebook", torch.zeros(c.num_visual_classes, c.patch_dim))
        self._init_head(self.head, self.region_feature, self.region_class, self.itm)

    @property
    def codebook_fitted(self) -> bool:
        return bool(self.codebook.abs().sum() > 0)

    @torch.no_grad()
    def set_codebook(self, codebook: torch.Tensor) -> None:
        c = self.config
        want = (c.num_visual_classes, c.patch_dim)
        if tuple(codebook.shape) != want:
            raise ConfigError(
                f"the codebook is {tuple(codebook.shape)} but the model predicts {want[0]} region classes of "
                f"{c.patch_size} x {c.patch_size} x {c.num_channels} = {want[1]} pixels: set "
                f"model.config.num_visual_classes to {codebook.shape[0]} with the same patch_size, or fit a new "
                "codebook (leave objective.params.codebook empty)")
        self.codebook.copy_(codebook.to(self.codebook))

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, image_mask: torch.Tensor | None = None,
                score_positions: torch.Tensor | None = None,  # (B, T) bool: only these tokens get vocabulary logits
                output_hidden_states: bool = False) -> VLPreTrainingOutput:
        out = self.backbone(input_ids, pixel_values, attention_mask, token_type_ids, image_mask, output_hidden_states)
        text = out.text_states if score_positions is None else out.text_states[score_positions]  # (M, H)
        regions = out.image_states if image_mask is None else out.image_states[image_mask]  # (R, H)
        mlm = self.head(text, self.backbone.input_embeddings().weight)  # (M, V)
        return VLPreTrainingOutput(mlm, self.region_feature(regions), self.region_class(regions),
                                   self.itm(out.pooler_output), out.text_states, out.image_states)

    def match_score(self, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) log-odds that caption i describes image i: the ITM logit margin, retrieval's similarity."""
        logits = self.itm(self.backbone(input_ids, pixel_values, attention_mask).pooler_output)  # (B, 2)
        return logits[:, 1] - logits[:, 0]

    @property
    def separable_streams(self) -> bool:
        """Whether the backbone reads the caption and the image apart before joining them (two-stream,
        models/lxmert.py: encode_text_stream / encode_image_stream, then fuse): retrieval then encodes each caption
        and each image once and runs only the cross-modality layers per pair (`fused_match_score`). A single-stream
        backbone joins them at the first layer, so every pair is a full forward pass."""
        return hasattr(self.backbone, "fuse")

    def fused_match_score(self, text_states: torch.Tensor, image_states: torch.Tensor,
                          attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) `match_score` of pairs whose streams are already encoded: text_states (B, T, H) from
        backbone.encode_text_stream, image_states (B, N, H) from backbone.encode_image_stream, attention_mask (B, T)
        the captions' padding mask; only the cross-modality layers, the pooler and the ITM head run."""
        t = text_states.shape[1]
        mask, _ = build_mask(attention_mask, t, t, causal=False, device=text_states.device)  # (B, 1, 1, T) or None
        logits = self.itm(self.backbone.fuse(text_states, image_states, mask).pooler_output)  # (B, 2)
        return logits[:, 1] - logits[:, 0]


VL_HEADS = {"vl-pretraining": VLPreTraining}
