"""Entity/phrase-level masking (ERNIE: Sun et al. 2019, "ERNIE: Enhanced Representation through Knowledge
Integration", §3.2): multi-token entities and phrases are masked as units, so the model must recall the whole unit
from context (knowledge) instead of completing it from its own visible pieces. Survey (Han et al. 2021) §4.

Spans come from a pluggable `SpanFinder`; the shipped `DictionarySpanFinder` matches a dictionary of entity names
(CoNLL-2003 train mentions and LAMA T-REx subject/object labels, tokenised with the model's tokenizer) with rolling
n-gram hashes over the whole batch. Each entity is chosen with `entity_prob` and masked all-or-nothing; the rest of
the `mask_prob` budget of a row goes to ordinary token masking of its non-entity tokens; 80/10/10 per token.

Dimension legend: B batch, T length, L longest entity (tokens).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

import torch

from ptmkit.config import ConfigError
from ptmkit.objectives.base import Batch
from ptmkit.objectives.masking import (
    MaskingConfig, check_mask_token, masked_lm_loss, maskable_positions, replace_tokens,
)

SOURCES = ("conll2003", "lama")


class SpanFinder(Protocol):
    """ids (B, T) -> (B, T) long: at the first token of each found span its length in tokens, 0 elsewhere.
    Spans of one row must not overlap."""

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor: ...


def spans_as_lists(lengths: torch.Tensor) -> list[list[tuple[int, int]]]:
    """The (start, end) spans (end exclusive) of a finder's output, per row: for inspection and tests."""
    out: list[list[tuple[int, int]]] = [[] for _ in range(lengths.shape[0])]
    for b, s in lengths.nonzero().tolist():
        out[b].append((s, s + int(lengths[b, s])))
    return out


def cover(lengths: torch.Tensor) -> torch.Tensor:
    """(B, T) span lengths at starts -> (B, T) bool: the tokens inside some span."""
    B, T = lengths.shape
    t = torch.arange(T).expand(B, T)
    delta = torch.zeros(B, T + 1, dtype=torch.long)
    delta.scatter_add_(1, t, (lengths > 0).long())
    delta.scatter_add_(1, (t + lengths).clamp(max=T), -(lengths > 0).long())
    return torch.cumsum(delta, dim=1)[:, :T] > 0


