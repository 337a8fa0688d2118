"""Retrieval: passages cut from a corpus, a dense encoder, BM25, FAISS indexes saved with fingerprints, and the
kNN-LM datastore — the memory that retrieval-augmented models (REALM, RAG, kNN-LM) read (survey §4.2)."""

from ptmkit.retrieval.bm25 import BM25, BM25Config
from ptmkit.retrieval.encoder import DenseEncoder, EncoderConfig, default_encoder_dir
from ptmkit.retrieval.faiss_index import IndexConfig
from ptmkit.retrieval.knn_lm import Datastore, interpolate, knn_log_probs, knn_target_log_prob
from ptmkit.retrieval.passage_index import Hits, PassageIndex
from ptmkit.retrieval.passages import ChunkConfig, Passage, chunk_documents, read_passages

__all__ = ["BM25", "BM25Config", "ChunkConfig", "Datastore", "DenseEncoder", "EncoderConfig", "Hits", "IndexConfig",
           "Passage", "PassageIndex", "chunk_documents", "default_encoder_dir", "interpolate", "knn_log_probs",
           "knn_target_log_prob", "read_passages"]
