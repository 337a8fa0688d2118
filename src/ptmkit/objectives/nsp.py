"""Sentence-pair objectives combined with MLM: next sentence prediction (BERT: Devlin et al. 2019 §3.1, task #2) and
sentence-order prediction (ALBERT: Lan et al. 2020 §3.1). Survey (Han et al. 2021) §3.1/§4: NSP and SOP.

A pair builder turns each row of a one-document-per-row batch (data.boundary = no_cross) into
``[CLS] A [SEP] B [SEP] [PAD]...`` with token_type_ids 0 for ``[CLS] A [SEP]`` and 1 for ``B [SEP]``:
- the row's content tokens (real, non-special) are cut to T - 3 tokens (room for [CLS] and two [SEP]);
- A/B are split at a sentence boundary: after a ".", "!" or "?" token (ids from the tokenizer), chosen uniformly
  among the boundaries of the row, as BERT picks a random number of sentences for A; a row without one is split at
  a uniformly random point. Rows with fewer than 2 content tokens get no pair label (-100).
- NSP: with probability `swap_prob` B is replaced by the second segment of another row of the batch (a random
  other row, cut to fit; label 1 = NotNext, 0 = IsNext). Needs a batch of >= 2 rows, else all pairs are positive.
- SOP: with probability `swap_prob` A and B change places (label 1 = swapped): both segments always come from the
  same document, so topic cues cannot solve the task (ALBERT's argument against NSP).
Then BERT's MLM masking runs on the pairs. A binary head on the pooled [CLS] state (dense + tanh + linear, as
BERT's pooler) is owned by the objective, unless the model has its own (`pair_head`: ALBERT's pre-training model,
task masked-lm-sop). Loss = MLM + pair_weight * cross-entropy of the pair label.

Dimension legend: B batch, T length, H hidden.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.models.base import init_normal
from ptmkit.models.registry import backbone_of
from ptmkit.objectives.base import Batch
from ptmkit.objectives.masking import (
    AuxiliaryModules, MaskingConfig, check_mask_token, masked_lm_forward, mean_cross_entropy, sentence_end_ids,
)
from ptmkit.objectives.mlm import MaskedLM, MLMConfig


@dataclass
class NSPConfig(MaskingConfig):
    name: ClassVar[str] = "nsp"
    cls_token_id: int = -1  # filled from the tokenizer
    sep_token_id: int = -1  # filled from the tokenizer
    pad_token_id: int = -1  # filled from the tokenizer
    sentence_end_ids: list[int] = field(default_factory=list)  # split points; filled from the tokenizer (".", "!", "?")
    swap_prob: float = 0.5  # probability of a negative pair (random B for NSP, swapped order for SOP)
    pair_weight: float = 1.0  # weight of the pair-classification loss next to MLM

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.swap_prob <= 1.0:
            raise ConfigError(f"{self.name}: swap_prob must be in [0, 1], got {self.swap_prob}")
        if self.pair_weight < 0:
            raise ConfigError(f"{self.name}: pair_weight must be >= 0, got {self.pair_weight}")

    def check_ready(self) -> None:
        super().check_ready()
        for role in ("cls", "sep", "pad"):
            if getattr(self, f"{role}_token_id") < 0:
                raise ConfigError(f"{self.name}: {role}_token_id is not set; the tokenizer needs a {role} token "
                                  f"(build with from_tokenizer)")


@dataclass
class SOPConfig(NSPConfig):
    name: ClassVar[str] = "sop"


def make_sentence_pairs(batch: Batch, generator: torch.Generator, *, cls_id: int, sep_id: int, pad_id: int,
                        special_ids: torch.Tensor, sentence_end_ids: torch.Tensor, swap_prob: float,
                        negative: str) -> Batch:
    """Build ``[CLS] A [SEP] B [SEP]`` rows (see the module docstring). negative: "random_next" (NSP) | "swap" (SOP).

    Returns input_ids, attention_mask, token_type_ids (B, T) and pair_labels (B,) (-100: no pair in this row).
    """
    if negative not in ("random_next", "swap"):
        raise ValueError(f"negative must be 'random_next' or 'swap', got {negative!r}")
    if "document_ids" in batch:
        raise ConfigError("sentence-pair objectives need one document per row; use data.boundary: no_cross")
    ids = batch["input_ids"]  # (B, T)
    B, T = ids.shape
    if T < 5:
        raise ConfigError(f"sentence pairs need sequences of at least 5 tokens ([CLS] a [SEP] b [SEP]), got {T}")
    real = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(ids, dtype=torch.bool)
    content = real & ~torch.isin(ids, special_ids)  # (B, T)
    order = torch.argsort((~content).to(torch.int8), dim=1, stable=True)  # content positions first, in order
    c = ids.gather(1, order)  # (B, T) content tokens, left-aligned
    m = content.sum(1).clamp(max=T - 3)  # (B,) usable content length
    valid = m >= 2
    j = torch.arange(T).expand(B, T)  # candidate split points k: A = c[:k], B = c[k:m]
    inside = (j >= 1) & (j <= (m - 1)[:, None])
    after_end = torch.zeros(B, T, dtype=torch.bool)
    after_end[:, 1:] = torch.isin(c[:, :-1], sentence_end_ids)
    at_sentence = inside & after_end
    allowed = torch.where(at_sentence.any(1, keepdim=True), at_sentence, inside)
    k = torch.where(allowed, torch.rand(B, T, generator=generator), torch.full((B, T), -1.0)).argmax(1)  # (B,)
    k = torch.where(valid, k, m)  # no pair: everything in A
    swap = (torch.rand(B, generator=generator) < swap_prob) & valid  # (B,)

    rows = torch.arange(B)
    if negative == "random_next":
        offset = torch.randint(1, max(B, 2), (B,), generator=generator)
        partner = (rows + offset) % B  # (B,) another row
        swap &= valid[partner] & torch.tensor(B > 1)
        # segment 1 = A of this row; segment 2 = this row's B, or the partner's B cut to the room left
        r1, s1, l1 = rows, torch.zeros_like(k), k
        room = T - 3 - k
        r2 = torch.where(swap, partner, rows)
        s2 = torch.where(swap, k[partner], k)
        l2 = torch.where(swap, torch.minimum(m[partner] - k[partner], room), m - k)
    else:  # SOP: B then A when swapped; both from this row
        r1, r2 = rows, rows
        s1, l1 = torch.where(swap, k, 0), torch.where(swap, m - k, k)
        s2, l2 = torch.where(swap, 0, k), torch.where(swap, k, m - k)

    # output layout per row: 0 [CLS] | 1..l1 seg1 | l1+1 [SEP] | l1+2..l1+l2+1 seg2 | l1+l2+2 [SEP] | pad
    # (a row without a pair has l2 = 0 and ends "[CLS] A [SEP]")
    l1c, l2c = l1[:, None], l2[:, None]
    in1 = (j >= 1) & (j <= l1c)
    in2 = (j >= l1c + 2) & (j <= l1c + l2c + 1)
    sep1 = j == l1c + 1
    sep2 = (j == l1c + l2c + 2) & (l2c > 0)
    col = torch.where(in1, s1[:, None] + j - 1, s2[:, None] + j - l1c - 2).clamp(0, T - 1)  # (B, T)
    src_row = torch.where(in1, r1[:, None], r2[:, None])  # (B, T)
    seg = c[src_row, col]  # (B, T)
    out = torch.full_like(ids, pad_id)
    out = torch.where(in1 | in2, seg, out)
    out = torch.where(sep1 | sep2, torch.full_like(ids, sep_id), out)
    out[:, 0] = cls_id
    attention = (j <= torch.where(l2 > 0, l1 + l2 + 2, l1 + 1)[:, None]).long()
    token_type = (in2 | sep2).long()
    labels = torch.where(valid, swap.long(), torch.full_like(k, -100))
    result = {key: v for key, v in batch.items() if key not in ("position_ids",)}
    result.update(input_ids=out, attention_mask=attention, token_type_ids=token_type, pair_labels=labels)
    return result


class PairHead(nn.Module):
    """BERT's pooler (dense + tanh on the [CLS] state) and a 2-way classifier."""

    def __init__(self, hidden: int):
        super().__init__()
        self.pool = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 2)
        self.apply(lambda m: init_normal(m, 0.02))

    def forward(self, cls_state: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.pool(cls_state)))  # (B, H) -> (B, 2)


