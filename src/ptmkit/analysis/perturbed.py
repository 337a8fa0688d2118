"""Perturbed Masking (Wu et al. 2020, "Perturbed Masking: Parameter-free Probing for Analyzing and Interpreting
BERT" §2-3): how much word j affects the model's representation of word i, with no probe trained. Mask word i and take
its vector; mask words i and j and take it again; the distance is the impact f(i, j). The impact matrix of a sentence
is then decoded into a dependency tree (Eisner's projective maximum spanning tree) and scored against the gold tree
(UAS), with the right-branching tree as the baseline.

Dimension legend: W words, T tokens, H width.
"""

from __future__ import annotations

import numpy as np
import torch

from ptmkit.config import ConfigError


@torch.no_grad()
def impact_matrix(model, ids: list[int], word_ids: list[int | None], mask_id: int, layer: int = -1,
                  batch_size: int = 64) -> np.ndarray:
    """(W, W) impacts f(i, j) = ||h_i(x \\ {i}) - h_i(x \\ {i, j})||_2 at `layer` (every piece of a masked word is
    masked; word i's vector is its first piece's). The diagonal is 0."""
    words = max(i for i in word_ids if i is not None) + 1
    pieces = [[t for t, w in enumerate(word_ids) if w == i] for i in range(words)]
    first = [p[0] for p in pieces]
    base = torch.tensor(ids)
    variants, owner = [], []
    for i in range(words):
        x = base.clone()
        x[pieces[i]] = mask_id
        variants.append(x)  # x \\ {i}
        owner.append((i, -1))
        for j in range(words):
            if j != i:
                y = x.clone()
                y[pieces[j]] = mask_id
                variants.append(y)  # x \\ {i, j}
                owner.append((i, j))
    device = next(model.parameters()).device
    backbone = getattr(model, "backbone", model)
    layers = backbone.config.num_layers + 1  # the embeddings' output, then each block's
    if not -layers <= layer < layers:
        raise ConfigError(f"perturbed masking: layer {layer} is out of range; the model has {layers} hidden states "
                          f"(0 = embeddings ... {layers - 1} = the last block; -1 also means the last)")
    vecs = {}
    for s in range(0, len(variants), batch_size):
        batch = torch.stack(variants[s:s + batch_size]).to(device)
        hidden = backbone(batch, output_hidden_states=True).hidden_states[layer]  # (B, T, H)
        for r, (i, j) in enumerate(owner[s:s + batch_size]):
            vecs[(i, j)] = hidden[r, first[i]].float().cpu()
    f = np.zeros((words, words))
    for i in range(words):
        for j in range(words):
            if i != j:
                f[i, j] = float((vecs[(i, -1)] - vecs[(i, j)]).norm())
    return f


def eisner(scores: np.ndarray) -> list[int]:
    """The projective tree maximising the sum of scores[head, dependent] over its arcs (Eisner 1996), for n + 1 nodes
    with node 0 the root: scores (n + 1, n + 1). Returns each word's head (0 = root), for words 1..n."""
    n = scores.shape[0]
    # complete (c) and incomplete (i) spans [s, t], direction 0 = head on the right, 1 = head on the left
    c = np.zeros((n, n, 2))
    inc = np.zeros((n, n, 2))
    bc = np.zeros((n, n, 2), dtype=int)
    bi = np.zeros((n, n, 2), dtype=int)
    for k in range(1, n):
        for s in range(n - k):
            t = s + k
            cand = c[s, s:t, 1] + c[s + 1:t + 1, t, 0]  # split r in [s, t)
            r = int(np.argmax(cand))
            inc[s, t, 0] = cand[r] + scores[t, s]  # arc t -> s
            inc[s, t, 1] = cand[r] + scores[s, t]  # arc s -> t
            bi[s, t, 0] = bi[s, t, 1] = s + r
            cand0 = c[s, s:t, 0] + inc[s:t, t, 0]
            r0 = int(np.argmax(cand0))
            c[s, t, 0], bc[s, t, 0] = cand0[r0], s + r0
            cand1 = inc[s, s + 1:t + 1, 1] + c[s + 1:t + 1, t, 1]
            r1 = int(np.argmax(cand1))
            c[s, t, 1], bc[s, t, 1] = cand1[r1], s + 1 + r1
    heads = [0] * n

    def complete(s, t, d):
        if s == t:
            return
        r = bc[s, t, d]
        if d == 0:
            complete(s, r, 0)
            incomplete(r, t, 0)
        else:
            incomplete(s, r, 1)
            complete(r, t, 1)

    def incomplete(s, t, d):
        r = bi[s, t, d]
        if d == 0:
            heads[s] = t
        else:
            heads[t] = s
        complete(s, r, 1)
        complete(r + 1, t, 0)

    complete(0, n - 1, 1)
    return [int(h) for h in heads[1:]]


def tree_from_impacts(f: np.ndarray, root: int | None = None) -> list[int]:
    """Decode a tree: the arc score of head h over dependent d is f(d, h), the impact of the head on the dependent
    (the orientation of Wu et al.'s released decoder). The root has exactly one child: `root` (0-based; Wu et al.'s
    code takes the gold one) or, when None, the word with the largest total impact on the others (free root arcs
    scored by that total would outweigh every word-word arc and return a star)."""
    w = f.shape[0]
    scores = np.full((w + 1, w + 1), -1e9)
    scores[1:, 1:] = f.T  # scores[h, d] = f(d, h)
    np.fill_diagonal(scores, -1e9)
    scores[0, 1 + (int(f.sum(0).argmax()) if root is None else root)] = 0.0
    return eisner(scores)


def uas(pred: list[int], gold: list[int], skip: list[bool] | None = None) -> tuple[int, int]:
    """(correct, counted) heads; `skip` marks words left out (e.g. punctuation)."""
    keep = [not s for s in skip] if skip is not None else [True] * len(gold)
    pairs = [(p, g) for p, g, k in zip(pred, gold, keep) if k]
    return sum(p == g for p, g in pairs), len(pairs)


def right_branching(n: int) -> list[int]:
    """Each word headed by the next one, the last by the root (the baseline of Wu et al. Table 2)."""
    return [i + 2 for i in range(n - 1)] + [0]
