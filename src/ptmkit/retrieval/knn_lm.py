"""kNN-LM (Khandelwal et al. 2020, "Generalization through Memorization: Nearest Neighbor Language Models").

A datastore maps every context of a corpus to the token that followed it: the key is the causal LM's final hidden
state at that position (the vector its output layer reads, §2 and §3 "the input to the final layer"), the value is
the next token. At test time the context's hidden state q retrieves its k nearest keys by squared L2 distance d
(§2, as in the paper), and

    p_kNN(y | x) = sum over neighbours i with value y of  softmax_i(-d_i / T)          (eq. 2; T = 1 in the paper)
    p(y | x)     = λ p_kNN(y | x) + (1 - λ) p_LM(y | x)                                 (eq. 3)

computed in log space (logsumexp), so λ = 0 returns log p_LM unchanged, bit for bit. Keys are stored in fp16
(FAISS ScalarQuantizer; the paper stores fp16 keys and searches IVF-PQ codes), values as int32; a store of N
entries of width H takes about N (2H + 4) bytes with flat fp16 keys (+ 8 for IVF's ids), which `bytes_per_entry`
measures on disk.

Dimension legend: N queries (positions), K neighbours, V vocabulary, H hidden size (the key width).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from ptmkit import atomic
from ptmkit.config import ConfigError
from ptmkit.retrieval import faiss_index
from ptmkit.retrieval import manifest as manifest_io
from ptmkit.retrieval.faiss_index import IndexConfig

FORMAT = "ptmkit-knn-datastore"
VERSION = 1
FILES = ("index.faiss", "values.npy")


def default_config() -> IndexConfig:
    """Exact L2 search over fp16 keys: the reference for small stores (use kind="ivf" with nprobe for big ones)."""
    return IndexConfig(kind="flat", storage="fp16", metric="l2")


# -- the kNN distribution and the interpolation ------------------------------------------------------------------

def neighbour_log_weights(dists: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(N, K) log softmax(-d / T) over each query's neighbours; a missing neighbour (d = +inf) gets -inf."""
    if temperature <= 0:
        raise ConfigError(f"kNN-LM: temperature must be > 0, got {temperature}")
    return torch.log_softmax(-dists.float() / temperature, dim=-1)


def knn_log_probs(dists: torch.Tensor, values: torch.Tensor, vocab_size: int, temperature: float = 1.0) -> torch.Tensor:
    """(N, V) log p_kNN: each neighbour's weight added onto its value's vocabulary slot (one scatter_add for all
    queries); tokens no neighbour holds get -inf."""
    w = neighbour_log_weights(dists, temperature).exp()  # (N, K)
    w = w.masked_fill(values < 0, 0.0)
    p = torch.zeros(dists.shape[0], vocab_size, dtype=w.dtype, device=w.device)  # (N, V)
    p.scatter_add_(1, values.clamp(min=0).long(), w)
    return p.log()


def knn_target_log_prob(dists: torch.Tensor, values: torch.Tensor, target: torch.Tensor,
                        temperature: float = 1.0) -> torch.Tensor:
    """(N,) log p_kNN(target): the same quantity as knn_log_probs(...).gather(target) without the (N, V) matrix —
    a logsumexp over the neighbours whose value is the target (-inf when none is)."""
    lw = neighbour_log_weights(dists, temperature)  # (N, K)
    lw = lw.masked_fill(values != target.reshape(-1, 1), float("-inf"))
    return torch.logsumexp(lw, dim=-1)


def interpolate(lm_log_prob: torch.Tensor, knn_log_prob: torch.Tensor, lam: float) -> torch.Tensor:
    """log(λ p_kNN + (1 - λ) p_LM), elementwise, in log space. λ = 0 gives lm_log_prob exactly (log 1 = 0 is added
    and exp(-inf) = 0 summed), λ = 1 gives knn_log_prob."""
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"kNN-LM: λ must be in [0, 1], got {lam}")
    log_lam = math.log(lam) if lam > 0 else float("-inf")
    log_rest = math.log1p(-lam) if lam < 1 else float("-inf")
    return torch.logsumexp(torch.stack([lm_log_prob + log_rest, knn_log_prob.to(lm_log_prob.dtype) + log_lam]), dim=0)


# -- the datastore -----------------------------------------------------------------------------------------------

