"""Q-BERT-style mixed precision: each target layer's sensitivity is its Hessian trace per weight (Hutchinson), and
layers ranked by it get bit widths from {2, 4, 8} under an average-bit budget; each is quantised group-wise.

Shen et al. 2020, "Q-BERT: Hessian Based Ultra Low Precision Quantization of BERT" (mixed precision by Hessian
sensitivity, group-wise scales, 8-bit activations); the trace in place of Q-BERT's top eigenvalue is Dong et al.
2020 (HAWQ-V2), normalised by the layer's size so large and small matrices compare. Quantised with torchao's
Int8DynamicActivationIntxWeightConfig: weights int2/int4/int8, symmetric, one scale per group of `group_size` input
columns (Q-BERT groups rows of a matrix; column groups are the finer form torchao implements), activations int8 per
token at run time. torchao's CPU low-bit kernels (KleidiAI / lowbit, torch.ops.torchao._linear_8bit_act_*) are a
separate C++ build the torchao 0.18 wheel does not ship, so IntxUnpackedToInt8Tensor dequantises in the matmul (2-bit
compute is simulated, the activations are quantised then dequantised); the stored integers are 2/4/8-bit, and ptmkit
packs them to that width on disk.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torchao.quantization import FqnToConfig, Int8DynamicActivationIntxWeightConfig, MappingType, PerGroup, quantize_

from ptmkit.compress.quant.base import (
    DEFAULT_EXCLUDE, DEFAULT_TARGETS, QuantRecord, check_group_size, quant_sites, register, take_batches,
)
from ptmkit.compress.quant.hessian import hutchinson_traces
from ptmkit.config import ConfigError, to_dict

NAME = "qbert"
# widths ptmkit stores: torchao holds int1..int8, and 2/4/8 bits pack whole values into a byte on disk
INT_DTYPES = {2: torch.int2, 4: torch.int4, 8: torch.int8}


@dataclass
class QBertConfig:
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    budget: float = 4.0  # average bits per quantised weight, weighted by layer size
    choices: list[int] = field(default_factory=lambda: [2, 4, 8])
    group_size: int = 32  # input columns per scale
    batches: int = 4  # batches of the Hessian estimate
    samples: int = 16  # Rademacher vectors per batch
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [b for b in self.choices if b not in INT_DTYPES]
        if bad or not self.choices:
            raise ConfigError(f"{NAME}: bits {bad or self.choices} not supported: choose widths from "
                              f"{sorted(INT_DTYPES)} (torchao stores int1-int8; ptmkit packs 2, 4 and 8 bits whole "
                              "into bytes on disk)")
        self.choices = sorted(set(self.choices))
        if not self.choices[0] <= self.budget <= self.choices[-1]:
            raise ConfigError(f"{NAME}: budget {self.budget} average bits is outside what the choices {self.choices} "
                              f"can reach; set it between {self.choices[0]} and {self.choices[-1]}")
        if self.group_size < 1 or self.batches < 1 or self.samples < 1:
            raise ConfigError(f"{NAME}: group_size, batches and samples must be >= 1, got {self.group_size}, "
                              f"{self.batches}, {self.samples}")


def allocate_bits(sensitivity: dict[str, float], sizes: dict[str, int], budget: float,
                  choices: list[int]) -> dict[str, int]:
    """Bits per layer: most sensitive first, each takes the widest choice that still leaves every later layer its
    narrowest, capped by the width of the layer before it — so a more sensitive layer never gets fewer bits and the
    size-weighted average never exceeds `budget`."""
    total_bits = budget * sum(sizes.values())
    order = sorted(sensitivity, key=lambda n: -sensitivity[n])  # stable: ties keep model order
    left = sum(sizes.values())  # weights not yet given bits
    used, cap, bits = 0.0, max(choices), {}
    for name in order:
        left -= sizes[name]
        fits = [b for b in choices if b <= cap and used + b * sizes[name] + min(choices) * left <= total_bits + 1e-9]
        bits[name] = cap = max(fits)
        used += cap * sizes[name]
    return {n: bits[n] for n in sensitivity}


def apply(model: nn.Module, cfg: QBertConfig, batches: Iterable[Any],
          loss_fn: Callable[[nn.Module, Any], Any]) -> nn.Module:
    """Estimate the traces with `loss_fn(model, batch)` (a scalar loss, or an objective's `loss` returning (loss,
    metrics)) on up to cfg.batches batches, allocate bits, quantise in place."""
    sites = quant_sites(model, cfg.targets, cfg.exclude, NAME)
    check_group_size(sites, cfg.group_size, NAME)
    data = take_batches(batches, cfg.batches, NAME, "the Hessian estimate")
    weights = {s.name: s.module.weight for s in sites}
    traces = hutchinson_traces(model, loss_fn, data, weights, cfg.samples, cfg.seed)
    sizes = {n: w.numel() for n, w in weights.items()}
    sensitivity = {n: traces[n] / sizes[n] for n in traces}  # HAWQ-V2: mean trace, comparable across sizes
    bits = allocate_bits(sensitivity, sizes, cfg.budget, cfg.choices)
    per_layer = OrderedDict(
        (name, Int8DynamicActivationIntxWeightConfig(weight_dtype=INT_DTYPES[b], weight_granularity=PerGroup(
            cfg.group_size), weight_mapping_type=MappingType.SYMMETRIC))
        for name, b in bits.items())
    quantize_(model, FqnToConfig(per_layer), filter_fn=None)
    register(model, QuantRecord(NAME, to_dict(cfg), bits, activation_bits=8, group_size=cfg.group_size, numel=sizes,
                                extra={"trace": traces, "sensitivity": sensitivity}))
    return model
