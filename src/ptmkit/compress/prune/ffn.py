"""Structured feed-forward pruning: remove the least important hidden neurons of each feed-forward, physically.
Neuron = one row of up (a SwiGLU's gate and up rows together) and one column of down; importance by weight magnitude
(Li et al. 2017, "Pruning Filters for Efficient ConvNets", norms of whole units) or by gradient (Molchanov et al.
2017; Michel et al. 2019), as McCarley et al. 2019 ("Structured Pruning of a BERT-based Question Answering Model")
shrink BERT's feed-forward width.

Importance (structured.py): "magnitude" is the product of the l2 norms of a neuron's input and output weights (no
data needed); "gradient" gates each neuron's activation with ξ = 1 and takes E_x |∂L/∂ξ| over the caller's batches.
Neurons are ranked within their own layer: each targeted feed-forward loses ⌊fraction · F⌋ of its F neurons, the same
fraction everywhere (one number) or one fraction per feed-forward in model order (a list, e.g. to keep the first layers
wide). A feed-forward keeps at least one neuron. Sparse Mixture-of-Experts layers are not MLPs and are not targeted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

import torch
from torch import nn

from ptmkit.compress.prune.structured import (
    LossFn, PruneReport, check_fraction, count_parameters, count_to_remove, gate_importance, magnitude_importance,
    match_targets, materialise, record,
)
from ptmkit.config import ConfigError
from ptmkit.nn.feedforward import MLP, GatedMLP

METHOD = "feed-forward pruning"
IMPORTANCE = ("magnitude", "gradient")


@dataclass
class FFNPruneConfig:
    fraction: float | list[float]  # share of each feed-forward's neurons to remove: one for all, or one per FFN
    importance: Literal["magnitude", "gradient"] = "magnitude"  # gradient needs loss_fn and batches
    targets: list[str] = field(default_factory=lambda: ["ffn"])  # MLP / GatedMLP modules (ptmkit.nn.targets syntax)

    def __post_init__(self) -> None:
        fractions = self.fraction if isinstance(self.fraction, list) else [self.fraction]
        if not fractions:
            raise ConfigError("ffn: fraction is an empty list; give one fraction, or one per targeted feed-forward")
        for f in fractions:
            check_fraction("ffn", f)
        if self.importance not in IMPORTANCE:
            raise ConfigError(f"ffn: importance must be one of {list(IMPORTANCE)}, got {self.importance!r}")
        if not self.targets:
            raise ConfigError("ffn: give at least one target (e.g. 'ffn' or 'layers.*.ffn')")


def neuron_importance(model: nn.Module, sites: list[tuple[str, Any]], importance: str, loss_fn: LossFn | None = None,
                      batches: Iterable[Any] | None = None) -> list[torch.Tensor]:
    """(F,) per feed-forward: the importance of each of its neurons."""
    if importance == "magnitude":
        return [magnitude_importance(m) for _, m in sites]
    batches = materialise(batches, loss_fn, METHOD)
    return gate_importance(model, [(m.down, m.num_units, 1) for _, m in sites], loss_fn, batches)


def apply(model: nn.Module, cfg: FFNPruneConfig, loss_fn: LossFn | None = None,
          batches: Iterable[Any] | None = None) -> nn.Module:
    """Remove ⌊fraction · F⌋ of the F neurons of each targeted feed-forward, lowest importance first, in place. The
    PruneReport is appended to `reports(model)`."""
    sites = match_targets(model, cfg.targets, (MLP, GatedMLP), METHOD)
    fractions = cfg.fraction if isinstance(cfg.fraction, list) else [cfg.fraction] * len(sites)
    if len(fractions) != len(sites):
        raise ConfigError(f"{METHOD}: {len(fractions)} fractions for {len(sites)} targeted feed-forwards "
                          f"({[n for n, _ in sites]}); give one fraction per feed-forward, or a single number")
    remove = [count_to_remove(f, m.num_units) for f, (_, m) in zip(fractions, sites)]
    for (name, m), n in zip(sites, remove):
        if n >= m.num_units:  # only a fraction within 1e-9 of 1 gets here
            raise ConfigError(f"{METHOD}: this would remove all {m.num_units} neurons of {name}; lower its fraction")
    before = count_parameters(model)
    scores = neuron_importance(model, sites, cfg.importance, loss_fn, batches)
    kept = {}
    for (name, m), s, n in zip(sites, scores, remove):
        keep = torch.sort(s, stable=True).indices[n:].sort().values  # drop the n lowest (ties: the earlier goes)
        kept[name] = keep.tolist()
        if n:
            m.keep_units(keep)
    total = sum(len(s) for s in scores)
    requested = cfg.fraction if not isinstance(cfg.fraction, list) else sum(
        f * len(s) for f, s in zip(fractions, scores)) / total  # a list: its neuron-weighted mean
    record(model, PruneReport("ffn", "neuron", total, sum(remove), requested, before, count_parameters(model), kept))
    return model
