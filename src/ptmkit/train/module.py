"""The module a training step runs: the model, the objective's auxiliary networks (ELECTRA's generator) and the
auxiliary losses of the model's own layers (MoE router losses), as one nn.Module whose forward(batch) is
(loss, metrics). The engine, parallelism and checkpoints see only this module and an objective's
`loss(model, batch)`; they never name a family or an objective."""

from __future__ import annotations

import torch
from torch import nn

from ptmkit.nn.auxiliary import auxiliary_modules, collect_auxiliary, reset_auxiliary


class TrainingModule(nn.Module):
    """One root for the whole step: FSDP2 and DDP hook a module's forward, and an objective may run several networks
    (ELECTRA's generator, then the discriminator). Children are named `model` and `objective`, in that order, so
    optimizer states and checkpoints name the same tensors with or without the wrapper.

    An objective with auxiliary networks builds them for this model in `bind(model)`; tensors they share with the
    model (the generator uses its embeddings) appear once in parameters().
    """

    def __init__(self, model: nn.Module, objective):
        super().__init__()
        self.model = model
        aux = objective.bind(model) if hasattr(objective, "bind") else None
        if aux is not None:
            self.objective = aux
        self.loss_fn = objective  # a plain object, not a module
        self._auxiliary = auxiliary_modules(self)  # e.g. sparse MoE layers; {} for most models

    @property
    def aux(self) -> nn.Module | None:
        return getattr(self, "objective", None)

    def forward(self, batch: dict[str, torch.Tensor]):
        if not self._auxiliary:
            return self.loss_fn.loss(self.model, batch)
        reset_auxiliary(self._auxiliary)
        loss, metrics = self.loss_fn.loss(self.model, batch)
        # Switch §2.2 / ST-MoE and any other regulariser: the weighted terms join the training loss; metrics["loss"]
        # stays the objective's, so perplexity and evaluation compare with models that have none
        extra, extra_metrics = collect_auxiliary(self._auxiliary)
        if extra is not None and self.training:
            loss = loss + extra
        return loss, {**metrics, **extra_metrics}


def bind_objective(model: nn.Module, objective) -> tuple[nn.Module, nn.Module | None]:
    """(the module whose parameters the optimizer updates, the objective's auxiliary module or None)."""
    module = TrainingModule(model, objective)
    return (model if module.aux is None else module), module.aux