class Datastore:
    """A FAISS index over the keys (L2) and the values aligned with it (entry i: key i -> values[i])."""

    def __init__(self, index, values: np.ndarray, manifest: dict) -> None:
        if index.ntotal != len(values):
            raise ConfigError(f"kNN-LM datastore: {index.ntotal} keys but {len(values)} values")
        self.index, self.values, self.manifest = index, values, manifest
        self.config = IndexConfig(**manifest["index"]["config"])

    def __len__(self) -> int:
        return len(self.values)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @classmethod
    def from_arrays(cls, keys: np.ndarray, values: np.ndarray, config: IndexConfig | None = None,
                    meta: dict | None = None) -> Datastore:
        """An in-memory store of (N, H) keys and (N,) next tokens."""
        return cls.build([(keys, values)], keys.shape[1], None, config, meta, show_progress=False)

    @classmethod
    def build(cls, batches: Iterable[tuple[np.ndarray, np.ndarray]], dim: int, out: str | os.PathLike | None,
              config: IndexConfig | None = None, meta: dict | None = None, show_progress: bool = True) -> Datastore:
        """A store from a stream of (keys (n, H), values (n,)) batches. Keys are spilled to an fp16 file first (the
        paper's memmap), a seeded sample trains IVF / PQ, then the keys are added in batches. With `out` the store
        is written there atomically (a temp dir renamed into place); `meta` (the LM, the corpus) joins the manifest.
        """
        import tempfile

        t0 = time.perf_counter()
        config = config or default_config()
        if config.metric != "l2":
            raise ConfigError("kNN-LM searches keys by L2 distance (Khandelwal et al. 2020 §2); use metric='l2'")
        with (atomic.atomic_dir(out) if out is not None else tempfile.TemporaryDirectory()) as tmp:
            tmp = Path(tmp)
            values = _spill(batches, dim, tmp / "keys.f16")
            if not len(values):
                raise ConfigError("kNN-LM datastore: no entries (the corpus gave no scored token); give it text")
            keys = np.memmap(tmp / "keys.f16", dtype=np.float16, mode="r", shape=(len(values), dim))  # (N, H)
            t1 = time.perf_counter()
            index, train_seconds = _index_keys(keys, config, dim, show_progress)
            del keys
            (tmp / "keys.f16").unlink()  # the index holds the keys now
            manifest = {"format": FORMAT, "version": VERSION, "entries": int(len(values)), "dim": dim,
                        "index": {"config": config.to_dict(), "factory": config.factory(dim)}, **(meta or {}),
                        # seconds: all (the caller's LM pass over the corpus included), IVF/PQ training, adding
                        "build_seconds": round(time.perf_counter() - t0, 2), "train_seconds": round(train_seconds, 2),
                        "add_seconds": round(time.perf_counter() - t1 - train_seconds, 2)}
            store = cls(index, values, manifest)
            if out is not None:
                faiss_index.write(index, tmp / "index.faiss")
                np.save(tmp / "values.npy", values)
                store.manifest["files"] = manifest_io.file_records(tmp, FILES)
                store.manifest["bytes_per_entry"] = round(sum(f["bytes"] for f in store.manifest["files"].values())
                                                          / len(values), 2)
                (tmp / "manifest.json").write_text(json.dumps(store.manifest, indent=2) + "\n")
        return store

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Datastore:
        d = Path(directory)
        manifest = manifest_io.read(d, FORMAT, VERSION, "python experiments/knn_lm.py (or recipes.knn_lm.build_datastore)",
                                    "a kNN-LM datastore")
        rebuild = "rebuild the datastore (ptmkit.recipes.knn_lm.build_datastore, or experiments/knn_lm.py --rebuild)"
        manifest_io.check_files(d, manifest, rebuild)
        index = faiss_index.read(d / "index.faiss", IndexConfig(**manifest["index"]["config"]), rebuild)
        return cls(index, np.load(d / "values.npy"), manifest)

    def bytes_per_entry(self) -> float:
        """Bytes an entry takes on average: the serialised index per key (fixed parts spread out) plus its value."""
        return faiss_index.bytes_per_vector(self.index) + self.values.itemsize

    def entry_bytes(self) -> float:
        """Bytes one more entry adds: its key's code, the id an inverted list stores beside it (IVF), its value.
        HNSW's links vary by node, so there it is the average."""
        if self.config.kind == "hnsw":
            return self.bytes_per_entry()
        per_key = faiss_index.code_bytes(self.index) + (8 if self.config.kind == "ivf" else 0)  # IVF ids are int64
        return per_key + self.values.itemsize

    def storage_bytes(self, entries: int | None = None) -> float:
        """Bytes a store like this one takes with `entries` entries (default its own): the fixed part (headers,
        IVF centroids, PQ codebooks) measured on this store plus `entries` x entry_bytes."""
        n = len(self) if entries is None else entries
        fixed = self.bytes_per_entry() * len(self) - self.entry_bytes() * len(self)
        return fixed + n * self.entry_bytes()

    def search(self, queries: np.ndarray | torch.Tensor, k: int, batch: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, K) squared L2 distances (+inf where missing) and next-token values (-1 where missing) of the k
        nearest keys of each (N, H) query, nearest first."""
        q = queries.detach().float().cpu().numpy() if isinstance(queries, torch.Tensor) else queries
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ConfigError(f"kNN-LM: queries of shape {tuple(q.shape)} for keys of width {self.dim}: the datastore "
                              "was built with another model's hidden states")
        dists = np.empty((len(q), k), dtype=np.float32)
        ids = np.empty((len(q), k), dtype=np.int64)
        for s in range(0, len(q), batch):  # fp16 queries become float32 a batch at a time
            dists[s:s + batch], ids[s:s + batch] = faiss_index.search(self.index, q[s:s + batch].astype(np.float32), k)
        vals = np.where(ids >= 0, self.values[np.clip(ids, 0, None)], -1)
        dists[ids < 0] = np.inf
        return torch.from_numpy(dists), torch.from_numpy(vals.astype(np.int64))

    def next_token_log_probs(self, hidden: torch.Tensor, lm_logits: torch.Tensor, k: int, lam: float,
                             temperature: float = 1.0) -> torch.Tensor:
        """(N, V) log p(y | x) of eq. 3 for (N, H) final hidden states and their (N, V) LM logits: what a decoding
        step samples from."""
        dists, vals = self.search(hidden, k)
        lm = torch.log_softmax(lm_logits.float(), dim=-1)
        knn = knn_log_probs(dists, vals, lm.shape[-1], temperature).to(lm.device)
        return interpolate(lm, knn, lam)


def _spill(batches: Iterable[tuple[np.ndarray, np.ndarray]], dim: int, path: Path) -> np.ndarray:
    values: list[np.ndarray] = []
    with open(path, "wb") as f:
        for keys, vals in batches:
            keys = keys.detach().cpu().numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
            vals = vals.detach().cpu().numpy() if isinstance(vals, torch.Tensor) else np.asarray(vals)
            if keys.ndim != 2 or keys.shape[1] != dim or len(keys) != len(vals):
                raise ConfigError(f"kNN-LM datastore: a batch of keys {keys.shape} and values {vals.shape}; expected "
                                  f"(n, {dim}) keys and (n,) values")
            f.write(np.ascontiguousarray(keys, dtype=np.float16).tobytes())
            values.append(vals.astype(np.int32))
    return np.concatenate(values) if values else np.empty(0, dtype=np.int32)


def _index_keys(keys: np.ndarray, config: IndexConfig, dim: int, show_progress: bool):
    from tqdm.auto import tqdm

    index = faiss_index.new_index(config, dim)
    t0 = time.perf_counter()
    if config.needs_training():
        faiss_index.train(index, config, keys[faiss_index.training_rows(len(keys), config)].astype(np.float32))
    train_seconds = time.perf_counter() - t0
    for s in tqdm(range(0, len(keys), config.add_batch), desc="datastore", unit="batch", disable=not show_progress):
        index.add(keys[s:s + config.add_batch].astype(np.float32))
    faiss_index.tune(index, config)
    return index, train_seconds


def sweep_nll(lm_log_prob: torch.Tensor, dists: torch.Tensor, values: torch.Tensor, target: torch.Tensor,
              ks: Sequence[int], temperatures: Sequence[float], lambdas: Sequence[float]) -> dict[tuple, float]:
    """{(k, T, λ): summed negative log-likelihood} of one batch of positions for every setting, from one search
    with max(ks) neighbours (the nearest k are its first k columns). lm_log_prob and target: any shape with N
    elements in all; the sums are taken in that shape, as a plain perplexity sums its batch."""
    out = {}
    for k in ks:
        for t in temperatures:
            knn = knn_target_log_prob(dists[:, :k], values[:, :k], target.reshape(-1), t).reshape(lm_log_prob.shape)
            for lam in lambdas:
                out[(k, t, lam)] = -float(interpolate(lm_log_prob, knn, lam).sum())
    return out
