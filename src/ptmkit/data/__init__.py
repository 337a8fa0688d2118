"""Data pipeline: tokenizers, corpus readers, token shards, packed sequences and resumable samplers.
Names are imported lazily so `import ptmkit.data.shards` (e.g. in tokeniser worker processes) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Tokenizer": "tokenizer", "train_tokenizer": "tokenizer", "check_vocab": "tokenizer",
    "VocabMismatchError": "tokenizer",
    "iter_documents": "corpus", "read_documents": "corpus", "resolve_files": "corpus",
    "CorpusStats": "corpus", "EmptyCorpusError": "corpus",
    "prepare_shards": "shards", "TokenShards": "shards", "token_dtype": "shards",
    "PackedDataset": "sampler", "StatefulSampler": "sampler", "collate": "sampler",
    "data_root": "paths",
    "TOKENIZER_KINDS": "tokenizer_kinds",
    "read_glue": "glue", "GLUE_TASKS": "glue", "read_conll": "conll", "read_table": "tables",
    "TaskSpec": "task_data", "load_split": "task_data",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"ptmkit.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'ptmkit.data' has no attribute {name!r}")
