"""A passage index: passages, their vectors in a FAISS index, and a manifest that says what built them.

    idx = PassageIndex.build("corpus.txt", DenseEncoder.from_dir(), IndexConfig(kind="flat"))
    idx.save("runs/index")                                  # atomically: a temp dir renamed into place
    idx = PassageIndex.load("runs/index")                   # checks the files, the corpus and the encoder
    hits = idx.search(["who wrote Emma?"], k=5)             # (Q, k) scores and ids, best first
    idx.passages(hits.ids[0])                               # the Passage records (text, document, offsets)
    idx = idx.refresh(new_encoder)                          # REALM §3.4: re-embed every passage, same config

The directory holds index.faiss, passages.jsonl (one Passage a line, in id order) and manifest.json: the encoder
(source, fingerprint, pooling), the corpus (files, fingerprint), the chunking and index configs, the size and
sha256 of each file, and the command that rebuilds it. Loading refuses, naming the fix: a missing or changed file
(truncated, corrupt), an index FAISS cannot read, a corpus that changed since the build, and a query encoder that is
not the one the passages were embedded with (its vectors would live in another space).

Dimension legend: N passages, Q queries, D vector size, K neighbours.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ptmkit import atomic
from ptmkit.config import ConfigError
from ptmkit.data.corpus import resolve_files
from ptmkit.log import get as get_logger
from ptmkit.retrieval import faiss_index
from ptmkit.retrieval import manifest as manifest_io
from ptmkit.retrieval.encoder import DenseEncoder, EncoderConfig
from ptmkit.retrieval.faiss_index import IndexConfig
from ptmkit.retrieval.fingerprint import files_fingerprint
from ptmkit.retrieval.passages import ChunkConfig, Passage, read_passages

log = get_logger(__name__)

FORMAT = "ptmkit-passage-index"
VERSION = 1
FILES = ("index.faiss", "passages.jsonl")


@dataclass
class Hits:
    """Search results: (Q, K) scores (inner products of unit vectors: cosines) and passage ids, best first. An id
    of -1 marks a slot the search could not fill (IVF probing too few cells)."""

    scores: np.ndarray
    ids: np.ndarray


def corpus_record(corpus: str | os.PathLike) -> dict:
    files = resolve_files(corpus)
    return {"path": os.fspath(corpus), "files": [os.fspath(f) for f in files], "fingerprint": files_fingerprint(files)}


class PassageIndex:
    """Passages + FAISS index + the encoder that embeds queries for it. Build with `build`, read with `load`."""

    def __init__(self, passages: list[Passage], index, encoder: DenseEncoder, manifest: dict) -> None:
        self._passages, self.index, self.encoder, self.manifest = passages, index, encoder, manifest
        self.config = IndexConfig(**manifest["index"]["config"])

    def __len__(self) -> int:
        return len(self._passages)

    # -- building --------------------------------------------------------------------------------------------------

    @classmethod
    def build(cls, corpus: str | os.PathLike, encoder: DenseEncoder, config: IndexConfig = IndexConfig(),
              chunking: ChunkConfig = ChunkConfig(), show_progress: bool = True,
              on_batch: Callable[[int], None] | None = None) -> PassageIndex:
        """Chunk `corpus` with the encoder's tokenizer, embed every passage and add the vectors to a new index.
        `on_batch(vectors_added)` runs after each added batch (a progress hook; tests interrupt builds with it)."""
        t0 = time.perf_counter()
        record = corpus_record(corpus)  # hashed before reading, so a file changed mid-build shows on the next load
        passages, stats = read_passages(corpus, encoder.tokenizer, chunking)
        record.update(documents=stats.documents, bad_lines=stats.num_bad)
        idx = cls.from_passages(passages, encoder, config, show_progress, on_batch, corpus=record,
                                chunking=vars(chunking).copy())
        idx.manifest["build_seconds"] = round(time.perf_counter() - t0, 2)
        log.info("indexed %d passages of %d documents (%s, %.1f s)", len(passages), stats.documents,
                 idx.manifest["index"]["factory"], idx.manifest["build_seconds"])
        return idx

    @classmethod
    def from_passages(cls, passages: list[Passage], encoder: DenseEncoder, config: IndexConfig = IndexConfig(),
                      show_progress: bool = True, on_batch: Callable[[int], None] | None = None, *,
                      corpus: dict | None = None, chunking: dict | None = None) -> PassageIndex:
        """An index of passages already in memory (ids = their positions). `corpus` / `chunking`: what to record
        about their source (default: a fingerprint of the passage texts, and nothing)."""
        t0 = time.perf_counter()
        if config.metric != "ip":
            raise ConfigError("a passage index ranks by inner product (metric='ip'); L2 is for kNN-LM datastores")
        if not passages:
            raise ConfigError("an index needs at least one passage; got none")
        if [p.id for p in passages] != list(range(len(passages))):
            raise ConfigError("passage ids must be 0..N-1 in order (they are the index's ids); renumber them")
        if corpus is None:
            h = hashlib.sha256()
            for p in passages:
                h.update(p.text.encode("utf-8") + b"\0")
            corpus = {"path": None, "files": [], "fingerprint": h.hexdigest(),
                      "documents": len({p.doc for p in passages})}
        index = cls._embed(passages, encoder, config, show_progress, on_batch)
        manifest = {"format": FORMAT, "version": VERSION, "encoder": encoder.describe(), "corpus": corpus,
                    "chunking": chunking or {},
                    "index": {"config": config.to_dict(), "factory": config.factory(encoder.dim),
                              "ntotal": int(index.ntotal)},
                    "passages": len(passages), "build_seconds": round(time.perf_counter() - t0, 2)}
        return cls(passages, index, encoder, manifest)

    @staticmethod
    def _embed(passages: list[Passage], encoder: DenseEncoder, config: IndexConfig, show_progress: bool,
               on_batch: Callable[[int], None] | None):
        from tqdm.auto import tqdm

        texts = [p.text for p in passages]
        index = faiss_index.new_index(config, encoder.dim)
        if config.needs_training():  # a seeded sample of the passages, embedded first (IVF cells, PQ codebooks)
            rows = faiss_index.training_rows(len(texts), config)
            faiss_index.train(index, config, encoder.encode([texts[i] for i in rows]))
        bar = tqdm(total=len(texts), desc="index", unit="passage", disable=not show_progress)
        for s in range(0, len(texts), config.add_batch):
            index.add(encoder.encode(texts[s:s + config.add_batch]))  # (n, D), in id order
            bar.update(min(config.add_batch, len(texts) - s))
            if on_batch is not None:
                on_batch(int(index.ntotal))
        bar.close()
        faiss_index.tune(index, config)
        faiss_index.enable_reconstruct(index, config)
        return index

    def refresh(self, encoder: DenseEncoder, show_progress: bool = True) -> PassageIndex:
        """The same passages and index config re-embedded by `encoder` (REALM's asynchronous index refresh: the
        document encoder's new weights give new vectors; the corpus is not re-read)."""
        index = self._embed(self._passages, encoder, self.config, show_progress, None)
        manifest = {**self.manifest, "encoder": encoder.describe(),
                    "index": {**self.manifest["index"], "ntotal": int(index.ntotal)}}
        return PassageIndex(self._passages, index, encoder, manifest)

    def with_encoder(self, encoder: DenseEncoder) -> PassageIndex:
        """The same passages and vectors, recorded as made by `encoder`: the same weights kept elsewhere (a trained
        retriever saves its document snapshot beside the index, which then names that directory)."""
        if encoder.fingerprint() != self.manifest["encoder"]["fingerprint"]:
            raise ConfigError("index: with_encoder needs the encoder that made these vectors (same fingerprint); "
                              "to re-embed with another one use refresh(encoder)")
        return PassageIndex(self._passages, self.index, encoder, {**self.manifest, "encoder": encoder.describe()})

    # -- saving and loading ----------------------------------------------------------------------------------------

    def save(self, out: str | os.PathLike) -> Path:
        """Write the index directory atomically: everything goes into a temporary directory beside `out`, which is
        renamed into place only when complete (an interrupted save leaves `out` as it was)."""
        out = Path(out)
        with atomic.atomic_dir(out) as tmp:
            faiss_index.write(self.index, tmp / "index.faiss")
            with open(tmp / "passages.jsonl", "w", encoding="utf-8") as f:
                for p in self._passages:
                    f.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")
            self.manifest = {**self.manifest, "files": manifest_io.file_records(tmp, FILES),
                             "rebuild": self._rebuild_command(out)}
            (tmp / "manifest.json").write_text(json.dumps(self.manifest, indent=2) + "\n")
        return out

    def _rebuild_command(self, out: Path) -> str:
        if self.manifest["corpus"]["path"] is None:
            return "PassageIndex.from_passages(...) with the same passages, then .save()"
        c, args = self.config, ["ptm", "index", "build", self.manifest["corpus"]["path"], "--encoder",
                                self.manifest["encoder"]["source"], "--out", os.fspath(out), "--kind", self.config.kind]
        if c.storage != "fp32":
            args += ["--storage", c.storage]
        return " ".join(shlex.quote(a) for a in args)

    @classmethod
    def load(cls, directory: str | os.PathLike, encoder: DenseEncoder | None = None, *,
             encoder_config: EncoderConfig | None = None, corpus: str | os.PathLike | None = None,
             check_corpus: bool = True) -> PassageIndex:
        """Read an index directory. encoder: the query encoder (None: load the one the manifest names, with
        `encoder_config` or the recorded pooling and length); its fingerprint must equal the build's. corpus: the
        corpus the caller expects the index to be built from (None: the recorded path, checked when it still
        exists; check_corpus=False skips that)."""
        d = Path(directory)
        manifest = read_manifest(d)
        rebuild = f"rebuild the index: {manifest.get('rebuild', 'ptm index build CORPUS --out ' + os.fspath(d))}"
        manifest_io.check_files(d, manifest, rebuild)
        if check_corpus:
            _check_corpus(manifest, corpus, rebuild)
        cfg = IndexConfig(**manifest["index"]["config"])
        index = faiss_index.read(d / "index.faiss", cfg, rebuild)
        faiss_index.enable_reconstruct(index, cfg)  # saved with the map already; cheap when it is there
        with open(d / "passages.jsonl", encoding="utf-8") as f:
            passages = [Passage.from_json(json.loads(line)) for line in f]
        if index.ntotal != len(passages):
            raise ConfigError(f"{d}: {index.ntotal} vectors but {len(passages)} passages; {rebuild}")
        built = manifest["encoder"]
        if encoder is None:
            if not Path(built["source"]).is_dir():
                raise ConfigError(f"{d} was built with the encoder {built['source']}, which no longer exists; pass "
                                  "the query encoder (the same weights, moved) or rebuild the index")
            encoder = DenseEncoder.from_dir(built["source"], encoder_config or recorded_encoder_config(manifest))
        if encoder.fingerprint() != built["fingerprint"]:
            raise ConfigError(
                f"{d} was built with the encoder {built['source']} (fingerprint {built['fingerprint'][:12]}), but the "
                f"query encoder {encoder.source} has fingerprint {encoder.fingerprint()[:12]}: different weights, "
                "tokenizer or pooling, so its vectors are not comparable with the index's. Query with the encoder "
                f"the index was built with, or {rebuild} --encoder <the new encoder>")
        return cls(passages, index, encoder, manifest)

    # -- querying --------------------------------------------------------------------------------------------------

    def tune(self, nprobe: int | None = None, ef_search: int | None = None) -> PassageIndex:
        """Change the search-time knobs (IVF cells probed, HNSW candidates): more is slower and closer to exact."""
        changes = {k: v for k, v in (("nprobe", nprobe), ("ef_search", ef_search)) if v is not None}
        self.config = dataclasses.replace(self.config, **changes)
        faiss_index.tune(self.index, self.config)
        return self

    def search(self, queries: Sequence[str] | np.ndarray | torch.Tensor, k: int = 5) -> Hits:
        """The k best passages of each query: texts are embedded by the query encoder (no autograd), vectors (Q, D)
        are searched as given (a trainable query encoder's output, detached)."""
        if len(self) and k > len(self):
            raise ConfigError(f"k={k} but the index holds {len(self)} passages; ask for k <= {len(self)}")
        if isinstance(queries, torch.Tensor):
            vectors = queries.detach().float().cpu().numpy()
        elif isinstance(queries, np.ndarray):
            vectors = queries
        else:
            if isinstance(queries, str):
                queries = [queries]
            if not queries:
                raise ConfigError("search: no queries")
            vectors = self.encoder.encode(queries)
        scores, ids = faiss_index.search(self.index, vectors, k)
        return Hits(scores, ids)

    def passage(self, i: int) -> Passage:
        if not 0 <= i < len(self._passages):
            raise ConfigError(f"passage id {i} is out of range: the index holds ids 0..{len(self._passages) - 1}")
        return self._passages[i]

    def passages(self, ids) -> list:
        """Passage records for an id array: (K,) -> list, (Q, K) -> list of lists; an id of -1 gives None."""
        a = np.asarray(ids)
        if a.ndim == 2:
            return [self.passages(row) for row in a]
        return [None if int(i) < 0 else self.passage(int(i)) for i in a]

    def vectors(self, ids) -> np.ndarray:
        """(..., D) the stored vectors of passage ids (fp16/PQ storage: as decoded): REALM scores retrieved
        passages against a query with gradients through the query side only."""
        a = np.asarray(ids, dtype=np.int64)
        return self.index.reconstruct_batch(a.reshape(-1)).reshape(*a.shape, -1)


def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of an index directory (checked to be one)."""
    return manifest_io.read(Path(directory), FORMAT, VERSION, "ptm index build CORPUS --out DIR",
                            "an index directory")


def recorded_encoder_config(manifest: dict) -> EncoderConfig:
    """The pooling, normalisation and length the index's passages were embedded with (queries need the same)."""
    e = manifest["encoder"]
    return EncoderConfig(pooling=e["pooling"], normalize=e["normalize"], max_length=e["max_length"])


def _check_corpus(manifest: dict, corpus: str | os.PathLike | None, rebuild: str) -> None:
    rec = manifest["corpus"]
    if corpus is None:
        if not rec["files"] or not all(Path(f).is_file() for f in rec["files"]):
            return  # the corpus moved or is gone: the passages are stored with the index, nothing to compare
        corpus = rec["path"]
    now = corpus_record(corpus)
    if now["fingerprint"] != rec["fingerprint"]:
        raise ConfigError(f"the index was built from another version of the corpus: {corpus} has changed since "
                          f"(fingerprint {now['fingerprint'][:12]}, the index's {rec['fingerprint'][:12]}), so passage "
                          f"ids and texts no longer match it; {rebuild}")
