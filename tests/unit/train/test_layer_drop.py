"""LayerDrop and Progressive Layer Dropping: drop frequencies match p_l, eval never drops, the PLD schedule, gradients
only through kept blocks, seeded reproducibility, activation checkpointing in either order, deepcopy, and clear
errors for blocks that cannot be skipped."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from ptmkit.config import ConfigError
from ptmkit.models import build_model, make_config
from ptmkit.parallel.activation_checkpoint import apply_activation_checkpointing, is_checkpointed
from ptmkit.train.layer_drop import LayerDropConfig, apply_layer_drop


class Block(nn.Module):
    """x -> x + W x, counting the calls that reach it."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.calls = 0

    def forward(self, x, *rest):
        self.calls += 1
        return x + self.lin(x)


class Stack(nn.Module):
    def __init__(self, depth: int = 4, block=Block):
        super().__init__()
        self.layers = nn.ModuleList(block() for _ in range(depth))

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return x


def _calls(model) -> list[int]:
    return [b.calls for b in model.layers]


def test_constant_rate_drop_frequencies():
    torch.manual_seed(0)
    model = Stack(4)
    drop = apply_layer_drop(model, LayerDropConfig(schedule="constant", rate=0.3))
    assert drop.probabilities == [0.3] * 4
    n = 2000
    with torch.no_grad():
        for _ in range(n):
            model(torch.ones(1, 4))
    sigma = math.sqrt(n * 0.3 * 0.7)
    for kept in _calls(model):  # the first call of each block may also run once to check shapes: <= 1 extra
        assert abs((n - kept) - 0.3 * n) < 3 * sigma + 1, kept


def test_progressive_drop_frequencies_follow_depth():
    torch.manual_seed(1)
    model = Stack(4)
    cfg = LayerDropConfig(schedule="progressive", theta_bar=0.5, gamma=0.01)
    drop = apply_layer_drop(model, cfg)
    drop.step(100)
    theta = 0.5 * math.exp(-1.0) + 0.5  # θ(100) = (1 - θ̄) e^{-γ t} + θ̄
    expected = [l / 4 * (1 - theta) for l in (1, 2, 3, 4)]
    assert drop.probabilities == pytest.approx(expected)
    n = 2000
    with torch.no_grad():
        for _ in range(n):
            model(torch.ones(1, 4))
    for p, kept in zip(expected, _calls(model)):
        assert abs((n - kept) - p * n) < 3 * math.sqrt(n * p * (1 - p)) + 1, (p, kept)


def test_pld_schedule_values():
    model = Stack(3)
    drop = apply_layer_drop(model, LayerDropConfig(schedule="progressive", theta_bar=0.4, gamma=0.001))
    assert drop.theta(0) == 1.0 and drop.probabilities == [0.0, 0.0, 0.0]  # nothing dropped at the start
    assert drop.expected_kept_fraction() == 1.0
    assert drop.theta(1000) == pytest.approx(0.6 * math.exp(-1) + 0.4)
    drop.step(10 ** 6)  # θ → θ̄: the top block is dropped with 1 - θ̄, block l with l/L of that
    assert drop.theta(10 ** 6) == pytest.approx(0.4)
    assert drop.probabilities == pytest.approx([0.2, 0.4, 0.6])
    assert drop.expected_kept_fraction() == pytest.approx(1 - 0.6 * 4 / 6)  # 1 - (1 - θ̄)(L + 1)/(2L)


def test_eval_mode_never_drops():
    torch.manual_seed(0)
    model = Stack(3)
    apply_layer_drop(model, LayerDropConfig(schedule="constant", rate=0.9))
    model.eval()
    with torch.no_grad():
        for _ in range(50):
            model(torch.ones(1, 4))
    assert _calls(model) == [50, 50, 50]


def test_gradients_flow_only_through_kept_blocks():
    torch.manual_seed(3)
    model = Stack(6)
    apply_layer_drop(model, LayerDropConfig(schedule="constant", rate=0.5))
    model(torch.ones(1, 4))  # first pass: the skipped blocks run once without autograd, only to check shapes
    for b in model.layers:
        b.calls = 0
    model.zero_grad()
    model(torch.randn(2, 4)).sum().backward()
    kept = [b.calls == 1 for b in model.layers]
    assert 0 < sum(kept) < 6  # this seed keeps some blocks and skips others
    for block, was_kept in zip(model.layers, kept):
        assert (block.lin.weight.grad is not None) is was_kept


