"""IA3: infused adapters by inhibiting and amplifying inner activations — learned vectors that rescale the keys,
the values and the FFN's inner activations of a frozen model.

Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning" (T-Few).
As PEFT: the vectors start at one (a fresh IA3 is the base model); on a "feed-forward" target the vector scales the
module's input (l_ff (.) gelu(W_1 x) enters W_2), elsewhere its output (bias included). Mergeable: the vectors
fold into the weights' rows (outputs) or columns (inputs).

Dimension legend: N leading dims, I in_features, O out_features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ptmkit.adapt import base
from ptmkit.config import ConfigError
from ptmkit.nn.targets import pattern_matches

ATTR = "ia3"


@dataclass
class IA3Config:
    targets: list[str] = field(default_factory=lambda: ["k", "v", "down"])  # the paper: l_k, l_v, l_ff
    feedforward: list[str] = field(default_factory=lambda: ["down"])  # of the targets, those scaled on the input
    exclude: list[str] = field(default_factory=list)  # module-name patterns left out (e.g. a layer index)

    def __post_init__(self) -> None:
        stray = [f for f in self.feedforward if not any(f == t or f in t.split(".") for t in self.targets)]
        if stray:
            raise ConfigError(f"ia3: feedforward {stray} must also be in targets {self.targets} "
                              "(feedforward names which targets are scaled on their input)")


class IA3(base.Delta):
    """One learned vector per site: over the output rows (or a fused part's rows), or over the input features."""

    def __init__(self, linear: nn.Linear, rows: torch.Tensor | None, feedforward: bool):
        super().__init__()
        self.hook = "input" if feedforward else "output"
        n = linear.in_features if feedforward else (linear.out_features if rows is None else len(rows))
        self.scale = nn.Parameter(torch.ones(n, dtype=linear.weight.dtype, device=linear.weight.device))
        if rows is not None:
            self.register_buffer("rows", rows.to(linear.weight.device), persistent=False)
        else:
            self.rows = None

    def full_scale(self, size: int) -> torch.Tensor:
        """The vector over all `size` output rows: one outside this site's part."""
        if self.rows is None:
            return self.scale
        return torch.ones(size, dtype=self.scale.dtype, device=self.scale.device).index_copy(0, self.rows, self.scale)

    def output(self, module, inputs, y):
        return y * self.full_scale(y.shape[-1]).to(y.dtype)  # (N, O)

    def input(self, module, x):
        return x * self.scale.to(x.dtype)  # (N, I)

    @torch.no_grad()
    def fold(self, module: nn.Linear, undo: bool) -> None:
        if self.hook == "input":
            s = self.scale if not undo else 1.0 / (self.scale + 1e-8)
            module.weight.mul_(s.to(module.weight.dtype)[None, :])  # columns: W (x (.) l) = (W diag l) x
            return
        s = self.full_scale(module.out_features)
        s = s if not undo else 1.0 / (s + 1e-8)
        module.weight.mul_(s.to(module.weight.dtype)[:, None])  # rows
        if module.bias is not None:
            module.bias.mul_(s.to(module.bias.dtype))


def apply(model: nn.Module, cfg: IA3Config) -> nn.Module:
    sites = base.find_sites(model, cfg.targets, exclude=cfg.exclude, method="ia3")
    feedforward = [s for s in sites if any(pattern_matches(f, s.name) for f in cfg.feedforward)]
    if any(s.part is not None for s in feedforward):
        raise ConfigError("ia3: a feed-forward target scales its input, so it must be a whole module (e.g. down), "
                          "not part of a fused projection")
    base.refuse_tied(model, sites, "ia3")
    base.register(model, "ia3", cfg)
    by_module: dict[str, list[base.Site]] = {}
    for s in sites:
        by_module.setdefault(s.name, []).append(s)
    for name, group in by_module.items():
        module = group[0].module
        if len(group) > 1:  # several parts of one fused projection (k and v of qkv): one vector over their rows
            rows = torch.cat([s.rows for s in group])
        else:
            rows = group[0].rows
        base.attach(base.Site(name, module), ATTR, IA3(module, rows, group[0] in feedforward))
    return model


def merge(model: nn.Module) -> nn.Module:
    return base.merge(model, ATTR)


def unmerge(model: nn.Module) -> nn.Module:
    return base.unmerge(model, ATTR)
