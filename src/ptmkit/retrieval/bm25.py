"""Okapi BM25 (Robertson & Zaragoza 2009, "The Probabilistic Relevance Framework: BM25 and Beyond"), the lexical
baseline dense retrievers are measured against (DPR, Karpukhin et al. 2020, Table 2).

    score(q, d) = sum over terms t of q:  idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t)      = log(1 + (N - df(t) + 0.5) / (df(t) + 0.5))        (Lucene's form: never negative)

A repeated query term counts once per occurrence, as in the sum above. The per-(term, document) weights are computed
once into a sparse (N, V) matrix, so scoring a batch of queries is one sparse product (Q, V) @ (V, N) and top-k a
partial sort. Terms are lower-cased word characters (`\\w+`), the usual setting of BM25 baselines without stemming.

Dimension legend: N documents (passages), V vocabulary, Q queries, K results.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ptmkit.config import ConfigError

_WORD = re.compile(r"\w+")


def terms(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class BM25Config:
    """k1: term-frequency saturation (0 = binary); b: length normalisation (0 = none, 1 = full). Defaults 0.9 / 0.4
    are Anserini's, tuned for passage retrieval (MS MARCO); Robertson's classic values are 1.2 / 0.75."""

    k1: float = 0.9
    b: float = 0.4

    def __post_init__(self) -> None:
        if self.k1 < 0:
            raise ConfigError(f"bm25: k1 must be >= 0, got {self.k1}")
        if not 0 <= self.b <= 1:
            raise ConfigError(f"bm25: b must be in [0, 1], got {self.b}")


class BM25:
    """An Okapi BM25 index over `texts` (ids = their positions)."""

    def __init__(self, texts: Sequence[str], cfg: BM25Config = BM25Config()) -> None:
        if not texts:
            raise ConfigError("bm25: no documents to index; give at least one text")
        self.cfg = cfg
        self.vocab: dict[str, int] = {}
        rows, cols = [], []
        for i, text in enumerate(texts):
            ids = [self.vocab.setdefault(t, len(self.vocab)) for t in terms(text)]
            rows.extend([i] * len(ids))
            cols.extend(ids)
        n, v = len(texts), max(len(self.vocab), 1)
        tf = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, v))  # (N, V), summed
        tf.sum_duplicates()
        dl = np.asarray(tf.sum(axis=1)).ravel()  # (N,) document lengths in terms
        avgdl = max(float(dl.mean()), 1e-9)
        df = np.bincount(tf.indices, minlength=v)  # (V,) documents holding each term
        self.idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)  # (V,)
        # weight of each stored (document, term) entry: the BM25 summand with the query term's count factored out
        norm = cfg.k1 * (1 - cfg.b + cfg.b * dl / avgdl)  # (N,)
        doc_of = np.repeat(np.arange(n), np.diff(tf.indptr))  # (nnz,) the row of each entry
        data = self.idf[tf.indices] * tf.data * (cfg.k1 + 1) / (tf.data + norm[doc_of])
        self.weights = sp.csr_matrix((data.astype(np.float32), tf.indices, tf.indptr), shape=(n, v)).T.tocsr()  # (V, N)
        self.size = n

    def __len__(self) -> int:
        return self.size

    def query_matrix(self, queries: Sequence[str]) -> sp.csr_matrix:
        """(Q, V) counts of each query's known terms (unknown terms score nothing anywhere)."""
        rows, cols = [], []
        for i, q in enumerate(queries):
            ids = [self.vocab[t] for t in terms(q) if t in self.vocab]
            rows.extend([i] * len(ids))
            cols.extend(ids)
        return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                             shape=(len(queries), self.weights.shape[0]))

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """(Q, N) dense BM25 scores."""
        return np.asarray((self.query_matrix(queries) @ self.weights).todense(), dtype=np.float32)

    def search(self, queries: Sequence[str], k: int = 10, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(Q, K) scores and ids, best first (equal scores: the lower id first, among those a partial sort kept),
        `batch` queries scored at a time."""
        if not 1 <= k <= self.size:
            raise ConfigError(f"bm25: k={k} but the index holds {self.size} document(s); ask for 1 <= k <= {self.size}")
        if isinstance(queries, str):
            queries = [queries]
        out_s = np.empty((len(queries), k), dtype=np.float32)
        out_i = np.empty((len(queries), k), dtype=np.int64)
        for s in range(0, len(queries), batch):
            sc = self.scores(queries[s:s + batch])  # (q, N)
            top = np.argpartition(-sc, k - 1, axis=1)[:, :k] if k < self.size else \
                np.tile(np.arange(self.size), (len(sc), 1))  # (q, K) unordered
            top_s = np.take_along_axis(sc, top, axis=1)
            order = np.lexsort((top, -top_s), axis=1)  # by score descending, then id ascending
            out_i[s:s + batch] = np.take_along_axis(top, order, axis=1)
            out_s[s:s + batch] = np.take_along_axis(top_s, order, axis=1)
        return out_s, out_i
