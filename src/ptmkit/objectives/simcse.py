"""Unsupervised SimCSE (Gao, Yao & Chen 2021, "SimCSE: Simple Contrastive Learning of Sentence Embeddings", EMNLP,
§3): encode each sentence twice with independent dropout masks; the two views are a positive pair and the other
sentences of the batch are negatives, scored by InfoNCE over cosine similarity / temperature.

`corrupt()` passes the batch through unchanged: the only augmentation is dropout, applied in `loss()`, which encodes
the batch twice (as one 2B batch, as the reference implementation does) and must run in train mode. The loss is the
paper's one-directional InfoNCE (eq. 4: row i of sim(h_i, h'_j) against column i) unless `symmetric=True`, which
averages it with the transposed direction (CLIP-style). The paper's training-only MLP over [CLS] (§3, "we take [CLS]
with an MLP layer on top of it during training, and [CLS] without MLP at test") is `projection=True`, an auxiliary
module the objective owns (built by `bind(model)`); sentence vectors for evaluation never use it.

Dimension legend: B batch, T length, H hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.models.pooling import POOLINGS, hidden_states, pool
from ptmkit.objectives.base import Batch
from ptmkit.objectives.contrastive import info_nce  # noqa: F401  (shared with CLIP; re-exported)


@dataclass
class SimCSEConfig:
    temperature: float = 0.05  # τ in eq. 4; the paper's best value (Table D.1)
    pooling: str = "cls"  # cls | mean: how token vectors become one sentence vector
    symmetric: bool = False  # False = the paper's one-directional loss; True = average of both directions
    projection: bool = False  # the paper's training-only MLP (Linear + tanh) over the pooled vector
    # An identical sentence elsewhere in the batch is a false negative (its loss cannot fall below log 2): leave it
    # out of the denominator. Real corpora rarely repeat a line within a batch, so this departs from the paper only
    # where the paper's loss would push apart two copies of one sentence.
    exclude_duplicates: bool = True  # leave identical sentences out of each other's denominator

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ConfigError(f"simcse: temperature must be > 0, got {self.temperature!r}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"simcse: pooling must be one of {list(POOLINGS)}, got {self.pooling!r}")


def same_rows(batch: Batch) -> torch.Tensor:
    """(B, B) bool: True where rows i and j hold the same sentence (same ids on the same real positions)."""
    ids = batch["input_ids"]  # (B, T)
    if "attention_mask" in batch:
        ids = ids.masked_fill(batch["attention_mask"] == 0, -1)  # padding ids never make two sentences differ
    return (ids[:, None, :] == ids[None, :, :]).all(-1)  # (B, B)


class SimCSE:
    task = "base"  # an encoder backbone: sentence vectors come from its last hidden states

    def __init__(self, cfg: SimCSEConfig):
        self.cfg = cfg
        self.head: nn.Module | None = None

    def bind(self, model) -> nn.Module | None:
        """The training-only MLP when cfg.projection (SimCSE §3); None otherwise."""
        if not self.cfg.projection:
            return None
        h = model.hidden_size if hasattr(model, "hidden_size") else model.config.hidden_size
        self.head = nn.Sequential(nn.Linear(h, h), nn.Tanh())
        return self.head

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        return dict(batch)  # the augmentation is dropout, applied in loss(); nothing to corrupt on the CPU

    def embed(self, model, batch: Batch) -> torch.Tensor:
        """(B, H) pooled sentence vectors (with the training MLP when one is bound)."""
        z = pool(hidden_states(model, batch), batch.get("attention_mask"), self.cfg.pooling)
        return self.head(z) if self.head is not None else z

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        b = batch["input_ids"].shape[0]
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch]
        twice = {k: torch.cat([batch[k], batch[k]]) for k in keys}  # (2B, T): one pass, independent dropout masks
        z = self.embed(model, twice)  # (2B, H)
        exclude = same_rows(batch) if self.cfg.exclude_duplicates else None
        loss, logits = info_nce(z[:b], z[b:], self.cfg.temperature, self.cfg.symmetric, exclude)
        with torch.no_grad():
            target = torch.arange(b, device=logits.device)
            acc = (logits.argmax(-1) == target).float().mean()
            cos = logits * self.cfg.temperature  # (B, B) cosine similarities (-inf where excluded)
            pos = cos.diagonal().mean()
            neg_mask = torch.isfinite(cos) & ~torch.eye(b, dtype=torch.bool, device=cos.device)
            neg = cos[neg_mask].mean() if neg_mask.any() else torch.zeros(())
        return loss, {"loss": loss.item(), "simcse_accuracy": acc.item(), "positive_cosine": pos.item(),
                      "negative_cosine": neg.item()}
