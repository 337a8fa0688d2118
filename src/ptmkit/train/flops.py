"""Model FLOPs per token and model FLOPs utilisation (MFU; Chowdhery et al. 2022, PaLM appendix B).

Training costs 6 FLOPs per parameter per token (forward 2, backward 4) plus attention scores:
12 * layers * seq * width per token for bidirectional attention, half of that when causal.
MFU = (model FLOPs per token x tokens/s) / peak FLOP/s, always printed with its denominator.
"""

from __future__ import annotations

import functools

import math
import re
import statistics
import time

import torch
from torch import nn

# Dense peak FLOP/s per device for bf16 matmuls on tensor cores (fp16 where the device has no bf16: V100).
# Source: the vendors' datasheets (NVIDIA H100/H200/A100/A10G/L4/V100/RTX 4090/B200, AMD MI300X). Datasheets
# often headline "with sparsity" figures (2:4 structured sparsity), which are twice the dense rate; these are
# the dense figures, i.e. half of the sparsity-doubled ones. MFU against a sparsity peak would be halved.
PEAK_FLOPS = {
    "H100 SXM": 989e12,  # 1,979 TFLOP/s with sparsity
    "H100 PCIe": 756e12,  # 1,513 with sparsity
    "H200": 989e12,  # H200 SXM: same tensor cores as H100 SXM, more and faster HBM
    "A100": 312e12,  # SXM and PCIe alike; 624 with sparsity
    "A10G": 125e12,  # AWS A10G (an A10 variant)
    "L4": 121e12,  # 242 with sparsity
    "V100": 125e12,  # fp16 tensor cores (V100 has no bf16); SXM2 figure
    "RTX 4090": 165e12,  # bf16/fp16 with fp32 accumulation (Ada whitepaper); fp16 accumulation is 2x
    "B200": 2250e12,  # 4.5 PFLOP/s with sparsity
    "MI300X": 1307e12,  # 1,307.4 TFLOP/s dense bf16 (AMD Instinct MI300X datasheet)
}


def training_flops_breakdown(n_params: int, n_layers: int, seq_len: int, width: int, causal: bool) -> dict:
    """Training FLOPs per token (forward + backward) of a decoder-only or encoder-only Transformer.

        params    = 6 N                      (Kaplan et al. 2020; PaLM appendix B: 2 forward + 4 backward per
                                              weight per token)
        attention = 12 L T d                 (bidirectional: Q K^T and A V cost 2 T d FLOPs each per token
                                              per layer forward, x3 for forward + backward. PaLM appendix B
                                              writes 12 L H Q T for H heads of size Q, so d = H Q; Korthikanti
                                              et al. 2022 count the same term per layer inside
                                              72 B s l h^2 (1 + s / 6h + V / 12 h l): 12 B s^2 l h = 12 s h
                                              per token per layer)
                  = 12 L T d / 2 = 6 L T d   (causal: only the unmasked lower triangle is needed)
        total     = params + attention

    N counts the parameters that multiply activations: leave out embedding tables that are only looked up
    (learned positions, segment embeddings); the token embedding counts when it is (or is tied to) the output
    projection. `width` is the attention width d = heads x head size (the hidden size for GPT-2 and BERT).

    Causal convention: PaLM and Korthikanti et al. count the full T x T score matrix even for causal models;
    here a causal model is credited with half of it (the exact unmasked share is (T + 1) / 2T, which tends to
    1/2), the work a causal kernel such as FlashAttention actually has to do. The causal count is therefore
    6 L T d per token below PaLM's, and causal MFU correspondingly lower: pass causal=False to reproduce
    PaLM's figures.
    Elementwise work (norms, activations, softmax, the loss) is not counted, as in both references.
    """
    params = 6 * n_params
    attention = 12 * n_layers * seq_len * width
    if causal:
        attention = attention / 2
    return {"params": float(params), "attention": float(attention), "total": float(params + attention)}


def training_flops_per_token(n_params: int, n_layers: int, seq_len: int, width: int, causal: bool) -> float:
    """Model FLOPs per trained token: `training_flops_breakdown(...)["total"]` (see there for the formula).

    n_params should exclude embedding tables that are looked up rather than multiplied
    (the output projection, tied or not, is a matmul and counts)."""
    return training_flops_breakdown(n_params, n_layers, seq_len, width, causal)["total"]


def applied_parameters(model: nn.Module) -> int:
    """Parameters counted once per use in the forward pass: a module shared across layers (ALBERT's cross-layer
    sharing, Lan et al. 2020 §3.1) multiplies activations once per layer it serves, so it counts that many times.
    Tied parameters (an output layer tied to the embedding) are one tensor used once as a matmul and count once."""
    uses: dict[int, int] = {}
    modules: dict[int, nn.Module] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
        modules[id(m)] = m
    unique = sum(p.numel() for p in model.parameters())
    extra = sum((uses[i] - 1) * sum(p.numel() for p in m.parameters(recurse=False))
                for i, m in modules.items() if uses[i] > 1)
    return unique + extra


