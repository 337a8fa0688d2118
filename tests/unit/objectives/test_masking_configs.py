"""Bad settings of the masking variants fail at configuration time with a ConfigError that names the problem."""

from __future__ import annotations

import pytest
import tokenizers
from tokenizers import models, pre_tokenizers, trainers

from ptmkit.config import ConfigError, from_dict
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.objectives import OBJECTIVES
from ptmkit.objectives.masking import word_start_table
from ptmkit.recipes.pretrain import ObjectiveSection, build_objective

NAMES = ["wwm", "span", "entity", "nsp", "sop"]
TEXTS = ["the cat sat on the mat. a dog ran in the park! the bird sang in a tree."] * 20


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(TEXTS, "wordpiece", 64, min_frequency=1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("p", [0.0, 1.0, 1.5, -0.1])
def test_mask_prob_outside_0_1(name, p, tok):
    cfg_cls, _ = OBJECTIVES[name]
    with pytest.raises(ConfigError, match=rf"{name}: mask_prob must be in \(0, 1\)"):
        from_dict(cfg_cls, {"mask_prob": p})
    with pytest.raises(ConfigError, match="mask_prob"):
        build_objective(ObjectiveSection(name, {"mask_prob": p}), tok, tok.vocab_size, seq_len=32)


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_without_a_mask_token(name):
    no_mask = Tokenizer.train(TEXTS, "wordpiece", 64, special_tokens={"mask": None}, min_frequency=1)
    assert no_mask.mask_id is None
    with pytest.raises(ConfigError, match="no mask token"):
        build_objective(ObjectiveSection(name), no_mask, no_mask.vocab_size, seq_len=32)
    cfg_cls, obj_cls = OBJECTIVES[name]
    with pytest.raises(ConfigError, match="no mask token"):  # the tokenizer path refuses it too
        obj_cls.from_tokenizer(cfg_cls(mask_token_id=3, vocab_size=64), no_mask)


def test_max_span_longer_than_the_sequence(tok):
    with pytest.raises(ConfigError, match="max_span_len 40 .* longer than the sequence length 32"):
        build_objective(ObjectiveSection("span", {"max_span_len": 40}), tok, tok.vocab_size, seq_len=32)
    build_objective(ObjectiveSection("span", {"max_span_len": 10}), tok, tok.vocab_size, seq_len=32)


def test_sentence_pairs_need_room_for_two_segments(tok):
    for name in ("nsp", "sop"):
        with pytest.raises(ConfigError, match="seq_len >= 5"):
            build_objective(ObjectiveSection(name), tok, tok.vocab_size, seq_len=4)


def test_unknown_keys_and_wrong_types_are_named(tok):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['span_len'\]"):
        build_objective(ObjectiveSection("span", {"span_len": 3}), tok, tok.vocab_size)
    with pytest.raises(ConfigError, match="objective.wwm.mask_prob: expected a number"):
        build_objective(ObjectiveSection("wwm", {"mask_prob": "high"}), tok, tok.vocab_size)
    with pytest.raises(ConfigError, match="word_start has 10 entries"):
        build_objective(ObjectiveSection("wwm", {"word_start": [True] * 10}), tok, 8)


def test_word_starts_unknowable_from_the_vocabulary():
    backend = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()  # no "##", no "Ġ"/"▁": word starts are not in the ids
    backend.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=60, special_tokens=["[UNK]", "[MASK]"]))
    with pytest.raises(ConfigError, match="pass word_start"):
        word_start_table(backend)
