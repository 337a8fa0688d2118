"""GLM autoregressive blank infilling (Du et al. 2022, "GLM: General Language Model Pretraining with Autoregressive
Blank Infilling", ACL; §2.1-2.2). Survey (Han et al. 2021) §3/§4: unified pre-training.

Spans with lengths ~ Poisson(λ=3) are sampled until they cover `mask_prob` (15%) of a row's tokens. Part A is the
text with each span replaced by one [MASK]; Part B holds the spans in a random order (§2.1: "we randomly permute
the order of the spans", so the model learns the dependencies between spans), each as [START] x_1 .. x_l predicting
x_1 .. x_l [END]. One bidirectional encoder reads [Part A][Part B]: Part A tokens attend to all of Part A, Part B
tokens to Part A and to Part B up to themselves (§2.1, Figure 2(d)). Only Part B is scored.

2-D positions (§2.2): position 1 is the position in the corrupted text (for a Part B token: the position of its
span's [MASK] in Part A); position 2 is the intra-span position (0 for Part A, 1 .. l+1 for Part B).

Design: position 1 goes through the model's own position table (`position_ids`); position 2 ("block position")
needs a second embedding table, which is an auxiliary module owned by this objective: `bind(model)` builds an
nn.Embedding(max_span_len + 2, E) (E = the model's token-embedding width) and returns it so the trainer optimises
and checkpoints it (ptmkit.train.loop.bind_objective). `loss()` feeds `inputs_embeds` = token embeddings +
block-position embeddings, so the encoder then adds position-1 and segment embeddings as usual; no model code
changes. A model fine-tuned without the block table sees only position 1, like GLM's 1-D ablation.

Layout (fixed length per row, built vectorised): [Part A real tokens][Part B][padding] of length T + target_len,
where target_len (default 2 * ceil(mask_prob * T), the most Part B can need since every span has >= 1 token) is
the Part B budget; the span budget is capped so Part B always fits. Spans cover non-special real tokens only, never
touch each other (so every [MASK] in A stands for exactly one span), never cross packed documents, and are placed
with SpanBERT's placement loop (objectives/span.py `sample_spans`) with a zero-truncated Poisson length table.

Batch keys out: input_ids, labels (-100 outside Part B), position_ids (position 1), block_position_ids (position 2),
attention_mask (B, L) real tokens, self_attention_mask (B, L, L) bool, part (B, L) 0 pad / 1 A / 2 B.

Dimension legend: B batch, T input length, K span slots, P = target_len (Part B), L = T + P, E embedding width.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.models.base import init_normal
from ptmkit.models.registry import backbone_of
from ptmkit.objectives.base import Batch
from ptmkit.objectives.masking import maskable_positions, mean_cross_entropy
from ptmkit.objectives.span import sample_spans

PAD_PART, PART_A, PART_B = 0, 1, 2


@dataclass
class GLMConfig:
    mask_prob: float = 0.15  # fraction of a row's maskable tokens covered by spans (GLM §2.1: 15%)
    poisson_lambda: float = 3.0  # span length ~ Poisson(λ), zero-truncated (GLM §2.1, as BART)
    max_span_len: int = 10  # longest span; sizes the block-position table (max_span_len + 2 rows)
    target_len: int = 0  # Part B length per row; 0 = 2 * ceil(mask_prob * seq_len)
    start_token: str | None = None  # [START] token string; None = the tokenizer's cls/bos
    end_token: str | None = None  # [END] token string; None = the tokenizer's eos/sep
    start_token_id: int = -1  # filled from start_token / the tokenizer when -1
    end_token_id: int = -1  # filled from end_token / the tokenizer when -1
    mask_token_id: int = -1  # filled from the tokenizer when -1
    pad_token_id: int = 0  # fills the padding after Part B (never attended to, never scored)
    vocab_size: int = -1  # filled from the model/tokenizer when -1
    special_token_ids: list[int] = field(default_factory=list)  # never inside a span ([CLS], [SEP], [PAD], ...)

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"glm: mask_prob must be in (0, 1), got {self.mask_prob}")
        if not self.poisson_lambda > 0:
            raise ConfigError(f"glm: poisson_lambda must be > 0 (the paper uses 3), got {self.poisson_lambda}")
        if self.max_span_len < 1:
            raise ConfigError(f"glm: max_span_len must be >= 1, got {self.max_span_len}")
        if self.target_len < 0 or self.target_len == 1:
            raise ConfigError(f"glm: target_len must be 0 (automatic) or >= 2 (one span token + [START]), "
                              f"got {self.target_len}")

    def check_ready(self) -> None:
        if self.vocab_size <= 0:
            raise ConfigError(f"glm: vocab_size must be set (> 0), got {self.vocab_size}")
        for name in ("mask_token_id", "start_token_id", "end_token_id"):
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(f"glm: {name} is not set; build the objective with GLM.from_tokenizer(cfg, "
                                  f"tokenizer) (the tokenizer needs mask, cls/bos and eos/sep tokens) or set it")
            if value >= self.vocab_size:
                raise ConfigError(f"glm: {name} {value} is outside the vocabulary ({self.vocab_size})")

    def part_b_len(self, seq_len: int) -> int:
        return self.target_len or 2 * math.ceil(self.mask_prob * seq_len)

    def length_probs(self) -> torch.Tensor:
        """(max_span_len,) P(length = 1 .. max_span_len): Poisson(λ) without 0, truncated, renormalised."""
        k = torch.arange(1, self.max_span_len + 1, dtype=torch.float64)
        logp = k * math.log(self.poisson_lambda) - torch.lgamma(k + 1)
        p = torch.exp(logp - logp.max())
        return p / p.sum()


class GLM:
    task = "masked-lm"

    def __init__(self, cfg: GLMConfig):
        cfg.check_ready()
        self.cfg = cfg
        self._special = torch.tensor(sorted(set(cfg.special_token_ids)), dtype=torch.long)
        self._probs = cfg.length_probs().float()
        self.block_position: nn.Embedding | None = None  # built by bind()
        self._bound_to: nn.Module | None = None

    @classmethod
    def from_tokenizer(cls, cfg: GLMConfig, tokenizer) -> GLM:
        """Resolve [MASK], [START], [END] and padding from the tokenizer; a missing token is an error now."""
        def resolve(token: str | None, given: int, fallback: int | None, what: str) -> int:
            if given >= 0:
                return given
            if token is not None:
                tid = tokenizer.token_to_id(token)
                if tid is None:
                    raise ConfigError(f"glm: {what} token {token!r} is not in the tokenizer's vocabulary; add it as a "
                                      "special token or leave it unset to use the tokenizer's own")
                return tid
            if fallback is None:
                raise ConfigError(f"glm: the tokenizer has no token for {what} (cls/bos for [START], eos/sep for "
                                  f"[END]); set objective.params.{what}_token to a token in the vocabulary")
            return fallback

        if cfg.mask_token_id < 0 and tokenizer.mask_id is None:
            raise ConfigError("glm: the tokenizer has no mask token; train one with a mask special token")
        cfg = dataclasses.replace(
            cfg,
            mask_token_id=cfg.mask_token_id if cfg.mask_token_id >= 0 else tokenizer.mask_id,
            start_token_id=resolve(cfg.start_token, cfg.start_token_id, tokenizer.cls_id, "start"),
            end_token_id=resolve(cfg.end_token, cfg.end_token_id, tokenizer.eos_id, "end"),
            pad_token_id=tokenizer.pad_id if tokenizer.pad_id is not None else cfg.pad_token_id,
        )
        return cls(cfg)

    def check_seq_len(self, seq_len: int) -> None:
        c = self.cfg
        if c.max_span_len + 2 > seq_len:
            raise ConfigError(f"glm: max_span_len {c.max_span_len} (+2 neighbours) is longer than the sequence length "
                              f"{seq_len}; lower objective.params.max_span_len")
        if c.target_len and c.target_len < 2 * math.ceil(c.mask_prob * seq_len):
            # Part B would cap the span budget below mask_prob: an error, not silently masking less
            raise ConfigError(f"glm: target_len {c.target_len} cannot hold the span budget of mask_prob "
                              f"{c.mask_prob} x seq_len {seq_len} (needs 2 * ceil(mask_prob * seq_len) = "
                              f"{2 * math.ceil(c.mask_prob * seq_len)}: each span adds [START]); raise target_len "
                              "or set it to 0")

    # ---- auxiliary module: the block-position (position 2) table ------------------------------------------------
    def bind(self, model: nn.Module) -> nn.Module:
        backbone = backbone_of(model)
        if self._bound_to is not backbone:
            tok = backbone.input_embeddings()
            emb = nn.Embedding(self.cfg.max_span_len + 2, tok.embedding_dim)
            init_normal(emb, getattr(backbone.config, "initializer_range", 0.02))
            self.block_position = emb.to(tok.weight.device)
            self._bound_to = backbone
        return self.block_position

    def modules(self) -> list[nn.Module]:
        return [self.block_position] if self.block_position is not None else []

    def parameters(self):
        for m in self.modules():
            yield from m.parameters()

    # ---- data side ----------------------------------------------------------------------------------------------
    def place(self, batch: Batch, generator: torch.Generator, part_b_len: int):
        """Sample spans: (span_of_token (B, T) slot or -1, start (B, K), end (B, K), placed (B, K))."""
        ids = batch["input_ids"]  # (B, T)
        B, T = ids.shape
        free = maskable_positions(batch, self._special)  # (B, T) real, not special
        docs = batch.get("document_ids")
        if docs is not None:  # a token that opens a packed document is kept, so no span crosses documents
            free[:, 1:] &= docs[:, 1:] == docs[:, :-1]
        n = free.sum(1).double()
        # stochastic rounding: E[budget] = mask_prob * n; capped so that Part B (<= 2 tokens per masked token) fits
        budget = torch.floor(self.cfg.mask_prob * n + torch.rand(B, generator=generator, dtype=torch.float64)).long()
        budget = budget.clamp(max=part_b_len // 2)
        span_of_token, spans, _ = sample_spans(free, torch.ones_like(ids), budget, self._probs, generator)
        return span_of_token, spans.start, spans.end, spans.placed

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        c = self.cfg
        ids = batch["input_ids"]  # (B, T)
        B, T = ids.shape
        P = c.part_b_len(T)
        L = T + P
        real = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones_like(ids, dtype=torch.bool)
        span_of_token, start, end, placed = self.place(batch, generator, P)  # (B, T), (B, K) x3
        K = start.shape[1]
        in_span = span_of_token >= 0  # (B, T)
        rows = torch.arange(B)[:, None]

        # Part A: the text with each span replaced by one [MASK], real tokens only, compacted to the left
        is_start = torch.zeros(B, T + 1, dtype=torch.bool)
        is_start[rows.expand(B, K), torch.where(placed, start, T)] = True  # unplaced slots write to column T
        is_start = is_start[:, :T]
        keep_a = real & (~in_span | is_start)  # (B, T)
        a_pos = torch.cumsum(keep_a.long(), 1) - 1  # (B, T) position in Part A of kept tokens
        len_a = keep_a.sum(1)  # (B,)
        a_ids = torch.where(is_start, torch.full_like(ids, c.mask_token_id), ids)

        # Part B: the spans in a random order (GLM §2.1), each [START] + span, targets span + [END]
        order = torch.where(placed, torch.rand(B, K, generator=generator), torch.full((B, K), 2.0)).argsort(1)
        s_start = start.gather(1, order).clamp(min=0)  # (B, K) placed spans first, shuffled
        s_placed = placed.gather(1, order)
        s_len = torch.where(s_placed, end.gather(1, order) - start.gather(1, order), torch.zeros_like(s_start))
        s_mask_pos = a_pos.gather(1, s_start)  # (B, K) where the span's [MASK] sits in Part A
        blen = torch.where(s_placed, s_len + 1, torch.zeros_like(s_len))  # (B, K) tokens per span in Part B
        bend = torch.cumsum(blen, 1)  # (B, K) exclusive end of each span's block
        len_b = bend[:, -1] if K else torch.zeros(B, dtype=torch.long)  # (B,)
        p = torch.arange(P)[None].expand(B, P)  # (B, P)
        j = torch.searchsorted(bend, p.contiguous(), right=True).clamp(max=max(K - 1, 0))  # (B, P) span of slot
        valid_b = p < len_b[:, None]  # (B, P)
        if K:
            o = p - (bend - blen).gather(1, j)  # (B, P) offset in the block: 0 = [START]
            first = s_start.gather(1, j)  # (B, P)
            length = s_len.gather(1, j)
            prev = ids.gather(1, (first + o - 1).clamp(0, T - 1))  # (B, P) teacher forcing: the previous token
            this = ids.gather(1, (first + o).clamp(0, T - 1))  # (B, P)
            b_in = torch.where(o == 0, torch.full_like(o, c.start_token_id), prev)
            b_out = torch.where(o < length, this, torch.full_like(o, c.end_token_id))
            b_pos1 = s_mask_pos.gather(1, j)
            b_pos2 = o + 1
        else:
            b_in = b_out = b_pos1 = b_pos2 = torch.zeros(B, P, dtype=torch.long)

        # scatter Part A then Part B into rows of length L (+1 dump column for what is not written)
        def place_both(a_val: torch.Tensor, b_val: torch.Tensor, fill: int) -> torch.Tensor:
            out = torch.full((B, L + 1), fill, dtype=torch.long)
            out.scatter_(1, torch.where(keep_a, a_pos, L), a_val)
            out.scatter_(1, torch.where(valid_b, len_a[:, None] + p, L), b_val)
            return out[:, :L]

        zeros_a = torch.zeros_like(ids)
        input_ids = place_both(a_ids, b_in, c.pad_token_id)  # (B, L)
        labels = place_both(torch.full_like(ids, -100), b_out, -100)
        position_ids = place_both(a_pos, b_pos1, 0)
        block_position_ids = place_both(zeros_a, b_pos2, 0)
        part = place_both(torch.full_like(ids, PART_A), torch.full_like(p, PART_B), PAD_PART)

        # attention (GLM §2.1): A sees A; B sees A and B up to itself; padding keys are never seen
        is_a, is_b = part == PART_A, part == PART_B  # (B, L)
        q = torch.arange(L)
        causal = (q[None, :] <= q[:, None])[None]  # (1, L, L)
        mask = (is_a | is_b)[:, :, None] & (is_a[:, None, :] | (is_b[:, :, None] & is_b[:, None, :] & causal))
        docs = batch.get("document_ids")
        if docs is not None:  # a Part B token belongs to its span's document
            b_doc = docs.gather(1, first) if K else torch.zeros(B, P, dtype=torch.long)
            doc = place_both(docs, b_doc, -1)
            mask = mask & (doc[:, :, None] == doc[:, None, :])
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
                "block_position_ids": block_position_ids, "attention_mask": (part != PAD_PART).long(),
                "self_attention_mask": mask, "part": part}

    # ---- model side ---------------------------------------------------------------------------------------------
    def embed(self, model, batch: Batch) -> torch.Tensor:
        """(B, L, E) token embeddings + block-position (position 2) embeddings: the encoder's inputs_embeds."""
        if self.block_position is None or self._bound_to is not backbone_of(model):
            raise RuntimeError("glm: the block-position embedding is not bound to this model; call "
                               "objective.bind(model) before loss() (ptmkit.train.loop.train does) and optimise the "
                               "module it returns")
        tok = backbone_of(model).input_embeddings()
        return tok(batch["input_ids"]) + self.block_position(batch["block_position_ids"])

    def forward(self, model, batch: Batch, score_positions: torch.Tensor | None = None):
        backbone = backbone_of(model)
        # position 1 through the model's own table; RoBERTa numbers positions from pad + 1
        offset = backbone.default_positions(None, 1, 1, batch["input_ids"].device)[0, 0] \
            if hasattr(backbone, "default_positions") else 0
        return model(None, attention_mask=batch["self_attention_mask"], position_ids=batch["position_ids"] + offset,
                     inputs_embeds=self.embed(model, batch), score_positions=score_positions)

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        where = batch["labels"] != -100  # (B, L): Part B only
        out = self.forward(model, batch, where)
        target = batch["labels"][where]  # (N,)
        loss, acc = mean_cross_entropy(out.logits, target)
        return loss, {"loss": loss.item(), "infill_accuracy": acc.item(), "predicted_tokens": float(target.numel())}
