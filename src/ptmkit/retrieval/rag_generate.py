"""Greedy decoding with a RAG model (Lewis et al. 2020 §2.5): retrieve k passages per question, then

- RAG-token: each step's next-token distribution is the mixture Σ_z p(z|x) p(y_i | x, z, y_<i); the K rows of a
  question (one per passage, KV-cached, left-padded so their ends align) all take the mixture's argmax;
- RAG-sequence ("fast decoding"): a greedy answer under each passage, then every candidate is scored under all k
  passages and the one with the highest marginal Σ_z p(z|x) p(y|x, z) wins.

Dimension legend: B questions, K passages, R = B*K rows, T prompt length, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptmkit.objectives.rag import RAG


@dataclass
class RagAnswer:
    question: str
    answer: str
    passages: list  # the retrieved Passage records, best first
    probs: list[float]  # p(z|x) of each


def _left_padded(rows: torch.Tensor, lengths: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows -> left-padded (ends aligned for decoding) and the attention mask."""
    mask = (torch.arange(rows.shape[1])[None] < lengths[:, None]).long()
    order = torch.sort(mask, dim=1, stable=True).indices  # padding first, then the tokens in order
    mask = mask.gather(1, order)
    return rows.gather(1, order).masked_fill(mask == 0, pad), mask


@torch.no_grad()
def _greedy(model, rag: RAG, prompts, plen, log_prior, max_new_tokens: int, stops: torch.Tensor,
            mixture: bool) -> torch.Tensor:
    """(R, n) greedy tokens; mixture=True: every row of a question takes the RAG-token mixture's argmax."""
    device = next(model.parameters()).device
    ids, mask = _left_padded(prompts, plen, rag.pad)
    ids, mask = ids.to(device), mask.to(device)
    R, B = ids.shape[0], log_prior.shape[0]
    K = R // B
    cache = model.backbone.new_cache(R, ids.shape[1] + max_new_tokens, next(model.parameters()).dtype, device)
    step, out = ids, []
    finished = torch.zeros(R, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        logits = model(step, attention_mask=mask, cache=cache, logits_to_keep=1).logits[:, -1].float()  # (R, V)
        if mixture:
            lp = torch.log_softmax(logits, -1).view(B, K, -1)
            nxt = torch.logsumexp(log_prior.to(device)[..., None] + lp, 1).argmax(-1).repeat_interleave(K)  # (R,)
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(finished, torch.full_like(nxt, rag.pad), nxt)
        out.append(nxt)
        finished |= torch.isin(nxt, stops.to(device))
        if bool(finished.all()):
            break
        step = nxt[:, None]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack(out, 1) if out else torch.zeros(R, 0, dtype=torch.long)


def _until_stop(tokens: torch.Tensor, stops: torch.Tensor) -> torch.Tensor:
    """(R,) answer lengths: tokens before the first stop token."""
    hit = torch.isin(tokens.cpu(), stops)
    first = torch.where(hit.any(1), hit.float().argmax(1), torch.full((tokens.shape[0],), tokens.shape[1]))
    return first.long()


@torch.no_grad()
def rag_generate(model, rag: RAG, questions: list[str], max_new_tokens: int = 16,
                 stop_tokens: list[int] | None = None) -> list[RagAnswer]:
    """Answer each question with retrieval (rag.cfg.marginalise picks the decoding). The generator's eos stops."""
    model.eval()
    tok = rag.tokenizer
    stops = torch.tensor(sorted(set(stop_tokens if stop_tokens is not None else [tok.eos_id])), dtype=torch.long)
    q, n, pid, log_prior = rag.retrieve(rag.question_batch(questions), grad=False)
    B, K = pid.shape
    prompts, plen = rag.prompts(q, n, pid)
    gen = _greedy(model, rag, prompts, plen, log_prior, max_new_tokens, stops, rag.cfg.marginalise == "token").cpu()
    glen = _until_stop(gen, stops)
    if rag.cfg.marginalise == "token":
        best = gen.view(B, K, -1)[:, 0]  # all K rows of a question hold the same tokens
        best_len = glen.view(B, K)[:, 0]
    else:  # score every question's K candidates under each of its K passages
        cand = gen.view(B, K, -1)
        clen = glen.view(B, K)
        rows = prompts.view(B, K, -1)[:, None].expand(B, K, K, prompts.shape[1]).reshape(B * K * K, -1)
        rlen = plen.view(B, K)[:, None].expand(B, K, K).reshape(-1)
        ans = cand[:, :, None].expand(B, K, K, cand.shape[2]).reshape(B * K * K, -1)
        alen = clen[:, :, None].expand(B, K, K).reshape(-1)
        ans = torch.where(torch.arange(ans.shape[1])[None] < alen[:, None], ans, torch.zeros_like(ans))
        token_lp = rag.answer_log_probs(model, rows, rlen, ans, alen).view(B, K, K, -1).sum(-1).cpu()  # (B, cand, z)
        score = torch.logsumexp(log_prior.cpu()[:, None, :] + token_lp, -1)  # (B, cand)
        pick = score.argmax(1)
        best, best_len = cand[torch.arange(B), pick], clen[torch.arange(B), pick]
    probs = log_prior.exp().cpu()
    out = []
    for b in range(B):
        answer = tok.decode(best[b, :int(best_len[b])].tolist(), skip_special_tokens=True)
        out.append(RagAnswer(questions[b], answer, rag.retriever.index.passages(pid[b].cpu().numpy()),
                             probs[b].tolist()))
    return out
