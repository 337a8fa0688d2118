"""Attention and syntax (Clark et al. 2019, "What Does BERT Look At?" §4): does some attention head find each word's
syntactic head? Token-level attention becomes word-level as in the paper (attention to a split word is the sum over its
pieces, attention from it the mean over its pieces); a head "predicts" a word's dependency head as the word it attends
to most, and its accuracy is counted per UD relation. The baseline is the best fixed offset for the relation (e.g.
"the next word" for det), which attention must beat to show it learned syntax rather than position.

Dimension legend: H heads, T tokens, W words.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import torch


def word_attention(probs: torch.Tensor, word_ids: list[int | None]) -> torch.Tensor:
    """(H, T, T) token attention of one sentence -> (H, W, W) word attention: summed over the pieces of the attended
    word, averaged over the pieces of the attending one (specials dropped)."""
    w = max(i for i in word_ids if i is not None) + 1
    onehot = torch.zeros(len(word_ids), w, dtype=probs.dtype)  # (T, W)
    for t, i in enumerate(word_ids):
        if i is not None:
            onehot[t, i] = 1.0
    to_words = probs @ onehot  # (H, T, W): summed over the attended word's pieces
    counts = onehot.sum(0).clamp_min(1)  # (W,)
    return (onehot.T @ to_words) / counts[None, :, None]  # (H, W, W): mean over the attending word's pieces


class HeadSyntax:
    """Running counts: for every (layer, head) and relation, how often the most-attended word is the gold head; and
    per relation, how often each offset (head - dependent) occurs, for the positional baseline."""

    def __init__(self):
        self.correct: dict[str, np.ndarray] = {}  # relation -> (L, H) hits
        self.total: Counter = Counter()
        self.offsets: dict[str, Counter] = defaultdict(Counter)

    def add(self, word_att: list[torch.Tensor], heads: list[int], deprels: list[str]) -> None:
        """word_att: per layer (H, W, W); heads: 1-based (0 = root, skipped); deprels: per word."""
        att = torch.stack(word_att)  # (L, H, W, W)
        w = att.shape[-1]
        eye = torch.eye(w, dtype=torch.bool)
        pred = att.masked_fill(eye, float("-inf")).argmax(-1)  # (L, H, W): the word each word attends to most
        for i, (h, rel) in enumerate(zip(heads[:w], deprels[:w])):
            if h <= 0 or h > w:
                continue
            hit = (pred[:, :, i] == h - 1).numpy()
            self.correct[rel] = self.correct.get(rel, np.zeros(hit.shape)) + hit
            self.total[rel] += 1
            self.offsets[rel][h - 1 - i] += 1

    def table(self, min_count: int = 1) -> dict[str, dict]:
        """Per relation: count, best head's accuracy and its (layer, head), the best fixed offset's accuracy."""
        out = {}
        for rel, n in sorted(self.total.items(), key=lambda kv: -kv[1]):
            if n < min_count:
                continue
            acc = self.correct[rel] / n
            layer, head = np.unravel_index(int(acc.argmax()), acc.shape)
            offset, hits = self.offsets[rel].most_common(1)[0]
            out[rel] = {"count": n, "best_head_accuracy": float(acc.max()), "layer": int(layer), "head": int(head),
                        "baseline_offset": int(offset), "baseline_accuracy": hits / n}
        return out
