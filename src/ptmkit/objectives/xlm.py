"""Cross-lingual LM pre-training (survey §5.1): multilingual masked LM (MMLM) and translation LM (TLM).
Conneau & Lample 2019, "Cross-lingual Language Model Pretraining" (XLM), §3.1-§3.3.

MMLM: BERT masking over monolingual sentences of every language, each token tagged with its language id.
TLM: the same masking over a concatenated translation pair [src ; tgt] (built by
`ptmkit.data.multilingual.concat_pairs`: target positions restart at 0, per-token language ids), so a word masked in
one language can be recovered from its translation.

Language embeddings. XLM adds a learned language embedding to every token embedding, exactly as BERT adds a
segment embedding; we therefore use BERT's segment table for it: `token_type_ids = lang_ids` on an encoder with
`type_vocab_size >= num_languages`. The table is then part of the model (saved, loaded and fine-tuned with it, no
extra forward path) rather than an auxiliary module the objective owns; `bind(model)` only checks the table is big
enough. (Sentence-pair segment ids and language ids are never needed together in XLM: its TLM uses languages.)

Dimension legend: B batch, T length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ptmkit.config import ConfigError
from ptmkit.models.registry import backbone_of
from ptmkit.objectives.base import Batch
from ptmkit.objectives.masking import MaskingConfig, maskable_positions, masked_lm_loss, replace_tokens


@dataclass
class MMLMConfig(MaskingConfig):
    name: ClassVar[str] = "mmlm"

    # languages in the batches = rows of the language (segment) table the encoder needs; 2 fits a default BERT
    # (type_vocab_size 2); set it to the corpus's count (3 for Multi30k en/de/fr)
    num_languages: int = 2  # rows of the language (segment) table (3 for Multi30k en/de/fr)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_languages < 1:
            raise ConfigError(f"{self.name}: num_languages must be >= 1, got {self.num_languages}")


@dataclass
class TLMConfig(MMLMConfig):
    name: ClassVar[str] = "tlm"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_languages < 2:
            raise ConfigError(f"tlm: a translation pair needs num_languages >= 2, got {self.num_languages}")


class MultilingualMLM:
    """XLM's MMLM. Batches carry `lang_ids` (B, T); a batch without them is one language (id 0)."""

    task = "masked-lm"

    def __init__(self, cfg: MMLMConfig):
        cfg.check_ready()
        self.cfg = cfg
        self._special = torch.tensor(sorted(set(cfg.special_token_ids)), dtype=torch.long)

    def bind(self, model) -> None:
        """No networks of its own: language embeddings are the encoder's segment table (see the module doc)."""
        c = backbone_of(model).config
        n = getattr(c, "type_vocab_size", 0)
        if n < self.cfg.num_languages:
            raise ConfigError(f"{self.cfg.name}: the model's type_vocab_size is {n} but num_languages is "
                              f"{self.cfg.num_languages}; build the encoder with type_vocab_size="
                              f"{self.cfg.num_languages} (language embeddings live in the segment table)")
        return None

    def _lang_ids(self, batch: Batch) -> torch.Tensor:
        lang = batch.get("lang_ids")
        if lang is None:
            return torch.zeros_like(batch["input_ids"])
        if lang.shape != batch["input_ids"].shape:
            raise ValueError(f"{self.cfg.name}: lang_ids {tuple(lang.shape)} must match input_ids "
                             f"{tuple(batch['input_ids'].shape)} (one language id per token)")
        if lang.numel() and (int(lang.min()) < 0 or int(lang.max()) >= self.cfg.num_languages):
            raise ValueError(f"{self.cfg.name}: language ids must be in [0, {self.cfg.num_languages}), "
                             f"got [{int(lang.min())}, {int(lang.max())}]")
        return lang

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        c = self.cfg
        ids = batch["input_ids"]  # (B, T)
        lang = self._lang_ids(batch)
        chosen = (torch.rand(ids.shape, generator=generator) < c.mask_prob) & maskable_positions(batch, self._special)
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        r = torch.rand(ids.shape, generator=generator)
        corrupted = replace_tokens(ids, chosen, r, c, generator)  # BERT 80/10/10 (XLM §3.2 keeps it)
        return {**batch, "input_ids": corrupted, "labels": labels, "lang_ids": lang, "token_type_ids": lang}

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        batch = {k: v for k, v in batch.items() if k != "lang_ids"}  # token_type_ids carries them into the model
        return masked_lm_loss(model, batch)


class TranslationLM(MultilingualMLM):
    """XLM's TLM: MMLM's masking over both halves of [src ; tgt] rows (`ParallelCorpus.tlm_batch` /
    `concat_pairs` build them); the loss is the same masked-LM cross-entropy over every chosen token."""

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        if "lang_ids" in batch and "position_ids" not in batch:
            raise ValueError("tlm: a [src ; tgt] batch needs position_ids that restart at the target "
                             "(XLM §3.3); build it with ptmkit.data.multilingual.concat_pairs")
        return super().corrupt(batch, generator)
