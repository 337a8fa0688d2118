"""BART denoising (Lewis et al. 2020, "BART: Denoising Sequence-to-Sequence Pre-training for Natural Language
Generation, Translation, and Comprehension", §2.2 and Figure 2). Survey (Han et al. 2021) §3-§4: encoder-decoder
denoising objectives.

The encoder sees the row corrupted by an ordered list of noising transforms; the decoder reconstructs the original
row (labels = the original tokens, decoder inputs = labels shifted right). Transforms (`ratio` means):
- token_masking: each ordinary token becomes [MASK] with probability `ratio` (BERT-style, no 80/10/10).
- token_deletion: each ordinary token is deleted with probability `ratio`.
- text_infilling: `ratio` of the ordinary tokens (stochastically rounded) are covered by spans whose lengths are
  drawn from Poisson(`poisson_lambda` = 3) until the budget is reached (the last one cut to it); each span becomes
  one [MASK], so the model must also predict how many tokens are missing; 0-length spans insert a [MASK]. Spans are
  placed without overlap, in random gaps of the unmasked tokens (stars and bars), so the drawn lengths are the
  lengths removed. BART's best model: 30% infilling + sentence permutation.
- sentence_permutation: with probability `ratio`, a row's sentences (ending at `sentence_end_ids`) are shuffled.
- document_rotation: with probability `ratio`, a row is rotated to begin at a uniformly chosen token.
"Ordinary" tokens are real (attention_mask) tokens that are not special. Permutation and rotation act within the
runs of tokens between special tokens other than [MASK] (<s> ... </s> stay put; packed documents stay apart).

Rows change length (deletion, infilling): the encoder input is padded to the longest corrupted row of the batch,
the target keeps the input's length. Everything is vectorised over the batch (sorts, cumsums and scatters).

Dimension legend: B batch, T input length, L current (corrupted) length, K span slots per row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ptmkit.config import ConfigError
from ptmkit.objectives.base import Batch
from ptmkit.objectives.masking import check_mask_token, sentence_end_ids
from ptmkit.objectives.seq2seq import compact, emit, real_tokens, seq2seq_loss

# transform name -> its default ratio (BART §2.2 / §5: 30% infilling, every row permuted / rotated)
DEFAULT_RATIO = {"token_masking": 0.3, "token_deletion": 0.3, "text_infilling": 0.3,
                 "sentence_permutation": 1.0, "document_rotation": 1.0}


@dataclass
class NoiseTransform:
    name: str  # one of DEFAULT_RATIO
    ratio: float | None = None  # see the module docstring; None = the transform's default
    poisson_lambda: float = 3.0  # text_infilling: mean span length (BART §2.2)

    def __post_init__(self) -> None:
        if self.name not in DEFAULT_RATIO:
            raise ConfigError(f"denoising: unknown transform {self.name!r}; choose from {sorted(DEFAULT_RATIO)}")
        if self.ratio is None:
            self.ratio = DEFAULT_RATIO[self.name]
        if not 0.0 <= self.ratio <= 1.0 or (self.name == "token_deletion" and self.ratio == 1.0):
            raise ConfigError(f"denoising: {self.name} ratio must be in [0, 1]"
                              f"{' (and < 1)' if self.name == 'token_deletion' else ''}, got {self.ratio}")
        if self.poisson_lambda <= 0:
            raise ConfigError(f"denoising: poisson_lambda must be > 0, got {self.poisson_lambda}")
        if self.name != "text_infilling" and self.poisson_lambda != 3.0:
            raise ConfigError(f"denoising: poisson_lambda applies to text_infilling only, not {self.name}")


def _default_transforms() -> list[NoiseTransform]:
    return [NoiseTransform("text_infilling", 0.3), NoiseTransform("sentence_permutation", 1.0)]


@dataclass
class DenoisingConfig:
    transforms: list[NoiseTransform] = field(default_factory=_default_transforms)  # applied in this order
    mask_token_id: int = -1  # filled from the tokenizer when -1
    vocab_size: int = -1  # filled from the model/tokenizer when -1
    special_token_ids: list[int] = field(default_factory=list)  # never masked/deleted; permutation boundaries
    sentence_end_ids: list[int] = field(default_factory=list)  # ".", "!", "?"; filled from the tokenizer
    pad_token_id: int = -1  # pads the encoder input; filled from the tokenizer

    def __post_init__(self) -> None:
        if not self.transforms:
            raise ConfigError("denoising: transforms is empty; list at least one of "
                              f"{sorted(DEFAULT_RATIO)} (BART: text_infilling then sentence_permutation)")
        self.transforms = [t if isinstance(t, NoiseTransform) else NoiseTransform(**t) for t in self.transforms]

    def uses(self, name: str) -> bool:
        return any(t.name == name for t in self.transforms)

    def check_ready(self) -> None:
        if self.mask_token_id < 0 and any(t.name in ("token_masking", "text_infilling") for t in self.transforms):
            raise ConfigError("denoising: mask_token_id is not set: the tokenizer needs a mask token")
        if self.uses("sentence_permutation") and not self.sentence_end_ids:
            raise ConfigError("denoising: sentence_permutation needs sentence_end_ids (the ids of '.', '!', '?'); "
                              "none found in the tokenizer: set them or drop the transform")
        if self.pad_token_id < 0:
            raise ConfigError("denoising: pad_token_id is not set: the tokenizer needs a pad (or eos) token")


class Noiser:
    """The transforms on a batch of rows (ids (B, L), valid (B, L)); each returns a new (ids, valid)."""

    def __init__(self, cfg: DenoisingConfig):
        self.cfg = cfg
        self.mask = cfg.mask_token_id
        self.special = torch.tensor(sorted(set(cfg.special_token_ids) | {cfg.mask_token_id}), dtype=torch.long)
        self.fixed = torch.tensor(sorted(set(cfg.special_token_ids) - {cfg.mask_token_id}), dtype=torch.long)
        self.ends = torch.tensor(sorted(set(cfg.sentence_end_ids)), dtype=torch.long)

    def ordinary(self, ids, valid):
        """(B, L) bool: tokens that may be masked, deleted or infilled (real, not special, not [MASK])."""
        return valid & ~torch.isin(ids, self.special)

    def token_masking(self, ids, valid, t: NoiseTransform, g):
        chosen = self.ordinary(ids, valid) & (torch.rand(ids.shape, generator=g) < t.ratio)
        return ids.masked_fill(chosen, self.mask), valid

    def token_deletion(self, ids, valid, t: NoiseTransform, g):
        gone = self.ordinary(ids, valid) & (torch.rand(ids.shape, generator=g) < t.ratio)
        zero = torch.zeros_like(ids)
        return emit(ids, valid & ~gone, zero, zero, self.cfg.pad_token_id, self.cfg.pad_token_id, ids.shape[1])

    def infill_spans(self, cand: torch.Tensor, t: NoiseTransform, g):
        """Spans over the ordinary tokens (indexed 0 .. n-1 in order): (start (B, K), length (B, K), used (B, K))."""
        B = cand.shape[0]
        n = cand.sum(1)  # (B,)
        budget = torch.floor(t.ratio * n.double() + torch.rand(B, generator=g, dtype=torch.float64)).long()
        budget = torch.minimum(budget, n)
        K = int(budget.max()) + 16 if B else 1  # slots for spans; P(all used before the budget) is negligible
        drawn = torch.poisson(torch.full((B, K), t.poisson_lambda), generator=g).long()  # (B, K)
        before = torch.cumsum(drawn, 1) - drawn  # (B, K) tokens covered by the earlier spans
        used = before < budget[:, None]  # BART draws spans until the budget is covered
        length = torch.where(used, torch.minimum(drawn, budget[:, None] - before), torch.zeros_like(drawn))
        k = used.sum(1)  # (B,) spans
        # the n - masked unmasked tokens fall into k + 1 gaps (possibly empty): k bars among n - masked + k slots
        slots = n - length.sum(1) + k  # (B,)
        S = int(slots.max()) if B else 0
        keys = torch.rand(B, S, generator=g)
        keys = torch.where(torch.arange(S) < slots[:, None], keys, torch.full_like(keys, 2.0))
        bar = keys.argsort(1).argsort(1) < k[:, None]  # (B, S) a uniform choice of k bar slots
        gap_of = torch.cumsum(bar.long(), 1).clamp(max=K)  # (B, S) gap index of each non-bar slot
        item = (~bar) & (torch.arange(S) < slots[:, None])
        gaps = torch.zeros(B, K + 1, dtype=torch.long).scatter_add_(1, gap_of, item.long())  # (B, K+1)
        start = torch.cumsum(gaps[:, :K], 1) + before.where(used, torch.zeros_like(before))  # (B, K)
        return start, length, used

    def text_infilling(self, ids, valid, t: NoiseTransform, g):
        B, L = ids.shape
        cand = self.ordinary(ids, valid)  # (B, L)
        start, length, used = self.infill_spans(cand, t, g)
        n = cand.sum(1)
        # coverage in the ordinary-token index space (n + 1 columns: index n = after the last ordinary token)
        pos = start.clamp(max=L)
        delta = torch.zeros(B, L + 2, dtype=torch.long)
        delta.scatter_add_(1, pos, (used & (length > 0)).long())
        delta.scatter_add_(1, (start + length).clamp(max=L + 1), -(used & (length > 0)).long())
        covered = torch.cumsum(delta, 1)[:, :L + 1] > 0  # (B, L+1)
        first = torch.zeros(B, L + 2, dtype=torch.long).scatter_add_(1, pos, (used & (length > 0)).long())
        inserts = torch.zeros(B, L + 2, dtype=torch.long).scatter_add_(1, pos, (used & (length == 0)).long())
        q = (torch.cumsum(cand.long(), 1) - 1).clamp(min=0)  # (B, L) ordinary index of each position
        noise = cand & covered.gather(1, q)
        span_first = cand & (first.gather(1, q) > 0)
        pre = torch.where(cand, inserts.gather(1, q), torch.zeros_like(q))  # [MASK]s inserted before a token
        # [MASK]s inserted after the last ordinary token go before the position that follows it
        last = torch.where(cand, torch.arange(L).expand(B, L), torch.full_like(q, -1)).max(1).values  # (B,)
        tail = inserts.gather(1, n[:, None]).squeeze(1)  # (B,)
        ids_x = torch.cat([ids, torch.full((B, 1), self.cfg.pad_token_id, dtype=ids.dtype)], 1)  # (B, L+1)
        keep = torch.cat([valid & ~(noise & ~span_first), torch.zeros(B, 1, dtype=torch.bool)], 1)
        pre = torch.cat([pre, torch.zeros(B, 1, dtype=torch.long)], 1)
        pre = pre.scatter_add(1, (last + 1)[:, None], torch.where(last >= 0, tail, 0)[:, None])
        first_x = torch.cat([span_first, torch.zeros(B, 1, dtype=torch.bool)], 1)
        values = torch.where(first_x, torch.full_like(ids_x, self.mask), ids_x)  # a span's first token -> [MASK]
        return emit(values, keep, pre, torch.full_like(ids_x, self.mask), self.mask, self.cfg.pad_token_id)

    def _runs(self, ids, valid):
        """Movable tokens and the runs they form between fixed special tokens: (movable, run id (B, L))."""
        movable = valid & ~torch.isin(ids, self.fixed)
        prev = torch.cat([torch.zeros_like(movable[:, :1]), movable[:, :-1]], 1)
        run = torch.cumsum((movable & ~prev).long(), 1) - 1  # (B, L)
        return movable, run.clamp(min=0)

    def sentence_permutation(self, ids, valid, t: NoiseTransform, g):
        B, L = ids.shape
        movable, run = self._runs(ids, valid)
        is_end = torch.isin(ids, self.ends)
        prev_end = torch.cat([torch.ones_like(is_end[:, :1]), is_end[:, :-1]], 1)
        prev_mov = torch.cat([torch.zeros_like(movable[:, :1]), movable[:, :-1]], 1)
        starts = ~movable | prev_end | ~prev_mov  # a sentence starts after an end token or a fixed token
        sent = torch.cumsum(starts.long(), 1) - 1  # (B, L) sentence id (fixed tokens are sentences of their own)
        shuffle = torch.rand(B, 1, generator=g) < t.ratio  # (B, 1) rows to permute
        sent_key = torch.rand(B, L, generator=g, dtype=torch.float64).gather(1, sent)  # (B, L) one key per sentence
        # sort key: a fixed token stays at its place; a run's sentences are reordered among the run's positions
        group = torch.cumsum((~movable).long(), 1).double()  # (B, L) increases at every fixed token
        key = torch.where(movable & shuffle, group + 0.25 + 0.5 * sent_key, group)
        key = key.masked_fill(~valid, float("inf"))  # padding stays last
        order = torch.sort(key, dim=1, stable=True).indices  # stable: a sentence keeps its token order
        return ids.gather(1, order), valid.gather(1, order)

    def document_rotation(self, ids, valid, t: NoiseTransform, g):
        B, L = ids.shape
        movable, run = self._runs(ids, valid)
        idx = torch.arange(L).expand(B, L)
        run_len = torch.zeros(B, L, dtype=torch.long).scatter_add_(1, run, movable.long())  # (B, runs)
        run_start = torch.full((B, L), L, dtype=torch.long).scatter_reduce_(
            1, run, torch.where(movable, idx, torch.full_like(idx, L)), reduce="amin")  # (B, runs)
        rotate = torch.rand(B, 1, generator=g) < t.ratio
        offset = torch.floor(torch.rand(B, L, generator=g, dtype=torch.float64) * run_len).long()  # (B, runs)
        offset = offset.masked_fill(~rotate, 0)
        s, n, o = run_start.gather(1, run), run_len.gather(1, run).clamp(min=1), offset.gather(1, run)  # (B, L)
        src = torch.where(movable, s + (idx - s + o) % n, idx)  # (B, L) each run begins at its offset token
        return ids.gather(1, src), valid.gather(1, src)

    def __call__(self, ids, valid, g):
        for t in self.cfg.transforms:
            ids, valid = getattr(self, t.name)(ids, valid, t, g)
        return ids, valid


class Denoising:
    task = "seq2seq-lm"

    def __init__(self, cfg: DenoisingConfig):
        cfg.check_ready()
        self.cfg = cfg
        self.noiser = Noiser(cfg)

    @classmethod
    def from_tokenizer(cls, cfg: DenoisingConfig, tokenizer) -> Denoising:
        if any(t.name in ("token_masking", "text_infilling") for t in cfg.transforms):
            check_mask_token("denoising", tokenizer)
        if cfg.uses("sentence_permutation") and not cfg.sentence_end_ids:
            cfg = dataclasses.replace(cfg, sentence_end_ids=sentence_end_ids(tokenizer))
        if cfg.pad_token_id < 0:
            pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
            cfg = dataclasses.replace(cfg, pad_token_id=-1 if pad is None else pad)
        return cls(cfg)

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        ids = batch["input_ids"]  # (B, T)
        real = real_tokens(batch)
        labels = ids.masked_fill(~real, -100)  # the decoder reconstructs the original row
        noisy, valid = self.noiser(*compact(ids, real, self.cfg.pad_token_id), generator)
        return {"input_ids": noisy, "attention_mask": valid.long(), "labels": labels}

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return seq2seq_loss(model, batch)
