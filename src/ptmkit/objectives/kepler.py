"""KEPLER (Wang, Gao, Zhu, Zhang, Liu, Li, Tang 2021, "KEPLER: A Unified Model for Knowledge Embedding and
Pre-trained Language Representation", TACL): one encoder is trained with masked LM on text and with a knowledge-
embedding (KE) loss whose entity embeddings are the encoder's own encodings of entity descriptions (§2.2: the top-
layer state of the first token, <s>/[CLS]), scored as TransE, d(h, t) = ||h + r - t||_p with trainable relation
embeddings, and trained with negative sampling (Eq. 2):

    L_KE = -log σ(γ - d(h, t)) - Σ_i (1/n) log σ(d(h'_i, t'_i) - γ),      L = L_MLM + L_KE   (§2.3)

where (h'_i, r, t'_i) has its head or tail replaced by a random entity. The model is any encoder with a masked-LM
head; the relation table is this objective's auxiliary network. Triples and descriptions come from a knowledge
graph (ptmkit.data.kg; default the LAMA T-REx graph of the data root, described as that module says) and are drawn
in corrupt() from the seeded generator: each batch adds `triples_per_batch` training triples, their negatives, and
the tokenised descriptions of the entities they involve.

KE tensors carry a leading dimension of 1, so that data-parallel slicing (which splits tensors whose first
dimension is the batch) leaves them whole. Dimension legend: B batch, T length, K triples, N negatives per triple,
U entities described in this batch, L description length, H hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.data.kg import LAMA_MASK, TRAIN, KnowledgeGraph, read_lama
from ptmkit.models.registry import backbone_of
from ptmkit.objectives.base import Batch
from ptmkit.objectives.masking import MaskingConfig, check_mask_token, masked_lm_loss, maskable_positions, replace_tokens


@dataclass
class KEPLERConfig(MaskingConfig):
    name: ClassVar[str] = "kepler"
    kg: str | None = None  # a knowledge-graph directory (`ptm kg build`); None = LAMA T-REx from the data root
    data_root: str | None = None  # where LAMA lives when kg is None; default ptmkit.data.paths.data_root()
    triples_per_batch: int = 8  # K training triples scored per batch
    negatives: int = 1  # n corrupted triples per true one
    margin: float = 4.0  # γ
    p_norm: int = 2  # distance norm of d(h, t)
    description_len: int = 32  # L: tokens of a description, special tokens included (longer ones are cut)
    ke_weight: float = 1.0  # L = L_MLM + ke_weight x L_KE (§2.3 adds them unweighted)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.triples_per_batch < 1 or self.negatives < 1:
            raise ConfigError(f"kepler: triples_per_batch and negatives must be >= 1, got {self.triples_per_batch}, "
                              f"{self.negatives}")
        if not self.margin > 0 or not self.ke_weight > 0:
            raise ConfigError(f"kepler: margin and ke_weight must be > 0, got {self.margin}, {self.ke_weight}")
        if self.p_norm not in (1, 2):
            raise ConfigError(f"kepler: p_norm must be 1 or 2, got {self.p_norm}")
        if self.description_len < 3:
            raise ConfigError(f"kepler: description_len must be >= 3 (two special tokens and a word), got "
                              f"{self.description_len}")


def encode_descriptions(kg: KnowledgeGraph, tokenizer, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(E, L) token ids of every entity's description (LAMA's object mask becomes the tokenizer's mask token) and
    (E,) lengths; cut to `length` tokens keeping the final special token."""
    mask_token = tokenizer.id_to_token(tokenizer.mask_id)
    texts = [d.replace(LAMA_MASK, mask_token) for d in kg.descriptions]
    encoded = tokenizer.encode_batch(texts, add_special_tokens=True)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    ids = torch.full((len(encoded), length), pad, dtype=torch.long)
    lengths = torch.zeros(len(encoded), dtype=torch.long)
    for i, e in enumerate(encoded):  # once, when the objective is built
        e = e if len(e) <= length else e[:length - 1] + e[-1:]
        ids[i, :len(e)] = torch.tensor(e, dtype=torch.long)
        lengths[i] = len(e)
    return ids, lengths


