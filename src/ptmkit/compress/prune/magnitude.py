"""Magnitude pruning: zero the weights of smallest |w|, in one shot or gradually while fine-tuning (cubic schedule).

Han et al. 2015, "Learning both Weights and Connections for Efficient Neural Networks" (one-shot); Zhu & Gupta 2017,
"To prune, or not to prune" (gradual); Gordon et al. 2020, "Compressing BERT" (gradual magnitude pruning of BERT).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ptmkit.compress.prune.masks import Mask, Matrix, Pruner, check_scope, prune_lowest
from ptmkit.compress.prune.schedule import CubicSchedule, check_fraction


@dataclass
class MagnitudeConfig:
    sparsity: float = 0.5  # fraction of the targeted weights set to zero (exactly round(s n), see masks.py)
    scope: str = "layer"  # "layer": every weight matrix to this sparsity (Han et al.); "global": one threshold
    targets: list[str] | None = None  # None = every Linear in the blocks (not embeddings, not the task head)
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_fraction("magnitude pruning", "sparsity", self.sparsity)
        check_scope("magnitude pruning", self.scope)


@dataclass
class GradualMagnitudeConfig:
    schedule: CubicSchedule  # of the sparsity, by optimizer step (Zhu & Gupta eq. 1)
    scope: str = "layer"  # Zhu & Gupta give each layer's mask its own threshold
    targets: list[str] | None = None
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_scope("gradual magnitude pruning", self.scope)


@torch.no_grad()
def magnitude_scores(matrices: list[Matrix]) -> list[torch.Tensor]:
    """|w| of each matrix, with already-pruned weights scored -1: below every |w|, so they are pruned again first and
    a mask only ever loses weights (Zhu & Gupta rank the masked weights; a weight the optimizer moved behind its
    mask never comes back)."""
    return [torch.where(m.kept(), m.original().abs(), -1.0) for m in matrices]


class MagnitudePruner(Pruner):
    """One-shot: prunes when built; calling it (as `on_step`) only keeps the masks while fine-tuning goes on."""

    method = "magnitude pruning"

    def __init__(self, model: nn.Module, cfg: MagnitudeConfig):
        super().__init__(model, cfg.targets, cfg.exclude, Mask)
        self.cfg = cfg
        prune_lowest(self.matrices, magnitude_scores(self.matrices), cfg.sparsity, cfg.scope)


class GradualMagnitudePruner(Pruner):
    """Zhu & Gupta's gradual pruning, as the engine's `on_step`: at the schedule's update steps the mask grows to
    s_t of the weights, pruning the smallest of the weights still kept; training in between lets the rest recover."""

    method = "gradual magnitude pruning"

    def __init__(self, model: nn.Module, cfg: GradualMagnitudeConfig):
        super().__init__(model, cfg.targets, cfg.exclude, Mask)
        self.cfg = cfg

    def __call__(self, step: int) -> None:
        if self.cfg.schedule.updates_at(step):
            prune_lowest(self.matrices, magnitude_scores(self.matrices), self.cfg.schedule.value(step), self.cfg.scope)


def apply(model: nn.Module, cfg: MagnitudeConfig) -> nn.Module:
    """One-shot magnitude pruning of `model`, in place (the masks stay attached until `finalize`)."""
    MagnitudePruner(model, cfg)
    return model
