"""Shared parts of the masking variants (whole-word, span, entity, sentence-pair objectives; survey §3-§4):
their BERT masking settings, the word-start table, unit segmentation, 80/10/10 replacement, the masked-LM
forward, and the mixin for objectives that own auxiliary networks.

Dimension legend: B batch, T length, U masking units per row (<= T), V vocabulary, H hidden size, N scored tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import ClassVar, Iterator

import tokenizers
import torch
import torch.nn.functional as F
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.models.registry import backbone_of
from ptmkit.objectives.base import Batch, document_mask


# ----------------------------------------------------------------------------------------------
# settings shared by every masking objective


@dataclass
class MaskingConfig:
    """BERT's masking settings (Devlin et al. 2019 §3.1); subclasses add their own fields."""

    name: ClassVar[str] = "masking"  # the registry name, used in error messages

    mask_prob: float = 0.15  # fraction of maskable tokens that become prediction targets
    mask_token_fraction: float = 0.8  # of the targets, replaced by [MASK]
    random_token_fraction: float = 0.1  # of the targets, replaced by a random token; the rest are kept
    mask_token_id: int = -1  # filled from the tokenizer when -1
    vocab_size: int = -1  # filled from the model/tokenizer when -1
    special_token_ids: list[int] = field(default_factory=list)  # never masked ([CLS], [SEP], [PAD], ...)

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"{self.name}: mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.mask_token_fraction < 0 or self.random_token_fraction < 0 or \
                self.mask_token_fraction + self.random_token_fraction > 1.0:
            raise ConfigError(
                f"{self.name}: mask_token_fraction and random_token_fraction must be >= 0 and sum to at most 1 "
                f"(got {self.mask_token_fraction} + {self.random_token_fraction})"
            )

    def check_ready(self) -> None:
        """Fields filled from the tokenizer must be there before the objective is built."""
        if self.mask_token_id < 0:
            raise ConfigError(f"{self.name}: mask_token_id is not set: the tokenizer needs a mask token "
                              "(train one with a mask special token)")
        if self.vocab_size <= 0:
            raise ConfigError(f"{self.name}: vocab_size must be set (> 0), got {self.vocab_size}")
        if self.mask_token_id >= self.vocab_size:
            raise ConfigError(f"{self.name}: mask_token_id {self.mask_token_id} is outside the vocabulary "
                              f"({self.vocab_size})")


def check_mask_token(name: str, tokenizer) -> None:
    if tokenizer.mask_id is None:
        raise ConfigError(f"objective {name}: the tokenizer has no mask token; train one with a mask special token")


# ----------------------------------------------------------------------------------------------
# words: which token ids begin a word


def _word_marker(backend: tokenizers.Tokenizer, vocab: dict[str, int]) -> str | None:
    """The word-initial marker of a marker-based vocabulary: byte-level BPE "Ġ" (GPT-2/RoBERTa), SentencePiece's
    Metaspace "▁". Read from the pre-tokenizer's settings, else guessed from the vocabulary."""
    pre = backend.pre_tokenizer
    if pre is not None:
        state = json.loads(pre.__getstate__())
        found = []

        def walk(node):
            if isinstance(node, dict):
                if node.get("type") == "ByteLevel":
                    found.append("Ġ")
                elif node.get("type") == "Metaspace":
                    found.append(node.get("replacement", "▁"))
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(state)
        if found:
            return found[0]
    counts = {m: sum(tok.startswith(m) for tok in vocab) for m in ("Ġ", "▁")}
    marker = max(counts, key=counts.get)
    return marker if counts[marker] >= 0.05 * len(vocab) else None


