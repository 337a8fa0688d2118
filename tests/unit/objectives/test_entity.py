"""ERNIE entity masking: the dictionary finder (longest match, no overlaps), all-or-nothing entity masking with the
rest of the budget on ordinary tokens, and the shipped CoNLL-2003 + LAMA dictionary on the real files."""

from __future__ import annotations

import math

import pytest
import torch

from ptmkit.config import ConfigError
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.objectives import DictionarySpanFinder, EntityConfig, EntityMasking, seeded_generator
from ptmkit.objectives.entity import conll_entity_names, lama_entity_names, spans_as_lists

MASK, V = 4, 100
SPECIAL = [0, 1, 2, 3, 4]


def test_finder_longest_match_first_and_no_overlaps():
    finder = DictionarySpanFinder([[10, 11], [10, 11, 12], [20, 21], [11, 12], [30, 31], [31, 32], [7, 3]])
    assert len(finder) == 7
    ids = torch.tensor([[2, 10, 11, 12, 5, 20, 21, 6, 11, 12, 3],
                        [30, 31, 32, 5, 10, 11, 0, 0, 0, 0, 0]])
    got = spans_as_lists(finder(ids))
    assert got[0] == [(1, 4), (5, 7), (8, 10)]  # "10 11 12" beats "10 11" and "11 12" inside it
    assert got[1] == [(0, 2), (4, 6)]  # overlapping "30 31" / "31 32": the leftmost wins


def test_finder_handles_short_rows_and_an_empty_dictionary():
    assert DictionarySpanFinder([])(torch.tensor([[1, 2, 3]])).sum() == 0
    finder = DictionarySpanFinder([[1, 2, 3, 4, 5]])
    assert finder(torch.tensor([[1, 2, 3]])).sum() == 0  # entries longer than the row never match
    assert spans_as_lists(finder(torch.tensor([[1, 2, 3, 4, 5]]))) == [[(0, 5)]]


def _entity_batch(b=64, t=128):
    """Rows of random tokens with planted entities "10 11 12" and "20 21"."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(40, V, (b, t), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    for s in range(5, t - 10, 16):
        ids[:, s:s + 3] = torch.tensor([10, 11, 12])
        ids[:, s + 8:s + 10] = torch.tensor([20, 21])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _entity(finder, **kw):
    return EntityMasking(EntityConfig(mask_token_id=MASK, vocab_size=V, special_token_ids=SPECIAL, **kw), finder)


def test_entities_are_masked_all_or_nothing_and_the_budget_is_kept():
    finder = DictionarySpanFinder([[10, 11, 12], [20, 21]])
    batch = _entity_batch()
    obj = _entity(finder, entity_prob=0.3, mask_prob=0.2)
    out = obj.corrupt(batch, seeded_generator(0, 0))
    chosen = out["labels"] != -100
    spans = spans_as_lists(finder(batch["input_ids"]))
    states = [chosen[b, s:e].unique().tolist() for b, row in enumerate(spans) for s, e in row]
    assert all(len(st) == 1 for st in states)  # each entity masked as a whole or not at all
    n = len(states)
    rate = sum(st == [True] for st in states) / n
    assert abs(rate - 0.3) < 4 * math.sqrt(0.3 * 0.7 / n), rate
    maskable = batch["input_ids"] > 4
    total = chosen.sum().item() / maskable.sum().item()
    assert abs(total - 0.2) < 0.01, total  # entity tokens + ordinary tokens fill the mask_prob budget
    assert not (chosen & ~maskable).any()


def test_entities_never_include_special_tokens_or_padding():
    finder = DictionarySpanFinder([[7, 3], [8, 9]])
    ids = torch.tensor([[2, 7, 3, 8, 9, 0]])
    att = torch.tensor([[1, 1, 1, 1, 0, 0]])  # "8 9" runs into padding
    obj = _entity(finder, entity_prob=1.0, mask_prob=0.01)
    for step in range(20):
        out = obj.corrupt({"input_ids": ids, "attention_mask": att}, seeded_generator(0, step))
        assert (out["labels"][0, [0, 2, 4, 5]] == -100).all()


def test_entity_masking_is_pure_and_seeded():
    batch = _entity_batch(4, 64)
    before = {k: v.clone() for k, v in batch.items()}
    obj = _entity(DictionarySpanFinder([[10, 11, 12], [20, 21]]))
    a, b = obj.corrupt(batch, seeded_generator(1, 1)), obj.corrupt(batch, seeded_generator(1, 1))
    assert all(torch.equal(batch[k], before[k]) for k in batch)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])


def test_entity_loss_hand_computed():
    class Fixed(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, score_positions=None):
            return type("O", (), {"logits": torch.tensor([[0.0, math.log(3.0), 0.0]])})()

    batch = {"input_ids": torch.tensor([[5, 4, 7]]), "labels": torch.tensor([[-100, 1, -100]])}
    loss, metrics = _entity(DictionarySpanFinder([])).loss(Fixed(), batch)
    assert loss.item() == pytest.approx(-math.log(3 / 5), rel=1e-6)  # softmax(0, log 3, 0)[1] = 3/5
    assert metrics["predicted_tokens"] == 1 and metrics["mlm_accuracy"] == 1.0


def test_finder_from_names_with_a_trained_tokenizer():
    texts = ["peter blackburn met the european commission in new york city",
             "the city of new york and the european union"] * 20
    tok = Tokenizer.train(texts, "wordpiece", 120, min_frequency=1)
    finder = DictionarySpanFinder.from_names(["Peter Blackburn", "European Commission", "New York", "Zyx"], tok)
    ids = torch.tensor([tok.encode("yesterday peter blackburn flew to new york", add_special_tokens=True)])
    found = [tok.decode(ids[0, s:e]) for s, e in spans_as_lists(finder(ids))[0]]
    assert found == ["peter blackburn", "new york"]


def test_entity_needs_a_finder():
    with pytest.raises(ConfigError, match="span finder"):
        EntityMasking(EntityConfig(mask_token_id=MASK, vocab_size=V))
    with pytest.raises(ConfigError, match="unknown sources"):
        EntityConfig(sources=["wikipedia"])
    with pytest.raises(ConfigError, match="entity_prob"):
        EntityConfig(entity_prob=0.0)


def test_shipped_dictionary_loads_the_real_files_and_finds_entities(data_dir):
    conll = conll_entity_names(data_dir / "ner" / "conll2003" / "train.txt")
    lama = lama_entity_names(data_dir / "lama" / "TREx")
    assert len(conll) > 20000 and "Peter Blackburn" in conll and "European Commission" in conll
    assert len(lama) > 40000 and "Allan Peiper" in lama
    tok = Tokenizer.load(data_dir / "tokenizers" / "gpt2")
    finder = DictionarySpanFinder.from_data_root(tok, root=data_dir)
    assert len(finder) > 10000
    text = "The European Commission said on Thursday that Allan Peiper had moved to New York."
    ids = torch.tensor([tok.encode(text)])
    found = {tok.decode(ids[0, s:e]).strip() for s, e in spans_as_lists(finder(ids))[0]}
    assert {"European Commission", "Allan Peiper", "New York"} <= found, found


def test_shipped_dictionary_reports_missing_files(tmp_path):
    tok = Tokenizer.train(["a b c"] * 5, "wordpiece", 30, min_frequency=1)
    with pytest.raises(FileNotFoundError, match="PTMKIT_DATA"):
        DictionarySpanFinder.from_data_root(tok, root=tmp_path)
