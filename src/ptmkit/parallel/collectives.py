"""The few scalar collectives the training loop needs (metrics and stop requests); no-ops in one process."""

from __future__ import annotations

import torch
import torch.distributed as dist


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average a dict of floats over the ranks that report each key (an objective may omit a metric on a rank,
    e.g. ELECTRA's generator accuracy when a rank's slice had nothing masked)."""
    if not dist.is_initialized():
        return dict(values)
    gathered: list[dict[str, float]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, {k: float(v) for k, v in values.items()})
    keys = sorted({k for g in gathered for k in g})
    return {k: sum(g[k] for g in gathered if k in g) / sum(k in g for g in gathered) for k in keys}


def any_rank(flag: bool) -> bool:
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def token_weight(n_local: float, dp: int) -> float:
    """Factor that turns this rank's token-mean loss into its share of the global token mean.

    Data parallelism averages gradients over the dp ranks, i.e. it optimises the mean of the ranks' mean losses;
    when ranks predict different numbers of tokens (masked positions, padding, document ends) that is not the
    loss one process computes on the whole batch. Scaling rank r's loss by n_r * dp / N (N = tokens predicted by
    the whole global batch) makes the averaged gradient exactly that of the global token mean.
    """
    if not dist.is_initialized():
        return 1.0
    t = torch.tensor([float(n_local)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)  # every rank: tensor/pipeline peers repeat their dp group's count
    total = float(t.item()) * dp / dist.get_world_size()
    return float(n_local) * dp / total if total > 0 else 1.0
