"""Model FLOPs per token and model FLOPs utilisation (MFU; Chowdhery et al. 2022, PaLM appendix B).

Training costs 6 FLOPs per parameter per token (forward 2, backward 4) plus attention scores:
12 * layers * seq * width per token for bidirectional attention, half of that when causal.
"""

from __future__ import annotations

# Dense (not sparsity-doubled) peak FLOP/s per device for bf16/fp16 tensor-core matmuls.
PEAK_FLOPS = {
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H200": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L4": 121e12,
    "V100": 125e12,
    "RTX 4090": 165e12,
}


def training_flops_per_token(n_params: int, n_layers: int, seq_len: int, width: int, causal: bool) -> float:
    """n_params should exclude embedding tables that are looked up rather than multiplied
    (the output projection, tied or not, is a matmul and counts)."""
    attn = 12 * n_layers * seq_len * width
    return 6 * n_params + (attn / 2 if causal else attn)


def device_peak_flops(name: str) -> float | None:
    """Peak for a CUDA device name such as 'NVIDIA H100 80GB HBM3' (None when unknown)."""
    name = name.upper()
    for key, peak in PEAK_FLOPS.items():
        parts = key.upper().split()
        if all(p in name for p in parts):
            return peak
    if "H100" in name:
        return PEAK_FLOPS["H100 SXM"]
    return None


def measured_step_flops(step) -> float:
    """FLOPs of one call of `step()` (forward + backward of a training step), counted by torch's FlopCounterMode:
    every matmul, convolution and attention kernel actually dispatched, so objective heads that score only some
    positions and auxiliary networks (ELECTRA's generator) are counted as run. Elementwise work is not counted."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())
