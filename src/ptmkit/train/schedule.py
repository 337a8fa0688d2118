"""Learning-rate schedules: a warm-up (linear, exponential or constant) then cosine, linear or constant decay.

Warm-up shapes, as multipliers of the peak lr for the update at 0-based step s < W (= warmup_steps):
  linear       (s + 1) / W                    Goyal et al. 2017 §2.2 "gradual warmup" (the default)
  linear_from_zero  s / W                     transformers' get_linear_schedule_with_warmup (and so the HF Trainer):
                                              the first update runs at lr 0 (it only fills Adam's moments); use it
                                              to reproduce a transformers run step for step
  exponential  1 - exp(-5 (s + 1) / W)        Ma & Yarats 2021 "On the adequacy of untuned warmup for adaptive
                                              optimization": 1 - exp(-t / τ) with τ = W / 5, so the factor reaches
                                              1 - e^-5 = 0.993 at the end of warm-up. Their untuned rule
                                              τ = 1 / (1 - β2) is warmup_steps = 5 / (1 - β2) (5000 for β2 = 0.999)
  constant     constant_warmup_factor         He et al. 2016 §4.2 (ResNet-110 trained at 0.1x the lr until it
                                              started converging); Goyal et al. 2017 §2.2 "constant warmup"
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ptmkit.config import ConfigError

WARMUPS = ("linear", "linear_from_zero", "exponential", "constant")
# τ = W / 5: five time constants in the warm-up, so exponential ends within 1% of the peak, as linear does
EXP_WARMUP_TIME_CONSTANTS = 5.0


@dataclass
class ScheduleConfig:
    warmup_steps: int = 0  # warm-up length W in steps (0 = none)
    decay: Literal["cosine", "linear", "constant"] = "linear"  # shape after warm-up
    min_lr_ratio: float = 0.0  # final lr as a fraction of the peak
    warmup: Literal["linear", "linear_from_zero", "exponential", "constant"] = "linear"  # warm-up shape (see the module docstring)
    constant_warmup_factor: float = 0.1  # warmup: constant holds lr at this fraction of the peak for W steps

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ConfigError(f"schedule: warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"schedule: min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup not in WARMUPS:
            raise ConfigError(f"schedule: warmup must be one of {list(WARMUPS)}, got {self.warmup!r}")
        if not 0 < self.constant_warmup_factor <= 1:
            raise ConfigError(f"schedule: constant_warmup_factor must be in (0, 1] (He et al. used 0.1), "
                              f"got {self.constant_warmup_factor}")


def warmup_factor(step: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the peak lr for the update at `step` < cfg.warmup_steps."""
    if cfg.warmup == "constant":
        return cfg.constant_warmup_factor
    if cfg.warmup == "exponential":
        return 1.0 - math.exp(-EXP_WARMUP_TIME_CONSTANTS * (step + 1) / cfg.warmup_steps)
    if cfg.warmup == "linear_from_zero":
        return step / cfg.warmup_steps
    return (step + 1) / cfg.warmup_steps


def lr_factor(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """Multiplier of the peak lr for the update made at `step` (0-based)."""
    if step < cfg.warmup_steps:
        return warmup_factor(step, cfg)
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
    """LambdaLR with one factor for all groups: each group's lr is its own initial lr (layer-wise lr decay gives
    groups different ones) times lr_factor, so the ratios between groups hold throughout the run."""
    if cfg.warmup_steps > total_steps:
        raise ConfigError(f"schedule: warmup_steps {cfg.warmup_steps} exceeds the run's {total_steps} steps")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg))
