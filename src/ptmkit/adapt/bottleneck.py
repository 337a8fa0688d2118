"""Bottleneck adapters: a small residual MLP, h + W_up act(W_down h), inserted in each Transformer block.

Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP": after the attention output projection and
after the feed-forward network, before each residual sum. Pfeiffer et al. 2021, "AdapterFusion": after the
feed-forward network only, which their search found as good at half the parameters. W_up starts at zero, so a fresh
adapter is the identity and the model is the base model (Houlsby §2.1's near-identity initialisation, exactly).
Not mergeable: the adapter is non-linear.

Dimension legend: N leading dims, H hidden size, R bottleneck size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ptmkit.adapt import base
from ptmkit.config import ConfigError
from ptmkit.nn.feedforward import get_activation

ATTR = "adapter"


@dataclass
class AdapterConfig:
    bottleneck: int = 64  # Houlsby et al. search 8-256; 64 is the adapters library's reduction factor 16 at H=1024
    activation: str = "relu"  # the non-linearity between down- and up-projection (relu, gelu, silu, ...)
    targets: list[str] = field(default_factory=lambda: ["attn", "ffn"])  # sub-layers whose output gets an adapter
    exclude: list[str] = field(default_factory=list)  # module-name patterns left out (e.g. a layer index)

    def __post_init__(self) -> None:
        if self.bottleneck < 1:
            raise ConfigError(f"adapter: bottleneck must be >= 1, got {self.bottleneck}")
        get_activation(self.activation)


@dataclass
class HoulsbyConfig(AdapterConfig):
    pass


@dataclass
class PfeifferConfig(AdapterConfig):
    targets: list[str] = field(default_factory=lambda: ["ffn"])


class Bottleneck(base.Delta):
    def __init__(self, hidden: int, cfg: AdapterConfig, like: torch.Tensor):
        super().__init__()
        self.down = nn.Linear(hidden, cfg.bottleneck, dtype=like.dtype, device=like.device)
        self.up = nn.Linear(cfg.bottleneck, hidden, dtype=like.dtype, device=like.device)
        self.act = get_activation(cfg.activation)
        nn.init.normal_(self.down.weight, std=1e-2)  # small, as Houlsby's near-identity init
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # zero: the adapter starts as the identity
        nn.init.zeros_(self.up.bias)

    def adapt(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))  # (N, H)

    def output(self, module, inputs, y):
        if isinstance(y, torch.Tensor):
            return self.adapt(y)
        # several streams through one sub-layer (XLNet's content and query streams share its weights): adapt each
        return tuple(self.adapt(t) if isinstance(t, torch.Tensor) else t for t in y)


def _output_width(model: nn.Module, site: base.Site) -> int:
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if hidden is None:
        raise ConfigError(f"adapter: cannot tell the output width of {site.name} ({type(model).__name__} has no "
                          "config.hidden_size)")
    return hidden


def apply(model: nn.Module, cfg: AdapterConfig, name: str = "houlsby") -> nn.Module:
    sites = base.find_sites(model, cfg.targets, types=(nn.Module,), exclude=cfg.exclude, method=name, parts=False)
    like = next(model.parameters())
    base.register(model, name, cfg)
    for s in sites:
        base.attach(s, ATTR, Bottleneck(_output_width(model, s), cfg, like))
    return model


def apply_houlsby(model: nn.Module, cfg: HoulsbyConfig) -> nn.Module:
    return apply(model, cfg, "houlsby")


def apply_pfeiffer(model: nn.Module, cfg: PfeifferConfig) -> nn.Module:
    return apply(model, cfg, "pfeiffer")