def word_start_table(tokenizer, vocab_size: int | None = None) -> torch.Tensor:
    """(V,) bool: True where a token id begins a word, computed once from the vocabulary strings.

    WordPiece: a piece that starts with the continuing prefix ("##") continues a word (BERT-wwm).
    Byte-level BPE / SentencePiece: a piece starting with the marker ("Ġ" / "▁") starts a word, as does a piece
    with no letter or digit (punctuation is pre-tokenised apart); others continue the previous word. Special and
    added tokens, and ids past the tokenizer's vocabulary (a padded model vocabulary), are words of their own.
    The first token of a row, or after a special/padding token, always starts a word (see `unit_starts`).
    """
    backend = tokenizer.backend if hasattr(tokenizer, "backend") else tokenizer
    if not isinstance(backend, tokenizers.Tokenizer):
        raise TypeError(f"word_start_table needs a ptmkit Tokenizer or tokenizers.Tokenizer, "
                        f"got {type(tokenizer).__name__}")
    vocab = backend.get_vocab(with_added_tokens=True)
    n = max(int(vocab_size or 0), backend.get_vocab_size(with_added_tokens=True))
    table = torch.ones(n, dtype=torch.bool)
    added = {t.content for t in backend.get_added_tokens_decoder().values()}
    model = backend.model
    if isinstance(model, tokenizers.models.WordLevel):
        return table
    if isinstance(model, tokenizers.models.WordPiece):
        prefix = model.continuing_subword_prefix
        cont = [i for tok, i in vocab.items() if tok not in added and tok.startswith(prefix)]
    else:
        marker = _word_marker(backend, vocab)
        if marker is None:
            raise ConfigError(
                f"cannot tell word starts in this {type(model).__name__} vocabulary (no '##' continuation prefix, "
                "no 'Ġ'/'▁' word marker); pass word_start (a list of booleans, one per token id) in the objective "
                "config"
            )
        cont = [i for tok, i in vocab.items()
                if tok not in added and not tok.startswith(marker) and any(ch.isalnum() for ch in tok)]
    table[torch.tensor(cont, dtype=torch.long)] = False
    return table


def as_table(word_start, vocab_size: int, name: str) -> torch.Tensor:
    """A config's word_start (list of bools or tensor) as a (vocab_size,) bool tensor, padded with True."""
    table = torch.as_tensor(word_start, dtype=torch.bool).flatten()
    if table.numel() > vocab_size:
        raise ConfigError(f"{name}: word_start has {table.numel()} entries but vocab_size is {vocab_size}; "
                          "build it from the same tokenizer")
    if table.numel() < vocab_size:  # a model vocabulary padded past the tokenizer's: extra ids are their own words
        table = torch.cat([table, torch.ones(vocab_size - table.numel(), dtype=torch.bool)])
    return table


def sentence_end_ids(tokenizer) -> list[int]:
    """Ids of the tokens that end a sentence: ".", "!", "?" (bare or with a word marker)."""
    backend = tokenizer.backend if hasattr(tokenizer, "backend") else tokenizer
    vocab = backend.get_vocab(with_added_tokens=True)
    ends = {".", "!", "?"}
    return sorted(i for tok, i in vocab.items() if tok.lstrip("Ġ▁") in ends and len(tok) <= 2)


# ----------------------------------------------------------------------------------------------
# positions and units


