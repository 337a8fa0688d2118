"""RAG (Lewis, Perez, Piktus, Petroni, Karpukhin, Goyal, Küttler, Lewis, Yih, Rocktäschel, Riedel, Kiela 2020,
"Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks"): a generator reads [retrieved passage z ; input x]
and the top-k passages are a latent variable (§2.1), marginalised per answer or per token:

    RAG-sequence  p(y|x) = Σ_z p(z|x) Π_i p(y_i | x, z, y_<i)
    RAG-token     p(y|x) = Π_i Σ_z p(z|x) p(y_i | x, z, y_<i)

with p(z|x) = softmax over the k retrieved of Embed_query(x)ᵀ Embed_doc(z) / τ. Training (§2.4) fine-tunes the
generator (the model the engine trains) and the query encoder (this objective's auxiliary network); the document
vectors stay fixed in the FAISS index. The generator is a causal LM (a decoder-only family: the row is
[z ; separator ; x ; y] and y is scored), which the paper's BART generator is replaced by here.

Batches are question/answer pairs: input_ids / attention_mask (the question, generator tokens) and labels (the
answer's tokens, -100 padding). The loss is -Σ_b log p(y_b|x_b) / (answer tokens of the batch), so with one passage
both variants equal the generator's own cross-entropy on [z ; x ; y] (tests check this exactly).

Dimension legend: B questions, K passages, T question length, A answer length, L row length, H hidden, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.models.registry import backbone_of
from ptmkit.objectives.augmented import PassageTable, decode_queries, join_rows, latent_marginal, valid_first
from ptmkit.objectives.base import Batch

MARGINALISE = ("sequence", "token")


@dataclass
class RAGConfig:
    k: int = 5  # passages per question (RAG trains with 5 or 10)
    marginalise: str = "sequence"  # sequence | token (§2.1)
    temperature: float = 0.1  # τ of p(z|x) (the index's unit vectors give cosines)
    passage_tokens: int = 96  # generator tokens of a passage (cut after that)
    separator: str = "\n"  # text between the passage and the question (tokenised once)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"rag: k must be >= 1, got {self.k}")
        if self.marginalise not in MARGINALISE:
            raise ConfigError(f"rag: marginalise {self.marginalise!r}; choose one of {list(MARGINALISE)}")
        if not self.temperature > 0:
            raise ConfigError(f"rag: temperature must be > 0, got {self.temperature}")
        if self.passage_tokens < 1:
            raise ConfigError(f"rag: passage_tokens must be >= 1, got {self.passage_tokens}")


def check_generator(model, tokenizer) -> None:
    """Refuse a generator RAG cannot use here, naming the fix: not a causal LM, or a tokenizer it cannot read."""
    if getattr(model, "task", None) != "causal-lm" or not hasattr(model, "lm_head"):
        raise ConfigError(f"rag: the generator is a {getattr(model, 'task', type(model).__name__)} model; RAG here "
                          "generates with a causal LM (a gpt2 or llama model directory, e.g. SmolLM2)")
    size = tokenizer.vocab_size if hasattr(tokenizer, "vocab_size") else tokenizer.get_vocab_size()
    if size > model.config.vocab_size:
        raise ConfigError(f"rag: the tokenizer has {size} tokens but the generator only {model.config.vocab_size} "
                          "embeddings: pass the tokenizer the generator was trained with")
    if tokenizer.eos_id is None:
        raise ConfigError("rag: the generator's tokenizer has no end-of-text token to end an answer with; use a "
                          "tokenizer that declares eos (the generator's own)")


class RAG:
    task = "causal-lm"

    def __init__(self, cfg: RAGConfig, tokenizer, retriever):
        """tokenizer: the generator's; retriever: a ptmkit.retrieval.Retriever (the recipe loads it)."""
        if cfg.k > len(retriever):
            raise ConfigError(f"rag: k={cfg.k} but the index holds {len(retriever)} passages; use k <= "
                              f"{len(retriever)}")
        self.cfg, self.tokenizer, self.retriever = cfg, tokenizer, retriever
        sep = tokenizer.encode(cfg.separator, add_special_tokens=False) if cfg.separator else []
        self.passages = PassageTable(retriever.texts(), tokenizer, cfg.passage_tokens, suffix=sep)
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
        self.pad = pad if pad is not None else 0
        self.drop = tokenizer.all_special_ids

    @classmethod
    def from_retriever(cls, cfg: RAGConfig, tokenizer, retriever) -> RAG:
        return cls(cfg, tokenizer, retriever)

    def bind(self, model: nn.Module) -> nn.Module:
        check_generator(model, self.tokenizer)
        p = next(model.parameters(), None)
        if p is not None:
            self.retriever.module.to(p.device)
        return self.retriever.module

    def corrupt(self, batch: Batch, generator: torch.Generator) -> Batch:
        return dict(batch)  # question/answer pairs are used as they are

    # ---- retrieval and scoring ----------------------------------------------------------------------------------
    def retrieve(self, batch: Batch, grad: bool = True):
        """(question ids (B, T) valid first, lengths (B,), passage ids (B, K), log p(z|x) (B, K))."""
        ids = batch["input_ids"]
        q, n = valid_first(ids, batch.get("attention_mask", torch.ones_like(ids)))
        queries = decode_queries(self.tokenizer, q, n, self.drop)
        pid, scores = self.retriever.retrieve(queries, self.cfg.k, grad=grad)
        return q, n, pid, F.log_softmax(scores.float(), dim=-1)

    def question_batch(self, questions: list[str]) -> Batch:
        """Question texts as the objective's input (generator tokens, right-padded), for retrieval outside training
        (generation, answer scoring)."""
        enc = self.tokenizer.encode_batch(list(questions), add_special_tokens=False)
        T = max(1, max((len(e) for e in enc), default=1))
        ids = torch.full((len(enc), T), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, e in enumerate(enc):
            ids[i, :len(e)] = torch.tensor(e, dtype=torch.long)
            mask[i, :len(e)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    @torch.no_grad()
    def conditioned_prompts(self, questions: list[str]) -> tuple[list[list[list[int]]], torch.Tensor, torch.Tensor]:
        """What the generator reads for each question: its K prompts [z ; separator ; x] as token lists (best
        passage first), log p(z|x) (B, K) and the passage ids (B, K). For scoring given answers outside training,
        e.g. LAMA's candidate objects (analysis.knowledge.probe_causal_lm's contexts)."""
        q, n, pid, log_prior = self.retrieve(self.question_batch(questions), grad=False)
        rows, lengths = self.prompts(q, n, pid)
        B, K = pid.shape
        flat = [r[:int(m)].tolist() for r, m in zip(rows, lengths)]
        return [flat[b * K:(b + 1) * K] for b in range(B)], log_prior.cpu(), pid.cpu()

    def prompts(self, q: torch.Tensor, n: torch.Tensor, pid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each question behind each of its passages, (B*K, L) right-padded ids and their lengths (B*K,)."""
        B, K = pid.shape
        ptoks, plen = self.passages.rows(pid)
        qr = q[:, None].expand(B, K, q.shape[1]).reshape(B * K, -1).cpu()
        rows, mask, _ = join_rows([(ptoks.reshape(B * K, -1), plen.reshape(-1)),
                                   (qr, n[:, None].expand(B, K).reshape(-1).cpu())], self.pad)
        return rows, mask.sum(1)

    def answer_log_probs(self, model, prompts: torch.Tensor, prompt_len: torch.Tensor, answers: torch.Tensor,
                         answer_len: torch.Tensor) -> torch.Tensor:
        """(R, A) log p(y_i | prompt, y_<i) of each row's answer tokens (0 past its length): one forward over
        [prompt ; answer], the vocabulary projection only at the positions that predict an answer token."""
        rows, mask, (_, start) = join_rows([(prompts.cpu(), prompt_len.cpu()), (answers.cpu(), answer_len.cpu())],
                                           self.pad)
        device = next(model.parameters()).device
        h = backbone_of(model)(rows.to(device), mask.to(device)).last_hidden_state  # (R, L, H)
        A = answers.shape[1]
        valid = torch.arange(A)[None] < answer_len.cpu()[:, None]  # (R, A)
        at = (start[:, None] + torch.arange(A)[None] - 1).clamp(min=0, max=rows.shape[1] - 1)  # predicting positions
        hs = h.gather(1, at.to(device)[..., None].expand(-1, -1, h.shape[-1]))  # (R, A, H)
        lp = F.log_softmax(model.lm_head(hs).float(), dim=-1)  # (R, A, V)
        target = torch.where(valid, answers.cpu(), torch.zeros_like(answers.cpu())).to(device)
        out = lp.gather(2, target[..., None])[..., 0]  # (R, A)
        return out.masked_fill(~valid.to(device), 0.0)

    def marginal(self, log_prior: torch.Tensor, token_lp: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B,) log p(y|x) from (B, K) log p(z|x) and (B, K, A) token log-probs, by cfg.marginalise."""
        if self.cfg.marginalise == "sequence":
            return latent_marginal(log_prior, token_lp.sum(-1))
        per_token = torch.logsumexp(log_prior[..., None] + token_lp, dim=1)  # (B, A)
        return per_token.masked_fill(~valid, 0.0).sum(-1)

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        q, n, pid, log_prior = self.retrieve(batch)
        B, K = pid.shape
        prompts, plen = self.prompts(q, n, pid)
        labels = batch["labels"]
        valid = labels != -100  # (B, A)
        alen = valid.sum(1)
        ans = labels.masked_fill(~valid, 0)
        token_lp = self.answer_log_probs(model, prompts, plen, ans.repeat_interleave(K, 0),
                                         alen.repeat_interleave(K, 0)).view(B, K, -1)
        marginal = self.marginal(log_prior, token_lp, valid.to(token_lp.device))
        count = alen.sum().clamp(min=1)
        loss = -marginal.sum() / count
        with torch.no_grad():
            p = log_prior.exp()
            metrics = {"loss": loss.item(), "predicted_tokens": float(alen.sum()),
                       "top_passage_prob": float(p.max(1).values.mean())}
        return loss, metrics
