"""Causal (left-to-right) language modelling (Radford et al. 2018, GPT): predict every next token.

Padding is never a target; with packed documents (`document_ids`) attention stays inside each document and
the first token of a document is not predicted from the previous one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ptmkit.objectives.base import Batch, document_mask


@dataclass
class CLMConfig:
    pass


class CausalLM:
    task = "causal-lm"

    def __init__(self, cfg: CLMConfig | None = None):
        self.cfg = cfg or CLMConfig()

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        ids = batch["input_ids"]  # (B, T)
        labels = ids.clone()
        if "attention_mask" in batch:
            labels = labels.masked_fill(~batch["attention_mask"].bool(), -100)
        labels = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)  # next-token targets
        if "document_ids" in batch:
            d = batch["document_ids"]
            crosses = torch.cat([d[:, 1:] != d[:, :-1], torch.zeros_like(d[:, :1], dtype=torch.bool)], dim=1)
            labels = labels.masked_fill(crosses, -100)
        return {**batch, "labels": labels}

    @staticmethod
    def pipeline_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of the last pipeline stage's logits (ptmkit.parallel.pipeline)."""
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        mask = batch.get("attention_mask")
        if "document_ids" in batch:
            mask = document_mask(batch["document_ids"])  # (B, T, T), combined with causality in the model
        logits = model(batch["input_ids"], attention_mask=mask, position_ids=batch.get("position_ids")).logits
        labels = batch["labels"]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return loss, {"loss": loss.item(), "predicted_tokens": float((labels != -100).sum())}
