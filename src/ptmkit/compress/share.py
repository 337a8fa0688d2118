"""Cross-layer parameter sharing applied to a trained model: the blocks of each group are replaced by one block (their
mean, or the group's first), used at every position of the group — ALBERT's sharing (Lan et al. 2020 §3.1, all
layers one group) brought to a model that was trained without it; distillation from the unshared model then recovers
what the tie cost (survey §6.3: "parameter sharing", with ALBERT as its example).

The shared model runs exactly as before at every position (same depth, same compute); only the number of distinct
parameters falls, by (group size - 1) blocks per group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.models.io import SHARED_ATTR  # on the backbone: the groups; save_model records them in config.json
from ptmkit.models.registry import backbone_of


@dataclass
class ShareConfig:
    num_groups: int = 1  # groups of consecutive layers of (nearly) equal size; 1 = every layer one block (ALBERT)
    groups: list[list[int]] = field(default_factory=list)  # explicit groups (0-based layers), instead of num_groups
    init: str = "mean"  # the shared block's weights: the group's mean, or its first block's ("first")

    def __post_init__(self) -> None:
        if self.init not in ("mean", "first"):
            raise ConfigError(f"share: init must be 'mean' or 'first', got {self.init!r}")
        if not self.groups and self.num_groups < 1:
            raise ConfigError(f"share: num_groups must be >= 1 (1 = ALBERT's all-shared), got {self.num_groups}")


def layer_groups(n_layers: int, cfg: ShareConfig) -> list[list[int]]:
    """The groups as lists of 0-based layers, checked to cover every layer exactly once."""
    if cfg.groups:
        groups = [list(g) for g in cfg.groups]
    else:
        if cfg.num_groups > n_layers:
            raise ConfigError(f"share: num_groups {cfg.num_groups} exceeds the model's {n_layers} layers")
        bounds = [round(i * n_layers / cfg.num_groups) for i in range(cfg.num_groups + 1)]
        groups = [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]
    flat = sorted(i for g in groups for i in g)
    if flat != list(range(n_layers)) or any(not g for g in groups):
        raise ConfigError(f"share: groups {groups} must cover layers 0..{n_layers - 1} exactly once, none empty")
    return groups


def apply(model: nn.Module, cfg: ShareConfig) -> nn.Module:
    """Tie the blocks of each group of `model` in place; returns the model."""
    backbone = backbone_of(model)
    blocks = getattr(backbone, "layers", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ConfigError(f"share: {backbone.family} has no list of blocks to share (ALBERT already shares its layer)")
    if getattr(backbone, SHARED_ATTR, None):
        raise ConfigError("share: the model's layers are already shared; share a model once (reload the unshared one "
                          "to choose other groups)")
    groups = layer_groups(len(blocks), cfg)
    first = {id(blocks[i]) for i in range(len(blocks))}
    if len(first) != len(blocks):
        raise ConfigError("share: some blocks are already one module (tied); share an untied model")
    for g in groups:
        block = blocks[g[0]]
        if cfg.init == "mean" and len(g) > 1:
            with torch.no_grad():
                members = [dict(blocks[i].named_parameters()) for i in g]
                for name, p in block.named_parameters():
                    p.copy_(torch.stack([m[name] for m in members]).mean(0))
        for i in g:
            blocks[i] = block
    setattr(backbone, SHARED_ATTR, groups)
    return model


def shared_groups(model: nn.Module) -> list[list[int]]:
    """The groups a shared model's layers form ([] if none are shared)."""
    return list(getattr(backbone_of(model), SHARED_ATTR, None) or [])
