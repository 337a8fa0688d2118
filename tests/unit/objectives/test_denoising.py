"""BART denoising: each transform's statistics (masking and deletion ratios, Poisson span lengths of text infilling,
[MASK] per span and per 0-length span, sentences intact under permutation, rotation keeps the tokens), the order of
composition, config errors, and the loss by hand."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from ptmkit.config import ConfigError
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models.encdec import shift_right
from ptmkit.objectives import Denoising, DenoisingConfig, NoiseTransform, seeded_generator
from ptmkit.objectives.seq2seq import seq2seq_loss
from ptmkit.recipes.pretrain import ObjectiveSection, build_objective
from tests.unit.objectives.seq2seq_stub import StubSeq2Seq, hand_loss

PAD, BOS, EOS, MASK, END, V = 0, 1, 2, 3, 9, 300  # END: the sentence-end token ("."); ids >= 10 are words
SPECIAL = [PAD, BOS, EOS, MASK]


def _obj(*transforms, **kw):
    ts = [t if isinstance(t, NoiseTransform) else NoiseTransform(*t) for t in transforms]
    return Denoising(DenoisingConfig(transforms=ts, mask_token_id=MASK, vocab_size=V, special_token_ids=SPECIAL,
                                     sentence_end_ids=[END], pad_token_id=PAD, **kw))


def _batch(b=64, t=256, seed=0, pad=True):
    """<s> sentences of 2-9 words ending in END ... </s> then padding; every word id is unique within its row."""
    g = torch.Generator().manual_seed(seed)
    rows, att = [], []
    for r in range(b):
        n = t - (int(torch.randint(0, t // 2, (1,), generator=g)) if pad and r % 2 else 0)
        words = (torch.randperm(V - 10, generator=g)[: n] + 10).tolist()
        row, i = [BOS], 0
        while len(row) < n - 1:
            k = int(torch.randint(2, 10, (1,), generator=g))
            row += words[i: i + k] + [END]
            i += k
        row = row[: n - 1] + [EOS]
        rows.append(row + [PAD] * (t - len(row)))
        att.append([1] * len(row) + [0] * (t - len(row)))
    return {"input_ids": torch.tensor(rows), "attention_mask": torch.tensor(att)}


def _rows(out):
    return [r[m.bool()].tolist() for r, m in zip(out["input_ids"], out["attention_mask"])]


def _orig(batch):
    return [r[m.bool()].tolist() for r, m in zip(batch["input_ids"], batch["attention_mask"])]


def _sentences(row):
    """Sentences of a row (specials dropped), each ending at END."""
    out, cur = [], []
    for t in row:
        if t in SPECIAL:
            continue
        cur.append(t)
        if t == END:
            out.append(tuple(cur))
            cur = []
    return out + ([tuple(cur)] if cur else [])


def test_labels_are_the_original_and_corrupt_is_pure_and_seeded():
    obj, batch = _obj(("text_infilling", 0.3), ("sentence_permutation", 1.0)), _batch()
    before = {k: v.clone() for k, v in batch.items()}
    a, b = obj.corrupt(batch, seeded_generator(1, 2)), obj.corrupt(batch, seeded_generator(1, 2))
    assert all(torch.equal(batch[k], before[k]) for k in batch)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(a["labels"], batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))
    assert not torch.equal(a["input_ids"], obj.corrupt(batch, seeded_generator(1, 3))["input_ids"])


def test_token_masking_ratio():
    batch = _batch()
    out = _obj(("token_masking", 0.3)).corrupt(batch, seeded_generator(0, 0))
    masked = ordinary = 0
    for new, old in zip(_rows(out), _orig(batch)):
        assert len(new) == len(old)
        for x, y in zip(new, old):
            if y in SPECIAL:
                assert x == y  # specials are never masked
            else:
                ordinary += 1
                masked += x == MASK
                assert x in (y, MASK)
    assert abs(masked / ordinary - 0.3) < 0.01


def test_token_deletion_ratio_and_order():
    batch = _batch()
    out = _obj(("token_deletion", 0.2)).corrupt(batch, seeded_generator(0, 0))
    kept = total = 0
    for new, old in zip(_rows(out), _orig(batch)):
        it = iter(old)
        assert all(x in it for x in new)  # a subsequence, in order
        assert [x for x in new if x in SPECIAL] == [x for x in old if x in SPECIAL]
        kept += sum(x not in SPECIAL for x in new)
        total += sum(x not in SPECIAL for x in old)
    assert abs(1 - kept / total - 0.2) < 0.01
    assert (out["input_ids"][out["attention_mask"] == 0] == PAD).all()


def test_text_infilling_poisson_spans_one_mask_each():
    obj = _obj(("text_infilling", 0.3))
    t = obj.cfg.transforms[0]
    g = torch.Generator().manual_seed(0)
    cand = torch.ones(400, 1000, dtype=torch.bool)
    start, length, used = obj.noiser.infill_spans(cand, t, g)
    k = used.sum(1)
    assert ((length * used).sum(1).double().mean() / 1000 - 0.3).abs() < 0.005  # the budget is covered
    full = used.clone()
    full[torch.arange(400), k - 1] = False  # the last span of a row is cut to the budget
    lens = length[full].double()
    assert abs(lens.mean().item() - 3.0) < 0.05  # Poisson(3) mean
    assert abs(lens.var().item() - 3.0) < 0.2  # and variance
    assert abs((lens == 0).double().mean().item() - math.exp(-3)) < 0.01  # 0-length spans: insertions
    # spans never overlap and stay inside the row
    ends = start + length
    for r in range(20):
        s, e = start[r][used[r]].tolist(), ends[r][used[r]].tolist()
        assert all(e[i] <= s[i + 1] for i in range(len(s) - 1)) and e[-1] <= 1000 and s[0] >= 0

    batch = _batch(b=64)
    g1, g2 = seeded_generator(0, 5), seeded_generator(0, 5)
    out = obj.corrupt(batch, g1)
    # the same draws, made again: each used span (0-length ones included) leaves exactly one [MASK]
    ids, valid = batch["input_ids"], batch["attention_mask"].bool()
    cand = valid & ~torch.isin(ids, torch.tensor(SPECIAL))
    _, length2, used2 = obj.noiser.infill_spans(cand, t, g2)
    for r, (new, old) in enumerate(zip(_rows(out), _orig(batch))):
        assert new.count(MASK) == int(used2[r].sum())
        removed = int(length2[r][used2[r]].sum())
        assert sum(x not in SPECIAL for x in new) == sum(x not in SPECIAL for x in old) - removed
        it = iter(old)
        assert all(x in it for x in new if x != MASK)  # the kept tokens in order
        assert [x for x in new if x in (BOS, EOS)] == [x for x in old if x in (BOS, EOS)]


def test_sentence_permutation_keeps_sentences_and_specials():
    batch = _batch()
    out = _obj(("sentence_permutation", 1.0)).corrupt(batch, seeded_generator(0, 0))
    changed = 0
    for new, old in zip(_rows(out), _orig(batch)):
        assert new[0] == BOS and new[-1] == EOS and len(new) == len(old)
        assert Counter(new) == Counter(old)
        for sent in _sentences(old):  # every sentence survives whole, somewhere
            assert any(tuple(new[i: i + len(sent)]) == sent for i in range(len(new)))
        changed += _sentences(new) != _sentences(old)
    assert changed == len(out["input_ids"])
    none = _obj(("sentence_permutation", 0.0)).corrupt(batch, seeded_generator(0, 0))
    assert _rows(none) == _orig(batch)
    half = _obj(("sentence_permutation", 0.5)).corrupt(batch, seeded_generator(0, 0))
    assert 16 < sum(a != b for a, b in zip(_rows(half), _orig(batch))) < 48


def test_document_rotation_keeps_the_tokens():
    batch = _batch()
    out = _obj(("document_rotation", 1.0)).corrupt(batch, seeded_generator(0, 0))
    firsts = []
    for new, old in zip(_rows(out), _orig(batch)):
        assert new[0] == BOS and new[-1] == EOS and Counter(new) == Counter(old)
        body, orig = new[1:-1], old[1:-1]
        o = [i for i in range(len(orig)) if orig[i:] + orig[:i] == body]
        assert o  # a rotation
        o = o[0]
        firsts.append(o / len(orig))
    assert 0.3 < sum(firsts) / len(firsts) < 0.7  # the new start is uniform over the row


def test_composition_order_is_respected():
    batch = _batch(b=16)
    # delete then mask every remaining token: shorter rows of [MASK]s
    a = _obj(("token_deletion", 0.5), ("token_masking", 1.0)).corrupt(batch, seeded_generator(0, 0))
    # mask every token first: [MASK] is special, so nothing is left to delete
    b = _obj(("token_masking", 1.0), ("token_deletion", 0.5)).corrupt(batch, seeded_generator(0, 0))
    for x, y, old in zip(_rows(a), _rows(b), _orig(batch)):
        assert len(y) == len(old) and len(x) < 0.7 * len(old)
        assert set(x) <= {BOS, EOS, MASK} and set(y) <= {BOS, EOS, MASK}
    # corrupt() is exactly the transforms applied in the listed order with one generator
    obj = _obj(("text_infilling", 0.3), ("sentence_permutation", 1.0), ("document_rotation", 0.5))
    out = obj.corrupt(batch, seeded_generator(0, 7))
    g = seeded_generator(0, 7)
    ids, valid = batch["input_ids"], batch["attention_mask"].bool()
    for t in obj.cfg.transforms:
        ids, valid = getattr(obj.noiser, t.name)(ids, valid, t, g)
    assert torch.equal(out["input_ids"], ids) and torch.equal(out["attention_mask"].bool(), valid)


def test_config_errors_and_from_dict():
    with pytest.raises(ConfigError, match="unknown transform 'shuffle'"):
        NoiseTransform("shuffle")
    with pytest.raises(ConfigError, match="ratio"):
        NoiseTransform("token_masking", 1.5)
    with pytest.raises(ConfigError, match="poisson_lambda applies to text_infilling"):
        NoiseTransform("token_masking", 0.1, 2.0)
    with pytest.raises(ConfigError, match="transforms is empty"):
        DenoisingConfig(transforms=[])
    with pytest.raises(ConfigError, match="sentence_end_ids"):
        Denoising(DenoisingConfig(mask_token_id=MASK, vocab_size=V, pad_token_id=PAD))
    tok = Tokenizer.train(["the cat sat. a dog ran! the bird sang?"] * 10, "wordpiece", 60, min_frequency=1)
    obj = build_objective(ObjectiveSection("denoising", {"transforms": [
        {"name": "token_deletion", "ratio": 0.1}, {"name": "text_infilling", "poisson_lambda": 2.5},
        {"name": "sentence_permutation"}]}), tok, tok.vocab_size)
    names = [(t.name, t.ratio, t.poisson_lambda) for t in obj.cfg.transforms]
    assert names == [("token_deletion", 0.1, 3.0), ("text_infilling", 0.3, 2.5), ("sentence_permutation", 1.0, 3.0)]
    assert set(obj.cfg.sentence_end_ids) == {tok.token_to_id(c) for c in ".!?"}
    assert obj.cfg.mask_token_id == tok.mask_id and obj.cfg.pad_token_id == tok.pad_id
    with pytest.raises(ConfigError, match=r"objective.denoising.transforms\[0\]"):
        build_objective(ObjectiveSection("denoising", {"transforms": [{"name": "token_masking", "rate": 0.1}]}),
                        tok, tok.vocab_size)


def test_loss_by_hand():
    obj = _obj(("text_infilling", 0.3))
    batch = obj.corrupt(_batch(b=2, t=12), seeded_generator(0, 0))
    model = StubSeq2Seq(V, decoder_start_token_id=EOS, pad_token_id=PAD)
    loss, metrics = seq2seq_loss(model, batch)
    fed = model.calls[0]["decoder_input_ids"]
    assert torch.equal(fed, shift_right(batch["labels"], EOS, PAD))
    assert fed[:, 0].tolist() == [EOS, EOS] and fed[0, 1:].tolist() == batch["labels"][0, :-1].tolist()
    assert torch.equal(model.calls[0]["input_ids"], batch["input_ids"])
    logits = model(None, decoder_input_ids=fed).logits
    assert loss.item() == pytest.approx(hand_loss(logits, batch["labels"]), rel=1e-5)
    assert metrics["predicted_tokens"] == float((batch["labels"] != -100).sum())
