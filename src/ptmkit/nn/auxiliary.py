"""Auxiliary losses: the one way a module adds a term to the training loss (MoE router losses today; more
regularisers tomorrow) without the training loop knowing what it is.

A module class opts in with two methods:
    reset_auxiliary(self)                  forget the last forward's terms (a block skipped by LayerDrop must not
                                           report last step's)
    collect_auxiliary(cls, modules)        classmethod: (summed weighted loss or None, metrics as floats) over the
                                           instances that ran in the last forward
The training module finds every such instance once, resets them before each forward and adds the collected losses
(during training only) after it; the objective's own `metrics["loss"]` stays untouched, so evaluation figures
compare with models that have no auxiliary terms.
"""

from __future__ import annotations

import torch
from torch import nn


def auxiliary_modules(module: nn.Module) -> dict[type, list[nn.Module]]:
    """The opted-in submodules of `module`, grouped by class (a class collects its own instances together)."""
    groups: dict[type, list[nn.Module]] = {}
    for m in module.modules():
        if callable(getattr(type(m), "collect_auxiliary", None)) and callable(getattr(m, "reset_auxiliary", None)):
            groups.setdefault(type(m), []).append(m)
    return groups


def reset_auxiliary(groups: dict[type, list[nn.Module]]) -> None:
    for members in groups.values():
        for m in members:
            m.reset_auxiliary()


def collect_auxiliary(groups: dict[type, list[nn.Module]]) -> tuple[torch.Tensor | None, dict[str, float]]:
    """Sum of every class's auxiliary loss and the union of their metrics."""
    total: torch.Tensor | None = None
    metrics: dict[str, float] = {}
    for cls, members in groups.items():
        loss, m = cls.collect_auxiliary(members)
        if loss is not None:
            total = loss if total is None else total + loss
        metrics.update(m)
    return total, metrics
