"""InfoNCE (van den Oord et al. 2018, "Representation Learning with Contrastive Predictive Coding"), the loss the
contrastive objectives share: SimCSE (Gao et al. 2021) over two dropout views of a sentence, CLIP (Radford et al.
2021) over images and their captions. Row i of a batch is a positive pair (z1_i, z2_i); every other row of the batch
is a negative.

Dimension legend: B batch, H vector width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float | torch.Tensor, symmetric: bool = False,
             exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H), (B, H) views -> (scalar loss, (B, B) logits cos(z1_i, z2_j) / τ). Row i's positive is column i.

    temperature: τ, a number or a (learnable) 0-d tensor (CLIP learns log(1/τ), objectives/clip.py).
    exclude: optional (B, B) bool, True where column j is not a negative for row i (its diagonal is ignored).
    loss = mean_i -log( exp(s_ii) / Σ_j exp(s_ij) ), s_ij = cos(z1_i, z2_j) / τ  (SimCSE eq. 4);
    symmetric=True averages it with the same loss over columns (CLIP Figure 3: (loss_i + loss_t) / 2).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"info_nce needs two (B, H) tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] < 2:
        raise ValueError("info_nce needs a batch of at least 2 pairs: the other rows are the negatives")
    z1, z2 = F.normalize(z1.float(), dim=-1), F.normalize(z2.float(), dim=-1)  # fp32: τ = 0.05 scales by 20
    logits = z1 @ z2.T / temperature  # (B, B)
    target = torch.arange(z1.shape[0], device=z1.device)
    if exclude is not None:
        off = exclude & ~torch.eye(len(target), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(off, float("-inf"))
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, target))
    return loss, logits
