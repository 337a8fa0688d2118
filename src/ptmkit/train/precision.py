"""Numeric precision for training: fp32, bf16 autocast, or fp16 autocast with dynamic loss scaling
(Micikevicius et al. 2018). Steps skipped because of inf/NaN gradients are counted.

"auto" (every recipe's default) is bf16 autocast where the device computes in bf16 natively and fp32 where it does
not. Whether bf16 pays depends on the chip, not on the code: on a CPU with AVX512-BF16 or AMX, bf16 autocast trained
about 2x faster than fp32; on an AVX2-only CPU (AMD EPYC, 2026-12-07) a 4096 x 384 x 1536 bf16 matmul took 3.7 s
against fp32's 70 ms, 53x slower, because oneDNN emulates bf16 there. An explicit "bf16" on such a CPU is honoured
with a warning that says so."""

from __future__ import annotations

import contextlib
import functools
import platform
import warnings
from typing import Literal

import torch

from ptmkit.config import ConfigError

Mode = Literal["auto", "fp32", "bf16", "fp16"]
MODES = ("auto", "fp32", "bf16", "fp16")


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively: AVX512-BF16 or AMX on x86, the BF16 extension on Arm."""
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    try:  # aarch64 and others: oneDNN's own check (BF16 instructions)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _device_type(device: str | torch.device) -> str:
    if str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def resolve(mode: str, device: str | torch.device) -> str:
    """The concrete precision (fp32 | bf16 | fp16) that `mode` means on `device`; "auto" picks bf16 where it is
    native (CUDA with bf16, else fp16 with loss scaling; a CPU with fast bf16), else fp32."""
    if mode not in MODES:
        raise ConfigError(f"precision must be one of {', '.join(MODES)}, got {mode!r}")
    kind = _device_type(device)
    if mode == "auto":
        if kind == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if kind == "cpu":
            return "bf16" if cpu_has_fast_bf16() else "fp32"
        return "fp32"
    if mode == "bf16" and kind == "cpu" and not cpu_has_fast_bf16():
        _warn_slow_bf16()
    return mode


@functools.cache
def _warn_slow_bf16() -> None:  # once a process: every evaluation would repeat it
    warnings.warn("precision bf16 on a CPU without AVX512-BF16/AMX: oneDNN emulates bf16 matmuls there, measured "
                  "about 50x slower than fp32 on an AVX2 CPU; use precision 'auto' (fp32 here) or 'fp32'",
                  stacklevel=3)


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
