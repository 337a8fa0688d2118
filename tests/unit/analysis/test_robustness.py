"""Attacks on a classifier whose decision is planted in one word: TextFooler finds the synonym that flips it, respects
the part-of-speech and similarity constraints and the budget, the character attack flips it by an edit, queries are
counted, and wrong predictions and regression models are not attacked."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from ptmkit.analysis.robustness import (AttackConfig, Victim, char_attack, char_edits, load_synonyms, pos_lexicon,
                                        summarise, textfooler)
from ptmkit.config import ConfigError
from ptmkit.data.conllu import Sentence
from ptmkit.data.tokenizer import Tokenizer


class BagClassifier(nn.Module):
    """Positive iff the words' planted scores sum above 0: 'good' and 'great' are worth +5, 'awful' -5."""

    task, num_labels = "sequence-classification", 2

    def __init__(self, tok, scores):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(tok.vocab_size), requires_grad=False)
        for word, s in scores.items():
            self.w.data[tok.token_to_id(word)] = s

    def forward(self, ids, attention_mask=None):
        s = (self.w[ids] * attention_mask).sum(1) - 0.5  # (B,): a slight bias to negative
        return type("Out", (), {"logits": torch.stack([-s, s], -1)})()


@pytest.fixture(scope="module")
def victim():
    words = "the movie was good great fine decent goods awful plot acting".split()
    tok = Tokenizer.train([" ".join(words)] * 30, "wordpiece", vocab_size=90, min_frequency=1)
    return Victim(BagClassifier(tok, {"good": 5.0, "great": 5.0, "awful": -5.0}), tok)


def test_textfooler_flips_the_planted_word_with_a_synonym(victim):
    syn = {"good": ["goods", "decent"], "movie": ["film"]}
    pos = {"good": "ADJ", "decent": "ADJ", "goods": "NOUN"}
    start = victim.queries
    r = textfooler(victim, "the movie was good", 1, syn, AttackConfig(max_perturbed=0.5), pos=pos)
    assert r.attacked and r.success and r.changes == [("good", "decent")] and r.adversarial == "the movie was decent"
    assert r.queries == victim.queries - start > 0 and r.perturbed == 1
    # the part-of-speech constraint: only the noun is offered, it does not flip, the attack fails
    r = textfooler(victim, "the movie was good", 1, {"good": ["goods"]}, AttackConfig(), pos=pos)
    assert not r.success
    # the similarity constraint: an encoder that finds the perturbed sentence far from the original
    far = lambda texts: torch.tensor([[1.0, 0.0]] + [[0.0, 1.0]] * (len(texts) - 1))  # noqa: E731
    r = textfooler(victim, "the movie was good", 1, syn, AttackConfig(similarity=0.5), encode=far)
    assert not r.success


def test_the_budget_and_wrong_predictions(victim):
    # two planted words, a budget of one word: cannot flip
    syn = {"good": ["decent"], "great": ["fine"]}
    r = textfooler(victim, "good great", 1, syn, AttackConfig(max_perturbed=0.5))
    assert r.attacked and not r.success and r.perturbed <= 1
    r = textfooler(victim, "the movie was good", 0, syn, AttackConfig())  # wrong label: not attacked
    assert not r.attacked and not r.success
    s = summarise([textfooler(victim, "the movie was good", 1, syn, AttackConfig()), r])
    assert s["accuracy_before"] == 0.5 and s["accuracy_after"] == 0.0 and s["success_rate"] == 1.0
    assert s["perturbed_words_pct"] == 25.0


def test_char_attack_flips_by_an_edit(victim):
    r = char_attack(victim, "the movie was good", 1, AttackConfig())
    assert r.success and r.changes[0][0] == "good" and r.changes[0][1] != "good"
    edits = char_edits("good", random.Random(0))
    assert edits and all(e != "good" and abs(len(e) - 4) <= 1 for e in edits)


def test_synonyms_pos_and_bad_input(tmp_path):
    (tmp_path / "syn.txt").write_text("Good decent\nfilm movie\n")
    assert load_synonyms(tmp_path / "syn.txt") == {"good": ["decent"], "decent": ["good"], "film": ["movie"],
                                                   "movie": ["film"]}
    (tmp_path / "bad.txt").write_text("one two three\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        load_synonyms(tmp_path / "bad.txt")
    lex = pos_lexicon([Sentence(["Run", "run", "run"], ["VERB", "NOUN", "VERB"], [0, 1, 1], ["root"] * 3)])
    assert lex == {"run": "VERB"}
    tok = Tokenizer.train(["a b c"] * 5, "wordpiece", vocab_size=40, min_frequency=1)
    reg = BagClassifier(tok, {})
    reg.num_labels = 1
    with pytest.raises(ConfigError, match="regression"):
        Victim(reg, tok)
    with pytest.raises(ConfigError, match="max_perturbed"):
        AttackConfig(max_perturbed=0)
