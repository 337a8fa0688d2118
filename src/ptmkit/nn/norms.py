"""Normalisation layers: LayerNorm (Ba et al. 2016) and RMSNorm (Zhang & Sennrich 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 and cast back to the input dtype, so bf16 runs stay stable."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return (self.weight.float() * y).to(x.dtype)


NORMS = {"layernorm": nn.LayerNorm, "rmsnorm": RMSNorm}


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    if kind not in NORMS:
        raise ValueError(f"unknown norm {kind!r}; choose one of {sorted(NORMS)}")
    return NORMS[kind](dim, eps=eps)
