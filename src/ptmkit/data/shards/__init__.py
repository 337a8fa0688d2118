"""Token shards: tokenise a corpus once into memory-mapped .bin arrays + per-shard document indices.
Pre-training then reads fixed-length windows with zero tokenisation cost (nanoGPT/Megatron style).

Directory layout (written to a temporary directory, then renamed, so it is complete or absent)::

    meta.json            format, tokenizer fingerprint + vocab size, dtype, counts, shard list, throughput
    shard_00000.bin      raw token ids, uint16 when every id fits (vocab <= 65,536), else uint32
    shard_00000.idx      int64 document offsets into that shard: [0, end_0, end_1, ..., n_tokens]

A document never spans two shards: a shard is closed at the first document boundary at or after
``shard_tokens`` tokens, so one shard may exceed the target by up to one document.

    format.py   the format name, version, meta file and token dtype
    writer.py   prepare_shards: corpus -> shards
    reader.py   TokenShards: shards -> tokens, documents, windows
"""

from __future__ import annotations

from ptmkit.data.shards.format import FORMAT, META, VERSION, token_dtype
from ptmkit.data.shards.reader import TokenShards
from ptmkit.data.shards.writer import BATCH_CHARS, prepare_shards

__all__ = ["BATCH_CHARS", "FORMAT", "META", "VERSION", "TokenShards", "prepare_shards", "token_dtype"]
