"""SpanBERT span masking and the span-boundary objective (Joshi et al. 2020, "SpanBERT: Improving Pre-training by
Representing and Predicting Spans", §3.1-3.2). Survey (Han et al. 2021) §4: masking strategies of MLM.

Spans of contiguous whole words (or tokens) are masked until `mask_prob` of each row's maskable tokens is reached;
span lengths follow a geometric distribution Geo(p=0.2) truncated at 10 (mean 3.8 with the paper's settings); the
80/10/10 replacement is decided once per span. SBO predicts every token x_i of a span (s..e) from the encoder states
of the boundary tokens x_{s-1}, x_{e+1} and a relative position embedding p_{i-s+1}, through a 2-layer feed-forward
network with GeLU and LayerNorm; loss = MLM + sbo_weight * SBO.

Placement (`sample_spans`): a row's budget is mask_prob * (its maskable tokens), stochastically rounded; starts are
uniform among the positions where the drawn length fits; spans never cover specials/padding or cross packed
documents, and keep one unit away from earlier spans, so both boundaries are visible real tokens; the last span of
a row is cut to the budget (as in SpanBERT's code). The batch gains span_left / span_right (B, T) for the SBO.

Dimension legend: B batch, T length, U units (words or tokens) per row, K span slots, H hidden, V vocabulary,
N masked tokens.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.models.base import init_normal
from ptmkit.models.registry import backbone_of
from ptmkit.objectives.base import Batch
from ptmkit.objectives.masking import (
    AuxiliaryModules, MaskingConfig, as_table, check_mask_token, masked_lm_forward, maskable_positions,
    mean_cross_entropy, replace_tokens, unit_index, unit_starts, word_start_table,
)


@dataclass
class SpanConfig(MaskingConfig):
    name: ClassVar[str] = "span"
    geometric_p: float = 0.2  # span length ~ Geo(p), truncated at max_span_len (SpanBERT §3.1)
    max_span_len: int = 10  # longest span, in units (words when whole_words, else tokens)
    whole_words: bool = True  # spans are made of complete words and start at a word start (needs word_start)
    word_start: list[bool] | None = None  # one flag per token id; filled from the tokenizer
    sbo_weight: float = 1.0  # weight of the span-boundary objective; 0 = span masking only (no SBO head)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.geometric_p <= 1.0:
            raise ConfigError(f"span: geometric_p must be in (0, 1], got {self.geometric_p}")
        if self.max_span_len < 1:
            raise ConfigError(f"span: max_span_len must be >= 1, got {self.max_span_len}")
        if self.sbo_weight < 0:
            raise ConfigError(f"span: sbo_weight must be >= 0, got {self.sbo_weight}")

    def length_probs(self) -> torch.Tensor:
        """(max_span_len,) P(length = 1 .. max_span_len): the truncated, renormalised geometric."""
        k = torch.arange(self.max_span_len, dtype=torch.float64)
        p = self.geometric_p * (1 - self.geometric_p) ** k
        return p / p.sum()


class SpanBoundaryHead(nn.Module):
    """SpanBERT §3.2: y_i = LN(GeLU(W2 · LN(GeLU(W1 · [x_{s-1}; x_{e+1}; p_{i-s+1}])))) , then the tied vocabulary
    projection of the model's input embeddings (no output bias)."""

    def __init__(self, hidden: int, max_positions: int, eps: float = 1e-12):
        super().__init__()
        self.max_positions = max_positions
        self.position = nn.Embedding(max_positions, hidden)
        self.ffn = nn.Sequential(
            nn.Linear(3 * hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=eps),
            nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=eps),
        )
        self.apply(lambda m: init_normal(m, 0.02))

    def forward(self, left: torch.Tensor, right: torch.Tensor, offset: torch.Tensor,
                decoder_weight: torch.Tensor) -> torch.Tensor:
        pos = self.position(offset.clamp(max=self.max_positions - 1))  # (N, H)
        y = self.ffn(torch.cat([left, right, pos], dim=-1))  # (N, 3H) -> (N, H)
        return F.linear(y, decoder_weight)  # (N, V)


@dataclass
class Spans:
    """The spans placed in a batch, one slot per sampling round (K rounds); unused slots have start = -1."""

    start: torch.Tensor  # (B, K) first token of the span
    end: torch.Tensor  # (B, K) one past its last token
    sampled_len: torch.Tensor  # (B, K) the length drawn from the distribution, in units
    truncated: torch.Tensor  # (B, K) bool: cut short to stay within the row's budget

    @property
    def placed(self) -> torch.Tensor:
        return self.start >= 0


def _shift(x: torch.Tensor, by: int) -> torch.Tensor:
    """x shifted along dim 1 by `by` (positive: to the right), filled with False."""
    out = torch.zeros_like(x)
    if by > 0:
        out[:, by:] = x[:, :-by]
    else:
        out[:, :by] = x[:, -by:]
    return out


