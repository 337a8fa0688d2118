"""Contract: every registered objective trains a tiny model for a few steps and its loss falls."""

from __future__ import annotations

import pytest
import torch

from ptmkit.models import build_model, make_config
from ptmkit.objectives import OBJECTIVES, seeded_generator
from ptmkit.config import from_dict

V = 64


def _model(task):
    if task == "masked-lm":
        cfg = make_config("bert", dict(vocab_size=V, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                                       max_position_embeddings=32, dropout=0.0, attention_dropout=0.0))
        return build_model("bert", cfg, task)
    cfg = make_config("llama", dict(vocab_size=V, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128))
    return build_model("llama", cfg, task)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_loss_falls(name):
    cfg_cls, obj_cls = OBJECTIVES[name]
    params = {}
    fields = cfg_cls.__dataclass_fields__
    if "mask_token_id" in fields:
        params.update(mask_token_id=3, vocab_size=V, special_token_ids=[0, 1, 2, 3])
    objective = obj_cls(from_dict(cfg_cls, params))
    model = _model(objective.task)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    # a learnable language: each sequence repeats one random word, so any visible token predicts the rest
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(100):
        ids = torch.randint(4, V, (16, 1), generator=g).expand(16, 16).contiguous()
        batch = objective.corrupt({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, seeded_generator(0, step))
        loss, metrics = objective.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        assert set(metrics) >= {"loss"}
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
