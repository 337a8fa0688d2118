"""Unified pre-training (UniLM, GLM) through `pretrain`: built from the tokenizer, loss falls on synthetic text;
GLM's block-position table is checkpointed with the model so a resumed run repeats the uninterrupted one."""

from __future__ import annotations


import pytest

from ptmkit.config import ConfigError
from ptmkit.train.logging import read_metrics
from ptmkit.recipes.pretrain import pretrain
from tests.integration.resume import interrupt_then_resume, train_losses
from tests.integration.test_pretrain import _cfg, corpus  # noqa: F401  (the module-scoped corpus fixture)


@pytest.mark.parametrize("name", ["unilm", "glm"])
def test_unified_objectives_pretrain_and_loss_falls(corpus, tmp_path, name):  # noqa: F811
    cfg = _cfg(corpus, tmp_path / "run", objective__name=name, train__steps=30, train__eval_every=15,
               train__checkpoint_every=15)
    summary = pretrain(cfg)
    records = read_metrics(tmp_path / "run")
    train = [r["loss"] for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    assert summary["steps"] == 30 and len(train) == 30
    assert sum(train[-5:]) / 5 < 0.8 * sum(train[:5]) / 5, train
    assert evals[-1]["loss"] < evals[0]["loss"]
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def test_glm_resume_is_exact(corpus, tmp_path, monkeypatch):  # noqa: F811
    def cfg(out):
        return _cfg(corpus, out, objective__name="glm", train__steps=8, train__checkpoint_every=100, data__eval=None)

    pretrain(cfg(tmp_path / "full"))
    want = train_losses(tmp_path / "full")
    summary, _ = interrupt_then_resume(cfg(tmp_path / "part"), monkeypatch, sigint_at_batch=3)
    assert summary["interrupted"] and summary["steps"] == 4
    assert train_losses(tmp_path / "part") == want


def test_bad_configs_fail_before_training(corpus, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="sum to 1"):
        pretrain(_cfg(corpus, tmp_path / "a", objective__name="unilm", objective__params={"p_seq2seq": 0.9}))
    with pytest.raises(ConfigError, match="not in the tokenizer"):
        pretrain(_cfg(corpus, tmp_path / "b", objective__name="glm", objective__params={"start_token": "[sop]"}))
    with pytest.raises(ConfigError, match="max_span_len 40"):
        pretrain(_cfg(corpus, tmp_path / "c", objective__name="glm", objective__params={"max_span_len": 40}))
    assert not (tmp_path / "c" / "metrics.jsonl").exists()
