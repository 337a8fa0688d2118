"""Eisner's decoder finds the best projective tree (brute force on small n), the impact matrix masks what it should,
tree decoding and UAS on a hand-made impact matrix, right-branching baseline."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from ptmkit.analysis.perturbed import eisner, impact_matrix, right_branching, tree_from_impacts, uas
from ptmkit.models import build_model, make_config


def _projective(heads):
    arcs = [(h, d) for d, h in enumerate(heads, start=1)]
    for (h1, d1), (h2, d2) in itertools.combinations(arcs, 2):
        a, b = sorted((h1, d1))
        c, e = sorted((h2, d2))
        if a < c < b < e or c < a < e < b:
            return False
    return True


def _is_tree(heads):
    n = len(heads)
    for d in range(1, n + 1):
        seen, x = set(), d
        while x != 0:
            if x in seen:
                return False
            seen.add(x)
            x = heads[x - 1]
    return True


def test_eisner_finds_the_best_projective_tree():
    rng = np.random.default_rng(0)
    for n in (2, 3, 4, 5):
        scores = rng.normal(size=(n + 1, n + 1))
        best, best_heads = -np.inf, None
        for heads in itertools.product(range(n + 1), repeat=n):
            if any(h == d for d, h in enumerate(heads, start=1)) or not _is_tree(heads) or not _projective(heads):
                continue
            s = sum(scores[h, d] for d, h in enumerate(heads, start=1))
            if s > best:
                best, best_heads = s, list(heads)
        got = eisner(scores)
        assert _is_tree(got) and _projective(got)
        assert np.isclose(sum(scores[h, d] for d, h in enumerate(got, start=1)), best), (got, best_heads)


def test_tree_from_a_hand_made_impact_matrix_and_uas():
    # 3 words: word 2 (index 1) matters most to both others and is the root
    f = np.array([[0, 5, 1], [1, 0, 1], [1, 5, 0]], dtype=float)  # f[i, j]: impact of j on i
    heads = tree_from_impacts(f)
    assert heads == [2, 0, 2]
    assert tree_from_impacts(f, root=0)[0] == 0  # a given root
    assert uas(heads, [2, 0, 2]) == (3, 3) and uas(heads, [2, 0, 1], skip=[False, False, True]) == (2, 2)
    assert right_branching(3) == [2, 3, 0]


def test_impact_matrix_shape_and_diagonal():
    model = build_model("bert", make_config("bert", dict(vocab_size=40, hidden_size=32, num_layers=2, num_heads=2,
                                                         intermediate_size=64, max_position_embeddings=32))).eval()
    ids = [1, 10, 11, 12, 13, 2]  # [CLS] w0 w1a w1b w2 [SEP]
    f = impact_matrix(model, ids, [None, 0, 1, 1, 2, None], mask_id=4, batch_size=3)
    assert f.shape == (3, 3) and np.all(np.diag(f) == 0) and np.all(f[~np.eye(3, dtype=bool)] > 0)
    assert torch.is_tensor(torch.from_numpy(f))


def test_a_layer_out_of_range_is_an_error():
    import pytest

    from ptmkit.config import ConfigError

    model = build_model("bert", make_config("bert", dict(vocab_size=40, hidden_size=32, num_layers=2, num_heads=2,
                                                         intermediate_size=64, max_position_embeddings=32))).eval()
    with pytest.raises(ConfigError, match="layer 5 is out of range.*3 hidden states"):
        impact_matrix(model, [1, 10, 11, 2], [None, 0, 1, None], mask_id=4, layer=5)
