"""LAMB: a step computed by hand, AdamW when layer adaptation is off, scale-invariant updates, the trust-ratio edge
cases and clamp, no decay (and no adaptation) for the no-decay groups, and state-dict round trips."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import yaml

from ptmkit.config import ConfigError, from_dict
from ptmkit.models import build_model, make_config
from ptmkit.train.lamb import Lamb
from ptmkit.train.optim import OptimConfig, build_optimizer
from ptmkit.recipes.pretrain import PretrainConfig


def _param(values) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))


def _reference_lamb(w, grads, lr, beta1, beta2, eps, wd):
    """LAMB on a list of Python floats (one tensor), step by step as You et al. Algorithm 2 writes it."""
    m = [0.0] * len(w)
    v = [0.0] * len(w)
    for t, g in enumerate(grads, start=1):
        m = [beta1 * mi + (1 - beta1) * gi for mi, gi in zip(m, g)]
        v = [beta2 * vi + (1 - beta2) * gi * gi for vi, gi in zip(v, g)]
        r = [(mi / (1 - beta1 ** t)) / (math.sqrt(vi / (1 - beta2 ** t)) + eps) for mi, vi in zip(m, v)]
        u = [ri + wd * wi for ri, wi in zip(r, w)]
        w_norm, u_norm = math.sqrt(sum(x * x for x in w)), math.sqrt(sum(x * x for x in u))
        trust = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        w = [wi - lr * trust * ui for wi, ui in zip(w, u)]
    return w


def test_single_step_by_hand():
    # step 1: m̂ = g and v̂ = g², so r = g / (|g| + ε) ≈ sign(g) = [1, -1]; u = r + 0.01·w = [1.03, -0.96];
    # trust = ‖w‖ / ‖u‖ = 5 / 1.408; w ← w - 0.1 · trust · u
    p = _param([3.0, 4.0])
    opt = Lamb([p], lr=0.1, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
    p.grad = torch.tensor([0.1, -0.2], dtype=torch.float64)
    opt.step()
    r = [0.1 / (0.1 + 1e-6), -0.2 / (0.2 + 1e-6)]
    u = [r[0] + 0.03, r[1] + 0.04]
    trust = 5.0 / math.hypot(*u)
    expected = [3.0 - 0.1 * trust * u[0], 4.0 - 0.1 * trust * u[1]]
    torch.testing.assert_close(p.detach(), torch.tensor(expected, dtype=torch.float64))
    assert float(torch.linalg.vector_norm(p.detach() - torch.tensor([3.0, 4.0], dtype=torch.float64))) == \
        pytest.approx(0.1 * 5.0)  # the step is lr·‖w‖ long


def test_several_steps_match_the_reference_algorithm():
    grads = [[0.5, -1.0, 0.25], [0.1, 0.3, -0.7], [-0.4, 0.2, 0.9]]
    p = _param([0.2, -0.1, 0.4])
    opt = Lamb([p], lr=0.05, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1)
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    expected = _reference_lamb([0.2, -0.1, 0.4], grads, 0.05, 0.8, 0.9, 1e-6, 0.1)
    torch.testing.assert_close(p.detach(), torch.tensor(expected, dtype=torch.float64))


def test_without_layer_adaptation_it_is_adamw():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(a.detach().clone())
    lamb = Lamb([a], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, layer_adaptation=False)
    adamw = torch.optim.AdamW([b], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, foreach=False)
    for _ in range(5):
        g = torch.randn(5, 3)
        a.grad, b.grad = g.clone(), g.clone()
        lamb.step()
        adamw.step()
    torch.testing.assert_close(a.detach(), b.detach())


def test_update_scales_with_the_weight_norm():
    # Same gradients, weights 1000x apart: LAMB moves each by lr·‖w‖ (the same relative step), so the big tensor's
    # update is exactly 1000x the small one's; Adam's update does not depend on ‖w‖ at all.
    torch.manual_seed(0)
    base = torch.randn(4, 4)
    small, big = torch.nn.Parameter(base.clone()), torch.nn.Parameter(1000 * base.clone())
    opt = Lamb([small, big], lr=0.01, weight_decay=0.0)
    for _ in range(3):
        g = torch.randn(4, 4)
        before = (small.detach().clone(), big.detach().clone())
        small.grad, big.grad = g.clone(), g.clone()
        opt.step()
        d_small, d_big = small.detach() - before[0], big.detach() - before[1]
        torch.testing.assert_close(d_big, 1000 * d_small, rtol=1e-4, atol=1e-6)
        assert d_small.norm() / before[0].norm() == pytest.approx(0.01, rel=1e-5)
        assert d_big.norm() / before[1].norm() == pytest.approx(0.01, rel=1e-5)
    torch.testing.assert_close(big.detach(), 1000 * small.detach(), rtol=1e-4, atol=1e-4)


def test_trust_ratio_is_one_for_zero_weights_and_clamps():
    zero = torch.nn.Parameter(torch.zeros(3))
    opt = Lamb([zero], lr=0.1)
    zero.grad = torch.tensor([1.0, -2.0, 0.5])
    opt.step()  # ‖w‖ = 0: trust 1, so the step is the Adam step r ≈ sign(g)
    torch.testing.assert_close(zero.detach(), -0.1 * torch.tensor([1.0, -1.0, 1.0]), rtol=1e-5, atol=1e-6)
    frozen = torch.nn.Parameter(torch.ones(3))
    opt = Lamb([frozen], lr=0.1)
    frozen.grad = torch.zeros(3)
    opt.step()  # ‖u‖ = 0: trust 1, nothing moves (no nan from 1/0)
    assert torch.equal(frozen.detach(), torch.ones(3))
    big = torch.nn.Parameter(torch.full((4,), 100.0))  # ‖w‖ = 200, ‖u‖ ≈ 2: trust ≈ 100, clamped to 2
    opt = Lamb([big], lr=0.1, max_trust=2.0)
    big.grad = torch.tensor([1.0, 1.0, -1.0, -1.0])
    opt.step()
    torch.testing.assert_close(big.detach(), torch.tensor([99.8, 99.8, 100.2, 100.2]), rtol=0, atol=1e-4)


def _tiny_bert():
    torch.manual_seed(0)
    cfg = make_config("bert", dict(vocab_size=40, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                   max_position_embeddings=16))
    return build_model("bert", cfg, "masked-lm")


def test_no_decay_groups_get_neither_decay_nor_adaptation():
    model = _tiny_bert()
    opt = build_optimizer(model, OptimConfig(name="lamb", lr=0.1, weight_decay=0.01))
    assert isinstance(opt, Lamb)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        exempt = group["weight_decay"] == 0.0
        assert group["layer_adaptation"] is not exempt
        assert all(names[id(p)].endswith("bias") or "norm" in names[id(p)] for p in group["params"]) is exempt
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    # a zero gradient leaves u = λ·w: decayed tensors shrink by exactly lr (trust = 1/λ), exempt ones stay put
    for n, p in model.named_parameters():
        if n.endswith("bias") or "norm" in n:
            assert torch.equal(p.detach(), before[n]), n
        else:
            torch.testing.assert_close(p.detach(), (1 - 0.1) * before[n], msg=n)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(2))]
    b = [torch.nn.Parameter(t.detach().clone()) for t in a]
    opt_a = Lamb([{"params": a[:1]}, {"params": a[1:], "weight_decay": 0.0, "layer_adaptation": False}],
                 lr=0.01, weight_decay=0.1, max_trust=5.0)
    grads = [[torch.randn_like(p) for p in a] for _ in range(4)]
    for g in grads[:2]:
        for p, gi in zip(a, g):
            p.grad = gi.clone()
        opt_a.step()
    saved = copy.deepcopy(opt_a.state_dict())
    assert set(saved["state"][0]) == {"step", "exp_avg", "exp_avg_sq"} and float(saved["state"][0]["step"]) == 2
    for p, q in zip(a, b):
        q.data.copy_(p.detach())
    opt_b = Lamb([{"params": b[:1]}, {"params": b[1:]}], lr=1.0)  # hyper-parameters come from the state dict
    opt_b.load_state_dict(saved)
    assert opt_b.param_groups[1]["layer_adaptation"] is False and opt_b.param_groups[0]["max_trust"] == 5.0
    for g in grads[2:]:
        for p, q, gi in zip(a, b, g):
            p.grad, q.grad = gi.clone(), gi.clone()
        opt_a.step()
        opt_b.step()
    for p, q in zip(a, b):
        assert torch.equal(p.detach(), q.detach())


def test_parameters_without_gradients_are_left_alone():
    used, unused = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = Lamb([used, unused], lr=0.1, weight_decay=0.1)
    used.grad = torch.ones(2)
    opt.step()
    assert torch.equal(unused.detach(), torch.ones(2)) and unused not in opt.state
    assert not torch.equal(used.detach(), torch.ones(2))


def test_lamb_trains_a_tiny_bert():
    model = _tiny_bert()
    opt = build_optimizer(model, OptimConfig(name="lamb", lr=0.05))
    ids = torch.randint(1, 40, (4, 12), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(20):
        logits = model(ids).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses) and losses[-1] < 0.6 * losses[0]


def test_bad_settings():
    p = [torch.nn.Parameter(torch.ones(1))]
    for kwargs, match in [({"lr": 0}, "lr"), ({"betas": (0.9, 1.0)}, "betas"), ({"eps": 0}, "eps"),
                          ({"weight_decay": -1}, "weight_decay"), ({"max_trust": 0}, "max_trust")]:
        with pytest.raises(ValueError, match=match):
            Lamb(p, **kwargs)
    with pytest.raises(ConfigError, match="lamb_max_trust only applies to name: lamb"):
        OptimConfig(lamb_max_trust=10.0)
    assert OptimConfig(name="lamb", lamb_max_trust=10.0).lamb_max_trust == 10.0


def test_yaml_keys_of_the_docs():
    text = """
optim:
  name: lamb
  lr: 1.0e-2
  weight_decay: 0.01
  lamb_max_trust: 10
  layer_decay: 0.8
schedule:
  warmup_steps: 1000
  warmup: exponential
"""
    cfg = from_dict(PretrainConfig, yaml.safe_load(text))
    assert (cfg.optim.name, cfg.optim.lamb_max_trust, cfg.optim.layer_decay) == ("lamb", 10.0, 0.8)
    assert cfg.schedule.warmup == "exponential"
    opt = build_optimizer(_tiny_bert(), cfg.optim)
    assert isinstance(opt, Lamb) and opt.defaults["max_trust"] == 10.0
