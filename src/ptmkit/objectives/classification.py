"""Fine-tuning tasks as objectives: sequence classification (cross-entropy), regression (MSE, e.g. STS-B) and token
classification (cross-entropy over first sub-words, e.g. NER). Devlin et al. 2019 §4: a new head on the pre-trained
model, trained end to end; like every pre-training objective, `loss(model, batch) -> (loss, metrics)` runs in the
one training engine."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ptmkit.config import ConfigError
from ptmkit.models.registry import backbone_of

KINDS = ("classification", "regression", "token")


def task_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits for a batch; decoders take (ids, mask) only, encoders with segment embeddings also segment ids."""
    bb = backbone_of(model)
    if not bb.causal and getattr(bb.config, "type_vocab_size", 0) > 1 and "token_type_ids" in batch:
        return model(batch["input_ids"], batch["attention_mask"], token_type_ids=batch["token_type_ids"]).logits
    return model(batch["input_ids"], batch["attention_mask"]).logits


def task_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    logits = logits.float()  # the loss in fp32 under autocast
    if kind == "token":
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)  # (B·T, C)
    if kind == "regression":
        return F.mse_loss(logits.squeeze(-1), labels.float())  # (B, 1) -> (B,)
    return F.cross_entropy(logits, labels)


@dataclass
class TaskConfig:
    kind: str = "classification"  # classification | regression | token

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"task objective: kind must be one of {KINDS}, got {self.kind!r}")


class TaskObjective:
    """The loss of a labelled task; `task` is the head a model needs for it."""

    def __init__(self, cfg: TaskConfig | None = None):
        self.cfg = cfg or TaskConfig()
        self.task = "token-classification" if self.cfg.kind == "token" else "sequence-classification"

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        loss = task_loss(task_logits(model, batch), batch["labels"], self.cfg.kind)
        return loss, {"loss": loss.item()}
