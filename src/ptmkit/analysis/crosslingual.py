"""Cross-lingual sentence retrieval (the alignment test of XLM-style encoders; cf. Artetxe & Schwenk 2019, Tatoeba
in XTREME, Hu et al. 2020): embed aligned sentences of two languages, and for each source sentence find the
target sentence with the highest cosine similarity; top-1 accuracy is the fraction that find their translation.

Dimension legend: B batch, T length, H hidden, N aligned sentences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, H), (B, T) 1 = token -> (B, H) mean over real tokens."""
    m = mask.to(hidden.dtype)[..., None]  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def retrieval_accuracy(src: torch.Tensor, tgt: torch.Tensor) -> float:
    """(N, H) source and (N, H) target embeddings, row i of each a translation pair -> top-1 accuracy of
    retrieving tgt[i] for src[i] among all N targets by cosine similarity (chance = 1 / N)."""
    if src.shape != tgt.shape or src.dim() != 2:
        raise ValueError(f"src and tgt must both be (N, H) with the same N; got {tuple(src.shape)}, {tuple(tgt.shape)}")
    sim = F.normalize(src.float(), dim=-1) @ F.normalize(tgt.float(), dim=-1).T  # (N, N)
    return (sim.argmax(-1) == torch.arange(src.shape[0])).float().mean().item()
