"""Shared parts of the retrieval-augmented objectives (REALM: objectives/realm.py, RAG: objectives/rag.py): the
retrieved passages tokenised once for the reader/generator, ragged rows joined into one padded batch without a Python
loop over rows, query texts decoded from a batch for the retriever, and the latent-variable marginal
log p(y|x) = log Σ_z p(z|x) p(y|x, z).

The retriever itself (ptmkit.retrieval.retriever.Retriever: FAISS index, trainable query encoder, refresh) is
handed to these objectives by the recipe that builds them; objectives never import retrieval/ (tests/test_layering).

Dimension legend: N passages, P tokens per passage, R rows, L joined length, B queries, K passages per query.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ptmkit.config import ConfigError


class PassageTable:
    """Every passage of an index tokenised by the reader's tokenizer, (N + 1, P) ids and (N + 1,) lengths; the last
    row is the empty (null) passage, reached by id -1. `suffix` ids close each passage (BERT's [SEP], a newline for
    a causal generator); a passage is cut to `max_tokens` tokens before it."""

    def __init__(self, texts: Sequence[str], tokenizer, max_tokens: int, suffix: Sequence[int] = ()):
        if max_tokens < 1:
            raise ConfigError(f"passage_tokens must be >= 1, got {max_tokens}")
        suffix = list(suffix)
        enc = [e[:max_tokens] + suffix for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]
        enc.append([])  # the null passage: nothing at all (REALM: x alone)
        width = max(1, max(len(e) for e in enc))
        self.ids = torch.zeros(len(enc), width, dtype=torch.long)  # (N + 1, P)
        self.lengths = torch.tensor([len(e) for e in enc], dtype=torch.long)  # (N + 1,)
        for i, e in enumerate(enc):  # once, when the objective is built
            self.ids[i, :len(e)] = torch.tensor(e, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.lengths) - 1

    def rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K) passage ids (-1 = null) -> (B, K, P) token ids and (B, K) lengths."""
        ids = ids.cpu()
        return self.ids[ids], self.lengths[ids]


def join_rows(parts: Sequence[tuple[torch.Tensor, torch.Tensor]], pad: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                          list[torch.Tensor]]:
    """Concatenate ragged pieces row by row: parts = [(ids (R, T_i), lengths (R,)), ...], each row's first lengths
    tokens of each piece, in order, then padding. Returns ids (R, L), attention mask (R, L) and each piece's start
    offset (R,). Two scatters per piece (writes past a row's piece go to a spare column that is dropped)."""
    R = parts[0][0].shape[0]
    offsets, total = [], torch.zeros(R, dtype=torch.long)
    for _, n in parts:
        offsets.append(total)
        total = total + n
    L = max(1, int(total.max()))
    out = torch.full((R, L + 1), pad, dtype=torch.long)
    for (ids, n), start in zip(parts, offsets):
        t = torch.arange(ids.shape[1])
        pos = torch.where(t[None] < n[:, None], start[:, None] + t[None], torch.full_like(ids, L))  # (R, T_i)
        out.scatter_(1, pos, ids)
    mask = (torch.arange(L)[None] < total[:, None]).long()  # (R, L)
    return out[:, :L].masked_fill(mask == 0, pad), mask, offsets


def valid_first(ids: torch.Tensor, mask: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Move each row's real tokens (mask 1) to the front, in order, and the same positions of `others` with them:
    join_rows reads a piece's first `lengths` tokens. Returns (ids, lengths, *others)."""
    order = torch.sort((mask == 0).to(torch.int8), dim=1, stable=True).indices  # (B, T)
    return (ids.gather(1, order), mask.sum(1).long(), *(o.gather(1, order) for o in others))


def decode_queries(tokenizer, ids: torch.Tensor, lengths: torch.Tensor, drop: Sequence[int]) -> list[str]:
    """The texts the retriever embeds: each row's first `lengths` tokens without the ids in `drop` (padding, [CLS],
    [SEP]; the mask token stays, REALM's query is the masked sentence), decoded by the reader's tokenizer so a
    retriever with another vocabulary can read them."""
    drop_t = torch.tensor(sorted(set(drop)), dtype=torch.long)
    keep = (torch.arange(ids.shape[1])[None] < lengths[:, None].cpu()) & ~torch.isin(ids.cpu(), drop_t)
    rows = [r[k].tolist() for r, k in zip(ids.cpu(), keep)]
    return tokenizer.decode_batch(rows, skip_special_tokens=False)


def latent_marginal(log_prior: torch.Tensor, log_lik: torch.Tensor) -> torch.Tensor:
    """log Σ_z p(z|x) p(y|x,z) from (B, K) log p(z|x) and (B, K) log p(y|x,z): (B,). Passages with p(z|x) = 0
    (-inf, filtered out) add nothing. Trailing dimensions broadcast: (B, K, 1) and (B, K, V) give (B, V), every
    token's marginal at once (REALM's test-time reading)."""
    return torch.logsumexp(log_prior + log_lik, dim=1)
