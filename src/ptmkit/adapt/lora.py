"""LoRA: low-rank adaptation of frozen linear maps, W x + (alpha / r) B A x with A (r, in) and B (out, r).

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"; rsLoRA scaling alpha / sqrt(r) from
Kalajdzievski 2023. Initialisation as the paper and PEFT: A Kaiming-uniform, B zero, so a fresh LoRA is the base
model. Mergeable: W += (alpha / r) B A folds it into the weights for inference at no extra cost.

Dimension legend: N leading dims of the input (B, T, ...), I in_features, O out_features (or a part's rows), R rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ptmkit.adapt import base
from ptmkit.config import ConfigError

ATTR = "lora"


@dataclass
class LoRAConfig:
    rank: int = 8  # r: the inner width of B A (Hu et al. find 1-8 enough for W_q, W_v)
    alpha: float = 16.0  # the update is scaled by alpha / rank, so lr need not change with the rank
    dropout: float = 0.0  # on the input of the low-rank branch only (Hu et al. use 0.05-0.1 for GPT-2)
    targets: list[str] = field(default_factory=lambda: ["q", "v"])  # the paper's choice: W_q and W_v
    exclude: list[str] = field(default_factory=list)  # module-name patterns left out (e.g. a layer index)
    rslora: bool = False  # scale by alpha / sqrt(rank) (Kalajdzievski 2023) instead of alpha / rank

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"lora: rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora: dropout must be in [0, 1), got {self.dropout}")
        if self.alpha <= 0:
            raise ConfigError(f"lora: alpha must be positive, got {self.alpha}")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


class LoRA(base.Delta):
    """Low-rank updates of one nn.Linear: of all its rows, or of parts of a fused projection (one (A, B) per part,
    as PEFT has one per q_proj / v_proj)."""

    def __init__(self, linear: nn.Linear, parts: dict[str, torch.Tensor | None], cfg: LoRAConfig):
        super().__init__()
        self.scaling = cfg.scaling
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()
        self.parts = list(parts)  # "all" or part names
        w = linear.weight
        for part, rows in parts.items():
            out = linear.out_features if rows is None else len(rows)
            a = torch.empty(cfg.rank, linear.in_features, dtype=w.dtype, device=w.device)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # as nn.Linear's default (and PEFT's)
            self.A[part] = nn.Parameter(a)  # (R, I)
            self.B[part] = nn.Parameter(torch.zeros(out, cfg.rank, dtype=w.dtype, device=w.device))  # (O, R)
            if rows is not None:
                self.register_buffer(f"rows_{part}", rows.to(w.device), persistent=False)
        if any(r is not None for r in parts.values()):  # every part's rows, in part order: where the padded B puts them
            self.register_buffer("rows_all", torch.cat([r for r in parts.values()]).to(w.device), persistent=False)

    def _rows(self, part: str) -> torch.Tensor | None:
        return getattr(self, f"rows_{part}", None)

    def output(self, module, inputs, y):
        x = self.drop(inputs[0]).to(self.A[self.parts[0]].dtype)
        if len(self.parts) == 1 and self._rows(self.parts[0]) is None:  # the whole output: one low-rank add
            part = self.parts[0]
            return _add_low_rank(y, x @ self.A[part].T, self.B[part] * self.scaling)  # (N, O)
        # Parts of a fused projection (q and v of qkv): one matmul into every part's rank, then one dense add through
        # a B padded with zero rows for the other parts. A scatter (index_add) along the last dimension would write
        # fewer values, but its backward gathers a strided column subset of the gradient: measured 4% of a BERT-mini
        # LoRA step on CPU, against a (rows x ranks) padding that costs next to nothing.
        z = x @ torch.cat([self.A[p] for p in self.parts]).T  # (N, sum of ranks)
        b = torch.block_diag(*(self.B[p] for p in self.parts))  # (rows, sum of ranks)
        b = b.new_zeros(module.out_features, b.shape[1]).index_copy(0, self.rows_all, b)  # (O, sum of ranks)
        return _add_low_rank(y, z, b * self.scaling)  # (N, O)

    def delta_weight(self, part: str) -> torch.Tensor:
        return self.B[part] @ self.A[part] * self.scaling  # (O, I)

    @torch.no_grad()
    def fold(self, module: nn.Linear, undo: bool) -> None:
        sign = -1.0 if undo else 1.0
        for part in self.parts:
            d = (sign * self.delta_weight(part)).to(module.weight.dtype)
            rows = self._rows(part)
            if rows is None:
                module.weight.add_(d)
            else:
                module.weight.index_add_(0, rows, d)


def _add_low_rank(y: torch.Tensor, z: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """y + z b^T as one GEMM with the add folded in (addmm, beta = 1): y is read once and no (N, O) temporary of the
    product or of its scaling is made (the scaling is already in the small b). y (N, O), z (N, R), b (O, R)."""
    out = torch.addmm(y.reshape(-1, y.shape[-1]), z.reshape(-1, z.shape[-1]).to(y.dtype), b.T.to(y.dtype))
    return out.view(y.shape)


def apply(model: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """Add LoRA to every target nn.Linear (or part of a fused projection) of `model`, in place."""
    sites = base.find_sites(model, cfg.targets, exclude=cfg.exclude, method="lora")
    base.refuse_tied(model, sites, "lora")
    base.register(model, "lora", cfg)
    by_module: dict[str, tuple[nn.Module, dict[str, torch.Tensor | None]]] = {}
    for s in sites:
        by_module.setdefault(s.name, (s.module, {}))[1]["all" if s.part is None else s.part] = s.rows
    for name, (module, parts) in by_module.items():
        base.attach(base.Site(name, module), ATTR, LoRA(module, parts, cfg))
    return model


def merge(model: nn.Module) -> nn.Module:
    return base.merge(model, ATTR)


def unmerge(model: nn.Module) -> nn.Module:
    return base.unmerge(model, ATTR)
