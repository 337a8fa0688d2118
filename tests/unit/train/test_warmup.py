"""Warm-up shapes: linear (the default, unchanged), exponential (Ma & Yarats 2021) and constant (He et al. 2016), the
decay after each, the values a real optimizer sees, and validation."""

from __future__ import annotations

import math

import pytest
import torch

from ptmkit.config import ConfigError, from_dict
from ptmkit.train.schedule import ScheduleConfig, build_scheduler, lr_factor


def test_default_is_the_linear_warmup():
    cfg = ScheduleConfig(warmup_steps=4)
    assert cfg.warmup == "linear"
    assert [lr_factor(s, 8, cfg) for s in range(8)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 0.75, 0.5, 0.25])


def test_linear_from_zero_is_transformers_warmup():
    from transformers import get_linear_schedule_with_warmup

    cfg = ScheduleConfig(warmup_steps=4, warmup="linear_from_zero")
    assert [lr_factor(s, 10, cfg) for s in range(10)] == pytest.approx([0, 0.25, 0.5, 0.75, 1, 5 / 6, 4 / 6, 0.5,
                                                                         2 / 6, 1 / 6])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    hf = get_linear_schedule_with_warmup(opt, num_warmup_steps=4, num_training_steps=10)
    theirs = []
    for _ in range(10):
        theirs.append(hf.get_last_lr()[0])
        opt.step()
        hf.step()
    assert [lr_factor(s, 10, cfg) for s in range(10)] == pytest.approx(theirs)


def test_exponential_warmup_values():
    cfg = ScheduleConfig(warmup_steps=10, warmup="exponential", decay="constant")
    # 1 - exp(-5 (s + 1) / 10): time constant W / 5 = 2 steps
    assert lr_factor(0, 100, cfg) == pytest.approx(1 - math.exp(-0.5))  # 0.393
    assert lr_factor(1, 100, cfg) == pytest.approx(1 - math.exp(-1.0))  # 0.632
    assert lr_factor(9, 100, cfg) == pytest.approx(1 - math.exp(-5.0))  # 0.993 at the last warm-up step
    assert lr_factor(10, 100, cfg) == 1.0
    values = [lr_factor(s, 100, cfg) for s in range(10)]
    assert values == sorted(values) and all(0 < v < 1 for v in values)
    # faster than linear early on: a concave ramp
    assert lr_factor(1, 100, cfg) > lr_factor(1, 100, ScheduleConfig(warmup_steps=10))


def test_constant_warmup_values():
    cfg = ScheduleConfig(warmup_steps=5, warmup="constant", constant_warmup_factor=0.1, decay="cosine")
    assert [lr_factor(s, 15, cfg) for s in range(5)] == pytest.approx([0.1] * 5)
    assert lr_factor(5, 15, cfg) == pytest.approx(1.0)  # then the full lr, decaying along the cosine
    assert lr_factor(10, 15, cfg) == pytest.approx(0.5)
    assert lr_factor(15, 15, cfg) == pytest.approx(0.0)


def test_the_optimizer_sees_the_warmup():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=3, warmup="constant", constant_warmup_factor=0.25), 6)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.5, 0.5, 0.5, 2.0, 2.0 * 2 / 3, 2.0 / 3])


def test_yaml_keys_and_validation():
    cfg = from_dict(ScheduleConfig, {"warmup_steps": 100, "warmup": "exponential"})
    assert cfg.warmup == "exponential"
    with pytest.raises(ConfigError, match=r"\['linear', 'linear_from_zero', 'exponential', 'constant'\]"):
        from_dict(ScheduleConfig, {"warmup": "cubic"})
    with pytest.raises(ConfigError, match="constant_warmup_factor must be in"):
        ScheduleConfig(warmup="constant", constant_warmup_factor=0.0)
    with pytest.raises(ConfigError, match="constant_warmup_factor must be in"):
        ScheduleConfig(constant_warmup_factor=1.5)
