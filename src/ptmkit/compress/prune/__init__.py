"""Pruning (survey §6.3). Structured: whole heads, feed-forward neurons and blocks removed physically (Michel et al.
2019; Fan et al. 2020), each a transform `apply(model, cfg, ...) -> model` with its config and a PruneReport."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ptmkit.compress.prune import ffn, heads, layers
from ptmkit.compress.prune.structured import PruneReport, reports


@dataclass(frozen=True)
class StructuredMethod:
    name: str
    config: type
    apply: Callable[..., Any]  # apply(model, cfg) or, for gradient importance, apply(model, cfg, loss_fn, batches)
    citation: str
    needs_loss: Callable[[Any], bool]  # whether apply needs loss_fn and batches under this config


STRUCTURED: dict[str, StructuredMethod] = {
    "heads": StructuredMethod("heads", heads.HeadPruneConfig, heads.apply, "Michel et al. 2019", lambda cfg: True),
    "ffn": StructuredMethod("ffn", ffn.FFNPruneConfig, ffn.apply, "Li et al. 2017; McCarley et al. 2019",
                            lambda cfg: cfg.importance == "gradient"),
    "layers": StructuredMethod("layers", layers.LayerPruneConfig, layers.apply, "Fan et al. 2020",
                               lambda cfg: False),
}

__all__ = ["STRUCTURED", "StructuredMethod", "PruneReport", "reports"]
