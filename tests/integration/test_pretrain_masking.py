"""The masking variants through `pretrain`: built from the tokenizer, trained with their auxiliary heads (SBO, NSP),
which are checkpointed so a resumed run repeats the uninterrupted one exactly."""

from __future__ import annotations


import pytest

from ptmkit.config import ConfigError
from ptmkit.train.logging import read_metrics
from ptmkit.recipes.pretrain import pretrain
from tests.integration.resume import interrupt_then_resume, train_losses
from tests.integration.test_pretrain import _cfg, corpus  # noqa: F401  (the module-scoped corpus fixture)


@pytest.mark.parametrize("name", ["wwm", "span", "entity", "nsp", "sop"])
def test_masking_objectives_pretrain(corpus, tmp_path, name):  # noqa: F811
    cfg = _cfg(corpus, tmp_path / "run", objective__name=name, train__steps=8, train__eval_every=4)
    summary = pretrain(cfg)  # entity: its dictionary comes from the shared data root (missing data is an error)
    train = [r for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert summary["steps"] == 8 and len(train) == 8 and all(r["loss"] == r["loss"] for r in train)
    heads = {"span": "sbo_loss", "nsp": "nsp_loss", "sop": "sop_loss"}
    if name in heads:
        assert heads[name] in train[0]
        assert (tmp_path / "run" / "checkpoints").is_dir()


def test_resume_with_objective_heads_is_bit_exact(corpus, tmp_path, monkeypatch):  # noqa: F811
    def cfg(out):
        return _cfg(corpus, out, objective__name="span", train__steps=8, train__checkpoint_every=100)

    pretrain(cfg(tmp_path / "full"))
    want = train_losses(tmp_path / "full")
    summary, _ = interrupt_then_resume(cfg(tmp_path / "part"), monkeypatch, sigint_at_batch=3)
    assert summary["interrupted"] and summary["steps"] == 4
    assert train_losses(tmp_path / "part") == want


def test_span_longer_than_the_sequence_fails_before_training(corpus, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="max_span_len 40"):
        pretrain(_cfg(corpus, tmp_path / "run", objective__name="span", objective__params={"max_span_len": 40}))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("share", ["all", "attention"])
def test_albert_sop_pretraining_trains_and_exports_its_own_sop_head(corpus, tmp_path, share):  # noqa: F811
    """ALBERT + SOP trains the model's own SOP head (task masked-lm-sop) and exports AlbertForPreTraining; partial
    sharing (attention only) has no Hugging Face form, so the export is the equivalent unshared model."""
    import json

    import torch

    from ptmkit.models import load_model

    cfg = _cfg(corpus, tmp_path / "run", objective__name="sop", train__steps=4, train__eval_every=0)
    cfg.model.family = "albert"
    cfg.model.config = {"hidden_size": 64, "num_layers": 3, "num_heads": 2, "intermediate_size": 128,
                        "embedding_size": 32, "max_position_embeddings": 64, "share": share}
    summary = pretrain(cfg)
    train = [r for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert "sop_loss" in train[0] and summary["steps"] == 4
    model_dir = tmp_path / "run" / "model"
    hf = json.loads((model_dir / "config.json").read_text())
    assert hf["architectures"] == ["AlbertForPreTraining"]
    assert hf["num_hidden_groups"] == (1 if share == "all" else 3)
    model = load_model(model_dir).eval()
    ids = torch.randint(5, 100, (2, 16))
    out = model(ids)
    assert out.pair_logits.shape == (2, 2) and torch.isfinite(out.logits).all()
