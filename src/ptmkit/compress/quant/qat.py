"""Quantisation-aware training, Q8BERT style: symmetric linear 8-bit fake quantisation of each target Linear's weight
and input during fine-tuning, gradients passed straight through the rounding, then conversion to a real int8 model.

Zafrir et al. 2019, "Q8BERT: Quantized 8Bit BERT" §2: x_q = clamp(round(x * S_x), -M, M) with M = 2^(b-1) - 1 = 127,
S_W = M / max|W| per weight tensor, S_x = M / EMA(max|x|) for activations (the EMA only moves in training; it starts
at the first batch's max, as in the authors' nlp-architect code, whose decay 0.9999 is the default here); Bengio et
al. 2013 for the straight-through estimator. Training runs through the one engine (ptmkit.train.loop) like any
model; `convert` then stores the weights as torchao Int8Tensors with exactly the scales training simulated, and the
layer multiplies int8 x int8 -> int32 on CPU (torch._int_mm).

Dimension legend: N leading dims of the input (B, T), I in_features, O out_features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torchao.quantization import Int8Tensor, MappingType, PerTensor
from torchao.quantization.quantize_.workflows import QuantizeTensorToInt8Kwargs

from ptmkit.compress.quant.base import (
    DEFAULT_EXCLUDE, DEFAULT_TARGETS, QuantRecord, quant_sites, register, report,
)
from ptmkit.config import ConfigError, to_dict

NAME = "qat-int8"
QMAX = 127  # Q8BERT's M = 2^(8-1) - 1: symmetric, -128 unused
EPS = torch.finfo(torch.float32).eps


@dataclass
class QATConfig:
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    ema_decay: float = 0.9999  # of the activation ranges (nlp-architect's Q8BERT default)

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"{NAME}: ema_decay must be in [0, 1), got {self.ema_decay} (0.999-0.9999 is usual)")


def fake_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Round to the int8 grid of `scale` in the forward pass; identity gradient in the backward pass (STE). x * (1 /
    scale), not x / scale: torchao's quantize_affine rounds that product, so ties fall the same way after convert."""
    q = torch.clamp(torch.round(x * (1.0 / scale)), -QMAX, QMAX) * scale
    return x + (q - x).detach()


class FakeQuantLinear(nn.Linear):
    """An nn.Linear that trains against its own int8 rounding. It holds the very Parameters of the Linear it
    replaces (same names, same objects: optimisers, tied weights and checkpoints are unaffected) plus one buffer,
    `act_max`, the EMA of max|input|."""

    def __init__(self, linear: nn.Linear, ema_decay: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.ema_decay = ema_decay
        self.register_buffer("act_max", torch.zeros((), device=linear.weight.device))  # 0 = nothing seen yet
        self.input_ndim: int | None = None  # the int8 kernel's static scale has the input's rank

    def weight_scale(self) -> torch.Tensor:
        return self.weight.detach().abs().amax().float().clamp_min(EPS) / QMAX  # 1 / S_W

    def act_scale(self) -> torch.Tensor:
        return self.act_max.clamp_min(EPS) / QMAX  # 1 / S_x

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, I)
        self.input_ndim = x.dim()
        if self.training:
            with torch.no_grad():
                m = x.detach().abs().amax().float()
                first = self.act_max == 0
                self.act_max.copy_(torch.where(first, m, self.ema_decay * self.act_max + (1 - self.ema_decay) * m))
        elif not bool(self.act_max > 0):
            raise RuntimeError(f"{NAME}: a fake-quantised layer ran in eval mode before any training step, so it has "
                               "no activation range; train (model.train()) for at least one batch first")
        w = fake_quant(self.weight, self.weight_scale().to(self.weight.dtype))  # (O, I)
        return F.linear(fake_quant(x, self.act_scale().to(x.dtype)), w, self.bias)  # (N, O)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def apply(model: nn.Module, cfg: QATConfig) -> nn.Module:
    """Swap every target nn.Linear for a FakeQuantLinear (in place); train the model as usual, then `convert`."""
    sites = quant_sites(model, cfg.targets, cfg.exclude, NAME)
    for s in sites:
        fq = FakeQuantLinear(s.module, cfg.ema_decay)
        fq.train(s.module.training)
        _set_module(model, s.name, fq)
    register(model, QuantRecord(NAME, to_dict(cfg), {s.name: 8 for s in sites}, activation_bits=8, group_size=None,
                                numel={s.name: s.module.weight.numel() for s in sites}, extra={"stage": "fake-quant"}))
    return model


@torch.no_grad()
def convert(model: nn.Module) -> nn.Module:
    """Replace each FakeQuantLinear by an nn.Linear whose weight is a torchao Int8Tensor: int8 values with the
    per-tensor weight scale and the static activation scale (from the EMA) that training used."""
    rec = report(model)
    fakes = [(n, m) for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)]
    if rec.method != NAME or not fakes:
        raise ConfigError(f"{NAME} convert: the model carries no fake-quantised layers (it is {rec.method}, "
                          f"stage {rec.extra.get('stage', 'int8')}); apply qat-int8 and train first")
    unseen = [n for n, m in fakes if m.input_ndim is None or not bool(m.act_max > 0)]
    if unseen:
        raise ConfigError(f"{NAME} convert: {unseen[0]} has no activation range yet; train for at least one step "
                          "(the EMA of max|x| is set in training mode) before converting")
    for name, fq in fakes:
        act_kwargs = QuantizeTensorToInt8Kwargs(granularity=PerTensor(), mapping_type=MappingType.SYMMETRIC)
        qweight = Int8Tensor.from_hp(
            fq.weight.detach().float(), PerTensor(), scale=fq.weight_scale().reshape(1, 1),
            act_quant_kwargs=act_kwargs, act_quant_scale=fq.act_scale().reshape((1,) * fq.input_ndim))
        linear = nn.Linear(fq.in_features, fq.out_features, bias=False, device="meta")
        linear.weight = nn.Parameter(qweight, requires_grad=False)
        linear.bias = fq.bias
        linear.train(fq.training)
        _set_module(model, name, linear)
    rec.extra = {"stage": "int8"}
    return model
