"""Int8 dynamic quantisation: int8 weights (one scale per output row) and int8 activations whose per-token scale is
computed on the fly, multiplied in int8 with int32 accumulation (torch._int_mm through torchao's Int8Tensor).

Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference"
(int8 affine arithmetic); the dynamic variant is PyTorch's quantize_dynamic, now torchao's
Int8DynamicActivationInt8WeightConfig. No calibration: each token's absmax sets its own scale at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from torchao.quantization import Int8DynamicActivationInt8WeightConfig, MappingType, PerRow, quantize_

from ptmkit.compress.quant.base import (
    DEFAULT_EXCLUDE, DEFAULT_TARGETS, QuantRecord, quant_sites, register, site_filter,
)
from ptmkit.config import to_dict

NAME = "int8-dynamic"


@dataclass
class Int8DynamicConfig:
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))


def apply(model: nn.Module, cfg: Int8DynamicConfig) -> nn.Module:
    sites = quant_sites(model, cfg.targets, cfg.exclude, NAME)
    # symmetric per-token activations and per-row weights: the int8 x int8 -> int32 matmul needs no zero-point
    # correction; set_inductor_config=False leaves the process-wide torch.compile settings alone
    quantize_(model, Int8DynamicActivationInt8WeightConfig(act_mapping_type=MappingType.SYMMETRIC,
                                                           granularity=PerRow(), set_inductor_config=False),
              filter_fn=site_filter(sites))
    register(model, QuantRecord(NAME, to_dict(cfg), {s.name: 8 for s in sites}, activation_bits=8, group_size=None,
                                numel={s.name: s.module.weight.numel() for s in sites}))
    return model
