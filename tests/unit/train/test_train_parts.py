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


def test_fp16_skips_steps_with_inf_gradients():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    prec = Precision("fp16", torch.device("cpu"))
    prec.backward((p * torch.tensor([1.0, float("inf"), 1.0])).sum())
    _, skipped = prec.step(opt, [p], 1.0)
    assert skipped and prec.skipped_steps == 1 and torch.equal(p.data, torch.ones(3))
    prec.backward(p.sum())
    _, skipped = prec.step(opt, [p], 0.0)
    assert not skipped and p.data[0] < 1


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
