"""Text-to-image language modelling (DALL·E, Ramesh et al. 2021 §2.2; CogView, Ding et al. 2021): a causal
Transformer models the joint sequence [text ; begin-of-image ; image codes] (data/images/layout.py) with next-token
cross-entropy, so that sampling the image tokens after a caption draws an image for it. DALL·E weights the text and
image losses 1/8 and 7/8 ("the image is the part we care about"): `text_loss_weight`. Padding is never a target, and
neither is the begin-of-image token (it always follows the text).

corrupt() builds the sequence and its labels from {input_ids (B, L) padded caption ids, attention_mask (B, L),
image_codes (B, G, G)} (data/images: the codes are computed once with the VQ-VAE and cached).

Dimension legend: B batch, L text positions, N image tokens, T = L + 1 + N, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ptmkit.config import ConfigError
from ptmkit.data.images.layout import ImageTokenLayout
from ptmkit.objectives.base import Batch


@dataclass
class TextToImageConfig:
    text_loss_weight: float = 0.125  # DALL·E §2.2: text 1/8, image 7/8
    vocab_size: int = -1  # the text tokenizer's ids (filled from data.tokenizer by `ptm pretrain`)
    codebook_size: int = 0  # the image tokenizer's codes (filled from images.tokenizer by `ptm pretrain`)

    def __post_init__(self) -> None:
        if not 0.0 <= self.text_loss_weight <= 1.0:
            raise ConfigError(f"text-to-image: text_loss_weight must be in [0, 1], got {self.text_loss_weight}")
        if self.vocab_size <= 0 or self.codebook_size <= 0:
            raise ConfigError("text-to-image: vocab_size (text ids) and codebook_size (image codes) must be set; "
                              "`ptm pretrain` fills them from data.tokenizer and images.tokenizer")


class TextToImageLM:
    task = "causal-lm"
    inputs = ("image_codes",)  # batches hold VQ-VAE codes beside the caption ids (data/images/codes.py)

    def __init__(self, cfg: TextToImageConfig):
        self.cfg = cfg

    def layout(self, text_len: int, grid_size: int) -> ImageTokenLayout:
        return ImageTokenLayout(self.cfg.vocab_size, text_len, self.cfg.codebook_size, grid_size)

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        text, mask, codes = batch["input_ids"], batch["attention_mask"].bool(), batch["image_codes"]
        layout = self.layout(text.shape[1], codes.shape[-1])
        ids = layout.sequence(text, codes)  # (B, T)
        b, n = ids.shape[0], layout.image_tokens
        # position t predicts token t + 1: text tokens after the first, never padding nor begin-of-image, then images
        text_targets = torch.where(mask[:, 1:], text[:, 1:], torch.full_like(text[:, 1:], -100))  # (B, L - 1)
        labels = torch.cat([text_targets, torch.full((b, 1), -100, dtype=ids.dtype),  # -> begin-of-image
                            ids[:, layout.text_len + 1:], torch.full((b, 1), -100, dtype=ids.dtype)], dim=1)
        is_image = torch.zeros_like(ids, dtype=torch.bool)
        is_image[:, layout.text_len: layout.text_len + n] = True  # positions whose target is an image token
        return {"input_ids": ids, "labels": labels, "image_targets": is_image}

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch["input_ids"]).logits  # (B, T, V): no mask, padding is part of the fixed layout
        labels, is_image = batch["labels"], batch["image_targets"]
        ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="none")
        ce = ce.view_as(labels)  # (B, T)
        text_n = ((labels != -100) & ~is_image).sum()
        image_n = is_image.sum()
        text_loss = (ce * ~is_image).sum() / text_n.clamp_min(1)
        image_loss = (ce * is_image).sum() / image_n.clamp_min(1)
        w = self.cfg.text_loss_weight
        loss = w * text_loss + (1 - w) * image_loss
        return loss, {"loss": loss.item(), "text_loss": text_loss.item(), "image_loss": image_loss.item(),
                      "predicted_tokens": float(text_n + image_n)}
