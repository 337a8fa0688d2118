"""BitFit: fine-tune only the bias terms of a frozen model.

Ben Zaken et al. 2022, "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked
Language-models". The trained change of each bias is kept as its own zero-initialised vector added to the module's
output — the same gradient as training the bias itself — so the base biases stay untouched until `merge` adds the
change to them, and switching the method off gives back the base model. Families without bias terms (LLaMA) have
nothing to train: apply refuses them.

Dimension legend: N leading dims, O output features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ptmkit.adapt import base
from ptmkit.config import ConfigError

ATTR = "bitfit"


@dataclass
class BitFitConfig:
    targets: list[str] = field(default_factory=lambda: ["*"])  # every linear map and LayerNorm with a bias
    exclude: list[str] = field(default_factory=list)  # module-name patterns whose biases stay frozen


class BiasDelta(base.Delta):
    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.delta = nn.Parameter(torch.zeros_like(bias.detach()))  # (O,)

    def output(self, module, inputs, y):
        return y + self.delta.to(y.dtype)  # (N, O)

    @torch.no_grad()
    def fold(self, module: nn.Module, undo: bool) -> None:
        module.bias.add_((-1.0 if undo else 1.0) * self.delta.to(module.bias.dtype))


def apply(model: nn.Module, cfg: BitFitConfig) -> nn.Module:
    sites = base.find_sites(model, cfg.targets, types=(nn.Linear, nn.LayerNorm), exclude=cfg.exclude,
                            method="bitfit", parts=False)
    with_bias = [s for s in sites if isinstance(getattr(s.module, "bias", None), torch.Tensor)]
    if not with_bias:
        raise ConfigError(f"bitfit: none of the {len(sites)} target modules of {type(model).__name__} has a bias "
                          "term, so BitFit has nothing to train (LLaMA and T5 have no biases); choose LoRA or "
                          "IA3 for this model")
    base.register(model, "bitfit", cfg)  # biases are never tied: nothing to refuse
    for s in with_bias:
        base.attach(s, ATTR, BiasDelta(s.module.bias))
    return model


def merge(model: nn.Module) -> nn.Module:
    return base.merge(model, ATTR)


def unmerge(model: nn.Module) -> nn.Module:
    return base.unmerge(model, ATTR)
