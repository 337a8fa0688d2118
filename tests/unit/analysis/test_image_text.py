"""Image-text evaluation (analysis/image_text.py): recall@k on planted rankings, exact chance levels, zero-shot
classification, and the linear probe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ptmkit.analysis.image_text import chance_recall, linear_probe, recall_at_k, zero_shot


def test_recall_at_k_on_a_planted_ranking():
    # 4 images; captions 0,1 -> image 0, caption 2 -> image 1, caption 3 -> image 2, caption 4 -> image 3
    owner = np.array([0, 0, 1, 2, 3])
    sim = torch.tensor([
        [0.1, 0.9, 0.0, 0.2, 0.3],  # image 0: its caption 1 is first                   -> i2t hit at 1
        [0.9, 0.0, 0.8, 0.1, 0.2],  # image 1: caption 0 first, its caption 2 second    -> hit at 2, not 1
        [0.0, 0.1, 0.2, 0.3, 0.4],  # image 2: caption 3 is 2nd (after 4)               -> hit at 2
        [0.5, 0.4, 0.3, 0.2, 0.1],  # image 3: caption 4 is last (5th)                  -> hit at 5 only
    ])
    r = recall_at_k(sim, owner, ks=(1, 2, 5))
    assert r["image_to_text"] == {1: 0.25, 2: 0.75, 5: 1.0}
    # text -> image, per caption the rank of its image in its column: c0 (col .1,.9,0,.5) image 0 is 3rd;
    # c1 (.9,0,.1,.4) 1st; c2 (0,.8,.2,.3) 1st; c3 (.2,.1,.3,.2) 1st; c4 (.3,.2,.4,.1) 4th
    assert r["text_to_image"] == {1: 3 / 5, 2: 3 / 5, 5: 1.0}
    with pytest.raises(ValueError, match="owner must give each of the 5 captions"):
        recall_at_k(sim, np.array([0, 1, 2]))


def test_chance_levels_are_exact():
    owner = np.array([0, 0, 1, 2, 3])  # 5 captions, image 0 owns 2
    c = chance_recall(owner, 4, ks=(1, 2))
    assert c["text_to_image"] == {1: 0.25, 2: 0.5}
    # image 0: 1 - P(no own caption in k of 5) with 2 own; the others with 1 own
    i0 = {1: 1 - 3 / 5, 2: 1 - (3 / 5) * (2 / 4)}
    i1 = {1: 1 / 5, 2: 1 - (4 / 5) * (3 / 4)}
    for k in (1, 2):
        assert c["image_to_text"][k] == pytest.approx((i0[k] + 3 * i1[k]) / 4)
    # a random ranking reaches the chance level on average
    g = torch.Generator().manual_seed(0)
    hits = np.mean([recall_at_k(torch.rand(4, 5, generator=g), owner, ks=(1,))["image_to_text"][1]
                    for _ in range(4000)])
    assert hits == pytest.approx(c["image_to_text"][1], abs=0.02)


def test_zero_shot_predicts_the_nearest_class():
    classes = torch.eye(3)  # three orthogonal class vectors
    images = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.1, 0.9, 0.0], [0.6, 0.0, 0.5]])
    out = zero_shot(images, classes, [0, 2, 1, 2])
    assert out["accuracy"] == 0.75 and out["chance_uniform"] == pytest.approx(1 / 3)
    assert out["chance_majority"] == 0.5 and out["classes"] == 3


def test_linear_probe_learns_a_separable_labelling():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 3
    labels = torch.randint(0, 3, (120,), generator=g)
    x = centres[labels] + torch.randn(120, 8, generator=g)
    acc = linear_probe(x[:80], labels[:80].tolist(), x[80:], labels[80:].tolist(), 3)
    assert acc > 0.9 and not math.isnan(acc)
