"""Permutation LM (XLNet §2.3): the sampled orders, the masks built from them, the predicted fraction, the loss."""

from __future__ import annotations

import math

import pytest
import torch

from ptmkit.config import ConfigError
from ptmkit.models import build_model, make_config
from ptmkit.models.base import ModelOutput
from ptmkit.objectives import OBJECTIVES, PermutationLM, PLMConfig, seeded_generator

V = 50


def _batch(b=64, t=24, padded=True):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, V, (b, t), generator=g)
    mask = torch.ones_like(ids)
    if padded:
        lengths = torch.randint(t // 2, t + 1, (b,), generator=g)
        mask = (torch.arange(t)[None] < lengths[:, None]).long()
        ids = ids.masked_fill(mask == 0, 0)
    ids[:, 0] = 1  # a special token ([CLS]-like) in every row
    return {"input_ids": ids, "attention_mask": mask}


def _corrupt(cfg=None, seed=0, **kw):
    obj = PermutationLM(cfg or PLMConfig(special_token_ids=[0, 1]))
    batch = _batch(**kw)
    return obj, batch, obj.corrupt(batch, seeded_generator(seed, 0))


def test_each_order_is_a_permutation_with_context_first():
    _, batch, out = _corrupt()
    order = out["perm_order"]
    t = order.shape[1]
    assert torch.equal(order.sort(-1).values, torch.arange(t).expand_as(order))  # every row is a permutation
    predictable = (batch["attention_mask"].bool() & (batch["input_ids"] > 1))
    # non-predictable positions (special, padding) come before every predictable one in the order
    in_order = predictable.gather(1, order)  # (B, T) predictable flag along the order
    assert torch.all(in_order[:, 1:].int() >= in_order[:, :-1].int())


def test_perm_mask_is_consistent_with_the_order():
    _, batch, out = _corrupt()
    order, perm, mapping = out["perm_order"], out["perm_mask"], out["target_mapping"]
    b, t = order.shape
    rank = order.argsort(-1)
    is_target = mapping.sum(1) > 0  # (B, T)
    later_or_self = rank[:, None, :] >= rank[:, :, None]  # (B, i, j): j at or after i in the order
    for row in range(b):
        tgt = is_target[row]
        # the query stream of a target never sees itself or a token later in the order ...
        assert torch.all(perm[row][tgt][:, tgt] | ~later_or_self[row][tgt][:, tgt])
        assert torch.all(perm[row].diagonal()[tgt])
        # ... and sees every earlier target and all the context
        assert not torch.any(perm[row][tgt][:, tgt] & ~later_or_self[row][tgt][:, tgt])
        assert not torch.any(perm[row][:, ~tgt])
        # context never sees a target
        assert torch.all(perm[row][~tgt][:, tgt])
    # targets are the last ones of the order
    n = is_target.sum(-1)
    last = torch.arange(t)[None] >= (t - n)[:, None]  # (B, T) along the order
    assert torch.equal(is_target.gather(1, order), last)


def test_targets_mapping_and_labels_agree():
    _, batch, out = _corrupt()
    mapping, labels, pos = out["target_mapping"], out["labels"], out["target_positions"]
    valid = labels != -100
    assert torch.equal(mapping.sum(-1) > 0, valid)  # one row per valid prediction, zero rows for padding
    assert torch.all(mapping.sum(-1) <= 1)
    assert torch.equal(labels[valid], batch["input_ids"].gather(1, pos)[valid])
    real = batch["attention_mask"].bool() & (batch["input_ids"] > 1)
    assert torch.all(real.gather(1, pos)[valid])  # never a special token or padding
    assert torch.equal(out["input_ids"], batch["input_ids"])  # the input is not corrupted


@pytest.mark.parametrize("k", [1.0, 4.0, 6.0, 7.0])
def test_predicted_fraction_is_one_over_k(k):
    _, batch, out = _corrupt(PLMConfig(partial_prediction=k, special_token_ids=[0, 1]), padded=False, t=60, b=32)
    n_real = ((batch["input_ids"] > 1)).sum()
    frac = float((out["labels"] != -100).sum()) / float(n_real)
    assert abs(frac - 1 / k) < 0.02, frac


def test_fixed_num_predict():
    obj, batch, out = _corrupt(PLMConfig(num_predict=5, special_token_ids=[0, 1]))
    assert out["labels"].shape == (64, 5) and torch.all((out["labels"] != -100).sum(-1) == 5)
    with pytest.raises(ConfigError, match="num_predict"):
        obj.check_seq_len(4)


def test_deterministic_under_a_seed():
    _, _, a = _corrupt(seed=3)
    _, _, b = _corrupt(seed=3)
    _, _, c = _corrupt(seed=4)
    for key in ("perm_order", "perm_mask", "target_mapping", "labels"):
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["perm_order"], c["perm_order"])


