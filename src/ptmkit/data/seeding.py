"""Per-step random generators for data corruption (masking, spans, noise)."""

from __future__ import annotations

import torch


def seeded_generator(seed: int, step: int) -> torch.Generator:
    """One generator per (run seed, step): corruption is reproducible after a resume, whatever came before."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step) % (2**63 - 1))
    return g
