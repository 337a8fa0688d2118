"""What every attention kernel shares: the call contract, its own options, masks it accepts, GQA expansion.

A kernel is an nn.Module built from the layer's AttentionConfig and called as
`kernel(q, k, v, mask, is_causal, dropout_p, scale) -> (B, H, T, D)`; q is (B, H, T, D), k/v (B, K, S, D).
Three kinds (the contract tests in tests/contracts/test_attention_kernels.py iterate over them):
  - "dense": exact softmax attention over every allowed key (sdpa, eager);
  - "pattern": exact softmax attention restricted to a fixed sparsity pattern; `pattern(t, s, causal)` returns
    the equivalent dense bool mask, and the kernel must equal dense attention under that mask;
  - "approximate": a different estimator of attention (low rank, random features, hashing); its error against
    dense attention on fixed inputs is reported, not asserted to vanish.
Dimension legend: B batch, H query heads, K key/value heads, T query length, S key length, D head dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from ptmkit.config import ConfigError, from_dict

if TYPE_CHECKING:
    from ptmkit.nn.attention import AttentionConfig


@dataclass
class NoOptions:
    """For kernels without settings."""


class AttentionKernel(nn.Module):
    """Base class: subclasses set `Options`, `kind`, `causal` (defined for causal decoders) and forward()."""

    Options: ClassVar[type] = NoOptions
    kind: ClassVar[str] = "dense"  # dense | pattern | approximate
    causal: ClassVar[bool] = True  # usable with is_causal=True (decoders)
    name: ClassVar[str] = ""

    def __init__(self, cfg: "AttentionConfig"):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.options = self.parse_options(cfg.kernel_options)

    @classmethod
    def parse_options(cls, options: dict | None):
        """The kernel's typed options from a plain dict (YAML/config.json); unknown keys are errors."""
        return from_dict(cls.Options, dict(options or {}), where=f"attention kernel {cls.name!r} options")

    def pattern(self, t: int, s: int, causal: bool, device=None) -> torch.Tensor:
        """(T, S) bool: the keys each query may see (pattern kernels). Dense kernels see everything allowed."""
        allowed = torch.ones(t, s, dtype=torch.bool, device=device)
        return allowed.tril(diagonal=s - t) if causal else allowed

    # ---- helpers for sparse and approximate kernels -----------------------------------------------------

    def check_call(self, q: torch.Tensor, k: torch.Tensor, is_causal: bool) -> None:
        if is_causal and not self.causal:
            raise ConfigError(
                f"attention kernel {self.name!r} is not defined for causal (decoder) attention; choose one of the "
                f"causal kernels (see ptmkit.nn.kernels.causal_kernels()) or sdpa"
            )
        if q.shape[2] != k.shape[2]:
            raise ConfigError(
                f"attention kernel {self.name!r} needs queries and keys of the same length (self-attention without "
                f"a KV cache), got {q.shape[2]} queries and {k.shape[2]} keys; generate with attention_kernel sdpa"
            )


def key_padding(mask: torch.Tensor | None, name: str) -> torch.Tensor | None:
    """(B, S) bool keep-mask of keys from a (B, 1, 1, S) bool padding mask; None when nothing is padded.

    Sparse and approximate kernels apply their own pattern (and causality), so they accept padding only: a full
    (B, 1, T, S) mask (packed documents, padding + causality folded together) or an additive bias cannot be
    expressed by them.
    """
    if mask is None:
        return None
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] != 1:
        raise ConfigError(
            f"attention kernel {name!r} supports key-padding masks only (bool, shape (B, 1, 1, S)), got "
            f"{tuple(mask.shape)} {mask.dtype}; padded causal batches, packed-document masks and additive biases "
            "need attention_kernel sdpa (or pad-free batches)"
        )
    return mask[:, 0, 0, :]


def expand_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeat grouped key/value heads (B, K, S, D) to the query heads (B, H, S, D)."""
    if q.shape[1] != k.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return k, v
