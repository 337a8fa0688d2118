"""CLIP's contrastive pre-training (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision", §2.3 and Figure 3): in a batch of B (image, caption) pairs, predict which caption goes with which image.
Both encoders' vectors are L2-normalised, their cosine similarities scaled by a learned temperature, and the
cross-entropy is taken over the rows (image -> its caption among B) and over the columns (caption -> its image among
B), averaged: the symmetric InfoNCE, computed by the function SimCSE uses (objectives/contrastive.py).

The temperature is learned as log(1/τ) (the model's `logit_scale`, initialised to τ = 0.07) and "clipped to prevent
scaling the logits by more than 100" (§2.5): `max_logit_scale`. Augmentation (random crops) belongs to the image data
pipeline (data/images), so `corrupt()` has nothing to do.

Dimension legend: B pairs, P joint embedding width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ptmkit.config import ConfigError
from ptmkit.objectives.base import Batch
from ptmkit.objectives.contrastive import info_nce


@dataclass
class CLIPLossConfig:
    max_logit_scale: float = 100.0  # cap on exp(logit_scale), i.e. the temperature is at least 1/100 (§2.5)

    def __post_init__(self) -> None:
        if not (isinstance(self.max_logit_scale, (int, float)) and self.max_logit_scale > 1):
            raise ConfigError(f"clip: max_logit_scale must be a number > 1, got {self.max_logit_scale!r}")


class CLIPContrastive:
    task = "image-text-contrastive"  # the dual encoder itself (models/clip.py), which has no head to add
    inputs = ("pixel_values",)  # batches hold images beside the captions' input_ids (data/images)

    def __init__(self, cfg: CLIPLossConfig | None = None):
        self.cfg = cfg or CLIPLossConfig()

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        return dict(batch)  # the image pipeline augments; captions are taken as written

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        image = model.encode_image(batch["pixel_values"])  # (B, P)
        text = model.encode_text(batch["input_ids"], batch.get("attention_mask"))  # (B, P)
        scale = model.scale(self.cfg.max_logit_scale)  # () exp(logit_scale), at most the cap
        # logits_per_image (B, B): row i = image i against every caption; the loss averages rows and columns
        loss, logits = info_nce(image, text, 1.0 / scale, symmetric=True)
        with torch.no_grad():
            target = torch.arange(logits.shape[0], device=logits.device)
            i2t = (logits.argmax(-1) == target).float().mean()
            t2i = (logits.argmax(0) == target).float().mean()
        return loss, {"loss": loss.item(), "image_to_text_accuracy": i2t.item(), "text_to_image_accuracy": t2i.item(),
                      "logit_scale": scale.item(), "chance_loss": math.log(logits.shape[0])}
