"""TernaryBERT: weights in {-a, 0, +a} (one a per output row) and 8-bit activations, trained with the straight-through
estimator while a full-precision teacher distils into the model, then stored as 2-bit integers.

Zhang et al. 2020, "TernaryBERT: Distillation-aware Ultra-low Bit BERT" §3.1 (ternarisation by TWN, Li et al. 2016:
threshold D = 0.7 mean|w|, a = the mean of the |w| above D; the row-wise variant for the weights of each output
row), §3.2 (distillation from the full-precision model: hidden states and logits, which in ptmkit is `ptm finetune
--compress ternary --teacher FT_MODEL --distill tinybert` or any other distillation objective), 8-bit symmetric
activations. Training runs through the one engine; `convert` stores each weight as torchao's intx tensor of int2
values {-1, 0, 1} with the row's a as its scale, activations quantised per token at run time (the 2-bit matmul is
dequantised on CPU: torchao has no ternary kernel; storage is 2 bits).

Dimension legend: N leading dims of the input (B, T), I in_features, O out_features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torchao.quantization import IntxUnpackedToInt8Tensor
from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
    IntxUnpackedToInt8TensorActivationQuantization,
)

from ptmkit.compress.quant.base import DEFAULT_EXCLUDE, DEFAULT_TARGETS, QuantRecord, quant_sites, register, report
from ptmkit.compress.quant.qat import _set_module
from ptmkit.config import ConfigError, to_dict

NAME = "ternary"
THRESHOLD = 0.7  # TWN's D = 0.7 E|w| (Li et al. 2016 eq. 9), TernaryBERT's default
EPS = torch.finfo(torch.float32).eps


@dataclass
class TernaryConfig:
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    activation_bits: int = 8  # TernaryBERT keeps 8-bit activations (symmetric, max-scaled per batch here)

    def __post_init__(self) -> None:
        if self.activation_bits != 8:
            raise ConfigError(f"{NAME}: activation_bits must be 8 (the int8 activation path torchao runs), got "
                              f"{self.activation_bits}")


def ternarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TWN row-wise: (t in {-1, 0, 1} (O, I), a (O, 1)) with w ~ a t. D = 0.7 mean|w| of the row; a = mean |w| over
    the entries above D (the least-squares scale for that support)."""
    absw = w.abs()
    delta = THRESHOLD * absw.mean(dim=1, keepdim=True)  # (O, 1)
    keep = absw > delta  # (O, I)
    a = (absw * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp_min(1)  # (O, 1)
    return torch.sign(w) * keep, a.clamp_min(EPS)


class TernaryLinear(nn.Linear):
    """An nn.Linear whose forward uses its ternarised weight and 8-bit activations; gradients reach the full-precision
    weight straight through (Bengio et al. 2013). Holds the very Parameters of the Linear it replaces."""

    def __init__(self, linear: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, I)
        t, a = ternarize(self.weight.detach())
        w = self.weight + (a.to(self.weight.dtype) * t - self.weight).detach()  # forward a t, backward identity
        return F.linear(fake_quant_per_token(x), w, self.bias)  # (N, O)


def fake_quant_per_token(x: torch.Tensor) -> torch.Tensor:
    """Asymmetric int8 of each token's vector (its own min and max), as the converted model quantises its inputs at
    run time (torchao's int8_asym_per_token); the rounding is passed straight through. x (N, I)."""
    xf = x.detach().float()
    lo = xf.amin(-1, keepdim=True).clamp_max(0)  # the range always holds 0, so 0 is exact
    hi = xf.amax(-1, keepdim=True).clamp_min(0)
    scale = ((hi - lo) / 255).clamp_min(EPS)  # (N, 1)
    zero = (-128 - torch.round(lo / scale)).clamp(-128, 127)
    q = (torch.clamp(torch.round(xf / scale) + zero, -128, 127) - zero) * scale
    return x + (q.to(x.dtype) - x).detach()


def apply(model: nn.Module, cfg: TernaryConfig) -> nn.Module:
    """Swap every target nn.Linear for a TernaryLinear (in place); train (with a teacher), then `convert`."""
    sites = quant_sites(model, cfg.targets, cfg.exclude, NAME)
    for s in sites:
        tl = TernaryLinear(s.module)
        tl.train(s.module.training)
        _set_module(model, s.name, tl)
    register(model, QuantRecord(NAME, to_dict(cfg), {s.name: 2 for s in sites}, activation_bits=8, group_size=None,
                                numel={s.name: s.module.weight.numel() for s in sites},
                                extra={"stage": "fake-quant", "values": "ternary"}))
    return model


@torch.no_grad()
def convert(model: nn.Module) -> nn.Module:
    """Replace each TernaryLinear by an nn.Linear holding a torchao intx int2 tensor: the ternary values and the row
    scales training used, activations int8 per token at run time."""
    rec = report(model)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, TernaryLinear)]
    if rec.method != NAME or not layers:
        raise ConfigError(f"{NAME} convert: the model carries no ternary layers (it is {rec.method}); apply {NAME} "
                          "and train first")
    for name, tl in layers:
        t, a = ternarize(tl.weight.detach().float())
        qweight = IntxUnpackedToInt8Tensor(
            t.to(torch.int8), a, torch.zeros_like(a, dtype=torch.int8), torch.int2, [1, tl.in_features],
            tl.weight.dtype, IntxUnpackedToInt8TensorActivationQuantization.INT8_ASYM_PER_TOKEN)
        linear = nn.Linear(tl.in_features, tl.out_features, bias=False, device="meta")
        linear.weight = nn.Parameter(qweight, requires_grad=False)
        linear.bias = tl.bias
        linear.train(tl.training)
        _set_module(model, name, linear)
    rec.extra = {"stage": "int2", "values": "ternary"}
    return model
