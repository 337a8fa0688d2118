"""Whole-word masking (BERT-wwm: Devlin et al. 2019, GitHub release of May 2019; Cui et al. 2019/2021 for Chinese):
when a word is chosen, all of its WordPiece/BPE sub-tokens are masked together, so no piece of a word is predicted
from its visible siblings. Survey (Han et al. 2021) §4: masking strategies of MLM.

Words are found from token ids alone through a boolean "is word start" table over the vocabulary, built once from
the tokenizer (`word_start_table`): WordPiece continuations start with "##", byte-level BPE words with "Ġ".
Each word is chosen independently with probability `mask_prob` (so the expected token rate is also `mask_prob`);
the 80/10/10 replacement is then applied per token, as in Google's wwm release.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from ptmkit.config import ConfigError
from ptmkit.objectives.base import Batch
from ptmkit.objectives.masking import (
    MaskingConfig, as_table, check_mask_token, masked_lm_loss, maskable_positions, replace_tokens, unit_index,
    unit_starts, word_start_table,
)


@dataclass
class WWMConfig(MaskingConfig):
    name: ClassVar[str] = "wwm"
    word_start: list[bool] | None = None  # one flag per token id; filled from the tokenizer (word_start_table)


class WholeWordMasking:
    task = "masked-lm"

    def __init__(self, cfg: WWMConfig):
        cfg.check_ready()
        if cfg.word_start is None:
            raise ConfigError("wwm: the word_start table is missing; build the objective with "
                              "WholeWordMasking.from_tokenizer(cfg, tokenizer) or pass word_start")
        self.cfg = cfg
        self.word_start = as_table(cfg.word_start, cfg.vocab_size, cfg.name)  # (V,)
        self._special = torch.tensor(sorted(set(cfg.special_token_ids)), dtype=torch.long)

    @classmethod
    def from_tokenizer(cls, cfg: WWMConfig, tokenizer) -> WholeWordMasking:
        check_mask_token(cfg.name, tokenizer)
        if cfg.word_start is None:
            cfg = dataclasses.replace(cfg, word_start=word_start_table(tokenizer, cfg.vocab_size))
        return cls(cfg)

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        c = self.cfg
        ids = batch["input_ids"]  # (B, T)
        maskable = maskable_positions(batch, self._special)
        starts = unit_starts(ids, maskable, self.word_start, batch.get("document_ids"))  # (B, T) word starts
        unit = unit_index(starts)  # (B, T) word of each token
        word_chosen = torch.rand(ids.shape, generator=generator) < c.mask_prob  # (B, U<=T): one draw per word
        chosen = word_chosen.gather(1, unit) & maskable  # all pieces of a chosen word, never specials/padding
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        r = torch.rand(ids.shape, generator=generator)  # per-token 80/10/10
        return {**batch, "input_ids": replace_tokens(ids, chosen, r, c, generator), "labels": labels}

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return masked_lm_loss(model, batch)
