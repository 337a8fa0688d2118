"""The token-shard format shared by the writer and the reader: its name and version, the meta file, and the
token dtype (see ptmkit.data.shards for the directory layout)."""

from __future__ import annotations

import numpy as np

FORMAT = "ptmkit-token-shards"
VERSION = 1
META = "meta.json"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when all ids 0..vocab_size-1 fit in 16 bits (vocab_size <= 65,536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)
