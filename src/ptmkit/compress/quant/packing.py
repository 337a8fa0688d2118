"""Sub-byte packing for the files on disk: signed b-bit integers (b = 1, 2, 4, 8), 8 / b of them per byte.

torchao keeps int2/int4 values unpacked in int8 containers (IntxUnpackedToInt8Tensor) for its decomposed CPU
matmul; on disk that would cost 8 bits per weight. Here each value is offset to unsigned (v + 2^(b-1)) and the
values of a byte are laid out least significant first: byte = u0 | u1 << b | u2 << 2b ... (GGUF's and
bitsandbytes' nibble order for 4 bits).
"""

from __future__ import annotations

import torch


def pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed integers in [-2^(b-1), 2^(b-1) - 1] (any integer dtype, any shape) -> flat uint8 of ceil(n b / 8)."""
    if bits == 8:
        return values.to(torch.int8).flatten().view(torch.uint8)
    per = 8 // bits
    u = (values.flatten().to(torch.int16) + (1 << (bits - 1))).to(torch.uint8)  # (n,) in [0, 2^b)
    u = torch.nn.functional.pad(u, (0, -u.numel() % per)).view(-1, per)  # (bytes, per)
    shifts = torch.arange(per, dtype=torch.uint8) * bits  # (per,)
    return (u << shifts).sum(dim=1, dtype=torch.uint8)  # no carries: the fields do not overlap


def unpack(packed: torch.Tensor, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of pack: int8 values of `shape`."""
    n = 1
    for d in shape:
        n *= d
    if bits == 8:
        return packed.view(torch.int8)[:n].reshape(shape)
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.uint8) * bits  # (per,)
    u = (packed[:, None] >> shifts) & ((1 << bits) - 1)  # (bytes, per)
    return (u.flatten()[:n].to(torch.int16) - (1 << (bits - 1))).to(torch.int8).reshape(shape)
