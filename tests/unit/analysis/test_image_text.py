"""Image-text evaluation (analysis/image_text.py): recall@k on planted rankings, exact chance levels, zero-shot
classification, and the linear probe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from types import SimpleNamespace

from ptmkit.analysis.image_text import chance_recall, linear_probe, match_similarity, recall_at_k, zero_shot
from ptmkit.models import build_model, make_config


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


def _pairs_dataset(n_images: int, lengths: list[int], vocab: int, size: int, seed: int = 0):
    """What match_similarity reads of an ImageTextDataset: n_images random images with 2, 1, 2, 1, ... evaluation
    captions of the given token lengths (right-padded, so the caption batches hold padding)."""
    g = torch.Generator().manual_seed(seed)
    per_image = [2 - i % 2 for i in range(n_images)]
    assert sum(per_image) == len(lengths)
    t = max(lengths)
    ids = torch.randint(4, vocab, (len(lengths), t), generator=g).numpy()
    for row, length in enumerate(lengths):
        ids[row, length:] = 0
    caps = SimpleNamespace(ids=ids, lengths=np.array(lengths), offsets=np.concatenate([[0], np.cumsum(per_image)]))
    pixels = torch.randn(n_images, 3, size, size, generator=g)
    return SimpleNamespace(eval_captions=caps, pixel_values=lambda idx: pixels[torch.as_tensor(idx)])


@pytest.mark.parametrize("batch_size", [5, 64])
def test_two_stream_retrieval_encodes_each_stream_once_and_matches_the_full_forward(batch_size, monkeypatch):
    """lxmert retrieval runs the caption and image streams once each, then only the cross-modality layers per pair:
    the (N, M) scores equal model.match_score over every pair (the full forward), padded captions included, with
    pair batches that straddle images (batch_size 5) or hold them all (64)."""
    torch.manual_seed(0)
    cfg = make_config("lxmert", dict(vocab_size=50, hidden_size=32, num_heads=2, intermediate_size=64,
                                     num_text_layers=2, num_image_layers=1, num_cross_layers=2,
                                     max_position_embeddings=16, image_size=16, patch_size=8, num_visual_classes=8))
    model = build_model("lxmert", cfg, "vl-pretraining").eval()
    assert model.separable_streams
    lengths = [5, 3, 7, 4, 2, 6, 5, 7, 3]
    data = _pairs_dataset(6, lengths, 50, 16)
    images = np.array([0, 2, 3, 4, 5])  # a subset, not the first images only: 2 + 2 + 1 + 2 + 1 captions
    caps = data.eval_captions
    rows = np.concatenate([np.arange(caps.offsets[i], caps.offsets[i + 1]) for i in images])
    calls = {"text": 0, "image": 0}
    for name in ("text", "image"):
        encode = getattr(model.backbone, f"encode_{name}_stream")

        def counted(x, *a, _encode=encode, _name=name, **k):
            calls[_name] += len(x)
            return _encode(x, *a, **k)
        monkeypatch.setattr(model.backbone, f"encode_{name}_stream", counted)
    scores, owner = match_similarity(model, data, images, batch_size=batch_size)
    assert calls == {"text": len(rows), "image": len(images)}  # M + N single-modality rows, not N x M
    assert scores.shape == (len(images), len(rows)) and owner.tolist() == [0, 0, 1, 1, 2, 3, 3, 4]
    t = max(lengths[r] for r in rows)
    expected = torch.empty(len(images), len(rows))
    with torch.no_grad():
        for i, img in enumerate(images):
            for j, r in enumerate(rows):
                mask = (torch.arange(t) < lengths[r]).long()[None]  # (1, T)
                expected[i, j] = model.match_score(torch.as_tensor(caps.ids[r:r + 1, :t]), data.pixel_values([img]),
                                                   mask)[0]
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)


def test_single_stream_retrieval_scores_every_pair_with_the_full_model():
    cfg = make_config("visualbert", dict(vocab_size=50, hidden_size=32, num_heads=2, intermediate_size=64,
                                         num_layers=1, max_position_embeddings=16, image_size=16, patch_size=8,
                                         num_visual_classes=8))
    model = build_model("visualbert", cfg, "vl-pretraining").eval()
    assert not model.separable_streams
    data = _pairs_dataset(2, [4, 2, 3], 50, 16)
    scores, _ = match_similarity(model, data, np.array([0, 1]))
    with torch.no_grad():
        first = model.match_score(torch.as_tensor(data.eval_captions.ids[:1, :4]), data.pixel_values([1]),
                                  torch.ones(1, 4, dtype=torch.long))[0]
    torch.testing.assert_close(scores[1, 0], first, atol=1e-5, rtol=0)
