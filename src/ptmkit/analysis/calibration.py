"""Calibration and uncertainty (survey §9, "reliability"): expected calibration error with its reliability diagram
(Guo et al. 2017, "On Calibration of Modern Neural Networks" §2), temperature scaling fitted on held-out logits (§4.2),
Monte Carlo dropout (Gal & Ghahramani 2016: dropout kept on at test time, predictions averaged over passes), and
out-of-distribution detection by the maximum softmax probability (Hendrycks & Gimpel 2017) scored by AUROC.

Dimension legend: N examples, C classes, K Monte Carlo passes.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ptmkit.config import ConfigError


def _check(probs: torch.Tensor, labels: torch.Tensor) -> None:
    if probs.dim() != 2 or labels.dim() != 1 or probs.shape[0] != labels.shape[0] or probs.shape[0] == 0:
        raise ConfigError(f"calibration: probabilities (N, C) and labels (N,) of the same N > 0, got "
                          f"{tuple(probs.shape)} and {tuple(labels.shape)}")


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict:
    """Confidence (max probability) in `bins` equal-width bins: per bin its count, mean confidence and accuracy, and
    ECE = sum over bins of (count / N) |accuracy - confidence| (Guo et al. eq. 3); MCE, the largest gap."""
    _check(probs, labels)
    conf, pred = probs.max(-1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    which = torch.bucketize(conf.double(), edges[1:-1], right=True)  # (N,) bin of each example: (lo, hi]
    count = torch.bincount(which, minlength=bins).double()
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, which, conf.double())
    acc_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, which, correct)
    safe = count.clamp_min(1)
    gap = (acc_sum / safe - conf_sum / safe).abs()
    n = probs.shape[0]
    return {"ece": float((count / n * gap).sum()), "mce": float(gap[count > 0].max()),
            "accuracy": float(correct.mean()), "confidence": float(conf.double().mean()),
            "bins": {"lower": edges[:-1].tolist(), "count": count.long().tolist(),
                     "confidence": (conf_sum / safe).tolist(), "accuracy": (acc_sum / safe).tolist()}}


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of softmax(logits / T) on held-out data (Guo et
    al. §4.2), by L-BFGS on log T."""
    _check(logits, labels)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    x, y = logits.double(), labels
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


@torch.no_grad()
def mc_dropout(predict: Callable[[], torch.Tensor], model: torch.nn.Module, passes: int = 10,
               seed: int | None = None) -> torch.Tensor:
    """Monte Carlo dropout: `passes` forward passes of `predict()` (logits (N, C)) with the model's dropout layers in
    training mode (everything else in eval mode), softmax averaged: (N, C). The model's modes are restored. `seed`
    fixes the dropout masks (so a table can be measured again) without touching the caller's random state."""
    if passes < 1:
        raise ConfigError(f"mc_dropout: passes must be >= 1, got {passes}")
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    if not dropouts or all(m.p == 0 for m in dropouts):
        raise ConfigError("mc_dropout: the model has no active dropout (every rate is 0); load it with dropout "
                          "(e.g. load_model(dir, dropout=0.1)) to sample from it")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for m in dropouts:
        m.train()
    try:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            return torch.stack([F.softmax(predict().float(), -1) for _ in range(passes)]).mean(0)  # (N, C)
    finally:
        for m, mode in modes.items():
            m.train(mode)


def auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """Area under the ROC curve of telling in-distribution (positive, higher score) from out-of-distribution examples:
    the probability that a random in-domain score exceeds a random out-of-domain one, ties counting half."""
    if in_scores.numel() == 0 or out_scores.numel() == 0:
        raise ConfigError("auroc: needs in-domain and out-of-domain examples")
    s = torch.cat([in_scores, out_scores]).double()
    ranks = _average_ranks(s)
    n_in, n_out = in_scores.numel(), out_scores.numel()
    return float((ranks[:n_in].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out))  # Mann-Whitney U / (n_in n_out)


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of x, ties given their average rank (vectorised)."""
    order = torch.argsort(x)
    sorted_x = x[order]
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=x.dtype)
    _, inverse, counts = torch.unique(sorted_x, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts + 1  # first rank of each distinct value
    avg = first + (counts - 1) / 2
    ranks[order] = avg[inverse].to(x.dtype)
    return ranks


def max_softmax(logits: torch.Tensor) -> torch.Tensor:
    """The maximum softmax probability of each example (N,): Hendrycks & Gimpel's OOD score."""
    return F.softmax(logits.float(), -1).max(-1).values
