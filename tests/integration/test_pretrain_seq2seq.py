"""Encoder-decoder pre-training through `pretrain`: a tiny T5 with span corruption and a tiny BART with text
infilling + sentence permutation, on a few hundred synthetic sentences; the loss falls within 30 steps."""

from __future__ import annotations

import json

import pytest

from ptmkit.config import ConfigError, from_dict
from ptmkit.data.shards import prepare_shards
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.train.logging import read_metrics
from ptmkit.recipes.pretrain import PretrainConfig, pretrain

SENTENCES = [
    "the cat sat on the mat.", "a dog ran in the park with a red ball.", "the bird sang a song in the tree!",
    "children play in the garden.", "the river runs past the old mill to the sea.", "she read a book about ships?",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("s2s")
    with open(d / "train.jsonl", "w") as f:
        for i in range(300):
            f.write(json.dumps({"text": " ".join(SENTENCES[(i + j) % 6] for j in range(3))}) + "\n")
    tok = Tokenizer.train(d / "train.jsonl", kind="wordpiece", vocab_size=200, min_frequency=1,
                          special_tokens=[f"<extra_id_{i}>" for i in range(16)])
    tok.save(d / "tok")
    prepare_shards(d / "train.jsonl", tok, d / "shards", progress=False)
    return d


def _cfg(corpus, out, family, objective, params=None):
    model = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128, "dropout": 0.0}
    if family == "bart":
        model["max_position_embeddings"] = 64
    return from_dict(PretrainConfig, {
        "model": {"family": family, "config": model},
        "data": {"train": str(corpus / "shards"), "tokenizer": str(corpus / "tok"), "seq_len": 32, "batch_size": 8},
        "objective": {"name": objective, "params": params or {}},
        "train": {"steps": 30, "log_every": 1, "eval_every": 100, "checkpoint_every": 100, "precision": "fp32",
                  "progress_bar": False},
        "optim": {"lr": 3e-3},
        "schedule": {"warmup_steps": 3},
        "out": str(out),
    })


@pytest.mark.parametrize("family,objective,params", [
    ("t5", "span_corruption", {}),
    ("bart", "denoising", {"transforms": [{"name": "text_infilling", "ratio": 0.3},
                                          {"name": "sentence_permutation"}]}),
    ("bart", "mass", {}),
], ids=["t5-span-corruption", "bart-infilling-permutation", "bart-mass"])
def test_seq2seq_pretraining_loss_falls(corpus, tmp_path, family, objective, params):
    summary = pretrain(_cfg(corpus, tmp_path / "run", family, objective, params))
    train = [r["loss"] for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert summary["steps"] == 30 and len(train) == 30
    assert sum(train[-5:]) / 5 < 0.7 * sum(train[:5]) / 5, train
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def test_too_few_sentinels_fail_before_training(corpus, tmp_path):
    cfg = _cfg(corpus, tmp_path / "run", "t5", "span_corruption", {"noise_density": 0.5, "mean_noise_span_length": 1.0})
    cfg.data.seq_len = 64  # 32 spans of one token
    with pytest.raises(ConfigError, match="32 noise spans, but only 16 sentinel tokens are available"):
        pretrain(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
