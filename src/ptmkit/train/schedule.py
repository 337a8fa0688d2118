"""Learning-rate schedules: linear warm-up (Goyal et al. 2017) then cosine, linear or constant decay."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ptmkit.config import ConfigError


@dataclass
class ScheduleConfig:
    warmup_steps: int = 0  # linear warm-up from 0 to the peak lr over this many steps
    decay: Literal["cosine", "linear", "constant"] = "linear"  # shape after warm-up
    min_lr_ratio: float = 0.0  # final lr as a fraction of the peak

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ConfigError(f"schedule: warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"schedule: min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


def lr_factor(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the peak lr for the update made at `step` (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.decay == "constant":
        return 1.0
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.decay == "cosine":
        shape = 0.5 * (1 + math.cos(math.pi * progress))
    else:
        shape = 1.0 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int):
    if cfg.warmup_steps > total_steps:
        raise ConfigError(f"schedule: warmup_steps {cfg.warmup_steps} exceeds the run's {total_steps} steps")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg))
