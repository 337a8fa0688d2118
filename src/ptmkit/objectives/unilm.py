"""UniLM: one BERT-style network pre-trained as bidirectional, unidirectional and sequence-to-sequence language model
by switching its self-attention mask (Dong et al. 2019, "Unified Language Model Pre-training for Natural Language
Understanding and Generation", NeurIPS; §2.1-2.3). Survey (Han et al. 2021) §3/§4: unified pre-training.

Every mode is the same cloze task: BERT's masking (`mask_prob`, 80/10/10) and a masked-LM loss at the chosen
positions; only which tokens a position may attend to changes (§2.1, Figure 1):

  bidirectional   every real token sees every real token (BERT).
  left_to_right   position i sees positions <= i; a [MASK] at i is predicted from its left context only.
  right_to_left   position i sees positions >= i.
  seq2seq         each row is split into a source (segment A, token_type 0) that attends bidirectionally within
                  itself, and a target (segment B, token_type 1) whose tokens see the whole source and their own
                  left context in the target. Tokens in both segments are masked (§2.3).

Mode mixture (§2.3): the paper switches mode per *batch* with proportions 1/3 bidirectional, 1/3 seq2seq, 1/6 L2R,
1/6 R2L; that is the default here (`per_row: false`). `per_row: true` draws the mode independently for every row,
which mixes the modes inside each batch (lower-variance gradients; the model is identical). Either way the draw comes
from `corrupt()`'s seeded generator.

Seq2seq split: rows that carry token_type_ids with a segment B (sentence-pair data) keep them; other rows (packed
plain text) are cut at a split point drawn uniformly among the real tokens, so both segments are non-empty.

The (B, T, T) bool attention mask (True = may attend) is built vectorised in `corrupt()`, combined with padding
(keys that are padding are never attended to) and with packed-document boundaries (document_ids), and stored as
`self_attention_mask`; the batch's (B, T) `attention_mask` stays the padding mask (token counting uses it).

Dimension legend: B batch, T length (queries i, keys j), N masked tokens, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ptmkit.config import ConfigError
from ptmkit.models.registry import backbone_of
from ptmkit.objectives.base import Batch, document_mask
from ptmkit.objectives.masking import MaskingConfig, maskable_positions, mean_cross_entropy, replace_tokens

MODES = ("bidirectional", "left_to_right", "right_to_left", "seq2seq")  # mode ids 0..3, in this order


@dataclass
class UniLMConfig(MaskingConfig):
    name: ClassVar[str] = "unilm"
    # mixture of attention masks (UniLM §2.3): must sum to 1
    p_bidirectional: float = 1 / 3  # share of batches (or rows) with the bidirectional mask
    p_left_to_right: float = 1 / 6  # ... with the left-to-right mask
    p_right_to_left: float = 1 / 6  # ... with the right-to-left mask
    p_seq2seq: float = 1 / 3  # ... with the sequence-to-sequence mask
    per_row: bool = False  # False: one mode per batch (the paper); True: one mode per row

    def __post_init__(self) -> None:
        super().__post_init__()
        probs = self.mode_probs()
        for mode, p in zip(MODES, probs):
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"unilm: p_{mode} must be in [0, 1], got {p}")
        if not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
            raise ConfigError(
                f"unilm: the mode proportions must sum to 1 (got p_bidirectional {self.p_bidirectional} + "
                f"p_left_to_right {self.p_left_to_right} + p_right_to_left {self.p_right_to_left} + p_seq2seq "
                f"{self.p_seq2seq} = {sum(probs):.6g}); the paper uses 1/3, 1/6, 1/6, 1/3"
            )

    def mode_probs(self) -> list[float]:
        return [self.p_bidirectional, self.p_left_to_right, self.p_right_to_left, self.p_seq2seq]


def unilm_attention_mask(mode: torch.Tensor, real: torch.Tensor, segment: torch.Tensor,
                         document_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, T) bool, True where query i may attend to key j, for each row's mode (B,) (ids into MODES).

    real (B, T) bool: not padding; segment (B, T): 0 source / 1 target (read in seq2seq rows only).
    """
    B, T = real.shape
    i = torch.arange(T, device=real.device)[:, None]  # (T, 1) queries
    j = torch.arange(T, device=real.device)[None, :]  # (1, T) keys
    l2r = (j <= i)[None]  # (1, T, T)
    r2l = (j >= i)[None]
    src = segment == 0  # (B, T)
    # UniLM §2.1 Figure 1: source tokens see the source; target tokens see the source and the target up to themselves
    s2s = src[:, None, :] | (~src[:, :, None] & ~src[:, None, :] & l2r)  # (B, T, T)
    m = mode[:, None, None]  # (B, 1, 1)
    allowed = torch.where(m == 0, torch.ones_like(s2s),
                          torch.where(m == 1, l2r, torch.where(m == 2, r2l, s2s)))  # (B, T, T)
    allowed = allowed & real[:, None, :]  # padding keys are never seen
    if document_ids is not None:
        allowed = allowed & document_mask(document_ids)  # packed documents do not see each other
    return allowed


