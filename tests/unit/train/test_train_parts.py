"""Optimizer groups, schedules, precision (loss scaling, skipped steps) and atomic checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from ptmkit.config import ConfigError
from ptmkit.models import build_model, make_config
from ptmkit.train import checkpoint as ckpt
from ptmkit.train.optim import OptimConfig, build_optimizer, param_groups
from ptmkit.train.precision import Precision
from ptmkit.train.schedule import ScheduleConfig, build_scheduler, lr_factor


def _tiny():
    cfg = make_config("bert", dict(vocab_size=30, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                                   max_position_embeddings=16))
    return build_model("bert", cfg, "masked-lm")


def test_no_decay_groups():
    model = _tiny()
    decay, no_decay = param_groups(model, OptimConfig())
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(not names[id(p)].endswith("bias") and "norm" not in names[id(p)] for p in decay["params"])
    assert any("norm" in names[id(p)] for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0
    with_emb = param_groups(model, OptimConfig(no_decay_embeddings=True))[1]["params"]
    assert any(names[id(p)].endswith("tok.weight") for p in with_emb)
    total = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert total == sum(p.numel() for p in model.parameters())  # each parameter exactly once


def test_moe_expert_biases_are_not_decayed():
    cfg = make_config("bert", dict(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                                   max_position_embeddings=16, moe={"num_experts": 2}))
    model = build_model("bert", cfg, "masked-lm")
    decay, no_decay = param_groups(model, OptimConfig())
    names = {id(p): n for n, p in model.named_parameters()}
    exempt = {names[id(p)].rsplit(".", 1)[1] for p in no_decay["params"]}
    assert {"b_in", "b_out"} <= exempt
    assert any(names[id(p)].endswith("w_in") for p in decay["params"])


def test_schedules():
    cos = ScheduleConfig(warmup_steps=10, decay="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, 110, cos) == pytest.approx(0.1)
    assert lr_factor(9, 110, cos) == pytest.approx(1.0)
    assert lr_factor(60, 110, cos) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(110, 110, cos) == pytest.approx(0.1)
    lin = ScheduleConfig(warmup_steps=0, decay="linear")
    assert lr_factor(50, 100, lin) == pytest.approx(0.5)
    assert lr_factor(5, 100, ScheduleConfig(decay="constant")) == 1.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    with pytest.raises(ConfigError, match="exceeds"):
        build_scheduler(opt, ScheduleConfig(warmup_steps=20), 10)


def _fp16_step(prec, opt, p, grad):
    """One training step whose (unscaled) gradient for p is `grad`."""
    prec.backward((p * grad).sum())
    return prec.step(opt, [p], 0.0)


def test_fp16_overflow_skips_the_step_and_halves_the_loss_scale():
    """An inf or NaN gradient leaves the parameters AND the optimizer state untouched, is counted, and halves the
    scale (GradScaler backoff 0.5; Micikevicius et al. 2018 §3.2)."""
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    opt = torch.optim.Adam([p], lr=0.1)
    prec = Precision("fp16", torch.device("cpu"))
    assert prec.scaler.get_scale() == 2.0 ** 16
    norm, skipped = _fp16_step(prec, opt, p, torch.tensor([3.0, -4.0, 0.0]))  # a good step: Adam now has state
    assert not skipped and norm == pytest.approx(5.0)  # the norm of the unscaled gradient
    # Adam's first moment is (1 - beta1) x the unscaled gradient; its first step moves each weight by lr x sign(g)
    assert torch.equal(opt.state[p]["exp_avg"], 0.1 * torch.tensor([3.0, -4.0, 0.0]))
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, 2.1, 3.0]))
    assert prec.scaler.get_scale() == 2.0 ** 16 and prec.skipped_steps == 0
    weights = p.detach().clone()
    state = {k: v.clone() for k, v in opt.state[p].items()}  # step, exp_avg, exp_avg_sq
    for i, bad in enumerate((float("inf"), float("nan")), start=1):
        _, skipped = _fp16_step(prec, opt, p, torch.tensor([1.0, bad, 1.0]))
        assert skipped and prec.skipped_steps == i
        assert torch.equal(p.detach(), weights)
        assert opt.state[p].keys() == state.keys()
        assert all(torch.equal(opt.state[p][k], v) for k, v in state.items()), "optimizer state changed"
        assert p.grad is None  # the bad gradient is dropped, not accumulated into the next step
        assert prec.scaler.get_scale() == 2.0 ** (16 - i)
    _fp16_step(prec, opt, p, torch.tensor([3.0, -4.0, 0.0]))  # training goes on from the same state
    assert opt.state[p]["step"] == 2 and not torch.equal(p.detach(), weights)


def test_fp16_loss_scale_grows_after_growth_interval_good_steps():
    """The scale doubles after `growth_interval` (2000) consecutive steps without overflow, counted from the last
    overflow, and not one step earlier."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=2.0 ** -14)  # a power of two: every update below is exact in float32
    prec = Precision("fp16", torch.device("cpu"))
    interval = prec.scaler.get_growth_interval()
    assert interval == 2000 and prec.scaler.get_growth_factor() == 2.0
    _, skipped = _fp16_step(prec, opt, p, torch.tensor([1.0, float("inf"), 1.0]))  # restarts the count
    assert skipped and prec.scaler.get_scale() == 2.0 ** 15
    one = torch.ones(3)
    for _ in range(interval - 1):
        _fp16_step(prec, opt, p, one)
    assert prec.scaler.get_scale() == 2.0 ** 15, "grew before growth_interval good steps"
    _, skipped = _fp16_step(prec, opt, p, one)
    assert not skipped and prec.scaler.get_scale() == 2.0 ** 16
    assert prec.skipped_steps == 1
    # every good step applied the unscaled gradient (1 per weight): SGD moved each weight by interval x lr
    assert torch.equal(p.detach(), torch.full((3,), 1 - interval * 2.0 ** -14))


