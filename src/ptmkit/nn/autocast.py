"""Which autocast precision a device runs natively: the resolution of precision "auto", shared by the training
engine and every forward-only user (evaluation, retrieval encoders).

"auto" (every recipe's default) is bf16 autocast where the device computes in bf16 natively and fp32 where it does
not. Whether bf16 pays depends on the chip, not on the code: on a CPU with AVX512-BF16 or AMX, bf16 autocast trained
about 2x faster than fp32; on an AVX2-only CPU (AMD EPYC, 2026-12-07) a 4096 x 384 x 1536 bf16 matmul took 3.7 s
against fp32's 70 ms, 53x slower, because oneDNN emulates bf16 there. An explicit "bf16" on such a CPU is honoured
with a warning that says so."""

from __future__ import annotations

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
