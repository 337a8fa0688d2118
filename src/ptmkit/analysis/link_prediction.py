"""Link prediction, the knowledge-graph embedding benchmark of Bordes et al. 2013 (§4.2): each held-out triple's
head and then its tail is replaced by every entity, the candidates are ranked by the model's distance, and the rank
of the true entity gives the mean reciprocal rank and Hits@k. "Filtered" setting: other candidates that form a known
true triple (any split) are removed from the ranking first, so a model is not penalised for ranking another correct
answer higher. Ties count against the true entity (it must beat every other candidate to be first).

Dimension legend: B test triples per batch, E entities.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch


def _known(known: np.ndarray, side: str) -> dict[tuple[int, int], list[int]]:
    """(h, r) -> true tails, or (r, t) -> true heads."""
    out: dict[tuple[int, int], list[int]] = defaultdict(list)
    for h, r, t in known.tolist():
        if side == "tail":
            out[(h, r)].append(t)
        else:
            out[(r, t)].append(h)
    return out


@torch.no_grad()
def filtered_ranks(model, test: np.ndarray, known: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(2N,) ranks of the true head and true tail of each test triple (heads first), filtered by `known` (all true
    triples: train and test). `model.distances_to_all(triples, side)` gives (B, E) distances (TransE)."""
    model.eval()
    test = np.asarray(test, dtype=np.int64).reshape(-1, 3)
    ranks = []
    for side, col in (("head", 0), ("tail", 2)):
        index = _known(np.asarray(known, dtype=np.int64).reshape(-1, 3), side)
        for start in range(0, len(test), batch_size):
            rows = test[start:start + batch_size]
            d = model.distances_to_all(torch.from_numpy(rows), side).cpu()  # (B, E)
            gold = torch.from_numpy(rows[:, col])
            d_gold = d.gather(1, gold[:, None])  # (B, 1)
            others = torch.zeros_like(d, dtype=torch.bool)  # (B, E): other true answers, left out of the ranking
            for i, (h, r, t) in enumerate(rows.tolist()):
                others[i, index[(h, r) if side == "tail" else (r, t)]] = True
            others[torch.arange(len(rows)), gold] = False
            beaten = (d <= d_gold) & ~others  # includes the gold itself once
            ranks.append(beaten.sum(1).numpy())
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)


def link_prediction_metrics(model, test: np.ndarray, known: np.ndarray, ks=(1, 3, 10)) -> dict[str, float]:
    """Filtered MRR and Hits@k over head and tail prediction of the test triples."""
    r = filtered_ranks(model, test, known).astype(np.float64)
    if not len(r):
        return {"triples": 0, "mrr": float("nan"), **{f"hits@{k}": float("nan") for k in ks}}
    return {"triples": int(len(r) // 2), "mrr": float((1.0 / r).mean()), "mean_rank": float(r.mean()),
            **{f"hits@{k}": float((r <= k).mean()) for k in ks}}
