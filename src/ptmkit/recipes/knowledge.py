"""Knowledge-enhanced pre-training workflows (survey §5.3; docs/knowledge.md): build a knowledge graph and its text
from LAMA T-REx, train TransE on it through the one training engine, and link a prepared corpus's entities once into
a per-token stream that `ptm pretrain` reads beside the token shards (data.entities) for ERNIE's dEA objective."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptmkit import atomic, outputs
from ptmkit.analysis.link_prediction import link_prediction_metrics
from ptmkit.config import ConfigError, from_dict, to_dict
from ptmkit.data.annotations import write_annotations
from ptmkit.data.batches import PretrainBatches
from ptmkit.data.kg import HELD_OUT, TRAIN, KnowledgeGraph, TripleDataset, read_lama
from ptmkit.data.shards import TokenShards
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.log import get
from ptmkit.models.transe import TransE, TransEConfig, save_transe
from ptmkit.objectives.linking import EntityLinker, link_stream
from ptmkit.objectives.transe import TransEObjective, TransEObjectiveConfig
from ptmkit.train.loop import TrainConfig, train
from ptmkit.train.optim import OptimConfig
from ptmkit.train.schedule import ScheduleConfig

log = get(__name__)


# ----------------------------------------------------------------------------------------------------------------
# graph and text


def build_lama_kg(out: str | Path, lama_dir: str | Path, held_out: float = 0.2, seed: int = 0) -> dict[str, Any]:
    """out/kg (the graph), out/text-train.jsonl and out/text-held-out.jsonl: the evidence sentences (object filled
    in, one {"text"} a line, deduplicated) of the training facts and of the held-out facts. A sentence that is also
    evidence of a held-out fact is kept out of the training text, so held-out facts are never read in pre-training."""
    kg, evidence = read_lama(lama_dir, held_out, seed)
    out = Path(out)
    kg.save(out / "kg")
    held_text = {e.text for e in evidence if kg.split[e.triple] == HELD_OUT}
    counts = {}
    for name, which, exclude in (("text-train.jsonl", TRAIN, held_text), ("text-held-out.jsonl", HELD_OUT, set())):
        seen: set[str] = set()
        lines = []
        for e in evidence:
            if kg.split[e.triple] == which and e.text not in seen and e.text not in exclude:
                seen.add(e.text)
                lines.append(json.dumps({"text": e.text}, ensure_ascii=False))
        atomic.write_text(out / name, "\n".join(lines) + "\n")
        counts[name] = len(lines)
    info = {"kg": str(out / "kg"), "entities": kg.num_entities, "relations": kg.num_relations,
            "train_triples": int((kg.split == TRAIN).sum()), "held_out_triples": int((kg.split == HELD_OUT).sum()),
            "sentences": counts, "fingerprint": kg.fingerprint}
    atomic.write_text(out / "build.json", json.dumps(info, indent=2) + "\n")
    return info


# ----------------------------------------------------------------------------------------------------------------
# TransE


@dataclass
class TransEModelSection:
    dim: int = 64  # embedding size (ERNIE's model.config.entity_size must equal it)
    p_norm: int = 1  # 1 = L1, 2 = L2 distance


@dataclass
class TransERunConfig:
    kg: str = ""  # knowledge-graph directory (`ptm kg build`)
    model: TransEModelSection = field(default_factory=TransEModelSection)
    objective: dict[str, Any] = field(default_factory=dict)  # TransEObjectiveConfig: margin, negatives
    batch_size: int = 512  # triples per step
    train: TrainConfig = field(default_factory=lambda: TrainConfig(precision="fp32", eval_every=0))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-2, weight_decay=0.0))
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    out: str = "runs/transe"  # run directory; the embeddings go to out/embeddings

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")


RUN_MARKERS = ("run_config.json", "metrics.jsonl", "checkpoints", "embeddings")


def train_transe(cfg: TransERunConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train TransE on the graph's training triples (the engine: checkpoints, resume, metrics.jsonl), then score
    filtered link prediction on the held-out triples and write out/embeddings (entity_embeddings.safetensors)."""
    if not cfg.kg:
        raise ConfigError("kg (a knowledge-graph directory from `ptm kg build`) is required")
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the output folder and --overwrite replaces it: choose one")
    if not resume:
        outputs.check_free(cfg.out, RUN_MARKERS, overwrite=overwrite, kind="TransE run", resume_flag="--resume")
    kg = KnowledgeGraph.load(cfg.kg)
    torch.manual_seed(cfg.train.seed)
    model = TransE(TransEConfig(kg.num_entities, kg.num_relations, cfg.model.dim, cfg.model.p_norm))
    obj_cfg = from_dict(TransEObjectiveConfig, {**cfg.objective, "num_entities": kg.num_entities},
                        where="objective (transe)")
    objective = TransEObjective(obj_cfg)
    batches = PretrainBatches(TripleDataset(kg.part(TRAIN)), cfg.batch_size, objective, seed=cfg.train.seed)
    out = Path(cfg.out)
    if not resume:
        outputs.discard(out)
    atomic.write_text(out / "run_config.json", json.dumps(to_dict(cfg), indent=2) + "\n")
    held = kg.part(HELD_OUT)

    def evaluate(module) -> dict[str, float]:
        m = link_prediction_metrics(module.model if hasattr(module, "model") else module, held, kg.triples)
        module.train()
        return {k: v for k, v in m.items() if k != "triples"}

    t0 = time.perf_counter()
    summary = train(model, objective, batches, out, cfg.train, cfg.optim, cfg.schedule,
                    evaluate=evaluate if len(held) else None, resume=resume, title="transe")
    summary.pop("trained", None)
    summary.pop("best", None)
    summary["wall_s"] = time.perf_counter() - t0
    if not summary["interrupted"]:
        model.normalize_entities_()  # the constraint holds for the vectors handed on, as during training
        summary["link_prediction"] = link_prediction_metrics(model, held, kg.triples) if len(held) else {}
        save_transe(model, out / "embeddings", {"kg": str(cfg.kg), "kg_fingerprint": kg.fingerprint,
                                                "link_prediction": summary["link_prediction"]})
        summary["embeddings"] = str(out / "embeddings")
    atomic.write_text(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    return summary


# ----------------------------------------------------------------------------------------------------------------
# entity links


def link_shards(shards_dir: str | Path, kg_dir: str | Path, tokenizer_dir: str | Path, out: str | Path,
                max_len: int = 8, overwrite: bool = False) -> dict[str, Any]:
    """Link the entities of a prepared corpus once (objectives/linking.py: the dictionary of the graph's labels)
    and write the per-token stream (ptmkit.data.annotations) that pre-training reads as entity_ids."""
    outputs.check_free(out, ("meta.json", "values.bin"), overwrite=overwrite, kind="entity-link stream")
    tokenizer = Tokenizer.load(tokenizer_dir)
    shards = TokenShards(shards_dir, tokenizer)
    kg = KnowledgeGraph.load(kg_dir)
    t0 = time.perf_counter()
    linker = EntityLinker.from_kg(kg, tokenizer, max_len)
    values, counts = link_stream(shards.tokens(0, shards.num_tokens), shards.doc_offsets, linker)
    linked = values[values > 0] - 1
    info = {"kg": str(kg_dir), "kg_fingerprint": kg.fingerprint, "dictionary_entries": len(linker),
            **counts, "tokens": shards.num_tokens, "distinct_entities": int(len(np.unique(linked))),
            "mentions_per_1k_tokens": 1000.0 * counts["mentions"] / max(1, shards.num_tokens),
            "seconds": time.perf_counter() - t0}
    if overwrite:
        outputs.discard(out)
    write_annotations(out, values, shards, "entity_ids", info)
    return info
