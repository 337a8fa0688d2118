"""Contiguous token streams for segment-level recurrence (Transformer-XL, Dai et al. 2019 §3.2): row i of batch t+1
continues row i of batch t, so the memory a model carries from one batch to the next is the real left context.

The token stream (every document of a shard directory, end to end, with the eos tokens the shards hold between
documents) is cut into `batch_size` equal lanes, the layout of the paper's code (`LMOrderedIterator`, "batchify"):

    stream  t0 t1 t2 ........................................................ t{N-1}
    lane 0  [0, L)      lane 1  [L, 2L)      ...      lane B-1  [(B-1)L, BL)        L = (N - 1) // B

Batch k holds tokens [kT, (k+1)T) of every lane as input_ids (B, T) and the next token of each as labels (B, T)
(the label of a segment's last token is the next segment's first token: no prediction is lost at a boundary).
When the lanes run out the stream starts again (the next epoch) and the batch says `reset_memory`, because a lane's
end does not continue into its start. The position is a plain integer, so state_dict() resumes exactly.

Dimension legend: B lanes (batch rows), T segment length, N stream tokens, L lane length.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ptmkit.config import ConfigError
from ptmkit.data.shards import TokenShards


class StreamBatches:
    """Consecutive segments of `batch_size` contiguous lanes of a token stream, as a resumable iterator.

    tokens: a TokenShards directory view or a 1-D integer array. epochs: None = repeat forever (training), n = stop
    after n passes. drop_last: skip each pass's final shorter segment (training keeps every batch (B, T)); with
    drop_last=False the last batch of a pass has the remaining L % T (> 0) tokens per lane (evaluation).
    Each batch: input_ids (B, T) int64, labels (B, T) int64, reset_memory () bool: True on a pass's first batch.
    """

    def __init__(self, tokens: TokenShards | np.ndarray, batch_size: int, segment_len: int,
                 epochs: int | None = None, drop_last: bool = True):
        if batch_size < 1 or segment_len < 1:
            raise ConfigError(f"stream batches: batch_size and segment_len must be >= 1, got {batch_size}, "
                              f"{segment_len}")
        if epochs is not None and epochs < 1:
            raise ConfigError(f"stream batches: epochs must be >= 1 or None (forever), got {epochs}")
        self.tokens = tokens
        n = tokens.num_tokens if isinstance(tokens, TokenShards) else len(tokens)
        self.num_tokens, self.batch_size, self.segment_len = n, batch_size, segment_len
        self.lane_len = (n - 1) // batch_size  # the last lane's last label is token lane_len * B <= n - 1
        self.per_epoch = self.lane_len // segment_len if drop_last else -(-self.lane_len // segment_len)
        if self.per_epoch < 1:
            raise ConfigError(
                f"stream batches: {n} tokens in {batch_size} lanes give lanes of {self.lane_len} tokens, shorter than "
                f"one segment of {segment_len}; use fewer lanes (batch_size), shorter segments or more text"
            )
        self.epochs, self.drop_last = epochs, drop_last
        self.lane_starts = np.arange(batch_size, dtype=np.int64) * self.lane_len  # (B,)
        self.epoch = 0
        self.position = 0  # the next segment's index within the epoch

    def __iter__(self):
        return self

    def __len__(self) -> int:
        """Batches per pass."""
        return self.per_epoch

    def _read(self, positions: np.ndarray) -> np.ndarray:
        if isinstance(self.tokens, TokenShards):
            return self.tokens.take(positions)
        return np.asarray(self.tokens)[positions]

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.position >= self.per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        if self.epochs is not None and self.epoch >= self.epochs:
            raise StopIteration
        start = self.position * self.segment_len
        t = min(self.segment_len, self.lane_len - start)
        window = self.lane_starts[:, None] + start + np.arange(t + 1, dtype=np.int64)  # (B, T + 1) positions
        ids = torch.from_numpy(self._read(window).astype(np.int64))  # (B, T + 1)
        batch = {"input_ids": ids[:, :-1].contiguous(), "labels": ids[:, 1:].contiguous(),
                 "reset_memory": torch.tensor(self.position == 0)}
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "num_tokens": self.num_tokens,
                "batch_size": self.batch_size, "segment_len": self.segment_len}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        layout = {k: getattr(self, k) for k in ("num_tokens", "batch_size", "segment_len")}
        saved = {k: state.get(k) for k in layout}
        if saved != layout:
            raise ValueError(f"stream position was saved for {saved} but this stream is {layout}; resume with the "
                             "same token shards, batch_size and segment_len")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
