"""`ptm index build|search`: a passage index of a corpus (ptmkit.retrieval.PassageIndex) written to a directory, and
queries answered from one. The encoder directory loads as everywhere else (load_adapted: a fine-tuned directory
with its adapter), so a query encoder is the same object the index was built with."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from ptmkit.config import ConfigError
from ptmkit.data import textio
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.recipes.evaluate import load_adapted
from ptmkit.retrieval import ChunkConfig, DenseEncoder, EncoderConfig, IndexConfig, PassageIndex, default_encoder_dir
from ptmkit.retrieval.passage_index import read_manifest, recorded_encoder_config


def load_encoder(model_dir: str | os.PathLike | None, cfg: EncoderConfig = EncoderConfig()) -> DenseEncoder:
    """A dense encoder from a model directory (None: the default MiniLM); heads are dropped (task="base")."""
    path = Path(model_dir) if model_dir is not None else default_encoder_dir()
    return DenseEncoder(load_adapted(path, task="base").eval(), Tokenizer.load(path), cfg, source=str(path))


def build_index(corpus: str | os.PathLike, out: str | os.PathLike, encoder: str | os.PathLike | None = None, *,
                encoder_config: EncoderConfig = EncoderConfig(), index: IndexConfig = IndexConfig(),
                chunking: ChunkConfig = ChunkConfig(), show_progress: bool = True) -> dict:
    """Chunk, embed and index `corpus`; write the index directory `out` atomically. Returns the manifest."""
    t0 = time.perf_counter()
    idx = PassageIndex.build(corpus, load_encoder(encoder, encoder_config), index, chunking, show_progress)
    idx.save(out)
    return {**idx.manifest, "seconds": round(time.perf_counter() - t0, 2)}


def read_queries(path: str | os.PathLike) -> list[str]:
    """One query per non-blank line of a plain or gzipped text file."""
    queries = [line.strip() for line in textio.lines(Path(path)) if line.strip()]
    if not queries:
        raise ConfigError(f"{path}: no queries (one query a line is expected)")
    return queries


def search_index(directory: str | os.PathLike, queries: Sequence[str], k: int = 5,
                 encoder: str | os.PathLike | None = None, nprobe: int | None = None,
                 ef_search: int | None = None) -> list[dict]:
    """[{"query", "hits": [{"rank", "id", "score", "doc", "text"}]}] for each query. encoder: the query encoder's
    directory (None: the one the index records); it must be the encoder the index was built with."""
    if not queries:
        raise ConfigError("index search: no queries; give --query TEXT or --queries FILE")
    manifest = read_manifest(directory)
    source = encoder if encoder is not None else manifest["encoder"]["source"]
    if not Path(source).is_dir():
        raise ConfigError(f"the index's encoder {source} does not exist (moved?); pass --encoder DIR with the same "
                          "weights, or rebuild the index")
    enc = load_encoder(source, recorded_encoder_config(manifest))
    idx = PassageIndex.load(directory, enc).tune(nprobe, ef_search)
    hits = idx.search(list(queries), k)
    out = []
    for q, scores, ids in zip(queries, hits.scores, hits.ids):
        rows = [{"rank": r + 1, "id": int(i), "score": float(s), "doc": p.doc, "text": p.text}
                for r, (s, i, p) in enumerate(zip(scores, ids, idx.passages(ids))) if p is not None]
        out.append({"query": q, "hits": rows})
    return out
