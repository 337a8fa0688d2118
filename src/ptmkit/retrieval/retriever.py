"""A trainable retriever over a passage index: the latent-retrieval side of REALM (Guu et al. 2020 §2.3, §3.4) and
RAG (Lewis et al. 2020 §2.2).

    retriever = Retriever(PassageIndex.load("runs/index"))
    hits = retriever.retrieve(["the capital of France is [MASK] ."], k=4)   # ids (B, K), scores (B, K) with grad

p(z|x) ∝ exp(Embed_input(x)ᵀ Embed_doc(z) / τ). The query encoder Embed_input is a trainable copy of the encoder the
index was built with (DenseEncoder.embed with grad=True); the document vectors stay fixed in the FAISS index, so the
gradient of log p(z|x) reaches the query side only (RAG §2.4 keeps the document encoder fixed; REALM re-embeds the
corpus every few hundred steps instead of back-propagating through it). `refresh()` is REALM's index refresh: the
document encoder becomes a snapshot of the current query encoder and every passage is re-embedded with it.

`module` holds both encoders, for the training engine to optimise (the query encoder) and checkpoint (both: the
document snapshot decides what the index holds, so a resumed run re-embeds the same vectors, see `sync`).

Dimension legend: B queries, K passages per query, D vector size.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ptmkit import atomic
from ptmkit.config import ConfigError
from ptmkit.retrieval.encoder import DenseEncoder
from ptmkit.retrieval.passage_index import PassageIndex, read_manifest, recorded_encoder_config

QUERY_RECORD = "retriever.json"  # beside a trained query encoder: the document vectors it was trained against
NULL = -1  # the id of REALM's null passage (§3.4 "null document": the model may also answer from x alone)


class Retriever:
    def __init__(self, index: PassageIndex, query_encoder: DenseEncoder | None = None, temperature: float = 1.0):
        """index: passages, their fixed vectors and the document encoder that made them. query_encoder: a trained
        query encoder (None: a trainable copy of the document encoder, the usual start). temperature τ divides the
        inner products (unit vectors give cosines in [-1, 1], whose softmax over k passages would be near uniform)."""
        if not temperature > 0:
            raise ConfigError(f"retriever: temperature must be > 0, got {temperature}")
        self.index, self.temperature = index, temperature
        self.document = index.encoder
        for p in self.document.model.parameters():
            p.requires_grad_(False)  # the index side is never optimised, only replaced by refresh()
        if query_encoder is None:
            query_encoder = DenseEncoder(copy.deepcopy(self.document.model), self.document.tokenizer,
                                         self.document.cfg, source=f"query copy of {self.document.source}")
            for p in query_encoder.model.parameters():
                p.requires_grad_(True)
        elif query_encoder.dim != self.document.dim:
            raise ConfigError(f"retriever: the query encoder makes {query_encoder.dim}-d vectors but the index holds "
                              f"{self.document.dim}-d ones; use a query encoder trained against this index "
                              "(or a copy of the encoder the index was built with)")
        self.query = query_encoder
        self.module = nn.ModuleDict({"query": self.query.model, "document": self.document.model})
        self._null = None

    @classmethod
    def load(cls, index_dir: str | os.PathLike, query_encoder: str | os.PathLike | None = None,
             temperature: float = 1.0) -> Retriever:
        """The index directory (checked: files, corpus, its own encoder) and a query encoder: None = a trainable copy
        of the index's encoder; a directory = one saved by `save_query_encoder` for this index (its record must name
        the index's document encoder: a query encoder trained against other document vectors would score nonsense).
        An index written by `save` reads its document encoder from beside it (DIR/../document_encoder), wherever
        the saved retriever was moved."""
        if not str(index_dir):
            raise ConfigError("retriever: no index directory given; build one with `ptm index build CORPUS --out DIR` "
                              "and set it (objective.params.index / --index)")
        beside = Path(index_dir).parent / "document_encoder"
        document = None
        if beside.is_dir() and Path(index_dir).name == "index":
            document = DenseEncoder.from_dir(beside, recorded_encoder_config(read_manifest(index_dir)))
        index = PassageIndex.load(index_dir, document)
        if query_encoder is None:
            return cls(index, temperature=temperature)
        q = Path(query_encoder)
        record = q / QUERY_RECORD
        if not record.is_file():
            raise ConfigError(f"{q} has no {QUERY_RECORD}: it is not a query encoder trained against an index; pass "
                              "a trained run's query_encoder directory, or leave the query encoder out to query with "
                              "the index's own encoder")
        trained_for = json.loads(record.read_text())["document_fingerprint"]
        built = index.manifest["encoder"]["fingerprint"]
        if trained_for != built:
            raise ConfigError(f"the query encoder {q} was trained against document vectors of encoder "
                              f"{trained_for[:12]}, but {index_dir} holds vectors of encoder {built[:12]}: use the "
                              "index that run trained with, or leave the query encoder out")
        enc = DenseEncoder.from_dir(q, index.encoder.cfg)
        return cls(index, enc, temperature=temperature)

    def save_query_encoder(self, out: str | os.PathLike) -> Path:
        """The trained query encoder as a model directory (weights + its tokenizer) with the record `load` checks."""
        from ptmkit.models import save_model

        out = Path(out)
        with atomic.atomic_dir(out) as tmp:
            save_model(self.query.model, tmp, tokenizer_from=None)
            self.query.tokenizer.save(tmp)
            (tmp / QUERY_RECORD).write_text(json.dumps(
                {"document_fingerprint": self.index.manifest["encoder"]["fingerprint"],
                 "document_source": self.document.source, "temperature": self.temperature}, indent=2) + "\n")
        return out

    def save(self, out: str | os.PathLike) -> Path:
        """The retriever as trained, loadable by `Retriever.load(OUT/index, OUT/query_encoder)`: OUT/document_encoder
        (the snapshot the index vectors came from: after refresh() no longer the encoder the index was built with),
        OUT/index (those vectors, its manifest naming that directory) and OUT/query_encoder. Each part is written
        atomically; the index goes after its encoder, so a half-written OUT fails to load with a named cause."""
        from ptmkit.models import save_model

        out = Path(out)
        self.sync()  # the vectors must be the document snapshot's
        doc = out / "document_encoder"
        with atomic.atomic_dir(doc) as tmp:
            save_model(self.document.model, tmp, tokenizer_from=None)
            self.document.tokenizer.save(tmp)
        saved = DenseEncoder(self.document.model, self.document.tokenizer, self.document.cfg, source=str(doc))
        self.index.with_encoder(saved).save(out / "index")
        self.save_query_encoder(out / "query_encoder")
        return out

    def __len__(self) -> int:
        return len(self.index)

    def texts(self) -> list[str]:
        """Every passage's text, in id order (a reader tokenises them once)."""
        return [p.text for p in self.index.passages(range(len(self.index)))]

    # -- scoring ---------------------------------------------------------------------------------------------------

    def retrieve(self, queries: Sequence[str], k: int, null: bool = False, fetch: int | None = None,
                 grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best passages of each query: ids (B, K) long (NULL for the null passage, appended as column K when
        null=True) and scores (B, K) = q·d/τ, differentiable in the query encoder when grad=True. fetch > k returns
        `fetch` candidates (a caller filters some out, e.g. trivial retrievals, before keeping k)."""
        n = fetch or k
        if k < 1 or n > len(self.index):
            raise ConfigError(f"retriever: asked for {n} passages per query but the index holds {len(self.index)}; "
                              f"use k <= {len(self.index)} (or a larger corpus)")
        self.sync()
        self.query.device = next(self.query.model.parameters()).device  # the engine may have moved the module
        q = self.query.embed(list(queries), grad=grad)  # (B, D)
        hits = self.index.search(q, n)
        ids = torch.from_numpy(hits.ids).to(q.device)  # (B, K)
        if bool((ids < 0).any()):
            raise ConfigError("retriever: the index returned fewer passages than asked (an IVF index probing too few "
                              "cells); raise nprobe or use a flat index")
        d = torch.from_numpy(self.index.vectors(hits.ids)).to(q.device)  # (B, K, D) fixed
        scores = torch.einsum("bd,bkd->bk", q, d)
        if null:
            ids = torch.cat([ids, torch.full_like(ids[:, :1], NULL)], 1)
            scores = torch.cat([scores, q @ self._null_vector().to(q.device)[:, None]], 1)  # (B, K + 1)
        return ids, scores / self.temperature

    def _null_vector(self) -> torch.Tensor:
        """(D,) the document encoder's vector of the empty passage (REALM: Embed_doc of an empty document)."""
        key = self.document.fingerprint()
        if self._null is None or self._null[0] != key:
            self._null = (key, torch.from_numpy(self.document.encode([""]))[0])
        return self._null[1]

    # -- keeping the index in step with the document encoder ------------------------------------------------------

    def refresh(self, show_progress: bool = False) -> None:
        """REALM §3.4: the document encoder takes the query encoder's current weights, then every passage is
        re-embedded (the corpus is not re-read)."""
        with torch.no_grad():
            for d, q in zip(self.document.model.state_dict().values(), self.query.model.state_dict().values()):
                d.copy_(q)
        self.sync(show_progress)

    def sync(self, show_progress: bool = False) -> bool:
        """Re-embed the passages when the document encoder's weights differ from those the index was built with
        (after refresh(), or after a checkpoint restored an older snapshot). Returns whether it did."""
        if self.index.manifest["encoder"]["fingerprint"] == self.document.fingerprint():
            return False
        self.document.device = next(self.document.model.parameters()).device
        self.index = self.index.refresh(self.document, show_progress=show_progress)
        return True