def maskable_positions(batch: Batch, special: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: real (attention_mask) tokens that are not special."""
    ids = batch["input_ids"]
    ok = ~torch.isin(ids, special)
    if "attention_mask" in batch:
        ok &= batch["attention_mask"].bool()
    return ok


def unit_starts(ids: torch.Tensor, maskable: torch.Tensor, word_start: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) bool: where a masking unit begins. Units tile each row: whole words when a word-start table is given,
    single tokens otherwise. A non-maskable token is a unit of its own, the token after it starts a unit (a word cut
    by a chunk boundary still counts as a word), and no unit spans two packed documents."""
    if word_start is None:
        return torch.ones_like(ids, dtype=torch.bool)
    start = word_start[ids] | ~maskable  # (B, T)
    start[:, 1:] |= ~maskable[:, :-1]
    if document_ids is not None:
        start[:, 1:] |= document_ids[:, 1:] != document_ids[:, :-1]
    start[:, 0] = True
    return start


def unit_index(starts: torch.Tensor) -> torch.Tensor:
    """(B, T) long: the unit each token belongs to, 0 .. U_b - 1 per row."""
    return torch.cumsum(starts.long(), dim=1) - 1


def replace_tokens(ids: torch.Tensor, chosen: torch.Tensor, r: torch.Tensor, cfg: MaskingConfig,
                   generator: torch.Generator) -> torch.Tensor:
    """BERT's 80/10/10: chosen tokens with r < mask_token_fraction become [MASK], the next random_token_fraction a
    random id, the rest stay. `r` is uniform in [0, 1): one draw per token, or per span broadcast over its tokens."""
    f_mask, f_rand = cfg.mask_token_fraction, cfg.random_token_fraction
    to_mask = chosen & (r < f_mask)
    to_random = chosen & (r >= f_mask) & (r < f_mask + f_rand)
    random_ids = torch.randint(0, cfg.vocab_size, ids.shape, generator=generator)
    out = torch.where(to_mask, torch.full_like(ids, cfg.mask_token_id), ids)
    return torch.where(to_random, random_ids, out)


# ----------------------------------------------------------------------------------------------
# loss


def masked_lm_forward(model, batch: Batch):
    """Run a masked-LM model scoring only the target positions. Returns (output, where (B, T) bool)."""
    where = batch["labels"] != -100  # (B, T)
    mask = batch.get("attention_mask")
    if "document_ids" in batch:
        mask = document_mask(batch["document_ids"])  # packed documents do not see each other
    out = model(
        batch["input_ids"], attention_mask=mask, token_type_ids=batch.get("token_type_ids"),
        position_ids=batch.get("position_ids"), score_positions=where,
    )
    return out, where


def mean_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean token cross-entropy (0, not NaN, when nothing is scored) and accuracy."""
    n = max(int(target.numel()), 1)
    loss = F.cross_entropy(logits.float(), target, reduction="sum") / n
    with torch.no_grad():
        acc = (logits.argmax(-1) == target).float().sum() / n
    return loss, acc


def masked_lm_loss(model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    out, where = masked_lm_forward(model, batch)
    target = batch["labels"][where]
    loss, acc = mean_cross_entropy(out.logits, target)
    return loss, {"loss": loss.item(), "mlm_accuracy": acc.item(), "predicted_tokens": float(target.numel())}


# ----------------------------------------------------------------------------------------------
# objectives that own networks


class AuxiliaryModules:
    """Mixin for objectives that own trainable networks (SpanBERT's SBO head, the NSP/SOP classifier).

    As for every objective with auxiliary networks (objectives/base.py), `bind(model)` builds them for this model
    (their width is the model's hidden size, on the model's device) and returns them; the trainer optimises and
    checkpoints that module with the model (ptmkit.train.loop.bind_objective). `parameters()` / `modules()` expose
    the bound networks directly.
    """

    heads: nn.ModuleDict | None = None
    _bound_to: nn.Module | None = None

    def _build_heads(self, hidden: int) -> nn.ModuleDict | None:
        raise NotImplementedError

    def bind(self, model: nn.Module) -> nn.Module | None:
        """Build the networks for `model` (once per model) and return them, or None when there are none."""
        backbone = backbone_of(model)
        if self._bound_to is not backbone:
            hidden = getattr(backbone, "hidden_size", None) or backbone.config.hidden_size
            heads = self._build_heads(int(hidden))
            p = next(model.parameters(), None)
            self.heads = heads.to(p.device) if heads is not None and p is not None else heads
            self._bound_to = backbone
        return self.heads

    def _bound(self, model: nn.Module) -> nn.ModuleDict:
        if self.heads is None or self._bound_to is not backbone_of(model):
            raise RuntimeError(f"{type(self).__name__}: the auxiliary networks are not bound to this model; call "
                               "objective.bind(model) before loss() (ptmkit.train.loop.train does) and optimise the "
                               "module it returns")
        return self.heads

    def modules(self) -> list[nn.Module]:
        return [self.heads] if self.heads is not None else []

    def parameters(self) -> Iterator[nn.Parameter]:
        for m in self.modules():
            yield from m.parameters()
