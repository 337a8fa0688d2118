"""`ptm evaluate MODEL --text FILE`: perplexity of a causal LM on plain and gzipped text and token shards (the same
number from all three), pseudo-perplexity of a masked LM, and an error for a model without an LM head."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from ptmkit.cli.main import main as ptm
from ptmkit.config import ConfigError
from ptmkit.data.shards import prepare_shards
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import build_model, make_config, save_model
from ptmkit.recipes.lm_eval import evaluate_lm

TEXT = "\n".join(f"the {w} sat on the mat number {i} and looked at the {w}" for i, w in
                 enumerate(["cat", "dog", "bird", "fox"] * 6))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    (d / "corpus.txt").write_text(TEXT + "\n")
    tok = Tokenizer.train(d / "corpus.txt", "wordpiece", vocab_size=120, min_frequency=1)
    out = {}
    torch.manual_seed(0)
    for family, task in (("llama", "causal-lm"), ("bert", "masked-lm"), ("bert", "sequence-classification")):
        over = dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                    max_position_embeddings=64)
        path = d / f"{family}-{task}"
        save_model(build_model(family, make_config(family, over), task,
                               num_labels=2 if task == "sequence-classification" else None), path)
        tok.save(path)
        out[task] = path
    return d, out


def test_causal_perplexity_reads_plain_gzip_and_shards_alike(models, tmp_path):
    d, m = models
    with gzip.open(tmp_path / "corpus.txt.gz", "wt") as f:
        f.write(TEXT + "\n")
    plain = evaluate_lm(m["causal-lm"], d / "corpus.txt", tmp_path / "o", window=32, stride=16, show_progress=False)
    zipped = evaluate_lm(m["causal-lm"], tmp_path / "corpus.txt.gz", window=32, stride=16, show_progress=False)
    assert plain["perplexity"] == pytest.approx(zipped["perplexity"]) and plain["tokens"] > 100
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["perplexity"] == plain["perplexity"]
    vocab = Tokenizer.load(m["causal-lm"]).vocab_size
    assert 1 < plain["perplexity"] < 2 * vocab  # a random model: about the vocabulary's size, not more
    prepare_shards(d / "corpus.txt", Tokenizer.load(m["causal-lm"]), tmp_path / "shards", progress=False)
    shards = evaluate_lm(m["causal-lm"], tmp_path / "shards", window=32, stride=16, show_progress=False)
    assert shards["tokens"] > 100 and shards["perplexity"] > 1


def test_masked_lm_pseudo_perplexity_and_the_cli(models, tmp_path, capsys):
    d, m = models
    r = evaluate_lm(m["masked-lm"], d / "corpus.txt", max_lines=5, show_progress=False)
    assert r["sentences"] == 5 and r["pseudo_perplexity"] > 1
    assert ptm(["evaluate", str(m["causal-lm"]), "--text", str(d / "corpus.txt"), "--window", "32",
                "--no-progress"]) == 0
    assert "perplexity" in capsys.readouterr().out


def test_scoring_text_needs_a_language_model_head(models, tmp_path):
    d, m = models
    with pytest.raises(ConfigError, match="language-model head"):
        evaluate_lm(m["sequence-classification"], d / "corpus.txt", show_progress=False)
    with pytest.raises(ConfigError, match="exceeds the model's 64 positions"):
        evaluate_lm(m["causal-lm"], d / "corpus.txt", window=128, show_progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate_lm(m["causal-lm"], tmp_path / "missing.txt", show_progress=False)
