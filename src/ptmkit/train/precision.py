"""Numeric precision for training: fp32, bf16 autocast, or fp16 autocast with dynamic loss scaling
(Micikevicius et al. 2018). Steps skipped because of inf/NaN gradients are counted."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from ptmkit.config import ConfigError

Mode = Literal["fp32", "bf16", "fp16"]


class Precision:
    def __init__(self, mode: str, device: torch.device):
        if mode not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be fp32, bf16 or fp16, got {mode!r}")
        self.mode, self.device = mode, torch.device(device)
        self.scaler = torch.amp.GradScaler(self.device.type) if mode == "fp16" else None
        self.skipped_steps = 0

    def autocast(self):
        if self.mode == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.mode == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params, grad_clip: float) -> tuple[float, bool]:
        """Unscale, clip, step. Returns (global grad norm before clipping, whether the step was skipped)."""
        if self.scaler:
            self.scaler.unscale_(optimizer)
        params = [p for p in params if p.grad is not None]
        max_norm = grad_clip if grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2 / tensor-parallel gradients are DTensors: the norm is global
            norm = norm.full_tensor()
        norm = float(norm)
        skipped = False
        if self.scaler:
            scale = self.scaler.get_scale()
            self.scaler.step(optimizer)  # skips the update when gradients hold inf/NaN
            self.scaler.update()
            skipped = self.scaler.get_scale() < scale
        elif torch.isfinite(torch.tensor(norm)):
            optimizer.step()
        else:
            skipped = True  # fp32/bf16: never apply a NaN update
        self.skipped_steps += skipped
        optimizer.zero_grad(set_to_none=True)
        return norm, skipped

    def state_dict(self) -> dict:
        return {"skipped_steps": self.skipped_steps, "scaler": self.scaler.state_dict() if self.scaler else None}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_steps = state["skipped_steps"]
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
