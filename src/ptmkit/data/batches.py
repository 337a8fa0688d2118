"""Ready-to-train batches: sampler order → packed sequences → objective corruption, as one resumable
iterator. Corruption of the k-th batch is seeded by (seed, k), so a resumed run re-creates it exactly."""

from __future__ import annotations

from typing import Any, Iterator

import torch

from ptmkit.config import ConfigError
from ptmkit.data.sampler import PackedDataset, StatefulSampler, collate
from ptmkit.data.seeding import seeded_generator


class SeededBatches:
    """An endless, resumable stream of batches over `size` examples: a StatefulSampler's order, and the k-th batch
    built by `make(indices, seeded_generator(seed, k))`, so a run resumed from `state_dict` re-creates every batch
    (its random corruption or augmentation included) exactly. Subclasses say how a batch is made."""

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.batch_size, self.seed = batch_size, seed
        self.sampler = StatefulSampler(size, seed=seed, rank=rank, world_size=world_size)
        self.drawn = 0
        self._it: Iterator | None = None

    def make(self, indices, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._it is None:
            self._it = self.sampler.batches(self.batch_size, drop_last=True, epochs=None)
        out = self.make(next(self._it), seeded_generator(self.seed, self.drawn))
        self.drawn += 1
        return out

    @property
    def epoch(self) -> float:
        return self.sampler.epoch + self.sampler.position / max(1, len(self.sampler))

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict(), "drawn": self.drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.drawn = int(state["drawn"])
        self._it = None  # restart the generator from the restored position


class PretrainBatches(SeededBatches):
    """Packed sequences of `dataset`, corrupted by `objective` (masking, spans, ...)."""

    def __init__(self, dataset: PackedDataset, batch_size: int, objective, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if batch_size > len(dataset) // world_size:
            raise ConfigError(
                f"batch_size {batch_size} exceeds the {len(dataset)} sequences of {dataset.seq_len} tokens "
                "available; prepare more text or lower batch_size / seq_len"
            )
        super().__init__(len(dataset), batch_size, seed, rank, world_size)
        self.dataset, self.objective = dataset, objective

    def make(self, indices, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.objective.corrupt(collate(self.dataset.get_batch(indices)), generator)


class RankSlice:
    """This data-parallel rank's rows of every global batch: rank r of n takes rows [r*B/n, (r+1)*B/n).

    Every rank draws and corrupts the whole global batch (the same sampler order and masks as one process would)
    and keeps its slice, so a run on n ranks trains on exactly the batches of the single-process run with the same
    global batch size. Corruption is cheap next to the step (benchmarks/objective_cost.py), so the repeated work
    costs little; the state is the global iterator's, identical on every rank.
    """

    def __init__(self, batches, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ConfigError(f"RankSlice: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batches.batch_size % world_size:
            raise ConfigError(f"the global batch size {batches.batch_size} is not divisible by the {world_size} "
                              f"data-parallel ranks; use a multiple of {world_size}")
        self.batches, self.rank, self.world_size = batches, rank, world_size
        self.batch_size = batches.batch_size // world_size

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = next(self.batches)
        b, lo = self.batches.batch_size, self.rank * self.batch_size
        return {k: v[lo:lo + self.batch_size] if torch.is_tensor(v) and v.dim() and v.shape[0] == b else v
                for k, v in batch.items()}

    @property
    def epoch(self) -> float:
        return self.batches.epoch

    def state_dict(self) -> dict[str, Any]:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches.load_state_dict(state)


def fixed_batches(dataset: PackedDataset, batch_size: int, objective, n_batches: int, seed: int = 12345):
    """The same corrupted evaluation batches every time (first n sequences, fixed masks)."""
    n = min(len(dataset), n_batches * batch_size)
    out = []
    for i, start in enumerate(range(0, n, batch_size)):
        idx = list(range(start, min(n, start + batch_size)))
        out.append(objective.corrupt(collate(dataset.get_batch(idx)), seeded_generator(seed, i)))
    return out
