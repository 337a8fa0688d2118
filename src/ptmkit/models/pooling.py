"""Sentence pooling over a backbone's hidden states: [CLS] (BERT §3, SimCSE's default) or the masked mean of the
token vectors (Sentence-BERT, Reimers & Gurevych 2019; what all-MiniLM-L6-v2 was trained with).

Dimension legend: B batch, T length, H hidden size.
"""

from __future__ import annotations

import torch

from ptmkit.config import ConfigError

POOLINGS = ("cls", "mean")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """(B, T, H) hidden states + (B, T) 1/0 mask -> (B, H) sentence vectors."""
    if pooling == "cls":
        return hidden[:, 0]  # (B, H): the first position ([CLS] for BERT tokenizers)
    if pooling == "mean":
        if attention_mask is None:
            return hidden.mean(dim=1)
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)  # (B, H): padding does not count
    raise ConfigError(f"unknown pooling {pooling!r}; choose one of {list(POOLINGS)}")


def hidden_states(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run a backbone (or a task model that exposes last_hidden_state) and return (B, T, H)."""
    extra = {"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}  # decoders take none
    out = model(batch["input_ids"], attention_mask=batch.get("attention_mask"), **extra)
    h = getattr(out, "last_hidden_state", None)
    if h is None:
        raise ConfigError(f"{type(model).__name__} returns no last_hidden_state; sentence embeddings need an "
                          "encoder backbone (load it with task='base')")
    return h
