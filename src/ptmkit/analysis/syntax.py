"""Attention and syntax (Clark et al. 2019, "What Does BERT Look At?" §4): does some attention head find each word's
syntactic head? Token-level attention becomes word-level as in the paper (attention to a split word is the sum over its
pieces, attention from it the mean over its pieces); a head "predicts" a word's dependency head as the word it attends
to most, and its accuracy is counted per UD relation. As in the paper, both directions count: the dependent attending
to its head, and the head attending to the dependent (a causal LM can only do the one that looks left, e.g. the noun
attending back to its determiner); each relation reports its better direction. The baseline is the best fixed offset
for the relation in either direction (e.g. "the next word" for det), which attention must beat to show it learned
syntax rather than position.

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


DIRECTIONS = ("dependent->head", "head->dependent")


class HeadSyntax:
    """Running counts: for every (layer, head), relation and direction, how often the most-attended word is the gold
    one (the head for dependent->head, the dependent for head->dependent); and per relation, how often each offset
    (head - dependent) occurs, for the positional baseline."""

    def __init__(self):
        self.correct: dict[tuple[str, str], np.ndarray] = {}  # (relation, direction) -> (L, H) hits
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
            for direction, hit in zip(DIRECTIONS, ((pred[:, :, i] == h - 1).numpy(), (pred[:, :, h - 1] == i).numpy())):
                self.correct[rel, direction] = self.correct.get((rel, direction), np.zeros(hit.shape)) + hit
            self.total[rel] += 1
            self.offsets[rel][h - 1 - i] += 1

    def table(self, min_count: int = 1) -> dict[str, dict]:
        """Per relation: count, the best head's accuracy, its (layer, head) and direction, and the best fixed offset's
        accuracy (offset = head - dependent; the head->dependent baseline predicts the dependent at -offset, which
        is right as often, so one offset count serves both directions)."""
        out = {}
        for rel, n in sorted(self.total.items(), key=lambda kv: -kv[1]):
            if n < min_count:
                continue
            best = max(DIRECTIONS, key=lambda d: float(self.correct[rel, d].max()))
            acc = self.correct[rel, best] / n
            layer, head = np.unravel_index(int(acc.argmax()), acc.shape)
            offset, hits = self.offsets[rel].most_common(1)[0]
            out[rel] = {"count": n, "best_head_accuracy": float(acc.max()), "layer": int(layer), "head": int(head),
                        "direction": best, "baseline_offset": int(offset), "baseline_accuracy": hits / n}
        return out
