"""Movement pruning: learned importance scores S keep the weights moving away from zero, through a straight-through
mask; hard (the top of S) or soft (S over a threshold, with an L1 penalty on sigmoid(S)).

Sanh, Wolf & Rush 2020, "Movement Pruning: Adaptive Sparsity by Fine-Tuning"; straight-through estimator: Bengio et
al. 2013. Defaults follow the authors' scripts (transformers examples/research_projects/movement-pruning).

The scores are parameters of the model (inside each pruned Linear's parametrization), so they train with the weights
through the engine's one optimizer and are saved in its checkpoints. Under the straight-through estimator the mask
M(S) counts as S itself in the backward, so dL/dS = dL/dW' * W with W' = W * M: S accumulates -W * grad, growing for
weights moving away from zero (§3). The pruner (the engine's `on_step`) recomputes the masks from S before every
step at the schedule's current level; `finalize` bakes W * M into plain weights and drops S.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ptmkit.compress.prune.masks import Mask, Pruner, check_scope, prune_lowest
from ptmkit.compress.prune.schedule import CubicSchedule
from ptmkit.config import ConfigError


def _check_scores(where: str, score_init: float, score_scale: float) -> None:
    if not math.isfinite(score_init):
        raise ConfigError(f"{where}: score_init must be a finite number (Sanh et al. start every score at 0), "
                          f"got {score_init}")
    if not score_scale > 0:
        raise ConfigError(f"{where}: score_scale must be positive (1 = the scores learn at the model's lr), "
                          f"got {score_scale}")


@dataclass
class MovementConfig:
    schedule: CubicSchedule  # of the sparsity (the authors ramp 0 -> 0.85..0.97 with the cubic schedule)
    scope: str = "layer"  # "layer": Top_v of S in each weight matrix, as the paper; "global": one ranking of S
    score_init: float = 0.0  # every S starts at this constant (the authors' --mask_init constant --mask_scale 0)
    # S = score_scale x the stored parameter. Adam steps each parameter by ~lr whatever its gradient's scale, so S
    # learns at ~score_scale x the model's lr: the authors train S at 1e-2 against 3e-5 for the weights (~333)
    score_scale: float = 1.0
    targets: list[str] | None = None  # None = every Linear in the blocks (not embeddings, not the task head)
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_scope("movement pruning", self.scope)
        _check_scores("movement pruning", self.score_init, self.score_scale)


@dataclass
class SoftMovementConfig:
    schedule: CubicSchedule  # of the threshold tau on sigmoid(S) (the authors: 0 -> 0.1)
    penalty: float = 400.0  # final lambda of the L1 penalty on sigmoid(S) (the authors' --final_lambda 400)
    score_init: float = 0.0
    score_scale: float = 1.0  # as MovementConfig.score_scale
    targets: list[str] | None = None
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.schedule.final > 0:
            raise ConfigError("soft movement pruning: schedule.final is the threshold tau on sigmoid(S) and must end "
                              "above 0 (with tau = 0 no weight is ever pruned); Sanh et al. use 0.1")
        if not self.penalty >= 0:
            raise ConfigError(f"soft movement pruning: penalty (lambda) must be >= 0, got {self.penalty}")
        _check_scores("soft movement pruning", self.score_init, self.score_scale)


class ScoredMask(Mask):
    """weight -> weight * M, M the mask buffer, with the straight-through gradient to the scores."""

    def __init__(self, weight: torch.Tensor, score_init: float, score_scale: float):
        super().__init__(weight)
        self.score_scale = score_scale
        self.scores = nn.Parameter(torch.full(weight.shape, score_init / score_scale, dtype=weight.dtype,
                                              device=weight.device))

    def importance(self) -> torch.Tensor:
        """S, (O, I)."""
        return self.scores * self.score_scale

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        s = self.importance()
        # s - s.detach() is exactly 0 in the forward (the weight is multiplied by the binary mask) and the identity
        # in the backward: the straight-through estimator, dL/dS = dL/dW' * W
        return weight * (self.mask.to(weight.dtype) + (s - s.detach()))


class SoftScoredMask(ScoredMask):
    """Soft movement's mask, which also adds lambda_t * mean(sigmoid(S)) to the training loss through the
    auxiliary-loss protocol (ptmkit.nn.auxiliary), the way MoE routers add theirs."""

    def __init__(self, weight: torch.Tensor, score_init: float, score_scale: float):
        super().__init__(weight, score_init, score_scale)
        self.register_buffer("penalty_weight", torch.zeros((), device=weight.device))  # lambda_t, set by the pruner

    def reset_auxiliary(self) -> None:
        return None  # the penalty reads the scores, not anything a forward computed

    @classmethod
    def collect_auxiliary(cls, masks: list[SoftScoredMask]) -> tuple[torch.Tensor, dict[str, float]]:
        # Sanh et al. §4 (R(S) = lambda sum sigmoid(S)), as their code: lambda_t x the mean over the pruned modules of
        # mean(sigmoid(S)), so lambda does not depend on the model's size
        terms = torch.stack([m.penalty_weight * torch.sigmoid(m.importance()).mean() for m in masks])
        loss = terms.mean()
        return loss, {"movement_penalty": float(loss.detach())}


class MovementPruner(Pruner):
    """Hard movement pruning: before every step the mask keeps the top (1 - s_t) of S (Sanh et al. §3, Top_v), per
    weight matrix or over all targets; a weight masked earlier comes back when its score climbs again."""

    method = "movement pruning"

    def __init__(self, model: nn.Module, cfg: MovementConfig):
        super().__init__(model, cfg.targets, cfg.exclude, lambda w: ScoredMask(w, cfg.score_init, cfg.score_scale))
        self.cfg = cfg

    @torch.no_grad()
    def __call__(self, step: int) -> None:
        scores = [m.view(m.masker.importance()) for m in self.matrices]
        prune_lowest(self.matrices, scores, self.cfg.schedule.level(step), self.cfg.scope)


class SoftMovementPruner(Pruner):
    """Soft movement pruning: the mask keeps the weights with sigmoid(S) > tau_t (S > logit(tau_t), the paper's
    threshold on S); the sparsity is not set but comes from the penalty lambda_t = penalty x tau_t / tau_final (the
    authors raise lambda with the threshold)."""

    method = "soft movement pruning"

    def __init__(self, model: nn.Module, cfg: SoftMovementConfig):
        super().__init__(model, cfg.targets, cfg.exclude,
                         lambda w: SoftScoredMask(w, cfg.score_init, cfg.score_scale))
        self.cfg = cfg

    @torch.no_grad()
    def __call__(self, step: int) -> None:
        tau = self.cfg.schedule.level(step)
        for m in self.matrices:
            m.write(torch.sigmoid(m.view(m.masker.importance())) > tau)
        for mask in {id(m.module): m.masker for m in self.matrices}.values():
            mask.penalty_weight.fill_(self.cfg.penalty * tau / self.cfg.schedule.final)
