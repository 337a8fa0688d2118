"""TransE training (Bordes et al. 2013, Algorithm 1): margin ranking of each true triple against a corrupted one,
whose head or tail (with equal probability) is replaced by a uniformly drawn entity; entity vectors are
renormalised to unit length before each mini-batch. The model is ptmkit.models.transe.TransE; batches are triples
({"triples": (B, 3)}, ptmkit.data.kg.TripleDataset), so the run goes through the one training engine.

Dimension legend: B triples, N negatives per triple.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptmkit.config import ConfigError
from ptmkit.objectives.base import Batch


@dataclass
class TransEObjectiveConfig:
    margin: float = 1.0  # γ in [γ + d(h, r, t) - d(h', r, t')]_+ (the paper picks 1 or 2 on validation)
    negatives: int = 1  # N corrupted triples per true one (Algorithm 1 draws one)
    num_entities: int = -1  # filled from the knowledge graph (the range negatives are drawn from)

    def __post_init__(self) -> None:
        if not self.margin > 0:
            raise ConfigError(f"transe: margin must be > 0, got {self.margin}")
        if self.negatives < 1:
            raise ConfigError(f"transe: negatives must be >= 1, got {self.negatives}")

    def check_ready(self) -> None:
        if self.num_entities < 2:
            raise ConfigError(f"transe: num_entities must be set to the graph's entity count (>= 2), got "
                              f"{self.num_entities}; the knowledge recipe fills it from the graph")


class TransEObjective:
    task = "kg-embedding"
    inputs = ("triples",)  # batch keys this objective reads (the contract tests build them)

    def __init__(self, cfg: TransEObjectiveConfig):
        cfg.check_ready()
        self.cfg = cfg

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Add (B, N, 3) corrupted triples: head or tail replaced by a random entity (the "unif" scheme, §4.2)."""
        if "triples" not in batch:
            raise ConfigError("transe: the batch has no 'triples'; train it on a triple stream "
                              "(ptmkit.data.kg.TripleDataset, `ptm kg transe`)")
        pos = batch["triples"]  # (B, 3)
        b, n = pos.shape[0], self.cfg.negatives
        neg = pos[:, None, :].expand(b, n, 3).clone()  # (B, N, 3)
        side = torch.where(torch.rand(b, n, generator=generator) < 0.5, 0, 2)  # (B, N): 0 head, 2 tail
        random_entity = torch.randint(0, self.cfg.num_entities, (b, n), generator=generator)
        neg.scatter_(2, side[..., None], random_entity[..., None])
        return {**batch, "negatives": neg}

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if model.training:
            model.normalize_entities_()  # Algorithm 1, line 5: e <- e / ||e|| for every entity, each mini-batch
        d_pos = model(batch["triples"])  # (B,)
        d_neg = model(batch["negatives"])  # (B, N)
        loss = torch.relu(self.cfg.margin + d_pos[:, None] - d_neg).mean()
        with torch.no_grad():
            ranked = (d_pos[:, None] < d_neg).float().mean()
        return loss, {"loss": loss.item(), "positive_distance": d_pos.mean().item(),
                      "negative_distance": d_neg.mean().item(), "ranking_accuracy": ranked.item(),
                      "predicted_tokens": float(d_pos.numel())}