def _window_sum(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, T) -> (B, T - n + 1): the sum of x over each window of n positions."""
    cs = torch.zeros(x.shape[0], x.shape[1] + 1, dtype=torch.long)
    cs[:, 1:] = torch.cumsum(x.long(), dim=1)
    return cs[:, n:] - cs[:, :-n]


# two polynomial hashes mod primes below 2^31 make one 62-bit key: products stay inside int64
_P1, _P2, _BASE1, _BASE2 = 2_147_483_629, 2_147_483_587, 1_000_003, 999_983


class DictionarySpanFinder:
    """Finds dictionary entries (token-id sequences of min_len..max_len tokens) in a batch, longest match first.

    min_len is 2 for entity masking (a one-token entity is an ordinary masked token); entity linking
    (objectives/linking.py) passes 1, since most entity names are a single token ("France", "English").

    Matching hashes every n-gram of the batch with a rolling polynomial hash (one vectorised step per n) and looks
    the keys up in the sorted keys of the entries of that length (`torch.isin`). Overlaps are resolved from the
    longest length down; among overlapping matches of one length the leftmost wins (a later match that overlaps
    only a dropped one is dropped too; rare, and only loses a candidate).
    """

    def __init__(self, entries: Iterable[Sequence[int]], max_len: int = 8, min_len: int = 2):
        if min_len < 1:
            raise ConfigError(f"DictionarySpanFinder: min_len must be >= 1, got {min_len}")
        if max_len < max(min_len, 2):
            raise ConfigError(f"DictionarySpanFinder: max_len must be >= {max(min_len, 2)}, got {max_len}")
        self.max_len, self.min_len = max_len, min_len
        by_len: dict[int, set[tuple[int, ...]]] = {}
        for e in entries:
            e = tuple(int(i) for i in e)
            if min_len <= len(e) <= max_len:
                by_len.setdefault(len(e), set()).add(e)
        self.keys: dict[int, torch.Tensor] = {}
        for n, seqs in by_len.items():
            key = self._hashes(torch.tensor(sorted(seqs), dtype=torch.long), [n])[n]  # (E_n, 1)
            self.keys[n] = torch.unique(key)  # (E_n,) sorted
        self.num_entries = sum(len(v) for v in by_len.values())

    def __len__(self) -> int:
        return self.num_entries

    @staticmethod
    def _hashes(ids: torch.Tensor, lengths: Iterable[int]) -> dict[int, torch.Tensor]:
        """(B, T) -> {n: (B, T - n + 1) 62-bit keys of the n-grams starting at each position}, rolled forward one
        token at a time: h_n(s) = h_{n-1}(s) * base + ids[s + n - 1] (mod p), each step over the whole batch."""
        wanted = set(lengths)
        T = ids.shape[1]
        top = min(max(wanted, default=0), T)
        h1 = torch.zeros(ids.shape[0], T, dtype=torch.long)
        h2 = torch.zeros_like(h1)
        out = {}
        for n in range(1, top + 1):
            m = T - n + 1
            h1 = (h1[:, :m] * _BASE1 + ids[:, n - 1:]) % _P1
            h2 = (h2[:, :m] * _BASE2 + ids[:, n - 1:]) % _P2
            if n in wanted:
                out[n] = h1 * _P2 + h2
        return out

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        B, T = input_ids.shape
        lengths = torch.zeros(B, T, dtype=torch.long)
        covered = torch.zeros(B, T, dtype=torch.bool)
        keys = self._hashes(input_ids, self.keys)
        for n in sorted(keys, reverse=True):
            match = torch.isin(keys[n], self.keys[n])  # (B, T-n+1)
            match &= _window_sum(covered, n) == 0  # not inside a longer match
            # leftmost wins among overlapping matches of this length: no match starts in the n-1 positions before
            M = T - n + 1
            cs = torch.zeros(B, M + 1, dtype=torch.long)
            cs[:, 1:] = torch.cumsum(match.long(), dim=1)
            lo = (torch.arange(M) - n + 1).clamp(min=0).expand(B, M)
            match &= (cs[:, :M] - cs.gather(1, lo)) == 0
            found = torch.zeros(B, T, dtype=torch.long)
            found[:, :M] = match.long() * n
            lengths += found
            covered |= cover(found)
        return lengths

    # -- building from names ----------------------------------------------------------------------------------------

    @classmethod
    def from_names(cls, names: Iterable[str], tokenizer, max_len: int = 8) -> DictionarySpanFinder:
        """Tokenise names with the model's tokenizer (no special tokens). Marker-based tokenizers (byte-level BPE,
        SentencePiece) spell a word differently after a space, so names are also encoded with a leading space.
        Encodings holding the unknown token are dropped: they would match unrelated text."""
        names = sorted({n.strip() for n in names if n and n.strip()})
        if not names:
            return cls([], max_len)
        variants = names + [" " + n for n in names]
        unk = tokenizer.unk_id
        entries = [e for e in tokenizer.encode_batch(variants, add_special_tokens=False)
                   if 2 <= len(e) <= max_len and (unk is None or unk not in e)]
        return cls(entries, max_len)

    @classmethod
    def from_data_root(cls, tokenizer, root: str | Path | None = None, sources: Sequence[str] = SOURCES,
                       max_len: int = 8) -> DictionarySpanFinder:
        """The shipped dictionary: entity names from the data root (ptmkit.data.paths.data_root() by default)."""
        from ptmkit.data.paths import data_root

        root = Path(root) if root is not None else data_root()
        names: list[str] = []
        for s in sources:
            if s == "conll2003":
                names += conll_entity_names(root / "ner" / "conll2003" / "train.txt")
            elif s == "lama":
                names += lama_entity_names(root / "lama" / "TREx")
            else:
                raise ConfigError(f"entity: unknown source {s!r}; choose from {list(SOURCES)}")
        return cls.from_names(names, tokenizer, max_len)


def conll_entity_names(path: str | Path) -> list[str]:
    """The PER/LOC/ORG/MISC mentions of a CoNLL-2003 file (words joined by spaces)."""
    from ptmkit.data.tasks import read_conll

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"entity: CoNLL-2003 file {path} not found; set PTMKIT_DATA to the data root "
                                "or drop 'conll2003' from objective.params.sources")
    data = read_conll(path, tag_scheme="iob2")
    names = []
    for words, tags in zip(data.sentences, data.tags):
        current: list[str] = []
        for w, t in zip(words, (data.tag_names[i] for i in tags)):
            if t.startswith("B-") or t == "O":
                if current:
                    names.append(" ".join(current))
                current = [w] if t.startswith("B-") else []
            else:  # I-
                current.append(w)
        if current:
            names.append(" ".join(current))
    return names


def lama_entity_names(trex_dir: str | Path) -> list[str]:
    """Subject and object labels of the LAMA T-REx facts (one *.jsonl.gz file per relation)."""
    trex_dir = Path(trex_dir)
    files = sorted(trex_dir.glob("*.jsonl.gz"))
    if not files:
        raise FileNotFoundError(f"entity: no LAMA T-REx files (*.jsonl.gz) in {trex_dir}; set PTMKIT_DATA to the "
                                "data root or drop 'lama' from objective.params.sources")
    names = []
    for f in files:
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    fact = json.loads(line)
                    names += [fact.get("sub_label", ""), fact.get("obj_label", "")]
    return names


@dataclass
class EntityConfig(MaskingConfig):
    name: ClassVar[str] = "entity"
    entity_prob: float = 0.15  # probability that each found entity is masked (as a whole)
    max_entity_len: int = 8  # longest dictionary entry, in tokens
    sources: list[str] = field(default_factory=lambda: list(SOURCES))  # entity names for the shipped finder
    data_root: str | None = None  # where the sources live; default ptmkit.data.paths.data_root()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.entity_prob <= 1.0:
            raise ConfigError(f"entity: entity_prob must be in (0, 1], got {self.entity_prob}")
        if self.max_entity_len < 2:
            raise ConfigError(f"entity: max_entity_len must be >= 2, got {self.max_entity_len}")
        unknown = sorted(set(self.sources) - set(SOURCES))
        if unknown:
            raise ConfigError(f"entity: unknown sources {unknown}; choose from {list(SOURCES)}")


class EntityMasking:
    task = "masked-lm"

    def __init__(self, cfg: EntityConfig, finder: SpanFinder | None = None):
        cfg.check_ready()
        if finder is None:
            raise ConfigError("entity: no span finder; build the objective with EntityMasking.from_tokenizer(cfg, "
                              "tokenizer) (the shipped dictionary) or pass finder=")
        self.cfg, self.finder = cfg, finder
        self._special = torch.tensor(sorted(set(cfg.special_token_ids)), dtype=torch.long)

    @classmethod
    def from_tokenizer(cls, cfg: EntityConfig, tokenizer) -> EntityMasking:
        check_mask_token(cfg.name, tokenizer)
        finder = DictionarySpanFinder.from_data_root(tokenizer, cfg.data_root, cfg.sources, cfg.max_entity_len)
        return cls(cfg, finder)

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        c = self.cfg
        ids = batch["input_ids"]  # (B, T)
        B, T = ids.shape
        maskable = maskable_positions(batch, self._special)
        lengths = self.finder(ids)  # (B, T) entity length at its first token
        # an entity is usable only if all its tokens are maskable (no special/padding) and in one packed document
        t = torch.arange(T).expand(B, T)
        end = (t + lengths).clamp(max=T)
        bad = torch.zeros(B, T + 1, dtype=torch.long)
        bad[:, 1:] = torch.cumsum((~maskable).long(), 1)
        ok = (bad.gather(1, end) - bad.gather(1, t)) == 0
        if "document_ids" in batch:
            d = batch["document_ids"]
            ok &= d.gather(1, (end - 1).clamp(min=0)) == d
        lengths = torch.where(ok & (lengths > 0), lengths, torch.zeros_like(lengths))
        entity_tok = cover(lengths)  # (B, T) every token of a usable entity
        pick = torch.rand(ids.shape, generator=generator) < c.entity_prob  # one draw per entity (at its start)
        chosen_entity = cover(torch.where(pick, lengths, torch.zeros_like(lengths)))  # all-or-nothing
        # fill the rest of the row's budget with ordinary token masking of the non-entity tokens
        others = maskable & ~entity_tok
        n = maskable.sum(1).float()
        q = ((c.mask_prob * n - chosen_entity.sum(1)) / others.sum(1).clamp(min=1)).clamp(0.0, 1.0)  # (B,)
        chosen = chosen_entity | (others & (torch.rand(ids.shape, generator=generator) < q[:, None]))
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        r = torch.rand(ids.shape, generator=generator)
        return {**batch, "input_ids": replace_tokens(ids, chosen, r, c, generator), "labels": labels}

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return masked_lm_loss(model, batch)
