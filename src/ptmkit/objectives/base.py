"""The objective interface: `corrupt(batch, generator)` is pure and seeded and runs with the data loader on
CPU; `loss(model, batch)` runs the model and returns the loss plus metrics. Objectives own auxiliary nets: such an
objective also has `bind(model) -> nn.Module`, which builds them for this model (ELECTRA's generator shares its
embeddings) and returns them; the trainer optimises and checkpoints that module with the model."""

from __future__ import annotations

from typing import Protocol

import torch

from ptmkit.data.seeding import seeded_generator  # noqa: F401  (re-exported: objectives draw with it)

Batch = dict[str, torch.Tensor]


class Objective(Protocol):
    task: str  # the model head this objective trains ("masked-lm", "causal-lm", ...)

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Return a new batch with model inputs and labels; never modifies `batch`."""
        ...

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss (for backward) and detached metrics (floats) for logging."""
        ...


def document_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) document ids -> (B, T, T) bool: a token may attend only within its own document."""
    return document_ids[:, :, None] == document_ids[:, None, :]
