"""Entity linking by dictionary: which knowledge-graph entity each mention in the token stream names, for ERNIE
(Zhang et al. 2019 §4.1 link with TAGME; here a dictionary of the graph's entity labels). The matching is the entity
masking objective's DictionarySpanFinder (objectives/entity.py), reused with one-token names allowed (most entity
names are one token: "France", "English"); the linker adds which entity each matched span is, by looking the span's
hash key up in the keys of the dictionary entries.

Output alignment follows ERNIE: the entity sits at the mention's first token (entity number + 1; 0 = no entity).
A label shared by several entities links to the one in the most training triples (the most frequent sense).

Dimension legend: B batch, T length, E_n dictionary entries of n tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ptmkit.config import ConfigError
from ptmkit.data.kg import KnowledgeGraph
from ptmkit.objectives.entity import DictionarySpanFinder


class EntityLinker:
    """`linker(ids (B, T)) -> (entity_ids (B, T), lengths (B, T))`: entity number + 1 and mention length in tokens at
    each mention's first token, 0 elsewhere. `entries` maps a name's token ids to its entity number."""

    def __init__(self, entries: Mapping[Sequence[int], int], max_len: int = 8):
        self.finder = DictionarySpanFinder(entries.keys(), max_len=max_len, min_len=1)
        self.max_len = max_len
        by_len: dict[int, list[tuple[tuple[int, ...], int]]] = {}
        for seq, entity in entries.items():
            seq = tuple(int(i) for i in seq)
            if 1 <= len(seq) <= max_len:
                by_len.setdefault(len(seq), []).append((seq, int(entity)))
        self.keys: dict[int, torch.Tensor] = {}  # n -> (E_n,) sorted hash keys
        self.entity: dict[int, torch.Tensor] = {}  # n -> (E_n,) entity number of each key
        for n, rows in by_len.items():
            seqs = torch.tensor([s for s, _ in rows], dtype=torch.long)  # (E_n, n)
            keys = DictionarySpanFinder._hashes(seqs, [n])[n][:, 0]  # the finder's own keys, so lookups agree
            order = torch.argsort(keys)
            self.keys[n] = keys[order]
            self.entity[n] = torch.tensor([e for _, e in rows], dtype=torch.long)[order]

    def __len__(self) -> int:
        return sum(len(k) for k in self.keys.values())

    def __call__(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T = input_ids.shape
        lengths = self.finder(input_ids)  # (B, T) mention length at its first token
        out = torch.zeros(B, T, dtype=torch.long)
        hashes = DictionarySpanFinder._hashes(input_ids, self.keys)  # n -> (B, T - n + 1)
        for n, h in hashes.items():
            at = lengths[:, :h.shape[1]] == n  # (B, T - n + 1) mentions of n tokens start here
            if at.any():
                slot = torch.searchsorted(self.keys[n], h[at])
                out[:, :h.shape[1]][at] = self.entity[n][slot] + 1
        return out, lengths

    @classmethod
    def from_kg(cls, kg: KnowledgeGraph, tokenizer, max_len: int = 8) -> EntityLinker:
        """A dictionary of the graph's entity labels, tokenised with the model's tokenizer (also after a space, for
        byte-level BPE and SentencePiece, as DictionarySpanFinder.from_names does). A label that encodes to the
        unknown token would match unrelated text and is left out. Where token sequences collide, the entity in the
        most training triples wins (then the lower number)."""
        freq = kg.entity_frequency()
        order = sorted(range(kg.num_entities), key=lambda e: (-int(freq[e]), e))  # preferred first
        labels = [kg.labels[e].strip() for e in order]
        keep = [i for i, label in enumerate(labels) if label]
        variants = [labels[i] for i in keep] + [" " + labels[i] for i in keep]
        encoded = tokenizer.encode_batch(variants, add_special_tokens=False)
        unk = tokenizer.unk_id
        entries: dict[tuple[int, ...], int] = {}
        for j, ids in enumerate(encoded):
            entity = order[keep[j % len(keep)]]
            ids = tuple(ids)
            if 1 <= len(ids) <= max_len and (unk is None or unk not in ids):
                entries.setdefault(ids, entity)  # the preferred entity came first
        if not entries:
            raise ConfigError("entity linking: no entity label of the graph encodes to known tokens of this "
                              "tokenizer; train the tokenizer on text that mentions the entities")
        return cls(entries, max_len)


def link_stream(tokens: np.ndarray, doc_offsets: np.ndarray, linker: EntityLinker, row: int = 512,
                rows_per_batch: int = 256) -> tuple[np.ndarray, dict[str, int]]:
    """Link a whole token stream once: (N,) token ids -> (N,) int32 entity numbers + 1 at mention starts.

    The stream is cut into rows of `row` tokens, each read with max_len - 1 tokens of look-ahead so a mention that
    starts in a row is seen whole; mentions that cross a document boundary (doc_offsets) are dropped, and so is a
    mention that starts inside another one found from the previous row. Vectorised per batch of rows."""
    tokens = np.asarray(tokens)
    n, extra = len(tokens), linker.max_len - 1
    out = np.zeros(n, dtype=np.int32)
    starts_all, lengths_all = [], []
    step = row * rows_per_batch
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        chunk = np.zeros(((hi - lo + row - 1) // row) * row + extra, dtype=np.int64)
        got = tokens[lo:min(n, lo + len(chunk))]
        chunk[:len(got)] = got
        pad_from = len(got)  # positions past the stream's end hold id 0; mentions reaching them are dropped below
        t = torch.from_numpy(chunk)
        windows = t.unfold(0, row + extra, row)  # (R, row + extra): each row plus its look-ahead
        ent, lengths = linker(windows)
        ent, lengths = ent[:, :row].reshape(-1).numpy(), lengths[:, :row].reshape(-1).numpy()  # owned starts only
        m = np.flatnonzero(lengths[:hi - lo] > 0)
        ok = m + lengths[m] <= pad_from
        m = m[ok]
        out[lo + m] = ent[m]
        starts_all.append(lo + m)
        lengths_all.append(lengths[m])
    starts = np.concatenate(starts_all) if starts_all else np.zeros(0, np.int64)
    lengths = np.concatenate(lengths_all) if lengths_all else np.zeros(0, np.int64)
    # a mention may not start inside an earlier one (rows are linked apart, so one row cannot see the last's)
    ends = starts + lengths
    prev_end = np.maximum.accumulate(np.concatenate([[0], ends[:-1]])) if len(ends) else ends
    inside = starts < prev_end
    # nor cross into the next document
    doc_of = np.searchsorted(doc_offsets, starts, side="right")
    crosses = np.searchsorted(doc_offsets, ends - 1, side="right") != doc_of
    drop = inside | crosses
    out[starts[drop]] = 0
    return out, {"mentions": int((~drop).sum()), "dropped_overlapping": int(inside.sum()),
                 "dropped_crossing_documents": int((crosses & ~inside).sum())}
