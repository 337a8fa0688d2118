"""Dense softmax attention (Vaswani et al. 2017): PyTorch's fused SDPA and the written-out reference.

Dimension legend: B batch, H query heads, K key/value heads, T query length, S key length, D head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ptmkit.nn.kernels.base import AttentionKernel


def sdpa_kernel(q, k, v, mask, is_causal: bool, dropout_p: float, scale: float) -> torch.Tensor:
    """Fused attention (flash / memory-efficient / math, chosen by PyTorch). q (B,H,T,D), k/v (B,K,S,D)."""
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=gqa
    )


def eager_kernel(q, k, v, mask, is_causal: bool, dropout_p: float, scale: float) -> torch.Tensor:
    """Reference attention written out (softmax(QK^T)V); the ground truth kernels are tested against."""
    if q.shape[1] != k.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, T, S)
    if is_causal:
        t, s = scores.shape[-2:]
        causal = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(diagonal=s - t)
        scores = scores.masked_fill(~causal, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = scores.float().softmax(dim=-1).to(q.dtype)
    probs = F.dropout(probs, p=dropout_p, training=dropout_p > 0)
    return probs @ v  # (B, H, T, D)


class SDPA(AttentionKernel):
    """torch.nn.functional.scaled_dot_product_attention: the default; any mask, bias, cache and causality."""

    name = "sdpa"

    def forward(self, q, k, v, mask=None, is_causal=False, dropout_p=0.0, scale=None):
        return sdpa_kernel(q, k, v, mask, is_causal, dropout_p, scale)


class Eager(AttentionKernel):
    """softmax(QK^T / sqrt(d)) V written out: slow, but every intermediate is visible (attention analysis)."""

    name = "eager"

    def forward(self, q, k, v, mask=None, is_causal=False, dropout_p=0.0, scale=None):
        return eager_kernel(q, k, v, mask, is_causal, dropout_p, scale)
