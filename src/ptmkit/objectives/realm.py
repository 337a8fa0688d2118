"""REALM (Guu, Lee, Tung, Pasupat, Chang 2020, "REALM: Retrieval-Augmented Language Model Pre-Training"): masked-LM
pre-training of a knowledge-augmented encoder that reads [masked text x ; retrieved passage z] for each of the top-k
passages and is trained on the marginal (§2.2-2.3)

    p(y|x) = Σ_z p(y|x, z) p(z|x),   p(z|x) = softmax_z(Embed_input(x)ᵀ Embed_doc(z) / τ)   over the k retrieved,
    p(y|x, z) = Π_j p(y_j | x, z)    (the masked tokens, predicted by the reader's MLM head),

so the retriever learns from whether a passage helped predict the masked tokens. The query encoder is trainable, the
document vectors are fixed in the FAISS index and re-embedded every `refresh_every` steps (§3.4, asynchronous
refresh; here synchronous, between steps) with a snapshot of the query encoder. Options from §3.4: the null passage
(the model may predict from x alone), salient-span masking (entities masked as whole spans: the entity objective's
dictionary, reused), and excluding trivial retrievals (a passage that is the masked text itself: here one whose
tokens are nearly all visible in x).

The reader is the model the engine trains (any masked-LM family); the retriever (query encoder + document snapshot)
is this objective's auxiliary network, checkpointed with it. The loss is -Σ_b log p(y_b|x_b) over the batch's masked
tokens, so it equals the plain masked-LM cross-entropy when one passage is retrieved (tests check this exactly).
At test time (`mask_log_probs`, LAMA through analysis.knowledge) the same retrieval, rows and marginal give every
token's log p(v|x) at a cloze's mask; the trained retriever is written beside the reader (`save_exports`).

Dimension legend: B batch, T text length, K passages per row (+ null), P passage tokens, L joined length, N scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.models.registry import backbone_of
from ptmkit.objectives.augmented import PassageTable, decode_queries, join_rows, latent_marginal, valid_first
from ptmkit.objectives.base import Batch
from ptmkit.objectives.entity import SOURCES, EntityConfig, EntityMasking
from ptmkit.objectives.masking import MaskingConfig, check_mask_token
from ptmkit.objectives.mlm import MaskedLM, MLMConfig

MASKINGS = ("tokens", "salient_spans")


@dataclass
class REALMConfig(MaskingConfig):
    name: ClassVar[str] = "realm"
    index: str = ""  # a passage index directory (`ptm index build`); its encoder starts the query encoder
    k: int = 4  # passages retrieved per sequence (REALM pre-trains with 8)
    null_passage: bool = True  # add the empty passage to the k (§3.4)
    temperature: float = 0.1  # τ of p(z|x): the index's unit vectors give cosines in [-1, 1]
    refresh_every: int = 100  # steps between index refreshes (0 = never: the document side stays as built)
    passage_tokens: int = 64  # reader tokens of a passage (cut after that), [SEP] not counted
    exclude_overlap: float = 0.0  # > 0: drop passages whose tokens are at least this fraction visible in x (0 = off)
    masking: str = "tokens"  # tokens (BERT's) | salient_spans (entities as wholes, the `entity` objective's finder)
    entity_prob: float = 0.5  # salient_spans: probability each found entity is masked
    sources: list[str] = field(default_factory=lambda: list(SOURCES))  # salient_spans: entity-name sources
    data_root: str | None = None  # salient_spans: where the sources live (default: the data root)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1:
            raise ConfigError(f"realm: k must be >= 1, got {self.k}")
        if not self.temperature > 0:
            raise ConfigError(f"realm: temperature must be > 0, got {self.temperature}")
        if self.refresh_every < 0 or self.passage_tokens < 1:
            raise ConfigError(f"realm: refresh_every must be >= 0 and passage_tokens >= 1, got {self.refresh_every}, "
                              f"{self.passage_tokens}")
        if not 0.0 <= self.exclude_overlap <= 1.0:
            raise ConfigError(f"realm: exclude_overlap must be in [0, 1], got {self.exclude_overlap}")
        if self.exclude_overlap > 0 and not self.null_passage:
            raise ConfigError("realm: exclude_overlap may leave a row with no passage; keep null_passage: true")
        if self.masking not in MASKINGS:
            raise ConfigError(f"realm: masking {self.masking!r}; choose one of {list(MASKINGS)}")


class REALM:
    task = "masked-lm"

    def __init__(self, cfg: REALMConfig, tokenizer, retriever, corruption=None):
        """tokenizer: the reader's; retriever: a ptmkit.retrieval.Retriever over cfg.index (the recipe loads it);
        corruption: the masking objective whose corrupt() makes the targets (default from cfg.masking)."""
        cfg.check_ready()
        if cfg.k > len(retriever):
            raise ConfigError(f"realm: k={cfg.k} but the index {cfg.index or ''} holds {len(retriever)} passages; "
                              f"use k <= {len(retriever)}")
        if tokenizer.sep_id is None:
            raise ConfigError("realm: the reader's tokenizer has no [SEP]/eos token to close a passage with")
        self.cfg, self.tokenizer, self.retriever = cfg, tokenizer, retriever
        self.passages = PassageTable(retriever.texts(), tokenizer, cfg.passage_tokens, suffix=[tokenizer.sep_id])
        self.corruption = corruption or self._masking(cfg, tokenizer)
        pad = tokenizer.pad_id
        self.pad = pad if pad is not None else 0
        self.drop = [i for i in tokenizer.all_special_ids if i != cfg.mask_token_id]

    @staticmethod
    def _masking(cfg: REALMConfig, tokenizer):
        shared = dict(mask_prob=cfg.mask_prob, mask_token_fraction=cfg.mask_token_fraction,
                      random_token_fraction=cfg.random_token_fraction, mask_token_id=cfg.mask_token_id,
                      vocab_size=cfg.vocab_size, special_token_ids=list(cfg.special_token_ids))
        if cfg.masking == "tokens":
            return MaskedLM(MLMConfig(**shared))
        return EntityMasking.from_tokenizer(EntityConfig(**shared, entity_prob=cfg.entity_prob, sources=cfg.sources,
                                                         data_root=cfg.data_root), tokenizer)

    @classmethod
    def from_retriever(cls, cfg: REALMConfig, tokenizer, retriever) -> REALM:
        check_mask_token(cfg.name, tokenizer)
        return cls(cfg, tokenizer, retriever)

    # ---- auxiliary network: the retriever's encoders ------------------------------------------------------------
    def bind(self, model: nn.Module) -> nn.Module:
        p = next(model.parameters(), None)
        if p is not None:
            self.retriever.module.to(p.device)
        return self.retriever.module

    def save_exports(self, out: Path) -> dict[str, str]:
        """After training, beside the reader: the retriever as trained (OUT/retriever: the index as last refreshed,
        its document encoder and the query encoder), what test-time reading loads (recipes.realm.load_realm)."""
        return {"retriever_dir": str(self.retriever.save(Path(out) / "retriever"))}

    def on_step(self, step: int) -> None:
        """Before optimizer step `step`: refresh the index every refresh_every steps (a resumed run passes the same
        steps, so it refreshes where the uninterrupted run did)."""
        if self.cfg.refresh_every and step > 0 and step % self.cfg.refresh_every == 0:
            self.retriever.refresh()

    # ---- data side ----------------------------------------------------------------------------------------------
    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        if "document_ids" in batch:
            raise ConfigError("realm reads one text per row and retrieves for it; use data.boundary no_cross (or "
                              "cross), not mask")
        return self.corruption.corrupt(batch, generator)

    # ---- model side ---------------------------------------------------------------------------------------------
    def retrieve(self, batch: Batch, exclude: bool = True, grad: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x ids (B, T) valid first, x lengths (B,), labels (B, T) aligned with them, and the retrieval: passage
        ids (B, K') and log p(z|x) (B, K')). exclude=False keeps trivial retrievals (test time: §3.4 drops them in
        pre-training only, so the reader cannot learn to copy the masked text); grad=False: no autograd graph."""
        ids, labels = batch["input_ids"], batch["labels"]
        mask = batch.get("attention_mask", torch.ones_like(ids))
        x, n, labels = valid_first(ids, mask, labels)
        c = self.cfg
        drop = exclude and c.exclude_overlap > 0
        queries = decode_queries(self.tokenizer, x, n, self.drop)
        fetch = min(2 * c.k, len(self.retriever)) if drop else None
        pid, scores = self.retriever.retrieve(queries, c.k, null=c.null_passage, fetch=fetch, grad=grad)
        if drop:
            pid, scores = self._drop_trivial(x, n, pid, scores)
        return x, n, labels, pid, F.log_softmax(scores.float(), dim=-1)

    def _drop_trivial(self, x, n, pid, scores):
        """REALM §3.4 excludes the document the masked text came from. Without document ids here: a passage whose
        tokens are at least exclude_overlap visible in x is that text; its score becomes -inf, then the best k
        remaining (and the null passage, last) are kept."""
        toks, lens = self.passages.rows(pid[:, :-1])  # (B, F, P) without the null column
        visible = x.cpu()  # (B, T): masked positions hold [MASK], so a masked word does not count as seen
        valid = torch.arange(visible.shape[1])[None] < n.cpu()[:, None]
        visible = torch.where(valid, visible, torch.full_like(visible, -1))
        real = torch.arange(toks.shape[2])[None, None] < (lens - 1)[..., None]  # without the closing [SEP]
        seen = (toks[..., None] == visible[:, None, None, :]).any(-1) & real  # (B, F, P)
        overlap = seen.sum(-1).float() / (lens - 1).clamp(min=1).float()
        s = scores[:, :-1].masked_fill(overlap.to(scores.device) >= self.cfg.exclude_overlap, float("-inf"))
        top = s.topk(self.cfg.k, dim=1)
        return (torch.cat([pid[:, :-1].gather(1, top.indices), pid[:, -1:]], 1),
                torch.cat([top.values, scores[:, -1:]], 1))

    def read(self, model, x, n, labels, pid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The reader over [x ; z] for every retrieved z (BERT's segment B on the passage): log p(·|x, z) (N, V) at
        the labelled positions of the B*K joined rows (row-major), the row in B*K of each of the N, and their labels
        (N,)."""
        B, K = pid.shape
        ptoks, plen = self.passages.rows(pid)  # (B, K, P), (B, K)
        xr = x[:, None].expand(B, K, x.shape[1]).reshape(B * K, -1).cpu()
        nr = n[:, None].expand(B, K).reshape(-1).cpu()
        rows, attn, (_, pstart) = join_rows([(xr, nr), (ptoks.reshape(B * K, -1), plen.reshape(-1))], self.pad)
        L = rows.shape[1]
        device = x.device
        lab = torch.full((B * K, L), -100, dtype=torch.long)
        width = min(labels.shape[1], L)
        lab[:, :width] = labels[:, None].expand(B, K, labels.shape[1]).reshape(B * K, -1)[:, :width].cpu()
        segments = (torch.arange(L)[None] >= pstart[:, None]).long() * attn  # 1 on the passage (BERT's segment B)
        types = segments if getattr(backbone_of(model).config, "type_vocab_size", 1) > 1 else None
        where = lab != -100  # (B*K, L)
        out = model(rows.to(device), attention_mask=attn.to(device),
                    token_type_ids=types.to(device) if types is not None else None, score_positions=where.to(device))
        return F.log_softmax(out.logits.float(), dim=-1), where.nonzero()[:, 0].to(device), lab[where].to(device)

    def reader_log_likelihood(self, model, x, n, labels, pid) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(y|x, z) for every retrieved z: (B, K) summed over each row's masked tokens, and (B,) their count."""
        B, K = pid.shape
        lp, row, target = self.read(model, x, n, labels, pid)  # (N, V), (N,), (N,)
        token_lp = lp.gather(1, target[:, None])[:, 0]  # (N,)
        ll = torch.zeros(B * K, device=lp.device, dtype=token_lp.dtype).index_add(0, row, token_lp)
        return ll.view(B, K), (labels != -100).sum(1)

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        x, n, labels, pid, log_prior = self.retrieve(batch)
        ll, count = self.reader_log_likelihood(model, x, n, labels, pid)
        marginal = latent_marginal(log_prior, ll)  # (B,)
        total = count.sum().clamp(min=1)
        loss = -marginal.sum() / total
        with torch.no_grad():
            p = log_prior.exp()
            metrics = {"loss": loss.item(), "predicted_tokens": float(count.sum()),
                       "retrieval_entropy": float(-(p * log_prior.clamp(min=-1e9)).sum(1).mean()),
                       "top_passage_prob": float(p.max(1).values.mean())}
            if self.cfg.null_passage:
                metrics["null_prob"] = float(p[:, -1].mean())
        return loss, metrics

    # ---- test time: the reader with retrieval ---------------------------------------------------------------------
    @torch.no_grad()
    def mask_log_probs(self, model, batch: Batch) -> torch.Tensor:
        """log p(v | x) over the vocabulary at each row's one [MASK], (B, V): the marginal of training, now over every
        token v, log Σ_z p(z|x) p(v|x, z) (§2.2) with the same retrieval (the query encoder's p(z|x) over the top k
        and the null passage if configured), the same [x ; z] rows and the same latent_marginal. Trivial retrievals
        are kept: a passage that states the fact is what retrieval is for at test time. batch: input_ids and
        attention_mask (B, T), exactly one mask token in each row's real tokens."""
        ids = batch["input_ids"]
        mask = batch.get("attention_mask", torch.ones_like(ids))
        at = (ids == self.cfg.mask_token_id) & (mask == 1)
        if not bool((at.sum(1) == 1).all()):
            raise ConfigError("realm: test-time reading scores one [MASK] per row; some rows have none or several")
        labels = torch.where(at, ids, torch.full_like(ids, -100))  # any id: only the position is read
        x, n, labels, pid, log_prior = self.retrieve({"input_ids": ids, "attention_mask": mask, "labels": labels},
                                                     exclude=False, grad=False)
        B, K = pid.shape
        lp, _, _ = self.read(model, x, n, labels, pid)  # (B*K, V): one scored position per joined row
        return latent_marginal(log_prior[:, :, None], lp.view(B, K, -1))  # (B, V)