class NextSentencePrediction(AuxiliaryModules):
    task = "masked-lm"
    negative = "random_next"
    metric = "nsp"

    def __init__(self, cfg: NSPConfig):
        cfg.check_ready()
        self.cfg = cfg
        specials = sorted(set(cfg.special_token_ids) | {cfg.cls_token_id, cfg.sep_token_id, cfg.pad_token_id})
        self._special = torch.tensor(specials, dtype=torch.long)
        self._ends = torch.tensor(sorted(set(cfg.sentence_end_ids)), dtype=torch.long)
        self._mlm = MaskedLM(MLMConfig(
            mask_prob=cfg.mask_prob, mask_token_fraction=cfg.mask_token_fraction,
            random_token_fraction=cfg.random_token_fraction, mask_token_id=cfg.mask_token_id,
            vocab_size=cfg.vocab_size, special_token_ids=specials,
        ))

    def _build_heads(self, hidden: int) -> nn.ModuleDict:
        return nn.ModuleDict({"pair": PairHead(hidden)})

    @classmethod
    def from_tokenizer(cls, cfg: NSPConfig, tokenizer):
        check_mask_token(cfg.name, tokenizer)
        fill = {}
        for role in ("cls", "sep", "pad"):
            if getattr(cfg, f"{role}_token_id") < 0:
                tid = getattr(tokenizer, f"{role}_id")
                if tid is None:
                    raise ConfigError(f"objective {cfg.name}: the tokenizer has no {role} token")
                fill[f"{role}_token_id"] = tid
        if not cfg.sentence_end_ids:
            fill["sentence_end_ids"] = sentence_end_ids(tokenizer)
        return cls(dataclasses.replace(cfg, **fill))

    def check_seq_len(self, seq_len: int) -> None:
        if seq_len < 5:
            raise ConfigError(f"{self.cfg.name}: sequences of {seq_len} tokens cannot hold [CLS] a [SEP] b [SEP]; "
                              "use data.seq_len >= 5")

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        c = self.cfg
        pairs = make_sentence_pairs(batch, generator, cls_id=c.cls_token_id, sep_id=c.sep_token_id,
                                    pad_id=c.pad_token_id, special_ids=self._special, sentence_end_ids=self._ends,
                                    swap_prob=c.swap_prob, negative=self.negative)
        return self._mlm.corrupt(pairs, generator)

    def bind(self, model: nn.Module) -> nn.Module:
        types = getattr(getattr(backbone_of(model), "config", None), "type_vocab_size", 2)
        if types < 2:
            raise ConfigError(f"{self.cfg.name}: the model has type_vocab_size={types}; sentence pairs need 2 "
                              "segment embeddings (set model.config.type_vocab_size: 2)")
        if getattr(model, "pair_head", None) is not None:
            # The model carries its own pair classifier (ALBERT's pre-training model, task masked-lm-sop): train that
            # one, so pre-trained SOP weights keep learning and are saved with the model; the objective owns nothing.
            self.heads, self._bound_to = None, backbone_of(model)
            return None
        return super().bind(model)

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        head = None if getattr(model, "pair_head", None) is not None else self._bound(model)["pair"]
        out, where = masked_lm_forward(model, batch)
        target = batch["labels"][where]
        mlm, acc = mean_cross_entropy(out.logits, target)
        logits = getattr(out, "pair_logits", None)  # (B, 2) from the model's own pair head, if it has one
        if logits is None:
            logits = head(out.last_hidden_state[:, 0])  # (B, H) the [CLS] state -> (B, 2)
        labels = batch["pair_labels"]  # (B,)
        has = labels != -100
        pair, pair_acc = mean_cross_entropy(logits[has], labels[has])
        loss = mlm + self.cfg.pair_weight * pair
        return loss, {"loss": loss.item(), "mlm_loss": mlm.item(), "mlm_accuracy": acc.item(),
                      f"{self.metric}_loss": pair.item(), f"{self.metric}_accuracy": pair_acc.item(),
                      "predicted_tokens": float(target.numel())}


class SentenceOrderPrediction(NextSentencePrediction):
    negative = "swap"
    metric = "sop"
    task_for_family = {"albert": "masked-lm-sop"}  # ALBERT carries its SOP head (Lan et al. 2020 §4.1)
