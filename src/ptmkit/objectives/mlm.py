"""Masked language modelling (Devlin et al. 2019, BERT §3.1) with RoBERTa's dynamic masking (Liu et al. 2019).

Each time a sequence is drawn, `mask_prob` of its maskable tokens are chosen; of those 80% become [MASK],
10% a random token and 10% stay unchanged; the model predicts the original token at chosen positions only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ptmkit.config import ConfigError
from ptmkit.objectives.base import Batch, document_mask


@dataclass
class MLMConfig:
    mask_prob: float = 0.15  # fraction of maskable tokens chosen as prediction targets (BERT: 15%)
    mask_token_fraction: float = 0.8  # of the chosen tokens, replaced by [MASK]
    random_token_fraction: float = 0.1  # of the chosen tokens, replaced by a random token; the rest are kept
    mask_token_id: int = -1  # filled from the tokenizer when -1
    vocab_size: int = -1  # filled from the model/tokenizer when -1
    special_token_ids: list[int] = field(default_factory=list)  # never chosen ([CLS], [SEP], [PAD], ...)

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"mlm: mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.mask_token_fraction < 0 or self.random_token_fraction < 0 or \
                self.mask_token_fraction + self.random_token_fraction > 1.0:
            raise ConfigError(
                "mlm: mask_token_fraction and random_token_fraction must be >= 0 and sum to at most 1 "
                f"(got {self.mask_token_fraction} + {self.random_token_fraction})"
            )

    def check_ready(self) -> None:
        if self.mask_token_id < 0 or self.vocab_size <= 0:
            raise ConfigError("mlm: mask_token_id and vocab_size must be set (the tokenizer needs a mask token)")
        if self.mask_token_id >= self.vocab_size:
            raise ConfigError(f"mlm: mask_token_id {self.mask_token_id} is outside the vocabulary ({self.vocab_size})")


class MaskedLM:
    task = "masked-lm"

    def __init__(self, cfg: MLMConfig):
        cfg.check_ready()
        self.cfg = cfg
        self._special = torch.tensor(sorted(set(cfg.special_token_ids)), dtype=torch.long)

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        c = self.cfg
        ids = batch["input_ids"]  # (B, T)
        maskable = ~torch.isin(ids, self._special)
        if "attention_mask" in batch:
            maskable &= batch["attention_mask"].bool()
        chosen = (torch.rand(ids.shape, generator=generator) < c.mask_prob) & maskable
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        r = torch.rand(ids.shape, generator=generator)
        to_mask = chosen & (r < c.mask_token_fraction)
        to_random = chosen & (r >= c.mask_token_fraction) & (r < c.mask_token_fraction + c.random_token_fraction)
        random_ids = torch.randint(0, c.vocab_size, ids.shape, generator=generator)
        corrupted = torch.where(to_mask, torch.full_like(ids, c.mask_token_id), ids)
        corrupted = torch.where(to_random, random_ids, corrupted)
        return {**batch, "input_ids": corrupted, "labels": labels}

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        labels = batch["labels"]
        where = labels != -100  # (B, T)
        mask = batch.get("attention_mask")
        if "document_ids" in batch:
            mask = document_mask(batch["document_ids"])  # packed documents do not see each other
        logits = model(
            batch["input_ids"], attention_mask=mask, token_type_ids=batch.get("token_type_ids"),
            position_ids=batch.get("position_ids"), score_positions=where,
        ).logits  # (N, V): only chosen positions are scored
        target = labels[where]
        loss = F.cross_entropy(logits.float(), target)
        with torch.no_grad():
            acc = (logits.argmax(-1) == target).float().mean()
        return loss, {"loss": loss.item(), "mlm_accuracy": acc.item(), "predicted_tokens": float(target.numel())}