def test_config_validation():
    with pytest.raises(ConfigError, match="partial_prediction"):
        PLMConfig(partial_prediction=0.5)
    with pytest.raises(ConfigError, match="num_predict"):
        PLMConfig(num_predict=0)
    assert OBJECTIVES["plm"] == (PLMConfig, PermutationLM)


class _Stub(torch.nn.Module):
    """Returns fixed logits and records what the objective passed."""

    def __init__(self, logits):
        super().__init__()
        self.logits, self.seen = logits, {}

    def forward(self, input_ids, **kw):
        self.seen = kw
        return ModelOutput(logits=self.logits)


def test_loss_by_hand():
    # Two rows of 4 tokens; row 0 predicts two tokens, row 1 one (its second prediction row is padding).
    batch = {"input_ids": torch.tensor([[1, 5, 6, 7], [1, 8, 9, 0]]), "attention_mask": torch.tensor([[1] * 4, [1, 1, 1, 0]]),
             "perm_mask": torch.zeros(2, 4, 4, dtype=torch.bool), "target_mapping": torch.zeros(2, 2, 4),
             "labels": torch.tensor([[5, 7], [9, -100]])}
    logits = torch.zeros(2, 2, 10)
    logits[0, 0, 5] = 2.0  # correct token scored 2, the other 9 scored 0
    logits[0, 1, 3] = 1.0  # correct token scored 0, one wrong token 1
    logits[1, 1, 0] = 100.0  # the padded prediction: must not count
    stub = _Stub(logits)
    loss, metrics = PermutationLM().loss(stub, batch)
    want = ((-2 + math.log(math.exp(2) + 9)) + (math.log(math.e + 9)) + math.log(10)) / 3
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert metrics["predicted_tokens"] == 3.0 and metrics["plm_accuracy"] == pytest.approx(1 / 3)
    assert stub.seen["perm_mask"] is batch["perm_mask"] and stub.seen["target_mapping"] is batch["target_mapping"]


def test_loss_runs_the_two_stream_model_and_ignores_the_predicted_tokens():
    cfg = make_config("xlnet", dict(vocab_size=V, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                    dropout=0.0))
    model = build_model("xlnet", cfg, "permutation-lm").eval()
    obj, batch, out = _corrupt(b=4, t=12)
    loss, metrics = obj.loss(model, out)
    assert torch.isfinite(loss) and metrics["predicted_tokens"] == float((out["labels"] != -100).sum())
    # the prediction of a target cannot depend on the target itself: change every target token, same loss inputs
    changed = out["input_ids"].clone()
    valid = out["labels"] != -100
    rows = torch.arange(4)[:, None].expand_as(valid)[valid]
    changed[rows, out["target_positions"][valid]] = 3
    with torch.no_grad():
        a = model(out["input_ids"], attention_mask=out["attention_mask"], perm_mask=out["perm_mask"],
                  target_mapping=out["target_mapping"]).logits
        b = model(changed, attention_mask=out["attention_mask"], perm_mask=out["perm_mask"],
                  target_mapping=out["target_mapping"]).logits
    # the first target in each order sees no other target: its prediction is unchanged by any target's token
    order = out["perm_order"]
    first = []
    for r in range(4):
        tgt = set(out["target_positions"][r][valid[r]].tolist())
        f = next(p for p in order[r].tolist() if p in tgt)
        first.append(out["target_positions"][r].tolist().index(f))
    idx = torch.tensor(first)
    torch.testing.assert_close(a[torch.arange(4), idx], b[torch.arange(4), idx])
