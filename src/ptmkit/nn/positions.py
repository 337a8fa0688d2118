"""Position information: learned absolute, sinusoidal (Vaswani et al. 2017) and rotary (Su et al. 2021).

Dimension legend: B batch, T length, D head dim (rotary) or hidden size (absolute).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalPositions(nn.Module):
    """Fixed sin/cos table, Vaswani et al. 2017 §3.5: PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(...)."""

    def __init__(self, max_len: int, dim: int, base: float = 10000.0):
        super().__init__()
        pos = torch.arange(max_len, dtype=torch.float32)[:, None]  # (T, 1)
        inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(base) / dim))  # (D/2,)
        table = torch.zeros(max_len, dim)
        table[:, 0::2] = torch.sin(pos * inv)
        table[:, 1::2] = torch.cos(pos * inv[: dim // 2])
        self.register_buffer("table", table, persistent=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.table[position_ids]  # (B, T, dim)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE, Su et al. 2021) in the "rotate half" layout used by LLaMA checkpoints.

    cos/sin are computed in fp32 from integer positions, so cached and uncached decoding agree exactly.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, scaling_factor: float = 1.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head_dim, got {head_dim}")
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        # Linear position interpolation (Chen et al. 2023) divides positions by the scaling factor.
        self.register_buffer("inv_freq", inv_freq / scaling_factor, persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids.float()[..., None] * self.inv_freq  # (B, T, D/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (B, T, D)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate q (B,H,T,D) and k (B,K,T,D) by position; cos/sin are (B,T,D) and broadcast over heads."""
    cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, D)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def positions_from_mask(attention_mask: torch.Tensor, past: int = 0) -> torch.Tensor:
    """Positions that skip left padding: the first real token is position 0 (as HF generate does)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp_min(0)[:, past:]  # (B, T)
