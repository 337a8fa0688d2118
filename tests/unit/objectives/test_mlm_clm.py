"""Masked and causal LM objectives: masking statistics under a fixed seed, purity, hand-computed losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ptmkit.config import ConfigError
from ptmkit.objectives import CausalLM, CLMConfig, MaskedLM, MLMConfig, seeded_generator

MASK, V = 4, 1000
SPECIAL = [0, 1, 2, 3, 4]  # pad, unk, cls, sep, mask


def _batch(b=64, t=128):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, V, (b, t), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    mask = torch.ones_like(ids)
    mask[: b // 2, 100:] = 0
    ids[: b // 2, 100:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _mlm(**kw):
    return MaskedLM(MLMConfig(mask_token_id=MASK, vocab_size=V, special_token_ids=SPECIAL, **kw))


def test_mlm_masking_statistics():
    batch = _batch()
    out = _mlm().corrupt(batch, seeded_generator(0, 0))
    chosen = out["labels"] != -100
    maskable = batch["attention_mask"].bool() & ~torch.isin(batch["input_ids"], torch.tensor(SPECIAL))
    n = int(maskable.sum())
    rate = chosen.sum().item() / n
    assert abs(rate - 0.15) < 3 * math.sqrt(0.15 * 0.85 / n)  # within 3 sigma of Bernoulli(0.15)
    assert not (chosen & ~maskable).any()  # never specials or padding
    assert torch.equal(out["labels"][chosen], batch["input_ids"][chosen])
    new, old = out["input_ids"][chosen], batch["input_ids"][chosen]
    k = chosen.sum().item()
    frac_mask = (new == MASK).float().mean().item()
    frac_same = (new == old).float().mean().item()
    frac_random = 1 - frac_mask - frac_same
    for got, want in ((frac_mask, 0.8), (frac_same, 0.1), (frac_random, 0.1)):
        assert abs(got - want) < 4 * math.sqrt(want * (1 - want) / k), (got, want)
    assert torch.equal(out["input_ids"][~chosen], batch["input_ids"][~chosen])


def test_mlm_is_pure_seeded_and_dynamic():
    batch = _batch(4, 32)
    before = {k: v.clone() for k, v in batch.items()}
    obj = _mlm()
    a = obj.corrupt(batch, seeded_generator(7, 3))
    b = obj.corrupt(batch, seeded_generator(7, 3))
    c = obj.corrupt(batch, seeded_generator(7, 4))  # the same sequence drawn again: new masks (RoBERTa)
    assert all(torch.equal(batch[k], before[k]) for k in batch)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["labels"], c["labels"])


def test_mlm_loss_hand_computed():
    class Fixed(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, score_positions=None):
            logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # rows = the two scored positions
            assert score_positions.sum() == 2
            return type("O", (), {"logits": logits})()

    batch = {"input_ids": torch.tensor([[5, 6, 7]]), "labels": torch.tensor([[0, -100, 1]])}
    loss, metrics = _mlm().loss(Fixed(), batch)
    want = (-math.log(math.exp(2) / (math.exp(2) + 2)) - math.log(math.e / (math.e + 2))) / 2
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert metrics["mlm_accuracy"] == 1.0 and metrics["predicted_tokens"] == 2


@pytest.mark.parametrize("kw,msg", [
    (dict(mask_prob=0.0), "mask_prob"), (dict(mask_prob=1.0), "mask_prob"),
    (dict(mask_token_fraction=0.9, random_token_fraction=0.2), "sum to at most 1"),
])
def test_mlm_bad_settings(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        _mlm(**kw)


def test_mlm_needs_a_mask_token():
    with pytest.raises(ConfigError, match="mask token"):
        MaskedLM(MLMConfig(vocab_size=V))
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        MaskedLM(MLMConfig(vocab_size=10, mask_token_id=10))


def test_clm_labels_shift_and_respect_padding_and_documents():
    ids = torch.tensor([[10, 11, 12, 13, 14], [20, 21, 22, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    out = CausalLM(CLMConfig()).corrupt({"input_ids": ids, "attention_mask": mask}, seeded_generator(0, 0))
    assert out["labels"].tolist() == [[11, 12, 13, 14, -100], [21, 22, -100, -100, -100]]
    docs = torch.tensor([[0, 0, 1, 1, 1]])
    out = CausalLM().corrupt({"input_ids": ids[:1], "document_ids": docs}, seeded_generator(0, 0))
    assert out["labels"].tolist() == [[11, -100, 13, 14, -100]]  # no prediction across the document edge


def test_clm_loss_hand_computed():
    class Uniform(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, position_ids=None):
            return type("O", (), {"logits": torch.zeros(*input_ids.shape, 8)})()

    batch = CausalLM().corrupt({"input_ids": torch.tensor([[1, 2, 3, 4]])}, seeded_generator(0, 0))
    loss, metrics = CausalLM().loss(Uniform(), batch)
    assert loss.item() == pytest.approx(math.log(8))
    assert metrics["predicted_tokens"] == 3
