"""Word-region alignment by optimal transport (UNITER, Chen et al. 2020 §3.2 "WRA"): the Wasserstein distance between
a caption's token states and an image's region states, with the transport plan found by the Inexact Proximal point
method for Optimal Transport (IPOT, Xie et al. 2020, Algorithm 1). Matched pairs should be close (a small distance),
mismatched pairs far: the loss is the mean distance of matched pairs minus that of mismatched ones.

Batched over pairs with padding: each row has its own numbers of tokens and regions, and its marginals are uniform
over the real ones (UNITER: "uniform distribution over the words / regions"). As in UNITER's ot.py, the plan is
computed without gradient and the distance <C, T> differentiates through the cost only (the envelope theorem).

Dimension legend: B pairs, T tokens, N regions, H width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def ipot(cost: torch.Tensor, text_mask: torch.Tensor, image_mask: torch.Tensor, beta: float = 0.5,
         iterations: int = 50, inner: int = 1) -> torch.Tensor:
    """cost (B, T, N), masks (B, T) / (B, N) bool (True = real) -> plan (B, T, N) with row sums 1/n_text and column
    sums 1/n_image over the real entries (exactly for the columns after the last step, to convergence for the rows)."""
    cost = cost.float()
    real = text_mask[:, :, None] & image_mask[:, None, :]  # (B, T, N)
    n_t = text_mask.sum(1, keepdim=True).float()  # (B, 1)
    n_i = image_mask.sum(1, keepdim=True).float()  # (B, 1)
    a = text_mask.float() / n_t  # (B, T) target row marginal
    b = image_mask.float() / n_i  # (B, N) target column marginal
    kernel = torch.exp(-cost / beta) * real  # (B, T, N): the proximal kernel; padding carries nothing
    plan = real.float() / (n_t * n_i)[:, :, None]  # (B, T, N) start: the independent coupling
    sigma = b.clone()  # (B, N)
    for _ in range(iterations):
        q = kernel * plan  # (B, T, N): Algorithm 1, Q = G ⊙ T
        for _ in range(inner):  # k Sinkhorn steps on Q
            delta = a / (q @ sigma[..., None]).squeeze(-1).clamp_min(1e-30)  # (B, T)
            sigma = b / (q.transpose(1, 2) @ delta[..., None]).squeeze(-1).clamp_min(1e-30)  # (B, N)
        plan = delta[..., None] * q * sigma[:, None, :]  # (B, T, N) = diag(δ) Q diag(σ)
    return plan


def wra_distance(text: torch.Tensor, image: torch.Tensor, text_mask: torch.Tensor, image_mask: torch.Tensor,
                 beta: float = 0.5, iterations: int = 50) -> torch.Tensor:
    """(B,) optimal-transport distance between token states (B, T, H) and region states (B, N, H) under the cosine
    cost 1 - cos (UNITER), masked entries excluded."""
    cost = 1.0 - F.normalize(text.float(), dim=-1) @ F.normalize(image.float(), dim=-1).transpose(1, 2)  # (B, T, N)
    plan = ipot(cost.detach(), text_mask, image_mask, beta, iterations)
    return (cost * plan).sum((1, 2))  # (B,)
