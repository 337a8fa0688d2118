"""Representation analysis (survey §7.1, "representation analysis"): linear centred kernel alignment between layers
and between models (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited", eq. 5, the
feature-space form), and anisotropy: the average cosine similarity of token vectors of a layer (Ethayarajh 2019,
"How Contextual are Contextualized Word Representations?" §3.3).

Dimension legend: N token vectors (the real tokens of a batch, flattened), D width (may differ between two sides).
"""

from __future__ import annotations

import torch

from ptmkit.config import ConfigError


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two sets of N vectors (N, D1) and (N, D2): ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) after
    centring each feature; 1 for representations equal up to rotation and isotropic scaling, invariant to both."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ConfigError(f"linear CKA compares two (N, D) sets of the same N vectors, got {tuple(x.shape)} and "
                          f"{tuple(y.shape)}")
    if x.shape[0] < 2:
        raise ConfigError("linear CKA needs at least 2 vectors")
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    cross = (y.T @ x).pow(2).sum()
    return float(cross / ((x.T @ x).norm() * (y.T @ y).norm()).clamp_min(1e-300))


def cka_matrix(a: list[torch.Tensor], b: list[torch.Tensor] | None = None) -> torch.Tensor:
    """CKA of every pair (layer i of a, layer j of b): (len(a), len(b)); b = a gives the layer-by-layer map."""
    b = a if b is None else b
    return torch.tensor([[linear_cka(x, y) for y in b] for x in a])


def anisotropy(x: torch.Tensor, pairs: int = 20000, seed: int = 0) -> float:
    """The expected cosine similarity of two different token vectors of (N, D), from `pairs` random pairs
    (all pairs when there are fewer): near 0 for isotropic representations, near 1 for vectors in a narrow cone."""
    n = x.shape[0]
    if n < 2:
        raise ConfigError("anisotropy needs at least 2 token vectors")
    g = torch.Generator().manual_seed(seed)
    if n * (n - 1) // 2 <= pairs:
        i, j = torch.triu_indices(n, n, offset=1)
    else:
        i = torch.randint(0, n, (pairs,), generator=g)
        j = (i + torch.randint(1, n, (pairs,), generator=g)) % n  # never i itself
    xn = torch.nn.functional.normalize(x.double(), dim=-1)
    return float((xn[i] * xn[j]).sum(-1).mean())


@torch.no_grad()
def layer_vectors(model, batches, device=None) -> list[torch.Tensor]:
    """Every layer's token vectors (embeddings output, then each block's), the real tokens of all `batches` (dicts
    with input_ids and attention_mask) flattened: L + 1 tensors (N, D)."""
    device = device or next(model.parameters()).device
    per_layer: list[list[torch.Tensor]] = []
    model.eval()
    for batch in batches:
        ids, mask = batch["input_ids"].to(device), batch.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask.to(device)
        backbone = getattr(model, "backbone", model)
        hidden = backbone(ids, attention_mask=mask, output_hidden_states=True).hidden_states
        real = mask.bool()
        if not per_layer:
            per_layer = [[] for _ in hidden]
        for store, h in zip(per_layer, hidden):
            store.append(h[real].float().cpu())
    return [torch.cat(x) for x in per_layer]
