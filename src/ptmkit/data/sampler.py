"""Packed fixed-length sequences over token shards, a resumable seeded sampler, and a torch collate.
Indexing is vectorised numpy over precomputed window starts; the sampler resumes to the exact index.

Boundary modes of PackedDataset (B = batch, T = seq_len):
- "cross":    cut the concatenated stream every T tokens (GPT-2/nanoGPT packing); the tail
              shorter than T is dropped.
- "no_cross": no window spans two documents; long documents are cut into T-token chunks and the
              last, shorter chunk is padded (pad_id), with attention_mask 0 on the padding
              (one document per row, as in BERT's DOC-SENTENCES without packing; Liu et al. 2019).
- "mask":     packed like "cross", plus ``document_ids`` (B, T) — 0, 1, 2, ... per row, one per
              document segment — and ``position_ids`` restarting at each segment, so the model can
              block attention across documents (Krell et al. 2021, "Efficient sequence packing").
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ptmkit.config import ConfigError
from ptmkit.data.shards import TokenShards

BOUNDARIES = ("cross", "no_cross", "mask")


class PackedDataset:
    """Fixed-length windows over a TokenShards stream; ``get_batch(indices)`` returns (B, T) arrays.

    Items are dicts of int64 numpy arrays: ``input_ids`` and ``attention_mask`` (1 = real token),
    plus ``document_ids`` and ``position_ids`` in "mask" mode. Torch's DataLoader uses
    ``__getitems__`` for batched fetches; pair it with `collate`. Windows hold T tokens and no
    labels: objectives derive them (causal LM shifts inside the loss, as in transformers).
    """

    def __init__(
        self,
        shards: TokenShards | str | os.PathLike[str],
        seq_len: int,
        boundary: str = "cross",
        pad_id: int | None = None,
    ) -> None:
        self.shards = shards if isinstance(shards, TokenShards) else TokenShards(shards)
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0:
            raise ConfigError(f"PackedDataset: seq_len must be a positive integer, got {seq_len!r}")
        if boundary not in BOUNDARIES:
            raise ConfigError(f"PackedDataset: boundary={boundary!r} is not one of {list(BOUNDARIES)}")
        self.seq_len, self.boundary = seq_len, boundary
        sh = self.shards
        if boundary == "no_cross":
            lens = sh.doc_lengths  # (D,)
            n_chunks = -(-lens // seq_len)  # ceil; 0 for empty documents
            doc = np.repeat(np.arange(len(lens), dtype=np.int64), n_chunks)  # (N,) document of each chunk
            first = np.cumsum(n_chunks) - n_chunks
            k = np.arange(len(doc), dtype=np.int64) - np.repeat(first, n_chunks)  # chunk number within its document
            self.starts = sh.doc_offsets[doc] + k * seq_len  # (N,)
            self.lengths = np.minimum(seq_len, lens[doc] - k * seq_len)  # (N,) real tokens per window
            if np.any(self.lengths < seq_len):
                pad_id = pad_id if pad_id is not None else (sh.pad_id if sh.pad_id is not None else sh.eos_id)
                if pad_id is None:
                    raise ConfigError(
                        f"boundary='no_cross' pads short documents but the shards in {sh.directory} record "
                        "no pad or eos id; pass pad_id=..."
                    )
        else:
            self.starts = np.arange(sh.num_tokens // seq_len, dtype=np.int64) * seq_len  # (N,)
            self.lengths = None
        self.pad_id = pad_id
        if len(self.starts) == 0:
            raise ValueError(
                f"{sh.directory}: {sh.num_tokens} tokens make no {seq_len}-token sequence with boundary={boundary!r}; "
                "use a shorter seq_len or a larger corpus"
            )

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def padding_fraction(self) -> float:
        """Fraction of positions that are padding (only "no_cross" pads)."""
        if self.lengths is None:
            return 0.0
        return 1.0 - float(self.lengths.sum()) / (len(self.lengths) * self.seq_len)

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n, T = len(self.starts), self.seq_len
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"sequence index out of range for {n} sequences")
        idx = idx % n if n else idx
        t = np.arange(T, dtype=np.int64)
        pos, valid = self.window_positions(idx)
        if self.boundary == "no_cross":
            ids = np.where(valid, self.shards.take(pos), self.pad_id).astype(np.int64)
            return {"input_ids": ids, "attention_mask": valid.astype(np.int64)}
        out = {
            "input_ids": self.shards.take(pos).astype(np.int64),
            "attention_mask": np.ones((len(idx), T), dtype=np.int64),
        }
        if self.boundary == "mask":
            doc = np.searchsorted(self.shards.doc_offsets, pos, side="right") - 1  # (B, T) global document
            new = np.ones((len(idx), T), dtype=bool)  # (B, T) True where a segment starts
            new[:, 1:] = doc[:, 1:] != doc[:, :-1]
            out["document_ids"] = np.cumsum(new, axis=1, dtype=np.int64) - 1
            seg_start = np.maximum.accumulate(np.where(new, t, 0), axis=1)  # (B, T) index where each segment starts
            out["position_ids"] = t - seg_start
        return out

    def window_positions(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, T) global stream positions of windows `indices` (in range), and (B, T) bool: a real token there
        (False on "no_cross" padding, whose position repeats the window's first token). Streams aligned with the
        tokens (per-token annotations, ptmkit.data.annotations) are read at the same positions."""
        starts = self.starts[indices]  # (B,)
        t = np.arange(self.seq_len, dtype=np.int64)
        if self.boundary == "no_cross":
            valid = t[None, :] < self.lengths[indices][:, None]  # (B, T)
            return np.where(valid, starts[:, None] + t, starts[:, None]), valid  # padding reads a real token
        return starts[:, None] + t, np.ones((len(starts), self.seq_len), dtype=bool)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        return self.get_batch(indices)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in self.get_batch([i]).items()}

    def __repr__(self) -> str:
        return f"PackedDataset({len(self)} x {self.seq_len} tokens, boundary={self.boundary!r}, {self.shards!r})"


