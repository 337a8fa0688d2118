"""Resumable training batches over an encoded task split: length-bucketed random batches (data/encode.py), a new
order every epoch drawn from (seed, epoch), and a position that checkpoints save, so a resumed fine-tuning run sees
exactly the batches it would have seen."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ptmkit.config import ConfigError
from ptmkit.data.encode import Encoded, bucket_batches, collate


class TaskBatches:
    """Global batches of `batch_size` examples; under data parallelism (`world_size` ranks) each rank yields its
    share of every global batch (rows split as evenly as possible), so every layout trains on the same batches."""

    def __init__(self, enc: Encoded, batch_size: int, pad_id: int, seed: int = 0, bucket: int = 50,
                 rank: int = 0, world_size: int = 1):
        if len(enc) == 0:
            raise ConfigError("no training examples to batch")
        if batch_size < world_size:
            raise ConfigError(f"batch size {batch_size} is smaller than the {world_size} data-parallel ranks; "
                              f"use a batch size of at least {world_size}")
        self.enc, self.batch_size, self.pad_id, self.seed, self.bucket = enc, batch_size, pad_id, seed, bucket
        self.rank, self.world_size = rank, world_size
        self.epoch_index, self.position = 0, 0
        self._order = self._epoch_batches(0)

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])  # the same batches for the same seed and epoch
        batches = bucket_batches(self.enc.lengths, self.batch_size, rng, self.bucket)
        if self.world_size > 1:  # a last batch too small to give every rank a row is left out (at most one)
            batches = [b for b in batches if len(b) >= self.world_size]
        return batches

    @property
    def batches_per_epoch(self) -> int:
        return len(self._order)

    @property
    def epoch(self) -> float:
        """Epochs seen so far, fractional."""
        return self.epoch_index + self.position / len(self._order)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.position == len(self._order):
            self.epoch_index, self.position = self.epoch_index + 1, 0
            self._order = self._epoch_batches(self.epoch_index)
        idx = self._order[self.position]
        if self.world_size > 1:
            idx = np.array_split(idx, self.world_size)[self.rank]
        self.position += 1
        return collate(self.enc, idx, self.pad_id)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch_index, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch_index, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_batches(self.epoch_index)
