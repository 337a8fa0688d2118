"""Knowledge graphs for knowledge-enhanced pre-training (survey §5.3: ERNIE, KEPLER): entities, relations and
(head, relation, tail) triples with a held-out split, read from the shared LAMA T-REx facts (Petroni et al. 2019),
saved as a directory, and served to the training engine as a stream of triples.

What LAMA gives: 22,881 T-REx facts over 23,035 Wikidata entities (QIDs with English labels) and 28 relations, each
fact with Wikipedia evidence sentences whose object mention is masked. There is no description text per entity, so
`read_lama` builds one (KEPLER, Wang et al. 2021, encodes entity descriptions): the entity's label, then the first
evidence sentence of a *training* fact in which the entity is the subject, with LAMA's own mask over that fact's
object, so a description never states the fact it came from and never mentions a held-out fact's evidence. Entities
that are only ever objects (countries, languages, occupations: their names already say what they are) are described
by their label alone.

A directory holds `kg.json` (names, labels, descriptions, fingerprint) and `triples.npy` ((N, 4) int64: head,
relation, tail, split with 0 = train, 1 = held out).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ptmkit import atomic
from ptmkit.config import ConfigError

TRAIN, HELD_OUT = 0, 1
FORMAT = "ptmkit-knowledge-graph"
LAMA_MASK = "[MASK]"  # the object placeholder of LAMA's masked evidence sentences


@dataclass
class KnowledgeGraph:
    entities: list[str]  # entity ids (Wikidata QIDs); the index is the entity's number everywhere in ptmkit
    labels: list[str]  # one name per entity
    relations: list[str]  # relation ids (Wikidata PIDs)
    triples: np.ndarray  # (N, 3) int64 (head, relation, tail) entity/relation numbers
    split: np.ndarray = field(default=None)  # (N,) int8: TRAIN or HELD_OUT; default all TRAIN
    relation_labels: list[str] = field(default_factory=list)
    descriptions: list[str] = field(default_factory=list)  # one text per entity (KEPLER); default the labels
    source: str = ""

    def __post_init__(self) -> None:
        self.triples = np.asarray(self.triples, dtype=np.int64).reshape(-1, 3)
        n = len(self.triples)
        self.split = np.zeros(n, np.int8) if self.split is None else np.asarray(self.split, np.int8).reshape(-1)
        if len(self.labels) != len(self.entities):
            raise ConfigError(f"knowledge graph: {len(self.entities)} entities but {len(self.labels)} labels")
        if not self.descriptions:
            self.descriptions = list(self.labels)
        if len(self.descriptions) != len(self.entities):
            raise ConfigError(f"knowledge graph: {len(self.entities)} entities but {len(self.descriptions)} "
                              "descriptions; give one per entity (or none, to describe each by its label)")
        if not self.relation_labels:
            self.relation_labels = list(self.relations)
        if len(self.split) != n or not np.isin(self.split, (TRAIN, HELD_OUT)).all():
            raise ConfigError(f"knowledge graph: split must hold {n} values, each {TRAIN} (train) or {HELD_OUT} "
                              "(held out)")
        for col, what, size in ((0, "head entity", len(self.entities)), (1, "relation", len(self.relations)),
                                (2, "tail entity", len(self.entities))):
            bad = np.flatnonzero((self.triples[:, col] < 0) | (self.triples[:, col] >= size))
            if len(bad):
                i = int(bad[0])
                raise ConfigError(
                    f"knowledge graph: triple {i} {tuple(int(x) for x in self.triples[i])} refers to {what} "
                    f"{int(self.triples[i, col])}, but the graph has {size} ({len(bad)} triples are out of range); "
                    "the triples and the entity/relation lists come from different graphs: rebuild the graph "
                    "(`ptm kg build`) or pass the lists the triples were numbered with"
                )

    # -- views -----------------------------------------------------------------------------------------------------

    @property
    def num_entities(self) -> int:
        return len(self.entities)

    @property
    def num_relations(self) -> int:
        return len(self.relations)

    def part(self, which: int) -> np.ndarray:
        """(n, 3) triples of one split (TRAIN or HELD_OUT)."""
        return self.triples[self.split == which]

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([self.entities, self.relations]).encode())
        h.update(np.ascontiguousarray(self.triples).tobytes())
        h.update(np.ascontiguousarray(self.split).tobytes())
        return h.hexdigest()

    def entity_frequency(self, which: int | None = TRAIN) -> np.ndarray:
        """(E,) how many triples (of a split; None = all) each entity takes part in."""
        t = self.triples if which is None else self.part(which)
        return np.bincount(t[:, [0, 2]].ravel(), minlength=self.num_entities)

    def __repr__(self) -> str:
        return (f"KnowledgeGraph({self.num_entities:,} entities, {self.num_relations} relations, "
                f"{int((self.split == TRAIN).sum()):,} train + {int((self.split == HELD_OUT).sum()):,} held-out "
                f"triples{', ' + self.source if self.source else ''})")

    # -- building ----------------------------------------------------------------------------------------------------

    @classmethod
    def from_records(cls, entities: dict[str, str], relations: list[str], triples: list[tuple[str, str, str]],
                     held_out: list[bool] | None = None, **kw) -> KnowledgeGraph:
        """A graph from named parts: entities {id: label}, relation ids, triples of ids. A triple naming an entity or
        relation that is not listed is an error (a typo or a triples file from another graph)."""
        e_index = {e: i for i, e in enumerate(entities)}
        r_index = {r: i for i, r in enumerate(relations)}
        rows = []
        for i, (h, r, t) in enumerate(triples):
            for name, index, what in ((h, e_index, "entity"), (r, r_index, "relation"), (t, e_index, "entity")):
                if name not in index:
                    raise ConfigError(f"knowledge graph: triple {i} ({h}, {r}, {t}) refers to unknown {what} "
                                      f"{name!r}; add it to the {what} list or drop the triple")
            rows.append((e_index[h], r_index[r], e_index[t]))
        split = None if held_out is None else np.asarray(held_out, dtype=np.int8)
        return cls(list(entities), list(entities.values()), list(relations), np.asarray(rows, np.int64).reshape(-1, 3),
                   split, **kw)

    # -- storage ---------------------------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write kg.json and triples.npy; the directory appears whole or not at all."""
        meta = {"format": FORMAT, "version": 1, "fingerprint": self.fingerprint, "source": self.source,
                "entities": self.entities, "labels": self.labels, "relations": self.relations,
                "relation_labels": self.relation_labels, "descriptions": self.descriptions}
        with atomic.atomic_dir(directory) as tmp:
            np.save(tmp / "triples.npy", np.concatenate([self.triples, self.split[:, None].astype(np.int64)], 1))
            (tmp / "kg.json").write_text(json.dumps(meta, ensure_ascii=False) + "\n")
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> KnowledgeGraph:
        d = Path(directory)
        if not (d / "kg.json").is_file() or not (d / "triples.npy").is_file():
            raise FileNotFoundError(f"{d} is not a knowledge-graph directory (kg.json + triples.npy); build one with "
                                    "`ptm kg build --out DIR`")
        meta = json.loads((d / "kg.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{d / 'kg.json'}: format {meta.get('format')!r} is not {FORMAT!r}")
        rows = np.load(d / "triples.npy", allow_pickle=False)
        kg = cls(meta["entities"], meta["labels"], meta["relations"], rows[:, :3], rows[:, 3],
                 meta.get("relation_labels", []), meta.get("descriptions", []), meta.get("source", ""))
        if meta.get("fingerprint") not in (None, kg.fingerprint):
            raise ValueError(f"{d}: the triples do not match the fingerprint in kg.json (a file was replaced or "
                             "corrupted); rebuild the graph with `ptm kg build`")
        return kg


# ----------------------------------------------------------------------------------------------------------------
# LAMA T-REx


@dataclass
class Evidence:
    """One evidence sentence of a LAMA fact: the text with the object filled in, and its fact's number."""

    triple: int  # row of KnowledgeGraph.triples
    text: str


def _held_out(uuid: str, fraction: float, seed: int) -> bool:
    """A fact's split from a hash of its id: stable across runs, machines and file orders."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{uuid}".encode()).digest()[:8], "big")
    return h / 2.0 ** 64 < fraction


def read_lama(root: str | Path, held_out: float = 0.2, seed: int = 0) -> tuple[KnowledgeGraph, list[Evidence]]:
    """The LAMA T-REx facts as a knowledge graph (one triple per fact; `held_out` of the facts, chosen by a hash of
    the fact's uuid, in the held-out split) and every evidence sentence with its object filled in.

    `root` is the LAMA directory (TREx/*.jsonl.gz and relations.jsonl), e.g. data_root() / "lama"."""
    root = Path(root)
    files = sorted((root / "TREx").glob("*.jsonl.gz"))
    if not files:
        raise FileNotFoundError(f"no LAMA T-REx files in {root / 'TREx'}; point at the LAMA directory of the data "
                                "root (set PTMKIT_DATA)")
    if not 0.0 <= held_out < 1.0:
        raise ConfigError(f"knowledge graph: held_out must be in [0, 1), got {held_out}")
    rel_labels = {}
    if (root / "relations.jsonl").is_file():
        for line in (root / "relations.jsonl").read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rel_labels[r["relation"]] = r.get("label", r["relation"])
    entities: dict[str, str] = {}
    relations: list[str] = []
    triples, split, facts = [], [], []
    for f in files:
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                fact = json.loads(line)
                s, o, r = fact["sub_uri"], fact["obj_uri"], fact["predicate_id"]
                entities.setdefault(s, fact["sub_label"])
                entities.setdefault(o, fact["obj_label"])
                if r not in relations:
                    relations.append(r)
                triples.append((s, r, o))
                split.append(_held_out(fact["uuid"], held_out, seed))
                facts.append(fact)
    kg = KnowledgeGraph.from_records(entities, relations, triples, split,
                                     relation_labels=[rel_labels.get(r, r) for r in relations],
                                     source=f"LAMA T-REx ({root}), held_out={held_out}, seed={seed}")
    evidence, described = [], {}
    for i, fact in enumerate(facts):
        for ev in fact.get("evidences", []):
            masked = ev.get("masked_sentence", "")
            if masked.count(LAMA_MASK) != 1:
                continue
            evidence.append(Evidence(i, masked.replace(LAMA_MASK, ev.get("obj_surface", fact["obj_label"]))))
            if kg.split[i] == TRAIN:
                described.setdefault(int(kg.triples[i, 0]), masked)
    kg.descriptions = [f"{label} . {described[e]}" if e in described else label for e, label in enumerate(kg.labels)]
    return kg, evidence


class TripleDataset:
    """Triples as the training engine's dataset (ptmkit.data.batches.PretrainBatches): `get_batch(indices)` returns
    {"triples": (B, 3)} and a triple is a 3-token "sequence" (head, relation, tail)."""

    seq_len = 3

    def __init__(self, triples: np.ndarray):
        self.triples = np.asarray(triples, dtype=np.int64).reshape(-1, 3)
        if not len(self.triples):
            raise ConfigError("triple dataset: no triples (is the train split empty?)")

    def __len__(self) -> int:
        return len(self.triples)

    def get_batch(self, indices) -> dict[str, np.ndarray]:
        return {"triples": self.triples[np.asarray(indices, dtype=np.int64)]}