def sample_spans(free: torch.Tensor, unit_tokens: torch.Tensor, budget: torch.Tensor, probs: torch.Tensor,
                 generator: torch.Generator, max_rounds: int | None = None):
    """Place non-overlapping, non-adjacent spans of free units until each row has `budget` tokens masked.

    free (B, U) bool: units a span may cover; unit_tokens (B, U): tokens per unit (units tile the row); budget (B,).
    Each round draws, for every row still under budget, a length L ~ probs and a start uniformly among the starts
    where L free units fit (a gap of one unit is kept to earlier spans, so both boundaries are unmasked tokens).
    The last span of a row is cut to the budget (SpanBERT's reference code does the same). A row whose L fits
    nowhere redraws next round. Rounds are a loop over span slots, vectorised across the batch: placing spans
    without overlap is sequential by nature, and there are only ~budget / 3.8 rounds.

    Returns (span_of_unit (B, U) long: the round that masked the unit, -1 if none; Spans in token positions;
    per-round r (B, K) uniform draws for the span-level 80/10/10).
    """
    B, U = free.shape
    idx = torch.arange(U).expand(B, U)  # (B, U)
    cs = torch.zeros(B, U + 1, dtype=torch.long)
    cs[:, 1:] = torch.cumsum(unit_tokens, dim=1)  # (B, U+1) first token of each unit; cs[:, U] = T
    masked_units = torch.zeros(B, U, dtype=torch.bool)
    span_of_unit = torch.full((B, U), -1, dtype=torch.long)
    masked = torch.zeros(B, dtype=torch.long)
    starts, ends, sampled, truncated, draws = [], [], [], [], []
    max_rounds = max_rounds if max_rounds is not None else 2 * int(budget.max().item() if B else 0) + 16
    for k in range(max_rounds):
        blocked = ~free | masked_units | _shift(masked_units, 1) | _shift(masked_units, -1)  # (B, U)
        active = (masked < budget) & (~blocked).any(1)  # (B,)
        if not active.any():
            break
        L = torch.multinomial(probs, B, replacement=True, generator=generator) + 1  # (B,) in units
        remaining = (budget - masked).clamp(min=0)
        # units that fit the remaining budget from each start (at least one, so a long word still gets masked)
        last = torch.searchsorted(cs, cs[:, :U] + remaining[:, None], right=True) - 1  # (B, U)
        ell = torch.minimum(L[:, None], (last - idx).clamp(min=1))  # (B, U) span length from each start
        next_blocked = torch.where(blocked, idx, torch.full_like(idx, U))
        next_blocked = torch.flip(torch.cummin(torch.flip(next_blocked, [1]), dim=1).values, [1])  # (B, U)
        valid = (next_blocked - idx >= ell) & active[:, None]  # (B, U) the span fits in a free run
        score = torch.where(valid, torch.rand(B, U, generator=generator), torch.full((B, U), -1.0))
        j = score.argmax(1)  # (B,) uniform among valid starts
        has = valid.any(1)
        n = ell.gather(1, j[:, None]).squeeze(1)  # (B,)
        in_span = (idx >= j[:, None]) & (idx < (j + n)[:, None]) & has[:, None]  # (B, U)
        masked_units |= in_span
        span_of_unit = torch.where(in_span, torch.full_like(span_of_unit, k), span_of_unit)
        masked += (unit_tokens * in_span).sum(1)
        starts.append(torch.where(has, cs.gather(1, j[:, None]).squeeze(1), torch.full_like(j, -1)))
        ends.append(torch.where(has, cs.gather(1, (j + n)[:, None]).squeeze(1), torch.full_like(j, -1)))
        sampled.append(torch.where(has, L, torch.zeros_like(L)))
        truncated.append(has & (n < L))
        draws.append(torch.rand(B, generator=generator))
    if not starts:
        empty = torch.zeros(B, 0, dtype=torch.long)
        return span_of_unit, Spans(empty, empty, empty, empty.bool()), torch.zeros(B, 0)
    spans = Spans(torch.stack(starts, 1), torch.stack(ends, 1), torch.stack(sampled, 1), torch.stack(truncated, 1))
    return span_of_unit, spans, torch.stack(draws, 1)