class KEPLER:
    task = "masked-lm"

    def __init__(self, cfg: KEPLERConfig, kg: KnowledgeGraph, descriptions: torch.Tensor, lengths: torch.Tensor):
        cfg.check_ready()
        train = kg.part(TRAIN)
        if not len(train):
            raise ConfigError("kepler: the knowledge graph has no training triples")
        if descriptions.shape[0] != kg.num_entities:
            raise ConfigError(f"kepler: {descriptions.shape[0]} descriptions for {kg.num_entities} entities")
        self.cfg, self.kg = cfg, kg
        self.train_triples = torch.from_numpy(train)  # (N, 3)
        self.descriptions, self.lengths = descriptions, lengths
        self._special = torch.tensor(sorted(set(cfg.special_token_ids)), dtype=torch.long)
        self.relations: nn.Embedding | None = None  # built by bind()
        self._bound_to: nn.Module | None = None

    @classmethod
    def from_tokenizer(cls, cfg: KEPLERConfig, tokenizer) -> KEPLER:
        check_mask_token(cfg.name, tokenizer)
        if cfg.kg is not None:
            kg = KnowledgeGraph.load(cfg.kg)
        else:
            from ptmkit.data.paths import data_root

            root = data_root() if cfg.data_root is None else cfg.data_root
            kg, _ = read_lama(f"{root}/lama")
        ids, lengths = encode_descriptions(kg, tokenizer, cfg.description_len)
        return cls(cfg, kg, ids, lengths)

    # ---- auxiliary network: relation embeddings ----------------------------------------------------------------
    def bind(self, model: nn.Module) -> nn.Module:
        backbone = backbone_of(model)
        if self._bound_to is not backbone:
            self.relations = nn.Embedding(self.kg.num_relations, backbone.config.hidden_size)
            nn.init.normal_(self.relations.weight, std=getattr(backbone.config, "initializer_range", 0.02))
            p = next(model.parameters(), None)
            if p is not None:
                self.relations.to(p.device)
            self._bound_to = backbone
        return self.relations

    # ---- data side ----------------------------------------------------------------------------------------------
    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        c = self.cfg
        ids = batch["input_ids"]  # (B, T)
        chosen = (torch.rand(ids.shape, generator=generator) < c.mask_prob) & maskable_positions(batch, self._special)
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        corrupted = replace_tokens(ids, chosen, torch.rand(ids.shape, generator=generator), c, generator)
        # knowledge embedding: K training triples and N corrupted ones each (head or tail replaced)
        k, n = c.triples_per_batch, c.negatives
        pos = self.train_triples[torch.randint(0, len(self.train_triples), (k,), generator=generator)]  # (K, 3)
        neg = pos[:, None, :].expand(k, n, 3).clone()  # (K, N, 3)
        side = torch.where(torch.rand(k, n, generator=generator) < 0.5, 0, 2)
        neg.scatter_(2, side[..., None], torch.randint(0, self.kg.num_entities, (k, n, 1), generator=generator))
        ents = torch.cat([pos[:, [0, 2]].reshape(-1), neg[..., [0, 2]].reshape(-1)])
        uniq = torch.unique(ents)  # (U,)
        length = int(self.lengths[uniq].max())
        desc = self.descriptions[uniq, :length]  # (U, L)
        desc_mask = (torch.arange(length)[None] < self.lengths[uniq][:, None]).long()
        where = lambda e: torch.searchsorted(uniq, e.contiguous())  # noqa: E731  entity -> its row in desc
        return {**batch, "input_ids": corrupted, "labels": labels,
                "ke_descriptions": desc[None], "ke_description_mask": desc_mask[None],  # (1, U, L)
                "ke_positive": torch.stack([where(pos[:, 0]), pos[:, 1], where(pos[:, 2])], -1)[None],  # (1, K, 3)
                "ke_negative": torch.stack([where(neg[..., 0]), neg[..., 1], where(neg[..., 2])], -1)[None]}

    # ---- model side ---------------------------------------------------------------------------------------------
    def encode(self, model, batch: Batch) -> torch.Tensor:
        """(U, H): the encoder's top-layer first-token state of each description in the batch (§2.2)."""
        out = backbone_of(model)(batch["ke_descriptions"][0], batch["ke_description_mask"][0])
        return out.last_hidden_state[:, 0]

    def ke_loss(self, model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.relations is None or self._bound_to is not backbone_of(model):
            raise RuntimeError("kepler: the relation embeddings are not bound to this model; call objective.bind(model)"
                               " before loss() (ptmkit.train.loop.train does) and optimise the module it returns")
        emb = self.encode(model, batch).float()  # (U, H)
        p = self.cfg.p_norm

        def distance(t: torch.Tensor) -> torch.Tensor:  # (..., 3) rows of (head row, relation, tail row)
            return (emb[t[..., 0]] + self.relations(t[..., 1]).float() - emb[t[..., 2]]).norm(p=p, dim=-1)

        d_pos = distance(batch["ke_positive"][0])  # (K,)
        d_neg = distance(batch["ke_negative"][0])  # (K, N)
        g = self.cfg.margin
        loss = -F.logsigmoid(g - d_pos).mean() - F.logsigmoid(d_neg - g).mean(1).mean()  # Eq. 2
        with torch.no_grad():
            ranked = (d_pos[:, None] < d_neg).float().mean()
        return loss, ranked

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        mlm, m = masked_lm_loss(model, batch)
        ke, ranked = self.ke_loss(model, batch)
        loss = mlm + self.cfg.ke_weight * ke
        return loss, {**m, "loss": loss.item(), "mlm_loss": mlm.item(), "ke_loss": ke.item(),
                      "ke_ranking_accuracy": ranked.item()}

