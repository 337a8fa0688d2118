"""Per-token annotations aligned with token shards: one int32 value per token of a prepared shard directory's stream
(e.g. ERNIE's entity links: entity number + 1 at a mention's first token, 0 elsewhere), computed once and read with
the same windows as the tokens, so an objective gets them in its batch under a name of their own.

A directory holds `values.bin` (int32, one per token) and `meta.json` (what it is, and the token shards it belongs
to: their tokenizer fingerprint, token and document counts, so annotations of other shards are refused).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ptmkit import atomic
from ptmkit.data.sampler import PackedDataset
from ptmkit.data.shards import TokenShards

FORMAT = "ptmkit-token-annotations"
VALUES = "values.bin"


def _shards_id(shards: TokenShards) -> dict[str, Any]:
    return {"directory": str(shards.directory), "tokenizer_fingerprint": shards.fingerprint,
            "tokens": shards.num_tokens, "documents": shards.num_documents}


def write_annotations(directory: str | Path, values: np.ndarray, shards: TokenShards, key: str,
                      info: dict[str, Any] | None = None) -> Path:
    """Write one value per token of `shards` under batch key `key`; the directory appears whole or not at all."""
    values = np.asarray(values)
    if values.shape != (shards.num_tokens,):
        raise ValueError(f"annotations: {values.shape[0] if values.ndim else 0} values for {shards.num_tokens} tokens "
                         f"of {shards.directory}; give one value per token")
    meta = {"format": FORMAT, "version": 1, "key": key, "shards": _shards_id(shards), "info": info or {}}
    with atomic.atomic_dir(directory) as tmp:
        values.astype(np.int32).tofile(tmp / VALUES)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return Path(directory)


class TokenAnnotations:
    """A memory-mapped annotation stream, checked against the token shards it is read with."""

    def __init__(self, directory: str | Path, shards: TokenShards):
        d = Path(directory)
        if not (d / "meta.json").is_file() or not (d / VALUES).is_file():
            raise FileNotFoundError(f"{d} holds no token annotations (meta.json + {VALUES}); make entity links with "
                                    "`ptm kg link --shards SHARDS --kg KG --tokenizer TOK --out DIR`")
        self.meta = meta = json.loads((d / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{d / 'meta.json'}: format {meta.get('format')!r} is not {FORMAT!r}")
        want, have = meta["shards"], _shards_id(shards)
        differ = [k for k in ("tokenizer_fingerprint", "tokens", "documents") if want.get(k) != have[k]]
        if differ:
            raise ValueError(
                f"{d} annotates other token shards than {shards.directory} ({', '.join(differ)} differ: made for "
                f"{want.get('directory')}); link these shards again (`ptm kg link --shards {shards.directory} ...`) "
                "or point at the annotations made for them")
        size = (d / VALUES).stat().st_size
        if size != 4 * shards.num_tokens:
            raise ValueError(f"{d / VALUES} has {size} bytes, not {4 * shards.num_tokens} (one int32 per token): "
                             "truncated or corrupt; make the links again")
        self.key, self.directory = meta["key"], d
        self.values = np.memmap(d / VALUES, dtype=np.int32, mode="r") if shards.num_tokens else np.zeros(0, np.int32)

    def take(self, positions: np.ndarray) -> np.ndarray:
        return np.asarray(self.values[positions])


class AnnotatedDataset:
    """A PackedDataset whose batches also hold the annotation windows (int64, 0 on padding) under the stream's key."""

    def __init__(self, dataset: PackedDataset, annotations: TokenAnnotations):
        self.dataset, self.annotations = dataset, annotations

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):  # seq_len, boundary, padding_fraction, ... of the token windows
        if name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def get_batch(self, indices) -> dict[str, np.ndarray]:
        out = self.dataset.get_batch(indices)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1) % len(self.dataset)
        pos, valid = self.dataset.window_positions(idx)
        out[self.annotations.key] = np.where(valid, self.annotations.take(pos), 0).astype(np.int64)
        return out

    def __repr__(self) -> str:
        return f"AnnotatedDataset({self.dataset!r} + {self.annotations.key} from {self.annotations.directory})"


def annotated(dataset: PackedDataset, directory: str | Path | None) -> PackedDataset | AnnotatedDataset:
    """`dataset` with the annotations of `directory` (None: the dataset unchanged)."""
    return dataset if directory is None else AnnotatedDataset(dataset, TokenAnnotations(directory, dataset.shards))
