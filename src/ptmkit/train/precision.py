"""Numeric precision for training: fp32, bf16 autocast, or fp16 autocast with dynamic loss scaling
(Micikevicius et al. 2018). Steps skipped because of inf/NaN gradients are counted.

"auto" (every recipe's default) is resolved by nn/autocast.py: bf16 autocast where the device computes in bf16
natively, fp32 where it is emulated."""

from __future__ import annotations

import contextlib

import torch

from ptmkit.nn.autocast import MODES, Mode, cpu_has_fast_bf16, resolve  # noqa: F401  (the engine's names for them)


class Precision:
    def __init__(self, mode: str, device: torch.device):
        mode = resolve(mode, device)
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

    def step(self, optimizer: torch.optim.Optimizer, params, grad_clip: float, group=None,
             counted_elsewhere: frozenset[int] = frozenset()) -> tuple[float, bool]:
        """Unscale, clip, step. Returns (global grad norm before clipping, whether the step was skipped)."""
        if self.scaler:
            self.scaler.unscale_(optimizer)
        params = [p for p in params if p.grad is not None]
        norm = clip_grad_norm([p.grad for p in params], grad_clip if grad_clip > 0 else float("inf"), group,
                              skip_in_norm={id(p.grad) for p in params if id(p) in counted_elsewhere})
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


def clip_grad_norm(grads: list[torch.Tensor], max_norm: float, group=None, skip_in_norm: set[int] = frozenset()) -> float:
    """Global L2 norm of all gradients (returned, before clipping) and in-place clipping to max_norm.

    Works for plain tensors and for DTensors on any mix of meshes (FSDP2 shards, tensor-parallel splits, both, and
    the replicated plain tensors beside them): each group's norm is reduced over its own mesh, then combined.
    `group`: ranks holding *different* parameters (pipeline stages), whose squared norms are summed too;
    `skip_in_norm`: ids of gradients another rank of `group` already counts (a tied matrix on two stages).
    """
    groups: dict[tuple, list[torch.Tensor]] = {}
    scaled_only = [g for g in grads if id(g) in skip_in_norm]
    for g in (g for g in grads if id(g) not in skip_in_norm):
        mesh = getattr(g, "device_mesh", None)
        groups.setdefault((id(mesh), g.device.type, g.dtype), []).append(g)
    squares = []
    for gs in groups.values():
        n = torch.nn.utils.get_total_norm(gs, 2.0)
        if hasattr(n, "full_tensor"):  # a DTensor: partial sums over the ranks that hold the shards
            n = n.full_tensor()
        squares.append(n.double().square().cpu())
    square = torch.stack(squares).sum() if squares else torch.zeros((), dtype=torch.float64)
    if group is not None:
        import torch.distributed as dist

        if dist.get_backend(group) == "nccl":
            square = square.cuda()
        dist.all_reduce(square, group=group)
    total = float(square.sqrt())
    if total > max_norm and max_norm != float("inf") and total == total:  # finite and above the threshold
        coef = max_norm / (total + 1e-6)
        for gs in [*groups.values(), scaled_only]:
            if gs:
                torch._foreach_mul_(gs, coef)
    return total
