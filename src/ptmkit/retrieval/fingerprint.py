"""Fingerprints that tie an index to what built it: the corpus files' bytes and the encoder's weights.

An index answers queries only in the vector space of the encoder that embedded its passages, and its ids point into
the corpus version it was cut from; a fingerprint stored beside it lets a load refuse a different encoder or a
changed corpus instead of returning confident nonsense. Both are sha256 digests of content, not of paths or times,
so a copied corpus or a re-saved model with equal weights keeps its fingerprint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def files_fingerprint(files: Iterable[Path]) -> str:
    """sha256 over the files' contents in order (each file's size and digest, so no two splits of the same bytes
    into files collide)."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.stat().st_size}:{file_sha256(f)};".encode())
    return h.hexdigest()


def tensors_fingerprint(state: Mapping[str, torch.Tensor], *extra: str) -> str:
    """sha256 over a state dict (names, dtypes, shapes and bytes, in name order) and `extra` strings (tokenizer
    fingerprint, pooling...). Shared tensors (tied embeddings) count once per name, as state_dict lists them."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for s in extra:
        h.update(f"|{s}".encode())
    return h.hexdigest()
