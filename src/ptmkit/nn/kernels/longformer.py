"""Longformer attention: a sliding window plus the first `global_tokens` positions as global tokens.

Beltagy et al. 2020, "Longformer: The Long-Document Transformer" §3.1: each token sees the keys within `window`
of it; global tokens see every key and are seen by every query (task-chosen: [CLS] for classification, the question
for QA). Here the global tokens are the first `global_tokens` positions of the sequence, a fixed pattern: put the
tokens that need global attention at the front (e.g. [CLS] + question + [SEP] for QA, padded to a fixed count).
Causal form (defined here, not in the paper): a query sees the previous `window` keys and every earlier global
token — the global tokens being the first positions, nothing from the future is reachable. Cost per head
O(T · (block + 2·window + n_global)) plus O(n_global · T) for the global rows.
Dimension legend: B batch, H query heads, K key/value heads, T sequence length, D head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptmkit.config import ConfigError
from ptmkit.nn.kernels.blocked import BlockedPatternKernel, Pieces
from ptmkit.nn.kernels.sliding_window import check_block, check_window


@dataclass
class LongformerOptions:
    window: int = 256  # keys on each side of a query (Longformer's one-sided w/2; it uses w = 512)
    global_tokens: int = 1  # the first n positions are global (e.g. 1 = [CLS])
    block: int = 128  # query block of the blocked computation: speed only, the pattern does not depend on it

    def __post_init__(self) -> None:
        if not self.window >= 1:
            raise ConfigError(f"longformer: window must be >= 1 (keys on each side), got {self.window}")
        if not self.global_tokens >= 0:
            raise ConfigError(f"longformer: global_tokens must be >= 0 (0 = plain sliding window), "
                              f"got {self.global_tokens}")
        check_block("longformer", self.block)


class Longformer(BlockedPatternKernel):
    """Window span + the global keys (shared) + the global query rows (dense, bidirectional only)."""

    Options = LongformerOptions
    name = "longformer"
    causal = True

    def allows(self, qpos, kpos, t, causal):
        w, n = self.options.window, self.options.global_tokens
        if causal:
            return (kpos <= qpos) & ((qpos - kpos <= w) | (kpos < n))
        return ((qpos - kpos).abs() <= w) | (kpos < n) | (qpos < n)

    def pieces(self, t, causal):
        w, n, bs = self.options.window, self.options.global_tokens, min(self.options.block, t)
        check_window(self.name, w, t)
        if n >= t:
            raise ConfigError(
                f"attention kernel 'longformer': global_tokens {n} is not smaller than the sequence ({t} tokens): "
                f"every token would be global (dense attention); use fewer global tokens or attention_kernel sdpa"
            )
        span = (-w, bs + (0 if causal else w) + w)
        if n == 0:
            return Pieces(bs, span=span)
        glob = torch.arange(n)
        # causal: global queries (the first n) see only earlier keys, which are all global keys: no dense rows
        return Pieces(bs, span=span, shared=glob, global_rows=None if causal else glob)
