"""RAG workflows (Lewis et al. 2020; objectives/rag.py): fine-tune a causal generator and the query encoder on
question/answer pairs through the one training engine (checkpoints, resume, metrics.jsonl, loss plot), the document
vectors fixed in the index; and load a generator + index (+ trained query encoder) for `ptm rag generate`.

Training data: JSON lines {"question": ..., "answer": ...}; the answer is scored as the continuation of the question
(a leading space is added when it has none, as a word follows a word in byte-level BPE)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptmkit import atomic, outputs
from ptmkit.config import ConfigError, from_dict, to_dict
from ptmkit.data import textio
from ptmkit.data.batches import PretrainBatches
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models.io import load_model, save_model
from ptmkit.objectives.rag import RAG, RAGConfig, check_generator
from ptmkit.retrieval.retriever import Retriever
from ptmkit.train.loop import TrainConfig, train
from ptmkit.train.optim import OptimConfig
from ptmkit.train.schedule import ScheduleConfig


@dataclass
class RagRunConfig:
    generator: str = ""  # a causal-LM model directory with its tokenizer (e.g. runs/smollm2, `ptm convert` of SmolLM2)
    index: str = ""  # a passage index directory (`ptm index build`)
    query_encoder: str | None = None  # a trained query encoder (a RAG run's out/query_encoder); None = the index's
    train: str = ""  # JSON lines {"question", "answer"}
    objective: dict[str, Any] = field(default_factory=dict)  # RAGConfig: k, marginalise, temperature, ...
    max_question_tokens: int = 64  # questions are cut to this many generator tokens
    max_answer_tokens: int = 16  # answers (the training targets) are cut to this many
    batch_size: int = 8  # questions per step (each retrieves objective.k passages)
    engine: TrainConfig = field(default_factory=lambda: TrainConfig(steps=200, precision="fp32", eval_every=0,
                                                                    checkpoint_every=100))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, weight_decay=0.0))
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    out: str = "runs/rag"  # run directory: metrics.jsonl, loss.png, checkpoints/, generator/, query_encoder/

    def __post_init__(self) -> None:
        for name in ("max_question_tokens", "max_answer_tokens", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")


class QADataset:
    """Question/answer pairs tokenised by the generator's tokenizer, as the engine's dataset (`get_batch`)."""

    def __init__(self, path: str | Path, tokenizer: Tokenizer, max_question: int, max_answer: int):
        rows = [json.loads(line) for line in textio.lines(Path(path)) if line.strip()]
        bad = [i + 1 for i, r in enumerate(rows) if not (isinstance(r, dict) and r.get("question") and r.get("answer"))]
        if bad:
            raise ConfigError(f"{path}: lines {bad[:5]} lack a question or an answer; each line is "
                              '{"question": ..., "answer": ...}')
        if not rows:
            raise ConfigError(f"{path}: no question/answer pairs")
        answers = [r["answer"] if r["answer"].startswith(" ") else " " + r["answer"] for r in rows]
        self.questions = [e[-max_question:] for e in tokenizer.encode_batch([r["question"] for r in rows], False)]
        self.answers = [e[:max_answer] for e in tokenizer.encode_batch(answers, False)]
        self.pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id or 0
        self.seq_len = max_question + max_answer

    def __len__(self) -> int:
        return len(self.questions)

    def get_batch(self, indices) -> dict[str, np.ndarray]:
        q = [self.questions[i] for i in indices]
        a = [self.answers[i] for i in indices]
        T, A = max(map(len, q)), max(map(len, a))
        return {"input_ids": np.array([x + [self.pad] * (T - len(x)) for x in q]),
                "attention_mask": np.array([[1] * len(x) + [0] * (T - len(x)) for x in q]),
                "labels": np.array([x + [-100] * (A - len(x)) for x in a])}


def load_rag(generator: str | Path, index: str | Path, query_encoder: str | Path | None = None,
             params: dict[str, Any] | None = None):
    """(generator model, RAG objective) ready to train or generate; refuses a generator RAG cannot use."""
    cfg = from_dict(RAGConfig, dict(params or {}), where="rag")
    tokenizer = Tokenizer.load(generator)
    model = load_model(generator)
    check_generator(model, tokenizer)
    return model, RAG(cfg, tokenizer, Retriever.load(index, query_encoder, temperature=cfg.temperature))


RUN_MARKERS = ("run_config.json", "metrics.jsonl", "checkpoints", "generator")


def train_rag(cfg: RagRunConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    for name in ("generator", "index", "train"):
        if not getattr(cfg, name):
            raise ConfigError(f"{name} is required (see `ptm rag train --help`)")
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the output folder and --overwrite replaces it: choose one")
    if not resume:
        outputs.check_free(cfg.out, RUN_MARKERS, overwrite=overwrite, kind="RAG run", resume_flag="--resume")
    torch.manual_seed(cfg.engine.seed)
    model, rag = load_rag(cfg.generator, cfg.index, cfg.query_encoder, cfg.objective)
    data = QADataset(cfg.train, rag.tokenizer, cfg.max_question_tokens, cfg.max_answer_tokens)
    batches = PretrainBatches(data, cfg.batch_size, rag, seed=cfg.engine.seed)
    out = Path(cfg.out)
    if not resume:
        outputs.discard(out)
    atomic.write_text(out / "run_config.json", json.dumps(to_dict(cfg), indent=2) + "\n")
    t0 = time.perf_counter()
    summary = train(model, rag, batches, out, cfg.engine, cfg.optim, cfg.schedule, resume=resume, title="rag")
    summary.pop("trained", None)
    summary.pop("best", None)
    summary["wall_s"] = time.perf_counter() - t0
    if not summary["interrupted"]:
        with atomic.atomic_dir(out / "generator") as tmp:
            save_model(model, tmp)
            rag.tokenizer.save(tmp)
        rag.retriever.save_query_encoder(out / "query_encoder")
        summary.update(generator=str(out / "generator"), query_encoder=str(out / "query_encoder"))
    atomic.write_text(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    return summary
