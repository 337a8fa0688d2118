"""Calibration observers: the range of a Linear layer's input over calibration batches, turned into one fixed
symmetric int8 scale (per tensor) for static quantisation.

"minmax" is torchao's AffineQuantizedMinMaxObserver (the running min/max, Jacob et al. 2018); "percentile" clips
outliers at the p-th percentile of |x| (Wu et al. 2020, "Integer Quantization for Deep Learning Inference"), which
torchao 0.18 does not ship. The percentile is taken per batch and averaged over
batches (a histogram over all batches, as TensorRT's calibrator keeps, would need a fixed range up front).
Both give their scale through torchao's choose_qparams_affine_with_min_max, so it follows the same symmetric int8
convention (absmax / 127.5 over [-128, 127]) as the scales torchao computes itself.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torchao.quantization import (
    AffineQuantizedMinMaxObserver, AffineQuantizedObserverBase, MappingType, PerTensor,
    choose_qparams_affine_with_min_max,
)

EPS = torch.finfo(torch.float32).eps


def _int8_symmetric(min_val: torch.Tensor, max_val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return choose_qparams_affine_with_min_max(min_val, max_val, MappingType.SYMMETRIC, [], torch.int8, -128, 127, EPS,
                                              torch.float32, torch.int8)


class PercentileObserver(AffineQuantizedObserverBase):
    """The mean over batches of the p-th percentile of |x|, as a symmetric per-tensor range."""

    def __init__(self, percentile: float):
        super().__init__(MappingType.SYMMETRIC, torch.int8, PerTensor(), -128, 127, EPS, torch.float32, torch.int8)
        self.percentile = percentile
        self.total = 0.0
        self.batches = 0
        self.ndim = 0

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().abs().flatten().float()
        k = max(1, math.ceil(self.percentile / 100.0 * a.numel()))  # kthvalue: no 16M-element limit (quantile has)
        self.total += float(a.kthvalue(k).values)
        self.batches += 1
        self.ndim = x.dim()
        return x

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        amax = torch.full((1,) * self.ndim, self.total / self.batches)  # keepdim shape, as the min/max observer's
        return _int8_symmetric(-amax, amax)


def minmax_observer() -> AffineQuantizedObserverBase:
    # keepdim: the scale gets the input's rank, (1, 1, 1) for (B, T, H), which torchao's static path requires
    return AffineQuantizedMinMaxObserver(MappingType.SYMMETRIC, torch.int8, PerTensor(), -128, 127, EPS,
                                         torch.float32, torch.int8, keepdim=True)


def observer(kind: str, percentile: float) -> AffineQuantizedObserverBase:
    return OBSERVERS[kind](percentile)


def observed(obs: AffineQuantizedObserverBase) -> bool:
    return getattr(obs, "batches", 0) > 0 or hasattr(obs, "min_val")


OBSERVERS: dict[str, Callable[[float], AffineQuantizedObserverBase]] = {
    "minmax": lambda percentile: minmax_observer(),
    "percentile": PercentileObserver,
}
