"""Sliding-window (local) attention: each query sees the keys within `window` positions of it.

Beltagy et al. 2020, "Longformer: The Long-Document Transformer" §3.1 (sliding window); Child et al. 2019,
"Generating Long Sequences with Sparse Transformers" (local attention). Bidirectional: |i - j| <= window;
causal: i - window <= j <= i. Computed blocked (ptmkit.nn.kernels.blocked): O(T · (block + 2·window)) time and
memory per head instead of O(T²).
Dimension legend: B batch, H query heads, K key/value heads, T sequence length, D head dim.
"""

from __future__ import annotations

from dataclasses import dataclass


from ptmkit.config import ConfigError
from ptmkit.nn.kernels.blocked import BlockedPatternKernel, Pieces


def check_block(where: str, block: int) -> None:
    if not block >= 1:
        raise ConfigError(f"{where}: block must be a positive number of tokens, got {block}")


@dataclass
class SlidingWindowOptions:
    window: int = 256  # keys on each side (causal: before) of the query that it may see, itself excluded
    block: int = 128  # query block of the blocked computation: speed only, the pattern does not depend on it

    def __post_init__(self) -> None:
        if not self.window >= 1:
            raise ConfigError(f"sliding_window: window must be >= 1 (keys on each side), got {self.window}")
        check_block("sliding_window", self.block)


def check_window(name: str, window: int, t: int) -> None:
    if window >= t:
        raise ConfigError(
            f"attention kernel {name!r}: window {window} is not smaller than the sequence ({t} tokens), so every "
            f"query would see every key; use attention_kernel sdpa for sequences this short or a window below {t}"
        )


class SlidingWindow(BlockedPatternKernel):
    """Exact local attention over a band of 2·window + 1 keys (window + 1 when causal)."""

    Options = SlidingWindowOptions
    name = "sliding_window"
    causal = True

    def allows(self, qpos, kpos, t, causal):
        w = self.options.window
        if causal:
            return (kpos <= qpos) & (qpos - kpos <= w)
        return (qpos - kpos).abs() <= w

    def pieces(self, t, causal):
        check_window(self.name, self.options.window, t)
        w, bs = self.options.window, min(self.options.block, t)
        # queries [i·bs, (i+1)·bs) reach keys [i·bs - w, (i+1)·bs + w) (causal: up to the block's last query)
        return Pieces(bs, span=(-w, bs + (0 if causal else w) + w))
