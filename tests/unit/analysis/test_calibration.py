"""ECE on hand-made predictions, temperature scaling recovering a planted temperature, MC dropout's averaging and
restored modes, AUROC against a brute-force count."""

from __future__ import annotations

import pytest
import torch

from ptmkit.analysis.calibration import auroc, fit_temperature, max_softmax, mc_dropout, reliability
from ptmkit.config import ConfigError


def test_ece_of_hand_made_predictions():
    # 4 examples at confidence 0.9 (3 right: accuracy 0.75), 2 at 0.6 (both right)
    probs = torch.tensor([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 2)
    labels = torch.tensor([0, 0, 0, 1, 0, 0])
    r = reliability(probs, labels, bins=10)
    assert r["ece"] == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.4)
    assert r["mce"] == pytest.approx(0.4) and r["accuracy"] == pytest.approx(5 / 6)
    assert sum(r["bins"]["count"]) == 6
    perfect = reliability(torch.tensor([[1.0, 0.0]] * 3), torch.tensor([0, 0, 0]))
    assert perfect["ece"] == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="same N"):
        reliability(probs, labels[:2])


def test_temperature_scaling_recovers_a_planted_temperature():
    g = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 5, generator=g) * 2
    labels = torch.multinomial(torch.softmax(true_logits, -1), 1, generator=g)[:, 0]
    overconfident = true_logits * 3  # as if divided by T = 1/3
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    before = reliability(torch.softmax(overconfident, -1), labels)["ece"]
    after = reliability(torch.softmax(overconfident / t, -1), labels)["ece"]
    assert after < before / 2


def test_mc_dropout_averages_passes_and_restores_modes():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 3)).eval()
    x = torch.randn(5, 8)
    p = mc_dropout(lambda: model(x), model, passes=30)
    assert torch.allclose(p.sum(-1), torch.ones(5), atol=1e-5)
    assert not any(m.training for m in model.modules())  # modes restored
    single = torch.softmax(model(x), -1)
    assert not torch.allclose(p, single)  # dropout was on while sampling
    with pytest.raises(ConfigError, match="no active dropout"):
        mc_dropout(lambda: model(x), torch.nn.Sequential(torch.nn.Linear(8, 3)), passes=2)
    state = torch.get_rng_state()  # a seed repeats the masks and leaves the caller's random state alone
    assert torch.equal(mc_dropout(lambda: model(x), model, 4, seed=3), mc_dropout(lambda: model(x), model, 4, seed=3))
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(mc_dropout(lambda: model(x), model, 4, seed=3), mc_dropout(lambda: model(x), model, 4, seed=4))


def test_auroc_against_a_brute_force_count():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(40, generator=g) + 1, torch.randn(30, generator=g)
    a[:5] = b[:5]  # some ties
    brute = sum((x > y) + 0.5 * (x == y) for x in a for y in b) / (len(a) * len(b))
    assert auroc(a, b) == pytest.approx(float(brute))
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert torch.allclose(max_softmax(torch.tensor([[0.0, 0.0]])), torch.tensor([0.5]))
