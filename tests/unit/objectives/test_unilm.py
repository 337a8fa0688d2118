"""UniLM: exact attention masks for each mode, mode proportions under a seed, no future leak in L2R / no target leak
into the source in seq2seq through a real tiny BERT, the loss by hand, config validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ptmkit.config import ConfigError
from ptmkit.models import build_model, make_config
from ptmkit.objectives import OBJECTIVES, UniLM, UniLMConfig, seeded_generator
from ptmkit.objectives.unilm import MODES, unilm_attention_mask

MASK, V = 4, 50
SPECIAL = [0, 1, 2, 3, 4]


def _obj(**kw):
    return UniLM(UniLMConfig(mask_token_id=MASK, vocab_size=V, special_token_ids=SPECIAL, **kw))


def _only(mode, **kw):
    probs = {f"p_{m}": float(m == mode) for m in MODES}
    return _obj(**probs, **kw)


def _bert(type_vocab_size=2, family="bert"):
    torch.manual_seed(0)
    cfg = make_config(family, dict(vocab_size=V, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                   max_position_embeddings=40, dropout=0.0, attention_dropout=0.0,
                                   type_vocab_size=type_vocab_size))
    return build_model(family, cfg, "masked-lm").eval()


def test_masks_for_each_mode_are_exact():
    real = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool).expand(4, 5)
    seg = torch.tensor([[0, 0, 1, 1, 1]]).expand(4, 5)
    got = unilm_attention_mask(torch.arange(4), real, seg).int()
    bi = [[1, 1, 1, 1, 0]] * 5
    l2r = [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]
    r2l = [[1, 1, 1, 1, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]]
    s2s = [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]
    assert got.tolist() == [bi, l2r, r2l, s2s]


def test_document_ids_are_folded_into_the_mask():
    real = torch.ones(1, 4, dtype=torch.bool)
    got = unilm_attention_mask(torch.tensor([0]), real, torch.zeros(1, 4, dtype=torch.long),
                               torch.tensor([[0, 0, 1, 1]])).int()
    assert got[0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]


def test_corrupt_seq2seq_splits_rows_and_sets_segments():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, V, (64, 12), generator=g)
    att = torch.ones_like(ids)
    att[:32, 9:] = 0
    batch = {"input_ids": ids, "attention_mask": att}
    out = _only("seq2seq").corrupt(batch, seeded_generator(0, 0))
    types, real = out["token_type_ids"], att.bool()
    n_src = ((types == 0) & real).sum(1)
    n_tgt = ((types == 1) & real).sum(1)
    assert (n_src >= 1).all() and (n_tgt >= 1).all() and ((n_src + n_tgt) == real.sum(1)).all()
    t = torch.where(real, types, 1)  # padding (type 0) sits after the target
    assert (t[:, 1:] >= t[:, :-1]).all()  # source first, then target
    assert not (types.bool() & ~real).any()
    torch.testing.assert_close(out["self_attention_mask"],
                               unilm_attention_mask(out["unilm_mode"], real, types))
    assert set(n_src.tolist()) > {1, 2, 3}  # the split point varies
    assert torch.equal(batch["input_ids"], ids)  # corrupt() does not modify its input


def test_given_segments_are_kept():
    ids = torch.randint(5, V, (2, 6), generator=torch.Generator().manual_seed(0))
    types = torch.tensor([[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]])
    out = _only("seq2seq").corrupt({"input_ids": ids, "token_type_ids": types}, seeded_generator(0, 0))
    assert out["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1]
    assert out["token_type_ids"][1].sum() > 0  # no segment B given: drawn
    # in other modes, the given token types pass through untouched
    out = _only("bidirectional").corrupt({"input_ids": ids, "token_type_ids": types}, seeded_generator(0, 0))
    assert torch.equal(out["token_type_ids"], types)


@pytest.mark.parametrize("per_row", [False, True])
def test_mode_proportions_match_the_config(per_row):
    obj = _obj(per_row=per_row)
    ids = torch.full((8, 6), 10)
    counts = torch.zeros(4)
    n = 3000
    for step in range(n):
        mode = obj.corrupt({"input_ids": ids}, seeded_generator(7, step))["unilm_mode"]
        if not per_row:
            assert (mode == mode[0]).all()  # one mode per batch (UniLM §2.3)
        counts += torch.bincount(mode, minlength=4).float()
    freq = counts / counts.sum()
    torch.testing.assert_close(freq, torch.tensor([1 / 3, 1 / 6, 1 / 6, 1 / 3]), atol=0.03, rtol=0)


def test_mode_draw_is_seeded():
    obj = _obj(per_row=True)
    batch = {"input_ids": torch.randint(5, V, (16, 8), generator=torch.Generator().manual_seed(0))}
    a, b = obj.corrupt(batch, seeded_generator(3, 5)), obj.corrupt(batch, seeded_generator(3, 5))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _hidden(model, batch, ids):
    return model.backbone(ids, batch["self_attention_mask"], batch["token_type_ids"]).last_hidden_state


def test_left_to_right_never_sees_the_future():
    model = _bert()
    ids = torch.randint(5, V, (2, 10), generator=torch.Generator().manual_seed(0))
    batch = _only("left_to_right").corrupt({"input_ids": ids}, seeded_generator(0, 0))
    x = batch["input_ids"]
    with torch.no_grad():
        h = _hidden(model, batch, x)
        for k in range(10):
            x2 = x.clone()
            x2[:, k] = (x2[:, k] + 7) % (V - 5) + 5
            h2 = _hidden(model, batch, x2)
            torch.testing.assert_close(h2[:, :k], h[:, :k])  # positions before k do not depend on token k
            assert (h2[:, k:] - h[:, k:]).abs().amax() > 1e-4  # ... positions from k on do


def test_right_to_left_never_sees_the_past():
    model = _bert()
    ids = torch.randint(5, V, (2, 10), generator=torch.Generator().manual_seed(0))
    batch = _only("right_to_left").corrupt({"input_ids": ids}, seeded_generator(0, 0))
    x = batch["input_ids"]
    with torch.no_grad():
        h = _hidden(model, batch, x)
        x2 = x.clone()
        x2[:, 6] = (x2[:, 6] + 7) % (V - 5) + 5
        h2 = _hidden(model, batch, x2)
    torch.testing.assert_close(h2[:, 7:], h[:, 7:])
    assert (h2[:, :7] - h[:, :7]).abs().amax() > 1e-4


def test_seq2seq_source_never_sees_the_target():
    model = _bert()
    ids = torch.randint(5, V, (1, 10), generator=torch.Generator().manual_seed(0))
    types = torch.tensor([[0] * 6 + [1] * 4])
    batch = _only("seq2seq").corrupt({"input_ids": ids, "token_type_ids": types}, seeded_generator(0, 0))
    x = batch["input_ids"]
    with torch.no_grad():
        h = _hidden(model, batch, x)
        x2 = x.clone()
        x2[:, 7] = (x2[:, 7] + 7) % (V - 5) + 5  # a target token
        h2 = _hidden(model, batch, x2)
        x3 = x.clone()
        x3[:, 2] = (x3[:, 2] + 7) % (V - 5) + 5  # a source token
        h3 = _hidden(model, batch, x3)
    torch.testing.assert_close(h2[:, :7], h[:, :7])  # source and earlier target tokens do not see target token 7
    assert (h2[:, 7:] - h[:, 7:]).abs().amax() > 1e-4
    assert ((h3 - h).abs().amax(-1) > 1e-4).all()  # every token sees the source


def test_loss_by_hand():
    model = _bert()
    ids = torch.randint(5, V, (4, 12), generator=torch.Generator().manual_seed(2))
    obj = _obj(per_row=True, mask_prob=0.4)
    batch = obj.corrupt({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, seeded_generator(0, 3))
    loss, metrics = obj.loss(model, batch)
    with torch.no_grad():
        logits = model(batch["input_ids"], attention_mask=batch["self_attention_mask"],
                       token_type_ids=batch["token_type_ids"]).logits  # (B, T, V)
    labels = batch["labels"]
    where = labels != -100
    want = -torch.log_softmax(logits.float(), -1)[where].gather(1, labels[where][:, None]).mean()
    torch.testing.assert_close(loss.detach(), want, atol=1e-5, rtol=1e-5)
    assert metrics["predicted_tokens"] == float(where.sum())
    assert labels[where].eq(ids[where]).all()


def test_roberta_without_segment_b_trains():
    model = _bert(type_vocab_size=1, family="roberta")
    ids = torch.randint(5, V, (4, 12), generator=torch.Generator().manual_seed(2))
    batch = _only("seq2seq").corrupt({"input_ids": ids}, seeded_generator(0, 0))
    loss, _ = _only("seq2seq").loss(model, batch)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("kw, match", [
    (dict(p_bidirectional=0.5), "sum to 1"),
    (dict(p_bidirectional=-0.1, p_seq2seq=0.7666666666666667), r"p_bidirectional must be in \[0, 1\]"),
    (dict(mask_prob=0.0), r"mask_prob must be in \(0, 1\)"),
    (dict(mask_prob=1.0), r"mask_prob must be in \(0, 1\)"),
])
def test_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        UniLMConfig(**kw)


def test_registered():
    assert OBJECTIVES["unilm"] == (UniLMConfig, UniLM)
    with pytest.raises(ConfigError, match="mask_token_id"):
        UniLM(UniLMConfig())