def test_seeded_runs_draw_the_same_blocks():
    def kept_pattern(seed, steps=range(20)):
        model = Stack(5)
        drop = apply_layer_drop(model, LayerDropConfig(schedule="constant", rate=0.5), seed=seed)
        pattern = []
        for t in steps:
            drop.step(t)
            before = _calls(model)
            model(torch.ones(1, 4))
            pattern.append(tuple(a - b for a, b in zip(_calls(model), before)))
        return pattern

    assert kept_pattern(7) == kept_pattern(7)
    assert kept_pattern(7) != kept_pattern(8)
    # the draws of step t depend on (seed, t) only: a resumed run (or another rank) skips the same blocks
    torch.manual_seed(123)  # the global generator plays no part
    # (from the second step on: a fresh model's first skip also runs the block once to check its output shape)
    assert kept_pattern(7, range(12, 20))[1:] == kept_pattern(7)[13:]


def _grads(order: str):
    torch.manual_seed(0)
    model = Stack(4)
    if order == "checkpoint-first":
        apply_activation_checkpointing(model)
    apply_layer_drop(model, LayerDropConfig(schedule="constant", rate=0.5))
    if order == "drop-first":
        apply_activation_checkpointing(model)
    torch.manual_seed(1)
    x = torch.randn(3, 4, requires_grad=True)
    model(x).pow(2).sum().backward()
    return model, [None if b.lin.weight.grad is None else b.lin.weight.grad.clone() for b in model.layers]


def test_activation_checkpointing_in_either_order():
    _, plain = _grads("none")
    assert any(g is None for g in plain) and any(g is not None for g in plain)
    for order in ("drop-first", "checkpoint-first"):
        model, grads = _grads(order)
        assert all(is_checkpointed(b) for b in model.layers)
        for a, b in zip(plain, grads):  # the same blocks dropped, the same gradients
            assert (a is None and b is None) or torch.allclose(a, b), order


def test_deepcopy_keeps_the_wrapper_on_the_copy():
    torch.manual_seed(0)
    model = Stack(2)
    apply_layer_drop(model, LayerDropConfig(schedule="constant", rate=0.5))
    clone = copy.deepcopy(model).eval()
    clone(torch.ones(1, 4))
    assert _calls(clone) == [1, 1] and _calls(model) == [0, 0]  # the copy runs its own blocks


def test_bert_blocks_can_be_dropped_and_eval_is_unchanged():
    torch.manual_seed(0)
    cfg = make_config("bert", dict(vocab_size=40, hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64,
                                   max_position_embeddings=16))
    model = build_model("bert", cfg, "masked-lm")
    ids = torch.randint(1, 40, (2, 8), generator=torch.Generator().manual_seed(1))
    reference = model.eval()(ids).logits
    drop = apply_layer_drop(model, LayerDropConfig(schedule="progressive", theta_bar=0.5, gamma=1.0))
    torch.testing.assert_close(model(ids).logits, reference)  # eval: every block runs, outputs unchanged
    drop.step(100)
    model.train()
    out = model(ids).logits
    assert torch.isfinite(out).all()
    out.sum().backward()


class TupleBlock(Block):
    def forward(self, x, *rest):
        return x, x


def test_blocks_that_cannot_be_skipped_are_an_error():
    for rate in (0.01, 0.99):  # whether the first draw keeps the block or skips it
        torch.manual_seed(0)
        model = Stack(2, block=TupleBlock)
        apply_layer_drop(model, LayerDropConfig(schedule="constant", rate=rate))
        with pytest.raises(ConfigError, match="TupleBlock maps an input of shape \\(1, 4\\) to tuple"):
            model.layers[0](torch.ones(1, 4))


def test_settings_and_misuse():
    model = Stack(2)
    none = apply_layer_drop(model, LayerDropConfig())  # schedule none: nothing wrapped, step() is a no-op
    none.step(5)
    assert none.probabilities == [] and "forward" not in model.layers[0].__dict__
    apply_layer_drop(model, LayerDropConfig(schedule="constant"))
    with pytest.raises(ConfigError, match="already has layer drop applied"):
        apply_layer_drop(model, LayerDropConfig(schedule="constant"))
    with pytest.raises(ConfigError, match="no `layers` block stack"):
        apply_layer_drop(nn.Linear(2, 2), LayerDropConfig(schedule="constant"))
    for kwargs, match in [({"schedule": "random"}, "schedule must be one of"), ({"rate": 1.0}, "rate must be in"),
                          ({"theta_bar": 0.0}, "theta_bar must be in"), ({"gamma": -1.0}, "gamma must be >= 0")]:
        with pytest.raises(ConfigError, match=match):
            LayerDropConfig(**kwargs)
