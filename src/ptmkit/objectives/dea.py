"""ERNIE's pre-training task (Zhang et al. 2019, "ERNIE: Enhanced Language Representation with Informative
Entities" §3.4): masked LM plus the denoising entity auto-encoder (dEA). The token-entity alignments of a sequence
are corrupted — 5% of them get a random entity, 15% are removed (the token keeps no entity input), 80% stay — and
from each aligned token's final state the model predicts its entity among the entities aligned in that sequence:

    p(e_j | w_i) = exp(linear(w_i) · e_j) / Σ_k exp(linear(w_i) · e_k)    (k over the sequence's entities)

As an auto-encoder it reconstructs every alignment, corrupted or not. The model is the ernie-thu family
(models/ernie.py, task knowledge-masked-lm); `linear` (dense → GELU → LayerNorm into the entity space, as BERT's MLM
transform) belongs to this objective. Batches carry `entity_ids` (B, T) from the data pipeline: entity links made
once by `ptm kg link` (objectives/linking.py) and read beside the token shards (pre-training's data.entities).

Dimension legend: B batch, T length, H hidden size, K entity size, M aligned tokens, U entities in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.models.registry import backbone_of
from ptmkit.objectives.base import Batch, document_mask
from ptmkit.objectives.masking import (
    MaskingConfig, check_mask_token, maskable_positions, mean_cross_entropy, replace_tokens,
)

NEEDS_LINKS = ("dea: the batch has no entity_ids; link the corpus once with `ptm kg link --shards DIR --kg KG "
               "--tokenizer TOK --out LINKS` and set data.entities (and data.eval_entities) to the links directory")


@dataclass
class DEAConfig(MaskingConfig):
    name: ClassVar[str] = "dea"
    entity_replace_prob: float = 0.05  # §3.4: alignments given a random entity
    entity_drop_prob: float = 0.15  # §3.4: alignments removed (the token's entity input becomes "none")
    dea_weight: float = 1.0  # total = MLM + dea_weight x dEA

    def __post_init__(self) -> None:
        super().__post_init__()
        p, q = self.entity_replace_prob, self.entity_drop_prob
        if p < 0 or q < 0 or p + q > 1:
            raise ConfigError(f"dea: entity_replace_prob and entity_drop_prob must be >= 0 and sum to at most 1 "
                              f"(got {p} + {q})")
        if not self.dea_weight > 0:
            raise ConfigError(f"dea: dea_weight must be > 0, got {self.dea_weight}")


class DenoisingEntityAutoEncoder:
    task = "knowledge-masked-lm"
    inputs = ("entity_ids",)  # read from each batch: the data pipeline's entity links (contract tests plant them)

    def __init__(self, cfg: DEAConfig):
        cfg.check_ready()
        self.cfg = cfg
        self._special = torch.tensor(sorted(set(cfg.special_token_ids)), dtype=torch.long)
        self.heads: nn.ModuleDict | None = None
        self._bound_to: nn.Module | None = None

    @classmethod
    def from_tokenizer(cls, cfg: DEAConfig, tokenizer) -> DenoisingEntityAutoEncoder:
        check_mask_token(cfg.name, tokenizer)
        return cls(cfg)

    # ---- auxiliary network: the dEA transform ------------------------------------------------------------------
    def bind(self, model: nn.Module) -> nn.Module:
        backbone = backbone_of(model)
        table = getattr(backbone, "entity_embeddings", None)
        if not isinstance(table, nn.Embedding):
            raise ConfigError(f"dea: the model must read entity embeddings (model family ernie-thu), got "
                              f"{backbone.family}")
        if self._bound_to is not backbone:
            c = backbone.config
            self.heads = nn.ModuleDict({"dea": nn.Sequential(
                nn.Linear(c.hidden_size, c.entity_size), nn.GELU(), nn.LayerNorm(c.entity_size, eps=c.layer_norm_eps),
            )}).to(table.weight.device)
            self._bound_to = backbone
        return self.heads

    def _bound(self, model) -> nn.ModuleDict:
        if self.heads is None or self._bound_to is not backbone_of(model):
            raise RuntimeError("dea: the dEA transform is not bound to this model; call objective.bind(model) before "
                               "loss() (ptmkit.train.loop.train does) and optimise the module it returns")
        return self.heads

    # ---- data side ----------------------------------------------------------------------------------------------
    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        if "entity_ids" not in batch:
            raise ConfigError(NEEDS_LINKS)
        c = self.cfg
        ids = batch["input_ids"]  # (B, T)
        # BERT's masked LM over the tokens (entity-unaware: ERNIE keeps BERT's MLM)
        chosen = (torch.rand(ids.shape, generator=generator) < c.mask_prob) & maskable_positions(batch, self._special)
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        corrupted = replace_tokens(ids, chosen, torch.rand(ids.shape, generator=generator), c, generator)
        # dEA: corrupt the alignments, keep the true entities as targets
        entities = batch["entity_ids"]
        if "attention_mask" in batch:
            entities = entities * batch["attention_mask"]
        aligned = entities > 0
        r = torch.rand(ids.shape, generator=generator)
        replaced = aligned & (r < c.entity_replace_prob)
        dropped = aligned & (r >= c.entity_replace_prob) & (r < c.entity_replace_prob + c.entity_drop_prob)
        noise = torch.rand(ids.shape, generator=generator)  # the random entity: mapped to the table's size in loss()
        return {**batch, "input_ids": corrupted, "labels": labels, "entity_labels": entities,
                "entity_ids": torch.where(dropped, torch.zeros_like(entities), entities),
                "entity_replaced": replaced.long(), "entity_noise": noise}

    # ---- model side ---------------------------------------------------------------------------------------------
    def losses(self, model, batch: Batch) -> dict[str, torch.Tensor]:
        heads = self._bound(model)
        heads.train(model.training)
        backbone = backbone_of(model)
        n = backbone.config.num_entities
        random_entity = (batch["entity_noise"] * n).long().clamp(max=n - 1) + 1
        entity_in = torch.where(batch["entity_replaced"].bool(), random_entity, batch["entity_ids"])  # (B, T)
        where = batch["labels"] != -100
        mask = batch.get("attention_mask")
        if "document_ids" in batch:
            mask = document_mask(batch["document_ids"])
        out = model(batch["input_ids"], attention_mask=mask, token_type_ids=batch.get("token_type_ids"),
                    position_ids=batch.get("position_ids"), score_positions=where, entity_ids=entity_in)
        mlm, mlm_acc = mean_cross_entropy(out.logits, batch["labels"][where])

        target = batch["entity_labels"]  # (B, T) entity + 1, 0 = none
        at = target > 0
        cand = torch.unique(target[at])  # (U,) the batch's entities
        if cand.numel() == 0:
            dea = out.last_hidden_state.sum() * 0.0  # no alignment in this batch
            dea_acc = torch.zeros(())
        else:
            rows = torch.arange(target.shape[0], device=target.device)[:, None].expand_as(target)[at]  # (M,)
            in_row = torch.zeros(target.shape[0], cand.numel(), dtype=torch.bool, device=target.device)  # (B, U)
            in_row[rows, torch.searchsorted(cand, target[at])] = True
            query = heads["dea"](out.last_hidden_state[at])  # (M, K)
            keys = backbone.entity_embeddings(cand)  # (U, K)
            logits = (query.float() @ keys.float().T).masked_fill(~in_row[rows], float("-inf"))  # (M, U)
            gold = torch.searchsorted(cand, target[at])  # (M,)
            dea = F.cross_entropy(logits, gold)
            with torch.no_grad():
                dea_acc = (logits.argmax(-1) == gold).float().mean()
        return {"mlm": mlm, "mlm_accuracy": mlm_acc, "dea": dea, "dea_accuracy": dea_acc,
                "predicted_tokens": where.sum(), "aligned": at.sum()}

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        o = self.losses(model, batch)
        loss = o["mlm"] + self.cfg.dea_weight * o["dea"]
        return loss, {"loss": loss.item(), "mlm_loss": o["mlm"].item(), "dea_loss": o["dea"].item(),
                      "mlm_accuracy": o["mlm_accuracy"].item(), "dea_accuracy": float(o["dea_accuracy"]),
                      "aligned_tokens": float(o["aligned"]), "predicted_tokens": float(o["predicted_tokens"])}