def collate(batch: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """int64 torch tensors from a `get_batch` dict of (B, T) arrays or a list of per-item dicts."""
    if isinstance(batch, Mapping):
        arrays = dict(batch)
    else:
        if not batch:
            raise ValueError("collate: empty batch")
        arrays = {k: np.stack([np.asarray(item[k]) for item in batch]) for k in batch[0]}
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64)) for k, v in arrays.items()}


class StatefulSampler:
    """Seeded, resumable order over ``n`` items: permutation per epoch from (seed, epoch).

    ``state_dict()`` records epoch and position (items already handed out this epoch), so a new
    sampler that loads it yields exactly the indices the interrupted one had not yet yielded.
    With ``world_size > 1`` each rank takes every world_size-th index of the shared permutation
    (the last ``n % world_size`` items of each epoch are skipped so ranks stay in step).
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        for name, v in (("n", n), ("seed", seed), ("rank", rank), ("world_size", world_size)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ConfigError(f"StatefulSampler: {name} must be an integer, got {v!r}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"StatefulSampler: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if n // world_size <= 0:
            raise ConfigError(f"StatefulSampler: n={n} items cannot be shared by world_size={world_size} ranks")
        if seed < 0:
            raise ConfigError(f"StatefulSampler: seed must be >= 0, got {seed}")
        self.n, self.seed, self.shuffle = int(n), int(seed), bool(shuffle)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self.position = 0
        self._cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        """Indices per epoch for this rank."""
        return self.n // self.world_size

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's full index order for `epoch` (deterministic in seed and epoch)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        else:
            order = np.arange(self.n, dtype=np.int64)
        per_rank = self.n // self.world_size
        order = order[: per_rank * self.world_size][self.rank :: self.world_size].astype(np.int64)
        self._cache = (epoch, order)
        return order

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = int(epoch), 0

    def batches(self, batch_size: int, drop_last: bool = False, epochs: int | None = 1) -> Iterator[np.ndarray]:
        """Batches of indices from the current position: the rest of this epoch, then `epochs`-1 more
        (None = forever). State advances as each batch is yielded."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ConfigError(f"batches: batch_size must be a positive integer, got {batch_size!r}")
        if drop_last and batch_size > len(self):
            raise ConfigError(f"batches: batch_size={batch_size} > {len(self)} items per epoch with drop_last=True")
        done = 0
        while epochs is None or done < epochs:
            order = self.epoch_indices(self.epoch)
            while True:
                remaining = len(order) - self.position
                if remaining <= 0 or (drop_last and remaining < batch_size):
                    break
                batch = order[self.position : self.position + batch_size]
                self.position += len(batch)
                yield batch
            self.epoch, self.position = self.epoch + 1, 0
            done += 1

    def __iter__(self) -> Iterator[int]:
        """Indices of the rest of the current epoch (torch Sampler protocol)."""
        for batch in self.batches(1):
            yield int(batch[0])

    def state_dict(self) -> dict[str, Any]:
        return {
            "n": self.n, "seed": self.seed, "shuffle": self.shuffle,
            "rank": self.rank, "world_size": self.world_size,
            "epoch": self.epoch, "position": self.position,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = {"n", "seed", "shuffle", "epoch", "position"} - set(state)
        if missing:
            raise ValueError(f"sampler state is missing {sorted(missing)}; it was not written by StatefulSampler.state_dict()")
        for key in ("n", "seed", "shuffle", "rank", "world_size"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state was saved with {key}={state[key]!r} but this sampler has {key}={getattr(self, key)!r}; "
                    "resume with the same data (same prepared shards and seq_len), seed and world size"
                )
        if not 0 <= int(state["position"]) <= len(self):
            raise ValueError(f"sampler state position={state['position']} outside [0, {len(self)}]")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
