"""TransE knowledge-graph embeddings (Bordes et al. 2013, "Translating Embeddings for Modeling Multi-relational
Data"): an entity and a relation are vectors of one space, and a true triple (h, r, t) has h + r ≈ t, scored by the
L1 or L2 distance ||h + r - t||. Trained by objectives/transe.py (margin ranking against corrupted triples); ERNIE
(models/ernie.py) reads the entity vectors. Not a Transformer family: saved as entity_embeddings.safetensors
(entity and relation tables) + transe.json, no Hugging Face form.

Dimension legend: B triples, E entities, R relations, K embedding size.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ptmkit import atomic
from ptmkit.config import ConfigError, check_positive

WEIGHTS, CONFIG = "entity_embeddings.safetensors", "transe.json"


@dataclass
class TransEConfig:
    num_entities: int = 1
    num_relations: int = 1
    dim: int = 64  # K; Bordes et al. use 20-50 on FB15k/WN18
    p_norm: int = 1  # 1 = L1 distance, 2 = L2 (§4.2 picks it on validation)

    def __post_init__(self) -> None:
        check_positive("transe", num_entities=self.num_entities, num_relations=self.num_relations, dim=self.dim)
        if self.p_norm not in (1, 2):
            raise ConfigError(f"transe: p_norm must be 1 (L1) or 2 (L2), got {self.p_norm}")


class TransE(nn.Module):
    task = "kg-embedding"

    def __init__(self, config: TransEConfig):
        super().__init__()
        self.config = c = config
        self.entity = nn.Embedding(c.num_entities, c.dim)
        self.relation = nn.Embedding(c.num_relations, c.dim)
        # Algorithm 1: both tables start uniform in ±6/sqrt(k); relations are normalised once, entities before
        # every mini-batch (normalize_entities_)
        bound = 6.0 / math.sqrt(c.dim)
        nn.init.uniform_(self.entity.weight, -bound, bound)
        nn.init.uniform_(self.relation.weight, -bound, bound)
        with torch.no_grad():
            self.relation.weight.div_(self.relation.weight.norm(dim=1, keepdim=True))
        self.normalize_entities_()

    @torch.no_grad()
    def normalize_entities_(self) -> None:
        """The norm constraint of §2: every entity vector has L2 norm 1, so the loss cannot fall by inflating them."""
        w = self.entity.weight
        w.div_(w.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def distance(self, h: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """||h + r - t||_p for index tensors of one shape (...,) -> (...,); lower = more plausible."""
        return (self.entity(h) + self.relation(r) - self.entity(t)).norm(p=self.config.p_norm, dim=-1)

    def forward(self, triples: torch.Tensor) -> torch.Tensor:
        """(..., 3) (head, relation, tail) -> (...,) distances."""
        return self.distance(triples[..., 0], triples[..., 1], triples[..., 2])

    @torch.no_grad()
    def distances_to_all(self, triples: torch.Tensor, side: str) -> torch.Tensor:
        """(B, 3) -> (B, E): the distance of each triple with its `side` ("head" or "tail") replaced by every entity."""
        e = self.entity.weight  # (E, K)
        if side == "tail":
            q = self.entity(triples[:, 0]) + self.relation(triples[:, 1])  # (B, K): h + r vs every t
        elif side == "head":
            q = self.entity(triples[:, 2]) - self.relation(triples[:, 1])  # (B, K): t - r vs every h
        else:
            raise ValueError(f"side must be 'head' or 'tail', got {side!r}")
        return torch.cdist(q[None], e[None], p=float(self.config.p_norm))[0]  # (B, E)


def save_transe(model: TransE, directory: str | Path, extra: dict | None = None) -> Path:
    """entity_embeddings.safetensors ("entity" (E, K), "relation" (R, K)) + transe.json (config and `extra`, e.g.
    the knowledge graph's fingerprint), written atomically."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(d / WEIGHTS) as tmp:
        save_file({"entity": model.entity.weight.detach().cpu().contiguous(),
                   "relation": model.relation.weight.detach().cpu().contiguous()}, str(tmp))
    atomic.write_text(d / CONFIG, json.dumps({**vars(model.config), **(extra or {})}, indent=2) + "\n")
    return d


def entity_table(path: str | Path) -> torch.Tensor:
    """The (E, K) entity vectors of a TransE output (its directory or the .safetensors file)."""
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS
    if not p.is_file():
        raise FileNotFoundError(f"entity embedding file {p} not found; train one with `ptm kg transe` (it writes "
                                f"{WEIGHTS}) or fix the path")
    tensors = load_file(str(p))
    if "entity" not in tensors or tensors["entity"].dim() != 2:
        raise ConfigError(f"{p} holds no 2-D 'entity' table (found {sorted(tensors)}); pass a file written by "
                          "`ptm kg transe`")
    return tensors["entity"]


def load_transe(directory: str | Path) -> tuple[TransE, dict]:
    """The TransE model of a directory written by save_transe, and its transe.json."""
    d = Path(directory)
    if not (d / CONFIG).is_file():
        raise FileNotFoundError(f"{d / CONFIG} not found; {d} is not a TransE output (`ptm kg transe`)")
    meta = json.loads((d / CONFIG).read_text())
    model = TransE(TransEConfig(**{k: meta[k] for k in ("num_entities", "num_relations", "dim", "p_norm")}))
    tensors = load_file(str(d / WEIGHTS))
    model.load_state_dict({"entity.weight": tensors["entity"], "relation.weight": tensors["relation"]})
    return model, meta