class SpanMasking(AuxiliaryModules):
    task = "masked-lm"

    def __init__(self, cfg: SpanConfig):
        cfg.check_ready()
        self.cfg = cfg
        if cfg.whole_words:
            if cfg.word_start is None:
                raise ConfigError("span: whole_words needs the word_start table; build the objective with "
                                  "SpanMasking.from_tokenizer(cfg, tokenizer), pass word_start, "
                                  "or set whole_words: false")
            self.word_start = as_table(cfg.word_start, cfg.vocab_size, cfg.name)  # (V,)
        else:
            self.word_start = None
        self._special = torch.tensor(sorted(set(cfg.special_token_ids)), dtype=torch.long)
        self._probs = cfg.length_probs().float()

    def _build_heads(self, hidden: int) -> nn.ModuleDict | None:
        if self.cfg.sbo_weight == 0:
            return None
        # relative positions past the table (very long words in a whole-word span) share its last embedding
        return nn.ModuleDict({"sbo": SpanBoundaryHead(hidden, 4 * self.cfg.max_span_len)})

    @classmethod
    def from_tokenizer(cls, cfg: SpanConfig, tokenizer) -> SpanMasking:
        check_mask_token(cfg.name, tokenizer)
        if cfg.whole_words and cfg.word_start is None:
            cfg = dataclasses.replace(cfg, word_start=word_start_table(tokenizer, cfg.vocab_size))
        return cls(cfg)

    def check_seq_len(self, seq_len: int) -> None:
        # a span needs its tokens plus two boundary tokens inside the row
        if self.cfg.max_span_len + 2 > seq_len:
            raise ConfigError(f"span: max_span_len {self.cfg.max_span_len} (+2 boundary tokens) is longer than the "
                              f"sequence length {seq_len}; lower objective.params.max_span_len")

    def place(self, batch: Batch, generator: torch.Generator):
        """Sample the spans of a batch: (span_of_token (B, T) long round id or -1, Spans, per-span r (B, K))."""
        ids = batch["input_ids"]  # (B, T)
        self.check_seq_len(ids.shape[1])
        maskable = maskable_positions(batch, self._special)
        real = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(ids, dtype=torch.bool)
        docs = batch.get("document_ids")
        # SBO needs both boundary tokens: real tokens of the same document just outside the span
        left_ok, right_ok = _shift(real, 1), _shift(real, -1)
        if docs is not None:
            same = docs[:, 1:] == docs[:, :-1]  # (B, T-1)
            left_ok[:, 1:] &= same
            right_ok[:, :-1] &= same
        free_tok = maskable & left_ok & right_ok  # (B, T)
        starts = unit_starts(ids, maskable, self.word_start, docs)
        unit = unit_index(starts)  # (B, T)
        B, T = ids.shape
        unit_tokens = torch.zeros(B, T, dtype=torch.long).scatter_add_(1, unit, torch.ones_like(unit))
        free_count = torch.zeros(B, T, dtype=torch.long).scatter_add_(1, unit, free_tok.long())
        free_units = (unit_tokens > 0) & (free_count == unit_tokens)  # (B, U=T)
        n = maskable.sum(1).double()
        # stochastic rounding: E[budget] = mask_prob * n exactly, also for short rows
        budget = torch.floor(self.cfg.mask_prob * n + torch.rand(B, generator=generator, dtype=torch.float64)).long()
        span_of_unit, spans, r = sample_spans(free_units, unit_tokens, budget, self._probs, generator)
        return span_of_unit.gather(1, unit), spans, r

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        ids = batch["input_ids"]  # (B, T)
        span_of_token, spans, r = self.place(batch, generator)
        chosen = span_of_token >= 0  # (B, T)
        k = span_of_token.clamp(min=0)
        none = torch.full_like(ids, -1)
        left = torch.where(chosen, spans.start.gather(1, k) - 1, none) if spans.start.numel() else none
        right = torch.where(chosen, spans.end.gather(1, k), none) if spans.end.numel() else none
        r_tok = r.gather(1, k) if r.numel() else torch.zeros(ids.shape)  # one 80/10/10 draw per span (SpanBERT)
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        corrupted = replace_tokens(ids, chosen, r_tok, self.cfg, generator)
        return {**batch, "input_ids": corrupted, "labels": labels, "span_left": left, "span_right": right}

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        out, where = masked_lm_forward(model, batch)
        target = batch["labels"][where]  # (N,)
        mlm, acc = mean_cross_entropy(out.logits, target)
        metrics = {"mlm_loss": mlm.item(), "mlm_accuracy": acc.item(), "predicted_tokens": float(target.numel())}
        loss = mlm
        if self.cfg.sbo_weight > 0:
            head = self._bound(model)["sbo"]
            h = out.last_hidden_state  # (B, T, H)
            b, t = where.nonzero(as_tuple=True)  # (N,) row-major, the order of out.logits
            left, right = batch["span_left"][b, t], batch["span_right"][b, t]
            emb = backbone_of(model).input_embeddings().weight  # (V, H) tied with the MLM decoder
            logits = head(h[b, left], h[b, right], t - left - 1, emb)  # (N, V)
            sbo, sbo_acc = mean_cross_entropy(logits, target)
            loss = mlm + self.cfg.sbo_weight * sbo
            metrics.update(sbo_loss=sbo.item(), sbo_accuracy=sbo_acc.item())
        metrics["loss"] = loss.item()
        return loss, metrics


# mean of the truncated geometric, for documentation and tests: 3.80 with p=0.2, max 10 (SpanBERT §3.1)
def mean_span_length(p: float = 0.2, max_len: int = 10) -> float:
    w = [p * (1 - p) ** (k - 1) for k in range(1, max_len + 1)]
    return sum(k * x for k, x in zip(range(1, max_len + 1), w)) / math.fsum(w)
