"""CKA: a layer with itself is 1, invariant to rotation and isotropic scaling, lower for unrelated vectors, symmetric;
anisotropy: 0-ish for random vectors, 1 for vectors in one direction; layer vectors of a model."""

from __future__ import annotations

import pytest
import torch

from ptmkit.analysis.representations import anisotropy, cka_matrix, layer_vectors, linear_cka
from ptmkit.config import ConfigError
from ptmkit.models import build_model, make_config


def test_cka_identities():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0)  # rotation and scale
    assert linear_cka(x, x + 5.0) == pytest.approx(1.0)  # centring
    y = torch.randn(200, 8, generator=g)
    assert linear_cka(x, y) < 0.3 and linear_cka(x, y) == pytest.approx(linear_cka(y, x))
    m = cka_matrix([x, y, x])
    assert m.shape == (3, 3) and torch.allclose(m.diagonal(), torch.ones(3, dtype=m.dtype))
    assert m[0, 2] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="same N"):
        linear_cka(x, y[:10])


def test_anisotropy_of_random_and_of_one_direction():
    g = torch.Generator().manual_seed(0)
    assert abs(anisotropy(torch.randn(500, 64, generator=g))) < 0.02
    cone = torch.randn(1, 64, generator=g) * torch.rand(300, 1, generator=g).add(0.5)
    assert anisotropy(cone) == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        anisotropy(torch.randn(1, 4))


def test_layer_vectors_take_the_real_tokens_of_every_layer():
    model = build_model("bert", make_config("bert", dict(vocab_size=50, hidden_size=32, num_layers=2, num_heads=2,
                                                         intermediate_size=64, max_position_embeddings=32)))
    ids = torch.randint(5, 50, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    vecs = layer_vectors(model, [{"input_ids": ids, "attention_mask": mask}])
    assert len(vecs) == 3 and all(v.shape == (int(mask.sum()), 32) for v in vecs)