def test_gradient_clipping_reports_norm_before_clipping():
    p = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([p], lr=1.0)
    prec = Precision("fp32", torch.device("cpu"))
    prec.backward((p * torch.tensor([3.0, 4.0, 0.0, 0.0])).sum())
    norm, _ = prec.step(opt, [p], 1.0)
    assert norm == pytest.approx(5.0)
    assert torch.linalg.vector_norm(p.data).item() == pytest.approx(1.0)


def _state(model):
    opt = build_optimizer(model, OptimConfig())
    return opt, build_scheduler(opt, ScheduleConfig(), 10), Precision("fp32", torch.device("cpu"))


def test_checkpoint_round_trip_and_keep_last(tmp_path):
    model = _tiny()
    opt, sched, prec = _state(model)
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, model, opt, sched, prec, {"pos": step}, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(999)
    other = _tiny()
    o2, s2, p2 = _state(other)
    ckpt.save_checkpoint(tmp_path / "b", 1, model, opt, sched, prec, {}, keep_last=1)
    torch.manual_seed(123)
    ckpt.save_checkpoint(tmp_path / "c", 1, model, opt, sched, prec, {"pos": 9})
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "c"), other, o2, s2, p2)
    assert state["data"] == {"pos": 9}
    assert torch.equal(torch.rand(3), expected)  # torch RNG restored
    for (n, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), n


def test_failed_checkpoint_write_leaves_previous_intact(tmp_path, monkeypatch):
    model = _tiny()
    opt, sched, prec = _state(model)
    ckpt.save_checkpoint(tmp_path, 1, model, opt, sched, prec, {"pos": 1})

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 2, model, opt, sched, prec, {"pos": 2})
    monkeypatch.undo()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000001"]
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "checkpoints").iterdir())
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path), model, opt, sched, prec)
    assert state["step"] == 1


def test_bad_optim_configs():
    with pytest.raises(ConfigError, match="lr"):
        OptimConfig(lr=0)
    with pytest.raises(ConfigError, match="betas"):
        OptimConfig(betas=[0.9])
    with pytest.raises(ConfigError, match="precision"):
        Precision("fp8", torch.device("cpu"))
    assert math.isfinite(OptimConfig().eps)


class _Fixed:
    """A resumable batch iterator over seeded random integer rows."""

    def __init__(self):
        self.i = 0

    def __next__(self):
        self.i += 1
        return {"input_ids": torch.randint(0, 3, (2, 4), generator=torch.Generator().manual_seed(self.i))}

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


class _Fit:
    """The smallest objective: a linear map learns y = 2x."""

    def loss(self, model, batch):
        x = batch["input_ids"].float()
        loss = ((model(x) - 2 * x) ** 2).mean()
        return loss, {"loss": loss.item()}


def test_keep_steps_are_checkpointed_and_never_rotated_away(tmp_path):
    from ptmkit.train.loop import TrainConfig, train

    cfg = TrainConfig(steps=6, precision="fp32", checkpoint_every=0, keep_last=1, keep_steps=[2, 3],
                      eval_every=0, progress_bar=False)
    train(torch.nn.Linear(4, 4), _Fit(), _Fixed(), tmp_path, cfg, OptimConfig(lr=1e-2), ScheduleConfig())
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003", "step-00000006"]
    with pytest.raises(ConfigError, match=r"keep_steps must be steps of the run, 1..6; got \[7\]"):
        TrainConfig(steps=6, keep_steps=[2, 7])
