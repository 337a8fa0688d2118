"""MASS: masked sequence-to-sequence pre-training (Song et al. 2019, "MASS: Masked Sequence to Sequence Pre-training
for Language Generation", §2.2 and Figure 1). Survey (Han et al. 2021) §3-§4: encoder-decoder objectives.

For each row of n real tokens a contiguous fragment x[u:v] of m = max(1, round(fragment_ratio * n)) tokens
(k = 50% in the paper) starts uniformly at u in [0, n - m]. The encoder sees the row with the fragment masked
(BERT's 80/10/10: [MASK], random token, unchanged — MASS §4.1); the decoder predicts only the fragment, fed the
fragment shifted right: at position p in the fragment its input is x[p-1] (the first one gets [MASK]), and every
position outside the fragment gets [MASK] (Figure 1), so the decoder keeps the original positions and must lean on
the encoder for everything outside the fragment. Decoder inputs and labels have the encoder's length.

Dimension legend: B batch, T length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ptmkit.config import ConfigError
from ptmkit.objectives.base import Batch
from ptmkit.objectives.seq2seq import real_tokens, seq2seq_loss


@dataclass
class MASSConfig:
    fragment_ratio: float = 0.5  # fragment length / sentence length (k in MASS §2.2; 50% works best, §4.3)
    mask_token_fraction: float = 0.8  # of the fragment's encoder tokens, replaced by [MASK]
    random_token_fraction: float = 0.1  # ... by a random token; the rest stay unchanged
    mask_token_id: int = -1  # filled from the tokenizer when -1
    vocab_size: int = -1  # filled from the model/tokenizer when -1
    special_token_ids: list[int] = field(default_factory=list)  # never used as random replacements

    def __post_init__(self) -> None:
        if not 0.0 < self.fragment_ratio <= 1.0:
            raise ConfigError(f"mass: fragment_ratio must be in (0, 1], got {self.fragment_ratio}")
        if self.mask_token_fraction < 0 or self.random_token_fraction < 0 or \
                self.mask_token_fraction + self.random_token_fraction > 1.0:
            raise ConfigError("mass: mask_token_fraction and random_token_fraction must be >= 0 and sum to at most "
                              f"1 (got {self.mask_token_fraction} + {self.random_token_fraction})")

    def check_ready(self) -> None:
        if self.mask_token_id < 0:
            raise ConfigError("mass: mask_token_id is not set: the tokenizer needs a mask token")
        if self.vocab_size <= 0 or self.mask_token_id >= self.vocab_size:
            raise ConfigError(f"mass: vocab_size ({self.vocab_size}) must be set and hold mask_token_id "
                              f"({self.mask_token_id})")


def fragment_bounds(n: torch.Tensor, ratio: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(start u, length m), long (B,), of one contiguous fragment per row of n real tokens (m = 0 when n = 0)."""
    m = torch.round(n.double() * ratio).long().clamp(min=1)
    m = torch.minimum(m, n)
    u = torch.floor(torch.rand(n.shape[0], generator=generator, dtype=torch.float64) * (n - m + 1)).long()
    return u, m


class MASS:
    task = "seq2seq-lm"

    def __init__(self, cfg: MASSConfig):
        cfg.check_ready()
        self.cfg = cfg
        special = torch.tensor(sorted(set(cfg.special_token_ids)), dtype=torch.long)
        ordinary = torch.ones(cfg.vocab_size, dtype=torch.bool)
        ordinary[special[special < cfg.vocab_size]] = False
        self._ordinary = ordinary.nonzero().squeeze(1)  # random replacements are ordinary tokens

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        c = self.cfg
        ids = batch["input_ids"]  # (B, T)
        real = real_tokens(batch)
        q = torch.cumsum(real.long(), 1) - 1  # (B, T) index among the row's real tokens
        u, m = fragment_bounds(real.sum(1), c.fragment_ratio, generator)
        frag = real & (q >= u[:, None]) & (q < (u + m)[:, None])  # (B, T) the fragment
        # encoder: BERT's 80/10/10 on the fragment
        r = torch.rand(ids.shape, generator=generator)
        pick = torch.randint(0, len(self._ordinary), ids.shape, generator=generator)
        enc = torch.where(frag & (r < c.mask_token_fraction), torch.full_like(ids, c.mask_token_id), ids)
        rand = frag & (r >= c.mask_token_fraction) & (r < c.mask_token_fraction + c.random_token_fraction)
        enc = torch.where(rand, self._ordinary[pick], enc)
        # decoder: the fragment shifted right, [MASK] elsewhere; targets on the fragment only
        prev_ids = torch.cat([torch.full_like(ids[:, :1], c.mask_token_id), ids[:, :-1]], 1)
        prev_frag = torch.cat([torch.zeros_like(frag[:, :1]), frag[:, :-1]], 1)
        dec_in = torch.where(frag & prev_frag, prev_ids, torch.full_like(ids, c.mask_token_id))
        labels = torch.where(frag, ids, torch.full_like(ids, -100))
        out = {"input_ids": enc, "decoder_input_ids": dec_in, "labels": labels}
        if "attention_mask" in batch:
            out["attention_mask"] = batch["attention_mask"]
        return out

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return seq2seq_loss(model, batch)
