"""Whole-word masking: words masked as units, word rate ≈ mask_prob, per-token 80/10/10, the word-start table."""

from __future__ import annotations

import math

import pytest
import torch

from ptmkit.data.tokenizer import Tokenizer
from ptmkit.objectives import WholeWordMasking, WWMConfig, seeded_generator
from ptmkit.objectives.masking import word_start_table
from ptmkit.recipes.pretrain import ObjectiveSection, build_objective

MASK, V = 4, 1000
SPECIAL = [0, 1, 2, 3, 4]  # pad, unk, cls, sep, mask
WORD_START = [True] * 5 + [i % 3 != 0 for i in range(5, V)]  # ids divisible by 3 are "##" continuations


def _batch(b=64, t=128):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, V, (b, t), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    mask = torch.ones_like(ids)
    mask[: b // 2, 100:] = 0
    ids[: b // 2, 100:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _wwm(**kw):
    return WholeWordMasking(WWMConfig(mask_token_id=MASK, vocab_size=V, special_token_ids=SPECIAL,
                                      word_start=WORD_START, **kw))


def _words(ids, maskable):
    """Reference segmentation, written as plain loops: lists of token positions, one list per word."""
    words = []
    for b in range(ids.shape[0]):
        current: list[tuple[int, int]] = []
        for t in range(ids.shape[1]):
            if not maskable[b, t]:
                if current:
                    words.append(current)
                current = []
                continue
            if current and not WORD_START[int(ids[b, t])]:
                current.append((b, t))
            else:
                if current:
                    words.append(current)
                current = [(b, t)]
        if current:
            words.append(current)
    return words


def test_words_are_masked_whole_at_rate_mask_prob_with_per_token_80_10_10():
    batch = _batch()
    out = _wwm().corrupt(batch, seeded_generator(0, 0))
    chosen = out["labels"] != -100
    maskable = batch["attention_mask"].bool() & ~torch.isin(batch["input_ids"], torch.tensor(SPECIAL))
    assert not (chosen & ~maskable).any()
    words = _words(batch["input_ids"], maskable)
    assert sum(len(w) > 1 for w in words) > 1000  # the batch really has multi-piece words
    states = [{bool(chosen[b, t]) for b, t in w} for w in words]
    assert all(len(s) == 1 for s in states)  # all pieces of a word share its fate
    n = len(words)
    rate = sum(True in s for s in states) / n
    assert abs(rate - 0.15) < 4 * math.sqrt(0.15 * 0.85 / n), rate
    # 80/10/10 per token (not per word): fractions over the chosen tokens
    new, old = out["input_ids"][chosen], batch["input_ids"][chosen]
    k = chosen.sum().item()
    frac_mask = (new == MASK).float().mean().item()
    frac_same = (new == old).float().mean().item()
    for got, want in ((frac_mask, 0.8), (frac_same, 0.1), (1 - frac_mask - frac_same, 0.1)):
        assert abs(got - want) < 4 * math.sqrt(want * (1 - want) / k), (got, want)
    # per token: inside masked multi-piece words, pieces are not all treated alike
    masked_words = [w for w, s in zip(words, states) if True in s]
    mixed = sum(len({int(out["input_ids"][b, t] == MASK) for b, t in w}) > 1 for w in masked_words)
    assert mixed > 0
    assert torch.equal(out["input_ids"][~chosen], batch["input_ids"][~chosen])


def test_wwm_is_pure_and_seeded():
    batch = _batch(4, 32)
    before = {k: v.clone() for k, v in batch.items()}
    obj = _wwm()
    a, b = obj.corrupt(batch, seeded_generator(1, 2)), obj.corrupt(batch, seeded_generator(1, 2))
    c = obj.corrupt(batch, seeded_generator(1, 3))
    assert all(torch.equal(batch[k], before[k]) for k in batch)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["labels"], c["labels"])


def test_word_cut_by_a_row_start_or_special_counts_as_a_word():
    # row: continuation pieces right after [CLS] and at the row start form words of their own
    ids = torch.tensor([[6, 9, 7, 2, 12, 15, 3], [2, 12, 15, 8, 3, 0, 0]])  # 6, 9, 12, 15 are continuations
    att = torch.tensor([[1] * 7, [1, 1, 1, 1, 1, 0, 0]])
    obj = _wwm(mask_prob=0.5)
    for step in range(50):
        out = obj.corrupt({"input_ids": ids, "attention_mask": att}, seeded_generator(0, step))
        ch = out["labels"] != -100
        assert ch[0, 0] == ch[0, 1]  # "6 9" is one word
        assert ch[0, 4] == ch[0, 5]  # "12 15" after [CLS]
        assert ch[1, 1] == ch[1, 2]
        assert not ch[0, [3, 6]].any() and not ch[1, [0, 4, 5, 6]].any()


def test_wwm_loss_hand_computed():
    class Fixed(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, score_positions=None):
            assert score_positions.tolist() == [[True, False, True]]
            logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # the two scored positions
            return type("O", (), {"logits": logits})()

    batch = {"input_ids": torch.tensor([[5, 6, 7]]), "labels": torch.tensor([[0, -100, 1]])}
    loss, metrics = _wwm().loss(Fixed(), batch)
    want = (-math.log(math.exp(2) / (math.exp(2) + 2)) - math.log(math.e / (math.e + 2))) / 2
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert metrics["mlm_accuracy"] == 1.0 and metrics["predicted_tokens"] == 2


@pytest.fixture(scope="module")
def wordpiece():
    texts = ["unbelievable stories of remarkable explorers", "the explorers told unbelievable stories",
             "remarkable stories", "a b c d e f g h i j k l m n o p q r s t u v w x y z"] * 10
    return Tokenizer.train(texts, "wordpiece", 70, min_frequency=1)


def test_word_start_table_wordpiece_and_byte_level_bpe(wordpiece):
    table = word_start_table(wordpiece)
    assert table.shape == (wordpiece.vocab_size,)
    for tok, i in wordpiece.backend.get_vocab().items():
        assert bool(table[i]) == (not tok.startswith("##")), tok
    assert word_start_table(wordpiece, vocab_size=wordpiece.vocab_size + 8)[-8:].all()  # padded model vocabulary
    bpe = Tokenizer.train(["hello worldly wonders of the world"] * 20, "bpe", 300, min_frequency=1)
    table = word_start_table(bpe)
    vocab = bpe.backend.get_vocab()
    assert (~table).any() and table[vocab["Ġworld"]]
    for tok, i in vocab.items():
        if tok.startswith("Ġ") or i in bpe.all_special_ids:
            assert table[i], tok
        elif any(ch.isalnum() for ch in tok):
            assert not table[i], tok


def test_from_tokenizer_masks_all_pieces_of_a_word(wordpiece):
    obj = build_objective(ObjectiveSection("wwm", {"mask_prob": 0.5}), wordpiece, wordpiece.vocab_size)
    ids = torch.tensor([wordpiece.encode("the explorers told unbelievable stories")])
    pieces = [wordpiece.id_to_token(i) for i in ids[0]]
    assert any(p.startswith("##") for p in pieces)  # some words are split
    starts = [not p.startswith("##") for p in pieces]
    for step in range(30):
        ch = (obj.corrupt({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, seeded_generator(0, step))
              ["labels"] != -100)[0].tolist()
        for t in range(1, len(pieces)):
            if not starts[t]:
                assert ch[t] == ch[t - 1], (pieces, ch)
