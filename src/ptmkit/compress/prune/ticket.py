"""Lottery tickets in pre-trained models (Chen et al. 2020, "The Lottery Ticket Hypothesis for Pre-trained BERT
Networks" §3): a subnetwork is a mask over the pre-trained weights; it is found by iterative magnitude pruning with
rewinding (fine-tune, prune the smallest weights of the fine-tuned model, rewind the rest to their pre-trained values,
repeat) and compared with a random mask of the same sparsity. Here a mask fixed before training is a pruning method:
`ticket` loads one saved by `save_masks`, `random-mask` draws one; either stays fixed while the model fine-tunes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ptmkit.compress.prune.masks import Mask, Pruner, check_scope, mask_of, prune_lowest
from ptmkit.compress.prune.schedule import check_fraction
from ptmkit.config import ConfigError


@dataclass
class TicketConfig:
    path: str = ""  # masks saved by save_masks: {module name: bool mask shaped like its weight}
    targets: list[str] | None = None
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("ticket: give path, a masks file written by ptmkit.compress.prune.ticket.save_masks")


@dataclass
class RandomMaskConfig:
    sparsity: float = 0.5
    scope: str = "global"  # Chen et al.'s random pruning: the same share of the targeted weights, chosen at random
    seed: int = 0
    targets: list[str] | None = None
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_fraction("random-mask", "sparsity", self.sparsity)
        check_scope("random-mask", self.scope)


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """{module name: its bool mask} of every masked module (a pruning method attached, not yet finalized)."""
    return {name: m.mask.clone() for name, mod in model.named_modules() if (m := mask_of(mod)) is not None}


def save_masks(model: nn.Module, path: str | Path) -> Path:
    masks = masks_of(model)
    if not masks:
        raise ConfigError("save_masks: the model carries no pruning masks (prune it, e.g. with magnitude, first)")
    save_file({k: v.to(torch.uint8).contiguous() for k, v in masks.items()}, str(path))
    return Path(path)


class TicketPruner(Pruner):
    """A saved mask, fixed for the whole run (the rewound ticket of Chen et al.)."""

    method = "ticket"

    def __init__(self, model: nn.Module, cfg: TicketConfig):
        super().__init__(model, cfg.targets, cfg.exclude, Mask)
        saved = {k: v.bool() for k, v in load_file(cfg.path).items()}
        mods = {id(mod): name for name, mod in model.named_modules()}
        for m in {id(x.module): x for x in self.matrices}.values():
            name = mods[id(m.module)]
            if name not in saved:
                raise ConfigError(f"ticket: {cfg.path} has no mask for {name}; it was saved from another model or "
                                  "with other targets")
            if saved[name].shape != m.masker.mask.shape:
                raise ConfigError(f"ticket: the mask of {name} is {tuple(saved[name].shape)} but the weight is "
                                  f"{tuple(m.masker.mask.shape)}")
            m.masker.mask.copy_(saved[name])


class RandomMaskPruner(Pruner):
    """Random pruning at a given sparsity (the baseline every ticket must beat), fixed for the whole run."""

    method = "random-mask"

    def __init__(self, model: nn.Module, cfg: RandomMaskConfig):
        super().__init__(model, cfg.targets, cfg.exclude, Mask)
        g = torch.Generator().manual_seed(cfg.seed)
        scores = [torch.rand(m.kept().shape, generator=g).to(m.kept().device) for m in self.matrices]
        prune_lowest(self.matrices, scores, cfg.sparsity, cfg.scope)
