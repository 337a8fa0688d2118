"""Attention-head pruning: remove the heads whose masking changes the loss least, physically (smaller qkv and out).
Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than One?" (NeurIPS; §4: importance, iterative pruning).

Importance is Michel's gradient estimate (structured.gate_importance): a gate ξ_h = 1 on each head's output and
I_h = E_x |∂L(x)/∂ξ_h| over the caller's batches, normalised per layer by its l2 norm (Michel §4.1). The heads of all
targeted layers are then ranked together and the lowest ⌊fraction · N⌋ removed; with `steps` > 1 they go in rounds,
importance re-estimated after each with the removed heads masked (Michel §4.2 prunes 10% at a time). Nothing changes
until every round has succeeded, so a refused call leaves the model as it was.

Grouped-query attention (LLaMA, Ainslie et al. 2023): the unit removed is a whole key/value group — its key and value
heads and the g query heads that read them — scored by the mean importance of its query heads. Removing only some of
a group's query heads would leave nothing to slice from k and v (no speed-up) and break the equal-group layout the
kernels and the KV cache rely on, so it is not offered; the fraction then counts groups (⌊fraction · groups⌋ of them),
which is the same fraction of the query heads. With multi-head attention a group is one head.

A layer keeps at least one head: a selection that would empty a layer is an error naming it. T5's relative position
bias is shared by the layers and holds one bias per head, so T5 models are refused (prune their neurons or layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from ptmkit.compress.prune.structured import (
    LossFn, PruneReport, check_fraction, count_parameters, count_to_remove, gate_importance, materialise,
    match_targets, normalise_per_layer, record,
)
from ptmkit.config import ConfigError
from ptmkit.nn.attention import SelfAttention
from ptmkit.nn.relative import RelativePositionBias

METHOD = "head pruning"


@dataclass
class HeadPruneConfig:
    fraction: float  # share of the targeted heads to remove, ranked over all targeted layers together
    steps: int = 1  # rounds, importance re-estimated after each (Michel §4.2); 1 = one shot
    normalize: bool = True  # Michel §4.1: divide each layer's importances by their l2 norm before ranking globally
    targets: list[str] = field(default_factory=lambda: ["attn"])  # SelfAttention modules (ptmkit.nn.targets syntax)

    def __post_init__(self) -> None:
        check_fraction("heads", self.fraction)
        if self.steps < 1:
            raise ConfigError(f"heads: steps must be >= 1 (1 = prune in one shot), got {self.steps}")
        if not self.targets:
            raise ConfigError("heads: give at least one target (e.g. 'attn' or 'layers.*.attn')")


def _sites(model: nn.Module, patterns: list[str]) -> list[tuple[str, SelfAttention]]:
    sites = match_targets(model, patterns, (SelfAttention,), METHOD)
    if any(isinstance(m, RelativePositionBias) for m in model.modules()):
        raise ConfigError(f"{METHOD}: {type(model).__name__} adds a relative position bias with one slice per head, "
                          "shared by all its layers, which a pruned layer could no longer add; prune its feed-forward "
                          "neurons or its layers instead")
    for name, m in sites:
        if m.kernel.kind != "dense":
            raise ConfigError(f"{METHOD}: {name} runs attention kernel {m.cfg.kernel!r}, which may hold per-head "
                              "state; head pruning supports the dense kernels (sdpa, eager): build the model with "
                              "kernel sdpa")
    return sites


def _importance(model, sites, loss_fn, batches, live: list[torch.Tensor] | None, normalize: bool) -> list[torch.Tensor]:
    """(H,) per site: Michel's importance, 0 for heads already masked (live False), optionally l2-normalised."""
    readers = [(m.out, m.h, m.d) for _, m in sites]
    scores = gate_importance(model, readers, loss_fn, batches, gates=live)
    if live is not None:
        scores = [s * keep for s, keep in zip(scores, live)]  # a masked head's sensitivity is not its importance
    return normalise_per_layer(scores) if normalize else scores


def head_importance(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any], targets: list[str] | None = None,
                    normalize: bool = True) -> dict[str, torch.Tensor]:
    """{attention module name: (H,) importance of its heads} (Michel et al. 2019 §4.1), without pruning anything."""
    sites = _sites(model, targets or ["attn"])
    scores = _importance(model, sites, loss_fn, materialise(batches, loss_fn, METHOD), None, normalize)
    return {name: s for (name, _), s in zip(sites, scores)}


def apply(model: nn.Module, cfg: HeadPruneConfig, loss_fn: LossFn | None = None,
          batches: Iterable[Any] | None = None) -> nn.Module:
    """Remove ⌊cfg.fraction · N⌋ of the N targeted heads (whole key/value groups under GQA), lowest importance
    first, in place; `loss_fn(model, batch)` on each of `batches` gives the loss importance is measured on. The
    PruneReport is appended to `reports(model)`."""
    sites = _sites(model, cfg.targets)
    batches = materialise(batches, loss_fn, METHOD)
    before = count_parameters(model)
    g = [m.h // m.kv for _, m in sites]  # query heads per key/value group
    goal = count_to_remove(cfg.fraction, sum(m.kv for _, m in sites))  # groups to remove (= heads without GQA)
    live = [torch.ones(m.h) for _, m in sites]  # 1 = kept so far, 0 = removed in an earlier round (masked)
    removed = 0
    for step in range(1, cfg.steps + 1):
        n = goal * step // cfg.steps - removed  # this round's share; the rounds add up to exactly `goal`
        if n == 0:
            continue
        scores = _importance(model, sites, loss_fn, batches, live, cfg.normalize)
        # (K_l,) per layer: a group's score is its query heads' mean; groups already removed never rank again
        group = [torch.where(k.view(-1, gl)[:, 0] > 0, s.view(-1, gl).mean(-1), torch.inf)
                 for s, k, gl in zip(scores, live, g)]
        owner = torch.cat([torch.full((len(s),), i) for i, s in enumerate(group)])  # (ΣK,) which site
        index = torch.cat([torch.arange(len(s)) for s in group])  # (ΣK,) which group of that site
        lowest = torch.sort(torch.cat(group), stable=True).indices[:n]  # ties: the earlier layer / group goes
        for i, j in zip(owner[lowest].tolist(), index[lowest].tolist()):
            live[i][j * g[i]:(j + 1) * g[i]] = 0
        removed += n
        empty = [(name, m) for (name, m), k in zip(sites, live) if not k.any()]
        if empty:
            name, m = empty[0]
            raise ConfigError(
                f"{METHOD}: removing {cfg.fraction:g} of the heads by lowest importance would remove all {m.h} heads "
                f"of {name}, and a layer needs at least one; lower `fraction`, or leave that layer out of `targets` "
                "(the model is unchanged)")
    kept = {}
    for (name, m), k in zip(sites, live):
        heads = k.nonzero().flatten()
        kept[name] = heads.tolist()
        if len(heads) < m.h:
            m.keep_units(heads)
    total = sum(len(k) for k in live)
    report = PruneReport("heads", "head", total, total - sum(len(v) for v in kept.values()), cfg.fraction, before,
                         count_parameters(model), kept)
    record(model, report)
    return model
