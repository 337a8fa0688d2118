"""Relative position bias (T5; Raffel et al. 2020 §2.1, after Shaw et al. 2018): a learned scalar per head and bucket.

The key-minus-query offset is mapped to one of `num_buckets` buckets: exact buckets for small offsets, then
logarithmically wider ones up to `max_distance` (everything farther shares the last bucket). An encoder uses
separate buckets for the past and the future (bidirectional); a decoder only sees the past (causal). The bias is
added to the attention logits of every layer; T5 computes it once, in the first layer, and shares it.
Dimension legend: B batch, H heads, T query length, S key length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ptmkit.config import ConfigError, check_positive


@dataclass
class RelativeBiasConfig:
    num_heads: int
    num_buckets: int = 32
    max_distance: int = 128
    bidirectional: bool = True  # encoder: separate buckets for keys before and after the query

    def __post_init__(self) -> None:
        check_positive("relative position bias", num_heads=self.num_heads, max_distance=self.max_distance)
        if self.num_buckets < 2:
            raise ConfigError(
                f"relative position bias: num_buckets must be >= 2, got {self.num_buckets} "
                "(T5 uses 32: half exact offsets, half logarithmic ranges)"
            )
        if self.bidirectional and self.num_buckets < 4:
            raise ConfigError(
                f"relative position bias: a bidirectional (encoder) bias needs num_buckets >= 4, got "
                f"{self.num_buckets}; each direction needs at least one exact and one logarithmic bucket"
            )
        exact = (self.num_buckets // 2 if self.bidirectional else self.num_buckets) // 2
        if self.max_distance <= exact:
            raise ConfigError(
                f"relative position bias: max_distance {self.max_distance} must exceed the {exact} exactly-bucketed "
                f"offsets (num_buckets {self.num_buckets}); raise max_distance or lower num_buckets"
            )


def relative_position_bucket(
    relative_position: torch.Tensor,  # (T, S) key position - query position
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> torch.Tensor:
    """Bucket index in [0, num_buckets) for each offset (Mesh TensorFlow `_relative_position_bucket`).

    Bidirectional: buckets [0, n/2) hold offsets <= 0 (keys before the query), [n/2, n) offsets > 0.
    Causal: offsets > 0 (the future) fall into bucket 0 with offset 0; they are masked anyway.
    Within a direction, the first half of the buckets are exact offsets 0..max_exact-1, the second half
    cover [max_exact, max_distance) on a log scale; offsets >= max_distance share the last bucket.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp_min(0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # Written exactly as Mesh TensorFlow / transformers do (fp32 log, truncation), so buckets agree bit for bit.
    # clamp_min(1) only avoids log(0) at offsets that take the exact branch anyway.
    log_ratio = torch.log(distance.clamp_min(1).float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    large = large.clamp_max(num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """A (num_buckets, H) table turned into an additive attention bias (1, H, T, S)."""

    def __init__(self, cfg: RelativeBiasConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.num_buckets, cfg.num_heads)

    def forward(self, q_len: int, k_len: int) -> torch.Tensor:
        """Bias for the last q_len of k_len positions (with a KV cache the queries come after k_len - q_len keys)."""
        device = self.embedding.weight.device
        q_pos = torch.arange(k_len - q_len, k_len, dtype=torch.long, device=device)[:, None]  # (T, 1)
        k_pos = torch.arange(k_len, dtype=torch.long, device=device)[None, :]  # (1, S)
        buckets = relative_position_bucket(k_pos - q_pos, self.cfg.bidirectional, self.cfg.num_buckets,
                                           self.cfg.max_distance)  # (T, S)
        return self.embedding(buckets).permute(2, 0, 1)[None]  # (1, H, T, S)
