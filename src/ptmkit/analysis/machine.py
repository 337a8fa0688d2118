"""Which machine a measurement ran on, in words, for the notes under tables of step times and latencies: the same
code runs several times faster or slower on another chip (bf16 autocast is native on some CPUs and emulated on
others), so a time without its machine cannot be compared."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from ptmkit.nn.autocast import _device_type, cpu_has_fast_bf16


@functools.cache
def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name ("AMD EPYC 7B13"), or the platform's processor string where /proc/cpuinfo is absent."""
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware")) and ":" in line:
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def device_text(device: str | torch.device = "cpu", threads: int | None = None) -> str:
    """E.g. "AMD EPYC 7B13 (2 cores, 1 thread, bf16 emulated)" or "NVIDIA H200": the machine that a table's times
    were measured on; `threads` defaults to torch's intra-op thread count."""
    if _device_type(device) == "cuda":  # "auto" resolves as precision's "auto" does
        return torch.cuda.get_device_name(torch.device(device) if ":" in str(device) else None)
    threads = torch.get_num_threads() if threads is None else threads
    bf16 = "native bf16" if cpu_has_fast_bf16() else "bf16 emulated"
    return (f"{cpu_model()} ({os.cpu_count()} cores, {threads} thread{'s' if threads != 1 else ''}, {bf16})")
