"""Tiny inputs for the retrieval tests: a 300-line corpus of random sentences plus one planted line, a WordPiece
tokenizer trained on it, and a random 2-layer BERT (width 64) saved as an encoder directory."""

from __future__ import annotations

import random

import pytest
import torch

from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import build_model, make_config, save_model

WORDS = ("river mountain castle garden winter summer music letter village doctor soldier captain ocean forest "
         "silver golden ancient modern quiet loud bright dark gentle brave").split()
PLANTED = "the zebra quartz xylophone juggled seven purple umbrellas"


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(n)]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A .txt corpus, one document a line; the planted line is document 150."""
    lines = sentences(300)
    lines.insert(150, PLANTED)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory, corpus):
    tok = Tokenizer.train(corpus, "wordpiece", vocab_size=200, min_frequency=1, model_max_length=128)
    cfg = make_config("bert", dict(vocab_size=tok.vocab_size, hidden_size=64, num_layers=2, num_heads=2,
                                   intermediate_size=128, max_position_embeddings=128))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("enc") / "encoder"
    save_model(build_model("bert", cfg, "base"), path)
    tok.save(path)
    return path
