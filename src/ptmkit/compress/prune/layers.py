"""Layer removal: drop whole Transformer blocks and lower num_layers, so fewer blocks run (the model gets faster).
Fan, Grave & Joulin 2020, "Reducing Transformer Depth on Demand with Structured Dropout" (ICLR; LayerDrop, §4 "every
other" pruning at inference); Sajjad et al. 2020, "Poor Man's BERT" (dropping the top layers).

The use case is a model trained with LayerDrop (ptmkit.train.layer_drop): trained to run with blocks missing, it
loses little when they are removed for good. Prune after training: a LayerDrop controller still lists the removed
blocks, so build a new one (apply_layer_drop) to train on. Strategies, with 0-based block indices (0 is next to the
embeddings):

    indices      the blocks listed in `layers`
    every_other  blocks 1, 3, 5, ...: Fan et al.'s rule "drop depth d ≡ 0 (mod ⌊1/p⌋)" at p = 1/2, depths counted
                 from 1, which keeps the first block (fairseq's `--encoder-layers-to-keep 0,2,4,...`)
    top          the k blocks nearest the output (Sajjad et al.: the most expendable in BERT)

The count removed is exact (no rounding); the report's fraction is removed / blocks. Applies to a backbone with one
stack of blocks that its config counts as num_layers (BERT, RoBERTa, ELECTRA, Megatron-BERT, GPT-2, LLaMA); an
encoder-decoder, ALBERT's shared layer and a Mixture-of-Experts model (whose sparse layers are placed by index) are
refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from ptmkit.compress.prune.structured import PruneReport, count_parameters, record
from ptmkit.config import ConfigError
from ptmkit.models.registry import backbone_of
from ptmkit.nn.stacks import block_stacks

METHOD = "layer removal"
STRATEGIES = ("indices", "every_other", "top")


@dataclass
class LayerPruneConfig:
    strategy: Literal["indices", "every_other", "top"] = "indices"
    layers: list[int] = field(default_factory=list)  # indices: the 0-based blocks to drop
    k: int = 0  # top: how many blocks to drop from the output side

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"layers: strategy must be one of {list(STRATEGIES)}, got {self.strategy!r}")
        if self.strategy == "indices":
            if not self.layers:
                raise ConfigError("layers: strategy 'indices' needs `layers`, the 0-based blocks to drop (e.g. [1, 3])")
            if len(set(self.layers)) != len(self.layers):
                raise ConfigError(f"layers: `layers` repeats an index: {self.layers}; list each block once")
        elif self.layers:
            raise ConfigError(f"layers: `layers` is for strategy 'indices', not {self.strategy!r}; leave it empty")
        if self.strategy == "top" and self.k < 1:
            raise ConfigError(f"layers: strategy 'top' needs k >= 1 (the blocks to drop from the output side), "
                              f"got {self.k}")
        if self.strategy != "top" and self.k:
            raise ConfigError(f"layers: k is for strategy 'top', not {self.strategy!r}; leave it 0")


def blocks_to_drop(cfg: LayerPruneConfig, n: int) -> list[int]:
    """The 0-based indices of the blocks `cfg` drops from a stack of n."""
    if cfg.strategy == "every_other":
        return list(range(1, n, 2))
    if cfg.strategy == "top":
        return list(range(max(n - cfg.k, 0), n))
    return sorted(cfg.layers)


def _stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    backbone = backbone_of(model)
    stacks = block_stacks(model)
    num_layers = getattr(backbone.config, "num_layers", None)
    if len(stacks) != 1 or len(stacks[0][1]) != num_layers:
        found = ", ".join(f"{n} ({len(s)} blocks)" for n, s in stacks) or "none"
        raise ConfigError(f"{METHOD}: supports a backbone with one stack of blocks counted by num_layers (BERT, GPT-2, "
                          f"LLaMA, ...); {type(backbone).__name__} has num_layers={num_layers} and stacks: {found}")
    if getattr(backbone.config, "moe", None) is not None:
        raise ConfigError(f"{METHOD}: the model's Mixture-of-Experts layers are placed by block index (moe.every), "
                          "which removing blocks would shift; prune a dense model")
    return stacks[0]


def apply(model: nn.Module, cfg: LayerPruneConfig) -> nn.Module:
    """Remove the blocks `cfg` names from the model's block stack, in place, and lower config.num_layers to match. The
    PruneReport is appended to `reports(model)`."""
    name, stack = _stack(model)
    n = len(stack)
    drop = blocks_to_drop(cfg, n)
    bad = [i for i in drop if not 0 <= i < n]
    if bad:
        raise ConfigError(f"{METHOD}: layer index {bad[0]} is out of range for the {n} blocks of {name}; use indices "
                          f"0 to {n - 1}")
    if len(drop) >= n or cfg.k > n:
        raise ConfigError(f"{METHOD}: this would remove all {n} blocks of {name}; keep at least one (drop at most "
                          f"{n - 1})")
    before = count_parameters(model)
    keep = [i for i in range(n) if i not in set(drop)]
    parent, _, attr = name.rpartition(".")
    model.get_submodule(parent).register_module(attr, nn.ModuleList([stack[i] for i in keep]))
    backbone = backbone_of(model)
    backbone.config = dataclasses.replace(backbone.config, num_layers=len(keep))  # config.json follows the model
    record(model, PruneReport("layers", "layer", n, len(drop), None, before, count_parameters(model), {name: keep}))
    return model
