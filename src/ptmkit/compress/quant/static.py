"""Static post-training int8 quantisation: observers record each target Linear's input range over calibration
batches; the range becomes a fixed per-tensor activation scale, and the layer runs int8 x int8 -> int32 with it.

Jacob et al. 2018 (integer-only inference with calibrated activation ranges); Wu et al. 2020, "Integer Quantization
for Deep Learning Inference" (max and percentile calibration). Runs on torchao's Int8StaticActivationInt8WeightConfig
(CPU: torch._int_mm through torchao's Int8Tensor), one config per layer through torchao's FqnToConfig because each
layer has its own activation scale. Weights: int8, one scale per output row. torchao's static path gives the scale
the rank of the calibrated input ((1, 1, 1) for (B, T, H)), so a layer must see inputs of that rank at inference
(every Linear of the blocks does).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn
from torchao.quantization import FqnToConfig, Int8StaticActivationInt8WeightConfig, PerRow, PerTensor, quantize_

from ptmkit.compress.quant.base import (
    DEFAULT_EXCLUDE, DEFAULT_TARGETS, QuantRecord, quant_sites, register, run_batch, take_batches,
)
from ptmkit.compress.quant.observers import OBSERVERS, observed, observer
from ptmkit.config import ConfigError, to_dict

NAME = "static-int8"


@dataclass
class StaticInt8Config:
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    observer: str = "minmax"  # minmax | percentile
    percentile: float = 99.99  # for observer "percentile": |x| above it is clipped
    max_batches: int = 32  # calibration batches read (an endless sampler is fine)

    def __post_init__(self) -> None:
        if self.observer not in OBSERVERS:
            raise ConfigError(f"{NAME}: unknown observer {self.observer!r}; choose one of {sorted(OBSERVERS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"{NAME}: percentile must be in (50, 100], got {self.percentile} (99.9-99.999 is usual)")
        if self.max_batches < 1:
            raise ConfigError(f"{NAME}: max_batches must be >= 1, got {self.max_batches}")


class _Observe:
    """A forward pre-hook feeding a module's input to its observer (and leaving the input as it is)."""

    def __init__(self, obs):
        self.obs = obs

    def __call__(self, module, args):
        self.obs(args[0])


@torch.no_grad()
def calibrate(model: nn.Module, sites, batches: list[Any], kind: str, percentile: float) -> dict[str, torch.Tensor]:
    """Run the calibration batches with an observer on each site's input; return the per-site activation scale."""
    observers = {s.name: observer(kind, percentile) for s in sites}
    handles = [s.module.register_forward_pre_hook(_Observe(observers[s.name])) for s in sites]
    was_training = model.training
    model.eval()  # calibrate the inference graph: no dropout
    try:
        for batch in batches:
            run_batch(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    silent = [name for name, o in observers.items() if not observed(o)]
    if silent:
        raise ConfigError(f"{NAME}: {silent[0]} never ran on the calibration batches, so it has no activation range; "
                          "leave it out of the targets or calibrate with batches that reach it")
    return {name: o.calculate_qparams()[0] for name, o in observers.items()}


def apply(model: nn.Module, cfg: StaticInt8Config, batches: Iterable[Any]) -> nn.Module:
    sites = quant_sites(model, cfg.targets, cfg.exclude, NAME)
    scales = calibrate(model, sites, take_batches(batches, cfg.max_batches, NAME, "calibration"), cfg.observer,
                       cfg.percentile)
    per_layer = OrderedDict(
        (name, Int8StaticActivationInt8WeightConfig(act_quant_scale=scale, granularity=[PerTensor(), PerRow()],
                                                    set_inductor_config=False))
        for name, scale in scales.items())
    quantize_(model, FqnToConfig(per_layer), filter_fn=None)  # torchao: FqnToConfig takes no filter of its own
    register(model, QuantRecord(NAME, to_dict(cfg), {s.name: 8 for s in sites}, activation_bits=8, group_size=None,
                                numel={s.name: s.module.weight.numel() for s in sites},
                                extra={"activation_scale": {n: float(s.flatten()[0]) for n, s in scales.items()}}))
    return model
