"""Semantic textual similarity, unsupervised: embed both sentences of each pair, score the pair by the cosine of
the two vectors, and report Spearman's rho against the gold scores — the STS protocol of Sentence-BERT (Reimers &
Gurevych 2019) and SimCSE (Gao et al. 2021, §B: "all" setting, Spearman × 100 in their tables; here a fraction).

Dimension legend: B batch, T length, H hidden size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ptmkit.analysis.metrics import spearman
from ptmkit.models.pooling import hidden_states, pool


def encode_sentences(model, tokenizer, texts: Sequence[str], pooling: str = "mean", batch_size: int = 64,
                     max_length: int = 128, device: str | torch.device = "cpu") -> torch.Tensor:
    """(N, H) float32 sentence vectors, in eval mode (no dropout) and without gradients.

    tokenizer: a ptmkit Tokenizer (anything with encode_batch(texts) -> id lists and pad_id). Sentences longer than
    max_length keep their first max_length - 1 tokens and their last (the [SEP]).
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    was_training = model.training
    model.eval()
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths together: less padding
    chunks: list[tuple[np.ndarray, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for s in range(0, len(texts), batch_size):
                idx = order[s:s + batch_size]
                ids = tokenizer.encode_batch([texts[i] for i in idx])
                ids = [x if len(x) <= max_length else x[:max_length - 1] + x[-1:] for x in ids]
                t = max(len(x) for x in ids)
                input_ids = torch.full((len(ids), t), pad, dtype=torch.long)  # (B, T)
                mask = torch.zeros((len(ids), t), dtype=torch.long)
                for r, x in enumerate(ids):
                    input_ids[r, :len(x)] = torch.tensor(x, dtype=torch.long)
                    mask[r, :len(x)] = 1
                batch = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
                z = pool(hidden_states(model, batch), batch["attention_mask"], pooling)  # (B, H)
                chunks.append((idx, z.float().cpu()))
    finally:
        model.train(was_training)
    if not chunks:
        return torch.empty(0, 0)
    out = torch.empty(len(texts), chunks[0][1].shape[1])  # (N, H) back in the caller's order
    for idx, z in chunks:
        out[torch.from_numpy(np.asarray(idx))] = z
    return out


def sts_spearman(model, tokenizer, pairs: Sequence[tuple[str, str]], scores: Sequence[float], pooling: str = "mean",
                 batch_size: int = 64, max_length: int = 128, device: str | torch.device = "cpu") -> float:
    """Spearman's rho between cos(embed(a), embed(b)) and the gold similarity of each (a, b) pair."""
    if len(pairs) != len(scores):
        raise ValueError(f"{len(pairs)} pairs but {len(scores)} scores; they must be aligned")
    if not pairs:
        raise ValueError("no sentence pairs to score")
    a = encode_sentences(model, tokenizer, [p[0] for p in pairs], pooling, batch_size, max_length, device)
    b = encode_sentences(model, tokenizer, [p[1] for p in pairs], pooling, batch_size, max_length, device)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)  # (N,)
    return spearman(cos.numpy(), np.asarray(scores, dtype=np.float64))
