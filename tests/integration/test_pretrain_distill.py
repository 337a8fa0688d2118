"""Pre-training distillation through `ptm pretrain`: a DistilBERT student made from its teacher's layers trains on
masked LM with the teacher's soft targets, TinyBERT's general distillation trains its width projection with the
student, neither saves the teacher, the held-out loss is the student's own masked-LM loss, and a run resumes bit for
bit."""

from __future__ import annotations

import re

import pytest
from safetensors import safe_open

from ptmkit.config import ConfigError
from ptmkit.models import load_model
from ptmkit.recipes.pretrain import DistillSection, pretrain
from ptmkit.train.logging import read_metrics
from tests.integration.resume import interrupt_then_resume, train_losses
from tests.integration.test_pretrain import _cfg, corpus  # noqa: F401  (corpus is a pytest fixture)


@pytest.fixture(scope="module")
def teacher(corpus, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("teacher") / "run"
    return pretrain(_cfg(corpus, out, train__steps=20))["model_dir"]


def _student(corpus, out, teacher, method, steps=12):  # noqa: F811
    cfg = _cfg(corpus, out, model__init_from=teacher, model__config={}, model__student_layers=1, train__steps=steps,
               train__eval_every=6, train__checkpoint_every=6)
    cfg.distill = DistillSection(method=method, teacher=teacher)
    return cfg


def test_distilbert_pretraining_distils_a_student_from_its_teachers_layers(corpus, teacher, tmp_path):  # noqa: F811
    summary = pretrain(_student(corpus, tmp_path / "s", teacher, "distilbert"))
    records = read_metrics(tmp_path / "s")
    train = [r for r in records if r["split"] == "train"]
    assert {"hard_loss", "soft_loss", "cosine_loss"} <= set(train[0])
    assert sum(r["loss"] for r in train[-3:]) < sum(r["loss"] for r in train[:3])
    evals = [r for r in records if r["split"] == "eval"]
    assert evals and "soft_loss" not in evals[-1]  # held out: the student's own masked-LM loss
    student = load_model(summary["model_dir"])
    assert student.backbone.config.num_layers == 1
    for f in [*(tmp_path / "s" / "checkpoints").glob("*/*.safetensors"), tmp_path / "s" / "model" / "model.safetensors"]:
        with safe_open(str(f), "pt") as st:
            layers = {int(m.group(1)) for k in st.keys() if (m := re.search(r"\blayers?\.(\d+)\.", k))}
            assert layers == {0}, (f, layers)  # the student's one layer; no teacher tensors anywhere


def test_tinybert_general_distillation_resumes_bit_for_bit(corpus, teacher, tmp_path, monkeypatch):  # noqa: F811
    full = tmp_path / "full"
    pretrain(_student(corpus, full, teacher, "tinybert", steps=8))
    want = train_losses(full)
    assert {"embedding_loss", "hidden_loss", "attention_loss"} <= set(read_metrics(full)[0])
    part = tmp_path / "part"
    summary, _ = interrupt_then_resume(_student(corpus, part, teacher, "tinybert", steps=8), monkeypatch,
                                       sigint_at_batch=3)
    assert train_losses(part) == want


def test_bad_distillation_sections_are_errors(corpus, teacher, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="both distill.method and distill.teacher"):
        DistillSection(method="distilbert")
    with pytest.raises(ConfigError, match="unknown"):
        DistillSection(method="distilgpt", teacher=teacher)
    with pytest.raises(ConfigError, match="init_from"):
        pretrain(_cfg(corpus, tmp_path / "x", model__student_layers=1))
    # a student with another tokenizer (BPE, 300 tokens, against the teacher's WordPiece) cannot learn its logits
    cfg = _cfg(corpus, tmp_path / "y", model__config={"hidden_size": 64, "num_layers": 1, "num_heads": 2,
                                                       "intermediate_size": 128, "max_position_embeddings": 64})
    cfg.distill = DistillSection(method="distilbert", teacher=teacher)
    cfg.data.tokenizer, cfg.data.train = str(corpus / "tok-bpe"), str(corpus / "shards-bpe")
    with pytest.raises(ConfigError, match="vocabulary|tokenizer"):
        pretrain(cfg)
