"""BM25: the sparse, vectorised scores equal the Okapi formula computed term by term; search ranks the document that
holds the query's rare terms first; k beyond the corpus is an error."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from ptmkit.config import ConfigError
from ptmkit.retrieval.bm25 import BM25, BM25Config, terms

from .conftest import PLANTED, sentences


def reference_score(query: str, doc: str, docs: list[str], k1: float, b: float) -> float:
    """Robertson & Zaragoza 2009, eq. 3.26 with Lucene's idf, one term at a time."""
    toks = [terms(d) for d in docs]
    avgdl = sum(map(len, toks)) / len(toks)
    tf, dl = Counter(terms(doc)), len(terms(doc))
    score = 0.0
    for t in terms(query):
        df = sum(t in set(d) for d in toks)
        idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
        if tf[t]:  # an absent term adds nothing (with k1 = 0 the formula would read 0 / 0)
            score += idf * tf[t] * (k1 + 1) / (tf[t] + k1 * (1 - b + b * dl / avgdl))
    return score


@pytest.mark.parametrize("k1, b", [(0.9, 0.4), (1.2, 0.75), (0.0, 0.0), (2.0, 1.0)])
def test_scores_equal_the_formula(k1, b):
    docs = sentences(40, seed=1) + ["river river river", PLANTED]
    queries = ["river castle", "river river music", PLANTED, "nothing known here"]
    got = BM25(docs, BM25Config(k1=k1, b=b)).scores(queries)
    want = np.array([[reference_score(q, d, docs, k1, b) for d in docs] for q in queries])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_search_ranks_the_planted_document_first_and_checks_k():
    docs = sentences(200)
    docs.insert(77, PLANTED)
    bm = BM25(docs)
    scores, ids = bm.search([PLANTED, "zebra umbrellas"], k=5)
    assert ids[:, 0].tolist() == [77, 77] and (np.diff(scores, axis=1) <= 0).all()
    full_s, full_i = bm.search(["zebra"], k=len(docs))  # k = N: every document, ranked
    assert full_i[0, 0] == 77 and sorted(full_i[0].tolist()) == list(range(len(docs)))
    with pytest.raises(ConfigError, match="holds 201"):
        bm.search(["zebra"], k=202)
    with pytest.raises(ConfigError, match="no documents"):
        BM25([])
    with pytest.raises(ConfigError, match="b must be"):
        BM25Config(b=1.5)
