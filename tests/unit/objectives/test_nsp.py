"""NSP / SOP: the pair builder (layout, token types, sentence-boundary split, balanced labels, where B comes from),
MLM on top, the pair head's loss by hand, and its configuration errors."""

from __future__ import annotations

import math

import pytest
import torch

from ptmkit.config import ConfigError
from ptmkit.models import build_model, make_config
from ptmkit.objectives import (
    NextSentencePrediction, NSPConfig, SentenceOrderPrediction, SOPConfig, seeded_generator,
)
from ptmkit.objectives.nsp import make_sentence_pairs

PAD, UNK, CLS, SEP, MASK, DOT = 0, 1, 2, 3, 4, 5
V = 1000


def _docs(b=400, t=32, seed=0):
    """no_cross rows: [CLS] content [SEP] [PAD]..., content of random length with a "." every few tokens; each row's
    tokens are drawn from its own range so the test can tell which row a token came from."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((b, t), PAD)
    att = torch.zeros(b, t, dtype=torch.long)
    for r in range(b):
        n = int(torch.randint(4, t - 1, (1,), generator=g))
        content = 10 + r * 20 + torch.randint(0, 20, (n,), generator=g)  # row r owns ids 10 + 20 r .. 29 + 20 r
        content[torch.randint(0, 3, (1,), generator=g).item() + 2:: 5] = DOT
        ids[r, 0], ids[r, 1:n + 1], ids[r, n + 1] = CLS, content, SEP
        att[r, : n + 2] = 1
    return {"input_ids": ids, "attention_mask": att}


def _content(row_ids, row_att):
    return [int(i) for i, a in zip(row_ids, row_att) if a and i not in (PAD, UNK, CLS, SEP, MASK)]


def _pairs(batch, negative, swap_prob=0.5, step=0):
    return make_sentence_pairs(batch, seeded_generator(0, step), cls_id=CLS, sep_id=SEP, pad_id=PAD,
                               special_ids=torch.tensor([PAD, UNK, CLS, SEP, MASK]),
                               sentence_end_ids=torch.tensor([DOT]), swap_prob=swap_prob, negative=negative)


def _segments(row, types, att):
    """(segment A tokens, segment B tokens) of one built row, checking the layout on the way."""
    n = int(att.sum())
    row, types = row[:n].tolist(), types[:n].tolist()
    assert row[0] == CLS and row[-1] == SEP and row.count(SEP) == 2 and CLS not in row[1:]
    cut = row.index(SEP)
    assert types == [0] * (cut + 1) + [1] * (n - cut - 1)  # [CLS] A [SEP] -> 0, B [SEP] -> 1
    return row[1:cut], row[cut + 1:-1]


@pytest.mark.parametrize("negative", ["random_next", "swap"])
def test_pairs_layout_types_and_balanced_labels(negative):
    batch = _docs()
    out = _pairs(batch, negative)
    labels = out["pair_labels"]
    assert (labels >= 0).all()  # every row has >= 4 content tokens
    n = labels.numel()
    assert abs(labels.float().mean().item() - 0.5) < 4 * math.sqrt(0.25 / n)
    T = batch["input_ids"].shape[1]
    for r in range(n):
        content = _content(batch["input_ids"][r], batch["attention_mask"][r])[: T - 3]
        a, b = _segments(out["input_ids"][r], out["token_type_ids"][r], out["attention_mask"][r])
        assert a and b
        assert (out["input_ids"][r][int(out["attention_mask"][r].sum()):] == PAD).all()
        assert (out["token_type_ids"][r][int(out["attention_mask"][r].sum()):] == 0).all()
        if negative == "random_next":
            assert a == content[: len(a)]  # A is always the start of this row
            if labels[r] == 0:
                assert a + b == content  # IsNext: the true continuation
            else:  # NotNext: B is a contiguous piece of another row's content
                other = {(tok - 10) // 20 for tok in b if tok != DOT}  # (empty if B is a lone ".")
                assert len(other) <= 1 and r not in other
                for o in other:
                    oc = _content(batch["input_ids"][o], batch["attention_mask"][o])
                    assert any(oc[i:i + len(b)] == b for i in range(len(oc)))
        else:
            # SOP: both segments from this row's document, in order (0) or swapped (1)
            assert (a + b if labels[r] == 0 else b + a) == content
        first = a if labels[r] == 0 or negative == "random_next" else b
        if DOT in content[: -1]:
            assert first[-1] == DOT  # split at a sentence boundary when the row has one


def test_split_falls_back_to_a_random_point_and_short_rows_get_no_label():
    ids = torch.tensor([[CLS, 11, 12, 13, 14, 15, SEP, PAD], [CLS, 11, SEP, PAD, PAD, PAD, PAD, PAD]])
    att = (ids != PAD).long()
    cuts = set()
    for step in range(40):
        out = _pairs({"input_ids": ids, "attention_mask": att}, "swap", swap_prob=0.0, step=step)
        a, b = _segments(out["input_ids"][0], out["token_type_ids"][0], out["attention_mask"][0])
        assert a + b == [11, 12, 13, 14, 15]
        cuts.add(len(a))
        assert out["pair_labels"][1] == -100 and out["input_ids"][1].tolist()[:3] == [CLS, 11, SEP]
    assert cuts == {1, 2, 3, 4}  # every split point of a row without sentence ends


def test_nsp_with_one_row_has_only_positive_pairs_and_packed_rows_are_refused():
    batch = _docs(1)
    for step in range(10):
        assert _pairs(batch, "random_next", swap_prob=1.0, step=step)["pair_labels"].tolist() == [0]
    with pytest.raises(ConfigError, match="no_cross"):
        _pairs({**batch, "document_ids": torch.zeros_like(batch["input_ids"])}, "random_next")


def _cfg(cls=NSPConfig, **kw):
    return cls(mask_token_id=MASK, vocab_size=V, special_token_ids=[PAD, UNK, CLS, SEP, MASK], cls_token_id=CLS,
               sep_token_id=SEP, pad_token_id=PAD, sentence_end_ids=[DOT], **kw)


@pytest.mark.parametrize("obj_cls,cfg_cls", [(NextSentencePrediction, NSPConfig), (SentenceOrderPrediction, SOPConfig)])
def test_corrupt_masks_only_content_and_is_pure_and_seeded(obj_cls, cfg_cls):
    batch = _docs(64)
    before = {k: v.clone() for k, v in batch.items()}
    obj = obj_cls(_cfg(cfg_cls))
    out = obj.corrupt(batch, seeded_generator(0, 0))
    again = obj.corrupt(batch, seeded_generator(0, 0))
    assert all(torch.equal(batch[k], before[k]) for k in batch)
    assert all(torch.equal(out[k], again[k]) for k in out)
    chosen = out["labels"] != -100
    pairs = _pairs(batch, obj.negative)  # same generator stream: pairs first, then MLM
    assert torch.equal(out["token_type_ids"], pairs["token_type_ids"])
    assert not (chosen & torch.isin(pairs["input_ids"], torch.tensor([PAD, CLS, SEP]))).any()
    rate = chosen.sum().item() / (pairs["attention_mask"].sum().item() - 3 * 64)
    assert abs(rate - 0.15) < 0.03
    assert set(out) >= {"input_ids", "attention_mask", "token_type_ids", "labels", "pair_labels"}


class _Fixed(torch.nn.Module):
    hidden_size = 2

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, score_positions=None):
        assert token_type_ids is not None
        hidden = torch.zeros(2, 3, 2)
        hidden[0, 0] = torch.tensor([1.0, 0.0])  # row 0 [CLS]
        hidden[1, 0] = torch.tensor([0.0, 2.0])  # row 1 [CLS]
        logits = torch.tensor([[0.0, 0.0, 0.0]])  # one scored position
        return type("O", (), {"logits": logits, "last_hidden_state": hidden})()


@pytest.mark.parametrize("obj_cls,cfg_cls,metric", [(NextSentencePrediction, NSPConfig, "nsp"),
                                                    (SentenceOrderPrediction, SOPConfig, "sop")])
def test_loss_hand_computed(obj_cls, cfg_cls, metric):
    obj = obj_cls(_cfg(cfg_cls, pair_weight=2.0))
    model = _Fixed()
    head = obj.bind(model)["pair"]
    with torch.no_grad():  # pooled = tanh(h_cls); logits = pooled
        head.pool.weight.copy_(torch.eye(2))
        head.pool.bias.zero_()
        head.out.weight.copy_(torch.eye(2))
        head.out.bias.zero_()
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "token_type_ids": torch.zeros(2, 3, dtype=torch.long),
             "labels": torch.tensor([[-100, 2, -100], [-100, -100, -100]]), "pair_labels": torch.tensor([0, 1])}
    loss, metrics = obj.loss(model, batch)
    mlm = math.log(3)
    t1, t2 = math.tanh(1.0), math.tanh(2.0)
    pair = (-math.log(math.exp(t1) / (math.exp(t1) + 1)) - math.log(math.exp(t2) / (1 + math.exp(t2)))) / 2
    assert metrics["mlm_loss"] == pytest.approx(mlm, rel=1e-6)
    assert metrics[f"{metric}_loss"] == pytest.approx(pair, rel=1e-6)
    assert metrics[f"{metric}_accuracy"] == 1.0
    assert loss.item() == pytest.approx(mlm + 2.0 * pair, rel=1e-6)


def test_pair_head_is_owned_by_the_objective_and_needs_segment_embeddings():
    obj = NextSentencePrediction(_cfg())
    bert = build_model("bert", make_config("bert", dict(vocab_size=V, hidden_size=32, num_layers=1, num_heads=2,
                                                        intermediate_size=64)), "masked-lm")
    module = obj.bind(bert)
    assert module["pair"].pool.in_features == 32 and list(obj.parameters())
    batch = obj.corrupt(_docs(4), seeded_generator(0, 0))
    loss, _ = obj.loss(bert, batch)
    loss.backward()
    assert all(p.grad is not None for p in obj.parameters())
    roberta = build_model("roberta", make_config("roberta", dict(vocab_size=V, hidden_size=32, num_layers=1,
                                                                 num_heads=2, intermediate_size=64)), "masked-lm")
    with pytest.raises(ConfigError, match="type_vocab_size"):
        NextSentencePrediction(_cfg()).bind(roberta)


def test_bad_pair_settings():
    with pytest.raises(ConfigError, match="swap_prob"):
        _cfg(swap_prob=1.5)
    with pytest.raises(ConfigError, match="cls_token_id"):
        NextSentencePrediction(NSPConfig(mask_token_id=MASK, vocab_size=V))
    with pytest.raises(ConfigError, match="at least 5"):
        NextSentencePrediction(_cfg()).corrupt({"input_ids": torch.tensor([[CLS, 11, SEP, PAD]])},
                                               seeded_generator(0, 0))
    with pytest.raises(ConfigError, match="seq_len >= 5"):
        SentenceOrderPrediction(_cfg(SOPConfig)).check_seq_len(4)
