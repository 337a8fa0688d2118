"""Unsupervised SimCSE (objectives/simcse.py) and the STS Spearman evaluation (analysis/sts.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ptmkit.analysis.sts import encode_sentences, sts_spearman
from ptmkit.config import ConfigError, from_dict
from ptmkit.models import build_model, make_config
from ptmkit.models.base import BackboneOutput
from ptmkit.objectives import OBJECTIVES, seeded_generator
from ptmkit.objectives.simcse import SimCSE, SimCSEConfig, info_nce, same_rows

V = 32


def _bert(dropout=0.1):
    cfg = make_config("bert", dict(vocab_size=V, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                   max_position_embeddings=16, dropout=dropout, attention_dropout=dropout))
    return build_model("bert", cfg, "base")


def _batch(b=8, t=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (b, t), generator=g)
    ids[:, 0] = 1  # a [CLS]-like first token
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_registered():
    assert OBJECTIVES["simcse"] == (SimCSEConfig, SimCSE)
    assert SimCSE.task == "base"


def test_info_nce_hand_computed():
    # z1 rows: e1, e2; z2 rows: e1, (e1+e2)/sqrt2 -> cos matrix [[1, 1/√2], [0, 1/√2]]
    z1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z2 = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    tau = 0.5
    c = 1 / math.sqrt(2)
    s = [[1 / tau, c / tau], [0.0, c / tau]]
    row0 = -math.log(math.exp(s[0][0]) / (math.exp(s[0][0]) + math.exp(s[0][1])))
    row1 = -math.log(math.exp(s[1][1]) / (math.exp(s[1][0]) + math.exp(s[1][1])))
    loss, logits = info_nce(z1, z2, tau)
    torch.testing.assert_close(logits, torch.tensor(s))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # symmetric: also columns against rows (logits transposed)
    col0 = -math.log(math.exp(s[0][0]) / (math.exp(s[0][0]) + math.exp(s[1][0])))
    col1 = -math.log(math.exp(s[1][1]) / (math.exp(s[0][1]) + math.exp(s[1][1])))
    loss_sym, _ = info_nce(z1, z2, tau, symmetric=True)
    assert loss_sym.item() == pytest.approx(((row0 + row1) / 2 + (col0 + col1) / 2) / 2, rel=1e-6)


def test_info_nce_excludes_duplicates_but_not_the_positive():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    full, _ = info_nce(z, z, 1.0)
    exclude = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    masked, logits = info_nce(z, z, 1.0, exclude=exclude)
    assert torch.isinf(logits[0, 1]) and torch.isfinite(logits[0, 0])
    e = math.e
    row_dup = -math.log(e / (e + 1.0))  # rows 0, 1: positive cos 1, remaining negative cos 0
    row_2 = -math.log(e / (e + 2.0))  # row 2: negatives are rows 0 and 1, both cos 0
    assert masked.item() == pytest.approx((2 * row_dup + row_2) / 3, rel=1e-6)
    assert masked.item() < full.item()


def test_same_rows_ignores_padding_ids():
    ids = torch.tensor([[1, 5, 0], [1, 5, 7], [1, 5, 9]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 1]])
    same = same_rows({"input_ids": ids, "attention_mask": mask})
    assert same.tolist() == [[True, True, False], [True, True, False], [False, False, True]]


def test_hand_computed_loss_matches_objective_with_fixed_embeddings():
    """A 'model' whose hidden states are fixed: loss() must equal the hand formula on its [CLS] vectors."""
    class Fixed(nn.Module):
        def forward(self, input_ids, attention_mask=None, token_type_ids=None):
            h = torch.stack([torch.tensor([1.0, 0.0]), torch.tensor([0.6, 0.8])])  # per sentence
            rows = h[input_ids[:, 1] - 4]  # (B, 2): sentence id is the second token
            return BackboneOutput(rows[:, None, :].expand(-1, input_ids.shape[1], -1))

    obj = SimCSE(SimCSEConfig(temperature=0.1, pooling="cls"))
    batch = {"input_ids": torch.tensor([[1, 4], [1, 5]]), "attention_mask": torch.ones(2, 2, dtype=torch.long)}
    loss, m = obj.loss(Fixed(), batch)
    # both views equal: cos = [[1, .6], [.6, 1]] / 0.1
    per_row = -math.log(math.exp(10) / (math.exp(10) + math.exp(6)))
    assert loss.item() == pytest.approx(per_row, rel=1e-5)
    assert m["simcse_accuracy"] == 1.0
    assert m["positive_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert m["negative_cosine"] == pytest.approx(0.6, abs=1e-6)


def test_corrupt_passes_batch_through_without_mutation():
    b = _batch()
    out = SimCSE(SimCSEConfig()).corrupt(b, seeded_generator(0, 0))
    assert out is not b and out.keys() == b.keys()
    assert all(torch.equal(out[k], b[k]) for k in b)


def test_dropout_makes_views_differ_in_train_and_agree_in_eval():
    torch.manual_seed(0)
    model = _bert(dropout=0.1)
    obj = SimCSE(SimCSEConfig(pooling="cls"))
    b = _batch()
    model.train()
    z1, z2 = obj.embed(model, b), obj.embed(model, b)
    assert not torch.allclose(z1, z2)
    model.eval()
    e1, e2 = obj.embed(model, b), obj.embed(model, b)
    torch.testing.assert_close(e1, e2)
    # in train mode loss() itself sees two different views: positive cosine below 1
    model.train()
    _, m = obj.loss(model, b)
    assert m["positive_cosine"] < 0.9999


# [CLS] pooling is covered by the contract test (tests/contracts); on random sentences a freshly initialised 2-layer
# BERT's [CLS] vector barely depends on the content, so its loss stays near log B for the first hundred steps.
@pytest.mark.parametrize("pooling,symmetric,projection", [("mean", False, False), ("mean", True, False),
                                                          ("mean", False, True)])
def test_loss_falls_on_tiny_model(pooling, symmetric, projection):
    torch.manual_seed(0)
    model = _bert(dropout=0.1)
    obj = SimCSE(SimCSEConfig(temperature=0.05, pooling=pooling, symmetric=symmetric, projection=projection))
    head = obj.bind(model)
    assert (head is not None) == projection
    params = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
    opt = torch.optim.AdamW(params, lr=3e-3)
    model.train()
    losses = []
    fixed = _batch(b=16, t=8, seed=1)  # one batch of distinct random sentences, seen repeatedly
    for step in range(40):
        loss, _ = obj.loss(model, obj.corrupt(fixed, seeded_generator(0, step)))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses


@pytest.mark.parametrize("params,match", [
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"pooling": "max"}, "pooling"),
    ({"tau": 0.1}, "tau"),
])
def test_bad_config(params, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(SimCSEConfig, params)


def test_info_nce_needs_two_rows():
    with pytest.raises(ValueError, match="at least 2"):
        info_nce(torch.ones(1, 3), torch.ones(1, 3), 0.05)


class _WordTok:
    """Whitespace 'tokenizer': word -> fixed id; [CLS]=1 first, pad 0."""
    pad_id = 0
    vocab = {"a": 2, "b": 3, "c": 4, "d": 5}

    def encode_batch(self, texts):
        return [[1] + [self.vocab[w] for w in t.split()] for t in texts]


class _Lookup(nn.Module):
    """Hidden state of each token = a fixed 2-d vector per id; [CLS] and pad are zero."""
    def __init__(self):
        super().__init__()
        w = torch.zeros(6, 2)
        w[2], w[3], w[4], w[5] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0]), \
            torch.tensor([3.0, -1.0])
        self.emb = nn.Embedding.from_pretrained(w)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return BackboneOutput(self.emb(input_ids))


def test_sts_spearman_hand_computed():
    tok, model = _WordTok(), _Lookup()
    # mean pooling over [CLS] + words: "a" -> (1,0)/2, "b" -> (0,1)/2, "c" -> (1,1)/2, "a b" -> (1,1)/3, "d" -> (3,-1)/2
    pairs = [("a", "b"), ("a", "c"), ("c", "a b"), ("a", "d")]
    # cosines: a·b = 0; a·c = 1/√2 ≈ .707; c·(a b) = 1; a·d = 3/√10 ≈ .949  -> ranks 1, 2, 4, 3
    gold = [0.5, 1.0, 4.0, 2.0]  # ranks 1, 2, 4, 3  -> rho = 1
    assert sts_spearman(model, tok, pairs, gold, pooling="mean") == pytest.approx(1.0)
    gold2 = [1.0, 0.5, 4.0, 2.0]  # ranks 2, 1, 4, 3 vs 1, 2, 4, 3: d² = 1+1 -> rho = 1 - 6·2/(4·15) = 0.8
    assert sts_spearman(model, tok, pairs, gold2, pooling="mean") == pytest.approx(0.8)
    # cls pooling: every [CLS] vector is zero -> all cosines 0 -> constant predictions -> 0 by convention
    assert sts_spearman(model, tok, pairs, gold2, pooling="cls") == 0.0


def test_encode_sentences_keeps_order_and_restores_train_mode():
    tok, model = _WordTok(), _Lookup()
    model.train()
    z = encode_sentences(model, tok, ["a b", "d", "a"], pooling="mean", batch_size=2)
    torch.testing.assert_close(z, torch.tensor([[1 / 3, 1 / 3], [1.5, -0.5], [0.5, 0.0]]))
    assert model.training


def test_sts_spearman_misaligned():
    with pytest.raises(ValueError, match="aligned"):
        sts_spearman(_Lookup(), _WordTok(), [("a", "b")], [1.0, 2.0])
