"""Vector search on FAISS (Johnson et al. 2019, "Billion-scale similarity search with GPUs"), the engine REALM, RAG
and kNN-LM all search with. One config picks the structure and the storage of the vectors:

    kind     flat  exact search, every vector compared (IndexFlat): the reference, fine to ~1M vectors
             ivf   inverted file (IVF, Jégou et al. 2011): k-means into `nlist` cells, search the `nprobe`
                   nearest cells only; trained on a sample
             hnsw  graph search (HNSW, Malkov & Yashunin 2018): `hnsw_m` links a node, `ef_search` candidates
    storage  fp32  the vectors as they are
             fp16  half the bytes (FAISS ScalarQuantizer QT_fp16): what kNN-LM stores its keys in
             pq    product quantisation (Jégou et al. 2011): `pq_m` sub-vectors of `pq_bits` bits each; for
                   datastores too big for memory (Khandelwal et al. 2020 use IVF-PQ with 64 bytes a key)

The metric is inner product (unit vectors: cosine) for passage retrieval and squared L2 for kNN-LM's keys, as in
their papers. Indexes are built from batches (train on a sample first where the kind needs it) and read back with
the search-time knobs (nprobe, ef_search) applied; a file that FAISS cannot read is a ConfigError naming the fix.

Dimension legend: N vectors, Q queries, D vector size, K neighbours.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ptmkit.config import ConfigError

KINDS = ("flat", "ivf", "hnsw")
STORAGES = ("fp32", "fp16", "pq")
METRICS = ("ip", "l2")


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("retrieval needs FAISS: pip install faiss-cpu") from e
    return faiss


@dataclass(frozen=True)
class IndexConfig:
    """kind / storage: see the module doc. nlist, nprobe: IVF cells and cells searched; hnsw_m, ef_construction,
    ef_search: HNSW links a node and candidate-list sizes; pq_m, pq_bits: PQ sub-vectors (must divide D) and bits
    per code; train_size: vectors IVF / PQ train on (a seeded sample; 0 = 64 per centroid); metric: "ip" or "l2";
    add_batch: vectors added per FAISS call (the progress bar's step); seed: the training sample's."""

    kind: str = "flat"
    storage: str = "fp32"
    metric: str = "ip"
    nlist: int = 256
    nprobe: int = 16
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    pq_m: int = 16
    pq_bits: int = 8
    train_size: int = 0
    add_batch: int = 16384
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, allowed in (("kind", self.kind, KINDS), ("storage", self.storage, STORAGES),
                                     ("metric", self.metric, METRICS)):
            if value not in allowed:
                raise ConfigError(f"index: {name}={value!r}; choose one of {list(allowed)}")
        for name in ("nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search", "pq_m", "add_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"index: {name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.pq_bits <= 16:
            raise ConfigError(f"index: pq_bits must be in 1..16, got {self.pq_bits} (8 is the usual)")
        if self.train_size < 0:
            raise ConfigError(f"index: train_size must be >= 0 (0: 64 vectors per centroid), got {self.train_size}")
        if self.kind == "hnsw" and self.storage == "pq" and self.metric == "ip":
            raise ConfigError("index: FAISS's HNSW over PQ codes supports L2 only; use kind=ivf with storage=pq "
                              "for inner product, or storage=fp16 with hnsw")

    def factory(self, dim: int) -> str:
        """The faiss.index_factory string of this config for D = dim (it goes into the manifest)."""
        if self.storage == "pq" and dim % self.pq_m:
            raise ConfigError(f"index: pq_m={self.pq_m} does not divide the vector size {dim}; choose a divisor "
                              f"(e.g. {next(m for m in (64, 48, 32, 24, 16, 8, 4, 2, 1) if dim % m == 0)})")
        codes = {"fp32": "Flat", "fp16": "SQfp16", "pq": f"PQ{self.pq_m}x{self.pq_bits}"}[self.storage]
        if self.kind == "flat":
            return codes
        if self.kind == "ivf":
            return f"IVF{self.nlist},{codes}"
        return {"fp32": f"HNSW{self.hnsw_m}", "fp16": f"HNSW{self.hnsw_m}_SQfp16",
                "pq": f"HNSW{self.hnsw_m}_PQ{self.pq_m}x{self.pq_bits}"}[self.storage]

    def needs_training(self) -> bool:
        return self.kind == "ivf" or self.storage == "pq"

    def min_train(self) -> int:
        """Vectors training needs at the least: one per IVF cell and per PQ centroid."""
        need = self.nlist if self.kind == "ivf" else 1
        return max(need, 2 ** self.pq_bits if self.storage == "pq" else 1)

    def to_dict(self) -> dict:
        return asdict(self)


def new_index(cfg: IndexConfig, dim: int):
    faiss = _faiss()
    metric = faiss.METRIC_INNER_PRODUCT if cfg.metric == "ip" else faiss.METRIC_L2
    index = faiss.index_factory(dim, cfg.factory(dim), metric)
    if cfg.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efConstruction = cfg.ef_construction
    if cfg.storage == "pq":
        # the factory turns on polysemous training (Douze et al. 2016: codes ordered for Hamming-distance filtering,
        # which these searches do not use); it took ~30 s on any sample here, the codebooks themselves 0.1 s
        pq = faiss.downcast_index(index)  # IndexPQ, IndexIVFPQ, or IndexHNSWPQ over an IndexPQ
        pq = faiss.downcast_index(pq.storage) if cfg.kind == "hnsw" else pq
        pq.do_polysemous_training = False
    return index


def tune(index, cfg: IndexConfig) -> None:
    """Apply the search-time knobs (they are not all stored in the file)."""
    faiss = _faiss()
    if cfg.kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(cfg.nprobe, ivf.nlist)
    elif cfg.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = cfg.ef_search


def enable_reconstruct(index, cfg: IndexConfig) -> None:
    """Let reconstruct(id) read a vector back (an IVF index needs a map from ids to lists: 8 bytes a vector, so only
    passage indexes, whose vectors REALM reads back, keep one; kNN-LM stores do not)."""
    if cfg.kind == "ivf":
        _faiss().extract_index_ivf(index).make_direct_map()


def train(index, cfg: IndexConfig, sample: np.ndarray) -> None:
    """Train IVF cells / PQ codebooks on (N, D) float32 `sample` (a no-op for kinds that need none)."""
    if not cfg.needs_training():
        return
    if len(sample) < cfg.min_train():
        what = f"IVF with nlist={cfg.nlist}" if cfg.kind == "ivf" else f"PQ with {cfg.pq_bits}-bit codes"
        raise ConfigError(f"index: {what} needs at least {cfg.min_train()} vectors to train on, the data has "
                          f"{len(sample)}; use kind=flat (exact) for a store this small, or a smaller nlist/pq_bits")
    index.train(np.ascontiguousarray(sample, dtype=np.float32))


def training_rows(n: int, cfg: IndexConfig) -> np.ndarray:
    """The sorted row numbers of a seeded sample of n vectors to train on (all when n is small)."""
    size = cfg.train_size or 64 * max(cfg.nlist if cfg.kind == "ivf" else 1, 2 ** cfg.pq_bits if cfg.storage == "pq"
                                      else 1)
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(cfg.seed).choice(n, size, replace=False))


def search(index, queries: np.ndarray, k: int, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(Q, K) scores (inner products, or squared L2 distances) and ids, best first, queries searched `batch` at a
    time. An id of -1 (score -inf / +inf) means the search found fewer than k (IVF with few cells probed)."""
    n = index.ntotal
    if not 1 <= k <= n:
        raise ConfigError(f"k={k} but the index holds {n} vector(s); ask for 1 <= k <= {n}")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != index.d:
        raise ConfigError(f"queries of shape {q.shape} for an index of {index.d}-dimensional vectors; encode them "
                          "with the encoder the index was built with")
    scores = np.empty((len(q), k), dtype=np.float32)
    ids = np.empty((len(q), k), dtype=np.int64)
    for s in range(0, len(q), batch):
        scores[s:s + batch], ids[s:s + batch] = index.search(q[s:s + batch], k)  # (Q, K) each
    return scores, ids


def write(index, path: Path) -> None:
    _faiss().write_index(index, os.fspath(path))


def read(path: Path, cfg: IndexConfig, rebuild: str):
    """Read an index file and apply the search knobs; an unreadable file is a ConfigError ending in `rebuild`."""
    faiss = _faiss()
    try:
        index = faiss.read_index(os.fspath(path))
    except RuntimeError as e:
        detail = (str(e).strip().splitlines() or [""])[-1][:200]
        raise ConfigError(f"{path}: FAISS cannot read it, the file is truncated or corrupt ({detail}); {rebuild}") \
            from None
    tune(index, cfg)
    return index


def code_bytes(index) -> int:
    """Bytes of one vector's code (4 D for fp32, 2 D for fp16, pq_m for 8-bit PQ), for flat and IVF indexes."""
    faiss = _faiss()
    inner = faiss.extract_index_ivf(index) if isinstance(faiss.downcast_index(index), faiss.IndexIVF) else \
        faiss.downcast_index(index)
    return int(inner.code_size)


def bytes_per_vector(index) -> float:
    """Bytes the serialised index spends per vector (codes, ids, graph links, with the fixed part spread out)."""
    n = index.ntotal
    return len(_faiss().serialize_index(index)) / n if n else float("nan")