def device_peak_entry(name: str) -> tuple[str, float] | None:
    """(table key, dense peak FLOP/s) for a device name as torch.cuda.get_device_name() gives it, or None.

    Matching is by whole words, so 'NVIDIA L40S' is not taken for an L4: 'NVIDIA H100 80GB HBM3' -> H100 SXM,
    'NVIDIA H100 PCIe' -> H100 PCIe, 'NVIDIA H200' -> H200, 'NVIDIA A100-SXM4-80GB' -> A100,
    'AMD Instinct MI300X' -> MI300X. An H100 of another form factor falls back to the SXM figure (the highest,
    so MFU errs low)."""
    words = set(re.split(r"[^A-Z0-9]+", name.upper()))
    # Longest keys first, so 'H100 PCIe' is tried before any key that is a subset of it.
    for key in sorted(PEAK_FLOPS, key=lambda k: -len(k.split())):
        if all(part in words for part in key.upper().split()):
            return key, PEAK_FLOPS[key]
    if "H100" in words:
        return "H100 SXM", PEAK_FLOPS["H100 SXM"]
    return None


def device_peak_flops(name: str) -> float | None:
    """Peak for a CUDA device name such as 'NVIDIA H100 80GB HBM3' (None when unknown)."""
    entry = device_peak_entry(name)
    return entry[1] if entry is not None else None


def measure_cpu_peak_flops(dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 5,
                           warmup: int = 2, work: float = 1e9) -> float:
    """Measured matmul FLOP/s of this CPU: the denominator for CPU MFU (CPUs have no datasheet figure that
    torch can reach, and the achievable rate depends on threads, dtype and the BLAS build).

    Times torch.mm of two size x size matrices (2 size^3 FLOPs each) with torch's current thread count
    (set it with torch.set_num_threads first), after `warmup` untimed products; returns the median over
    `repeats` timings. Small sizes repeat the product within one timing so that each lasts ~`work` FLOPs."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(dtype)
    b = torch.randn(size, size, generator=g).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    flops = 2.0 * size**3
    inner = max(1, math.ceil(work / flops))
    for _ in range(warmup):
        torch.mm(a, b, out=out)
    rates = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=out)
        rates.append(flops * inner / (time.perf_counter() - t0))
    return statistics.median(rates)


def mfu(flops_per_token: float, tokens_per_s: float, peak: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak (a fraction, 0.413 = 41.3%)."""
    if peak <= 0:
        raise ValueError(f"peak FLOP/s must be positive, got {peak}")
    return flops_per_token * tokens_per_s / peak


def format_flops(flops_per_s: float) -> str:
    """'989 TFLOP/s', '98.2 GFLOP/s': three significant figures in the largest unit that keeps them >= 1."""
    for unit, scale in (("PFLOP/s", 1e15), ("TFLOP/s", 1e12), ("GFLOP/s", 1e9), ("MFLOP/s", 1e6)):
        if flops_per_s >= scale:
            return f"{flops_per_s / scale:.3g} {unit}"
    return f"{flops_per_s:.3g} FLOP/s"


def format_mfu(value: float, peak: float, source: str) -> str:
    """The figure with its denominator: 'MFU 41.3% of 989 TFLOP/s (H100 SXM bf16 dense)'."""
    return f"MFU {100 * value:.1f}% of {format_flops(peak)} ({source})"


def measured_step_flops(step) -> float:
    """FLOPs of one call of `step()` (forward + backward of a training step), counted by torch's FlopCounterMode:
    every matmul, convolution and attention kernel actually dispatched, so objective heads that score only some
    positions and auxiliary networks (ELECTRA's generator) are counted as run. Elementwise work is not counted.

    Attention: FlopCounterMode counts the CUDA SDPA kernels (flash, efficient, cuDNN) at the full T x T cost,
    causal or not, and the math backend as the batched matmuls it runs (also full); the fused CPU kernel
    (aten._scaled_dot_product_flash_attention_for_cpu) has no formula in torch and counts as zero."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


@functools.lru_cache(maxsize=None)
def _cpu_peak(dtype: str, threads: int) -> float:
    """~0.2 s, once per process. A probe first: where the dtype is emulated (bf16 on a CPU without AVX512-BF16 or
    AMX runs ~50x slower than fp32) the full-size measurement took 17 s of every run's start; there the matrices
    shrink to 256 and each timing to ~50 ms (the rate of an emulated dtype barely depends on the size)."""
    dt = getattr(torch, dtype)
    rough = measure_cpu_peak_flops(dt, size=256, repeats=1, warmup=1, work=1e7)
    if rough >= 20e9:
        return measure_cpu_peak_flops(dt, size=1024, repeats=3)
    return measure_cpu_peak_flops(dt, size=256, repeats=3, warmup=1, work=rough * 0.05)


def mfu_denominator(device: str, precision: str) -> tuple[float | None, str]:
    """Peak FLOP/s per device for MFU and where it comes from: the datasheet's dense bf16/fp16 figure on a known GPU,
    a measured matmul rate on the CPU (no datasheet figure there is reachable by torch)."""
    from ptmkit.nn.autocast import resolve

    precision = resolve(precision, device)  # "auto" counts as what it runs as
    if device.startswith("cuda"):
        entry = device_peak_entry(torch.cuda.get_device_name())
        return (entry[1], f"{entry[0]} bf16 dense, datasheet") if entry else (None, "unknown GPU")
    if device == "cpu":
        dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")
        threads = torch.get_num_threads()
        return _cpu_peak(dtype, threads), f"measured CPU {dtype} matmul, {threads} threads"
    return None, ""
