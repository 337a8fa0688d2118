"""The registry of unstructured (weight-level) pruning methods and the sparsity report (survey §6.3, "Model
compression": pruning). Strings name methods only at the CLI/YAML boundary.

Use: `pruner = prune(model, "gradual-magnitude", {...})`, then train with `on_step=pruner` (one-shot "magnitude"
prunes at once); `finalize(model)` bakes the masks into plain weights; `report(model)` counts the zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ptmkit.compress.prune import magnitude, movement, ticket
from ptmkit.compress.prune.masks import Pruner, finalize, resolve  # noqa: F401  (finalize: part of this API)
from ptmkit.config import ConfigError, from_dict


@dataclass(frozen=True)
class Method:
    config: type
    pruner: type[Pruner]  # pruner(model, cfg) attaches the masks; pruner(step) is the engine's on_step
    citation: str


UNSTRUCTURED: dict[str, Method] = {
    "magnitude": Method(magnitude.MagnitudeConfig, magnitude.MagnitudePruner, "Han et al. 2015"),
    "gradual-magnitude": Method(magnitude.GradualMagnitudeConfig, magnitude.GradualMagnitudePruner,
                                "Zhu & Gupta 2017; Gordon et al. 2020"),
    "movement": Method(movement.MovementConfig, movement.MovementPruner, "Sanh et al. 2020"),
    "soft-movement": Method(movement.SoftMovementConfig, movement.SoftMovementPruner, "Sanh et al. 2020"),
    "ticket": Method(ticket.TicketConfig, ticket.TicketPruner, "Chen et al. 2020 (lottery tickets)"),
    "random-mask": Method(ticket.RandomMaskConfig, ticket.RandomMaskPruner, "Chen et al. 2020 (random pruning)"),
}


def method(name: str) -> Method:
    if name not in UNSTRUCTURED:
        raise ConfigError(f"unknown unstructured pruning method {name!r}; choose one of {sorted(UNSTRUCTURED)}")
    return UNSTRUCTURED[name]


def make_config(name: str, values: dict[str, Any] | None = None):
    """The method's config from a dict (YAML / overrides); unknown keys are errors."""
    return from_dict(method(name).config, dict(values or {}), where=f"{name} pruning")


def prune(model: nn.Module, name: str, cfg: Any = None) -> Pruner:
    """Attach method `name`'s masks to `model` (cfg: its config, a dict, or None for the defaults); returns the
    pruner, to pass to the engine as `on_step`."""
    m = method(name)
    if cfg is None or isinstance(cfg, dict):
        cfg = make_config(name, cfg)
    return m.pruner(model, cfg)


@torch.no_grad()
def report(model: nn.Module, targets: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Exact zeros of the effective weights (masked or finalized alike) of each matrix `targets` names (default: every
    Linear of the blocks, fused projections by part) and over all of them: {"matrices": {label: {"zeros", "size",
    "sparsity"}}, "zeros", "size", "sparsity"}."""
    matrices = {}
    for m in resolve(model, targets, exclude, "sparsity report"):
        w = m.view(m.module.weight)  # the masked weight while masks are attached
        zeros = int((w == 0).sum())
        matrices[m.label] = {"zeros": zeros, "size": w.numel(), "sparsity": zeros / w.numel()}
    zeros = sum(r["zeros"] for r in matrices.values())
    size = sum(r["size"] for r in matrices.values())
    return {"matrices": matrices, "zeros": zeros, "size": size, "sparsity": zeros / size}
