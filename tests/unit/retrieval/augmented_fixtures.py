"""Tiny retrieval-augmented set-ups shared by the REALM and RAG tests: a flat index over the test corpus (the
planted line included) and a retriever over it, with the encoder directory's tokenizer for every model."""

from __future__ import annotations

import pytest
import torch

from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import build_model, make_config
from ptmkit.retrieval.encoder import DenseEncoder
from ptmkit.retrieval.faiss_index import IndexConfig
from ptmkit.retrieval.passage_index import PassageIndex
from ptmkit.retrieval.passages import ChunkConfig
from ptmkit.retrieval.retriever import Retriever


@pytest.fixture(scope="module")
def index_dir(encoder_dir, corpus, tmp_path_factory):
    idx = PassageIndex.build(corpus, DenseEncoder.from_dir(encoder_dir), IndexConfig(),
                             ChunkConfig(max_tokens=16, overlap=4), show_progress=False)
    return idx.save(tmp_path_factory.mktemp("aug") / "index")


@pytest.fixture()
def retriever(index_dir):
    return Retriever.load(index_dir, temperature=0.1)


@pytest.fixture(scope="module")
def tokenizer(encoder_dir):
    return Tokenizer.load(encoder_dir)


def tiny(family: str, task: str, vocab: int):
    torch.manual_seed(0)
    extra = {"max_position_embeddings": 128} if family == "bert" else {}
    cfg = make_config(family, dict(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                   dropout=0.0, attention_dropout=0.0, **extra) if family == "bert" else
                      dict(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64))
    return build_model(family, cfg, task).eval()