class UniLM:
    task = "masked-lm"

    def __init__(self, cfg: UniLMConfig):
        cfg.check_ready()
        self.cfg = cfg
        self._special = torch.tensor(sorted(set(cfg.special_token_ids)), dtype=torch.long)
        self._cum = torch.tensor(cfg.mode_probs(), dtype=torch.float64).cumsum(0)  # (4,)

    def sample_modes(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """(B,) mode ids: one draw for the whole batch (the paper) or one per row (per_row)."""
        u = torch.rand(batch_size if self.cfg.per_row else 1, generator=generator, dtype=torch.float64)
        mode = torch.searchsorted(self._cum, u, right=True).clamp(max=len(MODES) - 1)  # rounding at the top end
        return mode.expand(batch_size).clone()

    def segments(self, batch: Batch, real: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, T) long: 0 source / 1 target for seq2seq. Given token_type_ids with a segment B are kept; other rows
        are split at a point drawn uniformly in [1, n-1] over their n real tokens (n < 2: all source)."""
        B, T = real.shape
        n = real.sum(1)  # (B,)
        split = 1 + torch.floor(torch.rand(B, generator=generator, dtype=torch.float64) * (n - 1).clamp(min=0)).long()
        # the split counts real tokens, so it also works when padding is not at the end
        rank = torch.cumsum(real.long(), 1) - 1  # (B, T) index among real tokens
        drawn = ((rank >= split[:, None]) & real).long()
        given = batch.get("token_type_ids")
        if given is None:
            return drawn
        has_b = (given.bool() & real).any(1, keepdim=True)  # (B, 1)
        return torch.where(has_b, (given != 0).long(), drawn)

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        ids = batch["input_ids"]  # (B, T)
        B, T = ids.shape
        real = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(ids, dtype=torch.bool)
        mode = self.sample_modes(B, generator)  # (B,)
        segment = self.segments(batch, real, generator)  # (B, T)
        # BERT masking in every mode (UniLM §2.2: "the same cloze task")
        maskable = maskable_positions(batch, self._special)
        chosen = (torch.rand(ids.shape, generator=generator) < self.cfg.mask_prob) & maskable
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        corrupted = replace_tokens(ids, chosen, torch.rand(ids.shape, generator=generator), self.cfg, generator)
        mask = unilm_attention_mask(mode, real, segment, batch.get("document_ids"))  # (B, T, T)
        is_s2s = (mode == MODES.index("seq2seq"))[:, None]
        base_types = batch.get("token_type_ids", torch.zeros_like(ids))
        token_types = torch.where(is_s2s, segment, base_types)  # segment embeddings mark source/target (§2.3)
        out = {k: v for k, v in batch.items() if k != "document_ids"}  # folded into the mask
        return {**out, "input_ids": corrupted, "labels": labels, "token_type_ids": token_types,
                "self_attention_mask": mask, "unilm_mode": mode}

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        where = batch["labels"] != -100  # (B, T)
        types = batch.get("token_type_ids")
        segment = getattr(backbone_of(model).embeddings, "segment", None)
        if types is not None and (segment is None or segment.num_embeddings < 2):
            types = None  # a model without a segment B (RoBERTa): the mask alone separates source and target
        out = model(batch["input_ids"], attention_mask=batch["self_attention_mask"], token_type_ids=types,
                    position_ids=batch.get("position_ids"), score_positions=where)
        target = batch["labels"][where]  # (N,)
        loss, acc = mean_cross_entropy(out.logits, target)
        metrics = {"loss": loss.item(), "mlm_accuracy": acc.item(), "predicted_tokens": float(target.numel())}
        mode = batch.get("unilm_mode")
        if mode is not None:
            for k, name in enumerate(MODES):
                metrics[f"frac_{name}"] = float((mode == k).float().mean())
        return loss, metrics
