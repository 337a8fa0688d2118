"""Weight-only quantisation: int8 or int4 weights with per-row or per-group scales, fp32 activations; the weight is
dequantised inside the matmul, so memory (and memory traffic) shrinks while the arithmetic stays floating point.

Int8: torchao Int8WeightOnlyConfig (Int8Tensor). Int4 group-wise: Frantar et al. 2023 (GPTQ) and Lin et al. 2024
(AWQ) popularised 4-bit groups of 32-128 columns with one scale each; here round-to-nearest, symmetric.

Int4 on CPU with torchao 0.18: Int4WeightOnlyConfig has no CPU path in this version. Its packing formats need CUDA
(plain / preshuffled: MSLK kernels; tile_packed_to_4d: the tinygemm `_weight_int4pack_mm`), XPU or NPU (plain_int32),
and the CPU format of earlier releases (Int4CPULayout / `_weight_int4pack_mm_for_cpu`) was removed. So int4 goes
through IntxWeightOnlyConfig(weight_dtype=torch.int4, PerGroup(g)): IntxUnpackedToInt8Tensor holds the int4 values
in [-8, 7] in an int8 container and dequantises them for an fp32 matmul. ptmkit packs two values per byte on disk.

Weight-only is also the one form that applies to embedding tables (a lookup has no activation to quantise): name
nn.Embedding modules in `embeddings` (e.g. ["embeddings.tok"]) and their rows are quantised too, with the same bits
and groups; a BERT MLM head that reads the input embedding as its output matrix then multiplies with the quantised
table. A tied output layer that is a module of its own (GPT-2's lm_head) is refused: the two would stop sharing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchao.quantization import (
    Int8WeightOnlyConfig, IntxWeightOnlyConfig, MappingType, PerGroup, PerRow, quantize_,
)

from ptmkit.compress.quant.base import (
    DEFAULT_EXCLUDE, DEFAULT_TARGETS, QuantRecord, check_group_size, quant_sites, register, site_filter,
)
from ptmkit.config import ConfigError, to_dict


@dataclass
class Int8WeightConfig:
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    group_size: int | None = None  # None: one scale per output row (per channel)
    embeddings: list[str] = field(default_factory=list)  # nn.Embedding tables to quantise too (none by default)


@dataclass
class Int4WeightConfig:
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    group_size: int = 32  # input columns per scale; must divide every target's in_features
    embeddings: list[str] = field(default_factory=list)  # nn.Embedding tables to quantise too (none by default)

    def __post_init__(self) -> None:
        if not isinstance(self.group_size, int) or self.group_size < 1:
            raise ConfigError(f"int4-weight: group_size must be a positive int (4 bits need group-wise scales; 32-128 "
                              f"is usual), got {self.group_size!r}")


def _sites(model: nn.Module, cfg: Int8WeightConfig | Int4WeightConfig, method: str):
    """The target Linear layers, then the embedding tables named in cfg.embeddings."""
    sites = quant_sites(model, cfg.targets, cfg.exclude, method)
    if cfg.embeddings:
        sites += quant_sites(model, cfg.embeddings, [], method, types=(nn.Embedding,))
    return sites


def apply_int8(model: nn.Module, cfg: Int8WeightConfig) -> nn.Module:
    sites = _sites(model, cfg, "int8-weight")
    check_group_size(sites, cfg.group_size, "int8-weight")
    granularity = PerRow() if cfg.group_size is None else PerGroup(cfg.group_size)
    quantize_(model, Int8WeightOnlyConfig(granularity=granularity, set_inductor_config=False),
              filter_fn=site_filter(sites))
    register(model, QuantRecord("int8-weight", to_dict(cfg), {s.name: 8 for s in sites}, activation_bits=None,
                                group_size=cfg.group_size, numel={s.name: s.module.weight.numel() for s in sites}))
    return model


def apply_int4(model: nn.Module, cfg: Int4WeightConfig) -> nn.Module:
    sites = _sites(model, cfg, "int4-weight")
    check_group_size(sites, cfg.group_size, "int4-weight")
    quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(cfg.group_size),
                                          mapping_type=MappingType.SYMMETRIC),
              filter_fn=site_filter(sites))
    register(model, QuantRecord("int4-weight", to_dict(cfg), {s.name: 4 for s in sites}, activation_bits=None,
                                group_size=cfg.group_size, numel={s.name: s.module.weight.numel() for s in sites}))
    return model
