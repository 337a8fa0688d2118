"""Gradient accumulation: two half micro-batches make the same update as one full batch."""

from __future__ import annotations

import torch
from torch.testing import assert_close

from ptmkit.models import build_model, make_config
from ptmkit.objectives import CausalLM, seeded_generator
from ptmkit.train.loop import TrainConfig, train
from ptmkit.train.optim import OptimConfig
from ptmkit.train.schedule import ScheduleConfig
from tests.batches import ListBatches


def _run(tmp_path, name, batches, accum):
    torch.manual_seed(0)
    cfg = make_config("gpt2", dict(vocab_size=50, hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=16,
                                   dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0))
    model = build_model("gpt2", cfg, "causal-lm")
    train(model, CausalLM(), ListBatches(batches), tmp_path / name,
          TrainConfig(steps=1, grad_accum=accum, precision="fp32", progress_bar=False, checkpoint_every=0),
          # eps=1 makes Adam's first update ~linear in the gradient (not ~sign(g)), so it is comparable
          OptimConfig(lr=1.0, eps=1.0, weight_decay=0.0, grad_clip=0.0), ScheduleConfig())
    return model


def test_two_micro_batches_equal_one_batch(tmp_path):
    ids = torch.randint(0, 50, (8, 12), generator=torch.Generator().manual_seed(1))
    full = CausalLM().corrupt({"input_ids": ids}, seeded_generator(0, 0))
    halves = [{k: v[:4] for k, v in full.items()}, {k: v[4:] for k, v in full.items()}]
    a = _run(tmp_path, "full", [full], 1)
    b = _run(tmp_path, "accum", halves, 2)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)


def test_on_step_runs_once_before_each_optimizer_step(tmp_path):
    ids = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(1))
    batches = ListBatches([CausalLM().corrupt({"input_ids": ids}, seeded_generator(0, 0))])
    seen = []

    def on_step(t):
        seen.append((t, batches.i))  # the step index and how many micro-batches were drawn before it

    model = build_model("gpt2", make_config("gpt2", dict(vocab_size=50, hidden_size=32, num_layers=2, num_heads=2,
                                                         max_position_embeddings=16)), "causal-lm")
    train(model, CausalLM(), batches, tmp_path / "hook",
          TrainConfig(steps=3, grad_accum=2, precision="fp32", progress_bar=False, checkpoint_every=0),
          OptimConfig(), ScheduleConfig(), on_step=on_step)
    assert seen == [(0, 0), (1, 2), (2, 4)]
