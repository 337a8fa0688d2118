"""XLM objectives (MMLM, TLM), the multilingual corpus builder and the retrieval metric."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ptmkit.analysis.crosslingual import mean_pool, retrieval_accuracy
from ptmkit.config import ConfigError, from_dict
from ptmkit.data.multilingual import ParallelCorpus, concat_pairs, pairs_with_languages, sentences_with_language
from ptmkit.models import build_model, make_config
from ptmkit.objectives import OBJECTIVES, seeded_generator
from ptmkit.objectives.xlm import MMLMConfig, TLMConfig, MultilingualMLM, TranslationLM

PAD, CLS, SEP, MASK = 0, 1, 2, 3
SPECIAL = [PAD, CLS, SEP, MASK]


def _flat():
    # sentence 0: [CLS] 10 11 12 [SEP] (len 5); sentence 1: [CLS] 20 21 [SEP] (len 4); sentence 2: [CLS] 30 [SEP]
    flat = torch.tensor([CLS, 10, 11, 12, SEP, CLS, 20, 21, SEP, CLS, 30, SEP])
    starts, lengths = torch.tensor([0, 5, 9]), torch.tensor([5, 4, 3])
    return flat, starts, lengths


def test_tlm_positions_reset_and_language_ids_per_token():
    flat, starts, lengths = _flat()
    src = (starts[[0, 2]], lengths[[0, 2]], torch.tensor([0, 2]))
    tgt = (starts[[1, 0]], lengths[[1, 0]], torch.tensor([1, 0]))
    b = concat_pairs(flat, src, tgt, PAD)
    assert b["input_ids"].tolist() == [[CLS, 10, 11, 12, SEP, CLS, 20, 21, SEP],
                                       [CLS, 30, SEP, CLS, 10, 11, 12, SEP, PAD]]
    # XLM §3.3: target positions restart at 0
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3], [0, 1, 2, 0, 1, 2, 3, 4, 0]]
    assert b["lang_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 1, 1, 1], [2, 2, 2, 0, 0, 0, 0, 0, 0]]
    assert b["attention_mask"].tolist() == [[1] * 9, [1] * 8 + [0]]


def test_mmlm_rows_are_single_sentences():
    flat, starts, lengths = _flat()
    b = concat_pairs(flat, (starts, lengths, torch.tensor([2, 1, 0])), None, PAD)
    assert b["input_ids"].tolist() == [[CLS, 10, 11, 12, SEP], [CLS, 20, 21, SEP, PAD], [CLS, 30, SEP, PAD, PAD]]
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 4]
    assert b["lang_ids"].tolist() == [[2] * 5, [1] * 4 + [0], [0] * 5]


class _ToyTokenizer:
    cls_id, sep_id, pad_id = CLS, SEP, PAD

    def encode_batch(self, lines, add_special_tokens=False):
        return [[int(w) for w in line.split()] for line in lines]


def test_parallel_corpus_pairs_and_batches():
    aligned = {"en": ["10 11", "12"], "de": ["20 21 22", "23"], "fr": ["30", "31 32"]}
    corpus = ParallelCorpus(aligned, _ToyTokenizer(), max_len=4)  # truncates "20 21 22" to 2 tokens
    b = corpus.pairs(torch.tensor([0]), torch.tensor([1]), torch.tensor([0]))
    assert b["input_ids"].tolist() == [[CLS, 10, 11, SEP, CLS, 20, 21, SEP]]
    assert b["lang_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]]
    g = torch.Generator().manual_seed(0)
    t = corpus.tlm_batch(64, g)
    first, last = t["lang_ids"][:, 0], t["lang_ids"].gather(1, (t["attention_mask"].sum(1, keepdim=True) - 1))
    assert (first != last.squeeze(1)).all()  # source and target languages always differ
    assert t["position_ids"].max() < 4  # positions restart: never beyond one sentence
    m = corpus.mmlm_batch(64, g)
    assert set(m["lang_ids"][:, 0].tolist()) == {0, 1, 2}
    assert list(sentences_with_language(aligned))[2] == (1, "20 21 22")
    assert len(list(pairs_with_languages(aligned))) == 2 * 6


def _objective(cls, cfg_cls, **kw):
    return cls(from_dict(cfg_cls, dict(mask_token_id=MASK, vocab_size=50, special_token_ids=SPECIAL,
                                       num_languages=3, **kw)))


def test_tlm_masks_both_halves_at_the_rate():
    torch.manual_seed(0)
    b_ = 400
    src = (torch.zeros(b_, dtype=torch.long), torch.full((b_,), 30), torch.zeros(b_, dtype=torch.long))
    tgt = (torch.full((b_,), 30), torch.full((b_,), 30), torch.ones(b_, dtype=torch.long))
    flat = torch.cat([torch.tensor([CLS]), torch.randint(4, 50, (28,)), torch.tensor([SEP])]).repeat(2)
    batch = concat_pairs(flat, src, tgt, PAD)
    obj = _objective(TranslationLM, TLMConfig, mask_prob=0.15)
    out = obj.corrupt(batch, seeded_generator(0, 0))
    chosen = out["labels"] != -100
    for half in (slice(1, 29), slice(31, 59)):  # the 28 maskable tokens of each half
        assert abs(chosen[:, half].float().mean().item() - 0.15) < 0.01
    assert not chosen[:, [0, 29, 30, 59]].any()  # [CLS]/[SEP] never masked
    assert torch.equal(out["token_type_ids"], batch["lang_ids"])  # language ids reach the model as segments
    assert torch.equal(out["position_ids"], batch["position_ids"])
    assert torch.equal(batch["input_ids"], concat_pairs(flat, src, tgt, PAD)["input_ids"])  # input not modified


def test_tlm_rejects_pairs_without_reset_positions_and_bad_language_ids():
    obj = _objective(TranslationLM, TLMConfig)
    ids = torch.randint(4, 50, (2, 6))
    with pytest.raises(ValueError, match="position_ids"):
        obj.corrupt({"input_ids": ids, "lang_ids": torch.zeros_like(ids)}, seeded_generator(0, 0))
    with pytest.raises(ValueError, match="language ids"):
        obj.corrupt({"input_ids": ids, "lang_ids": torch.full_like(ids, 3), "position_ids": torch.zeros_like(ids)},
                    seeded_generator(0, 0))


def test_configs_validate_and_registry():
    assert OBJECTIVES["mmlm"] == (MMLMConfig, MultilingualMLM) and OBJECTIVES["tlm"] == (TLMConfig, TranslationLM)
    with pytest.raises(ConfigError, match="num_languages"):
        TLMConfig(num_languages=1)
    with pytest.raises(ConfigError, match="num_languages"):
        MMLMConfig(num_languages=0)
    with pytest.raises(ConfigError, match="mask_prob"):
        MMLMConfig(mask_prob=0.0)
    with pytest.raises(ConfigError, match="unknown|lang"):
        from_dict(MMLMConfig, {"langs": 3})


def _tiny_bert(type_vocab_size=3):
    torch.manual_seed(0)
    cfg = make_config("bert", dict(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                                   max_position_embeddings=16, type_vocab_size=type_vocab_size, dropout=0.0,
                                   attention_dropout=0.0))
    return build_model("bert", cfg, "masked-lm")


def test_bind_requires_a_segment_table_per_language():
    obj = _objective(MultilingualMLM, MMLMConfig)
    with pytest.raises(ConfigError, match="type_vocab_size"):
        obj.bind(_tiny_bert(type_vocab_size=2))
    assert obj.bind(_tiny_bert(3)) is None


def test_loss_by_hand_uses_language_and_reset_positions():
    model = _tiny_bert().eval()
    obj = _objective(TranslationLM, TLMConfig)
    ids = torch.tensor([[CLS, 10, MASK, SEP, CLS, 20, 21, SEP]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.full_like(ids, -100),
             "position_ids": torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]]), "lang_ids": torch.tensor([[0] * 4 + [2] * 4]),
             "token_type_ids": torch.tensor([[0] * 4 + [2] * 4])}
    batch["labels"][0, 2], batch["labels"][0, 6] = 11, 21
    loss, metrics = obj.loss(model, batch)
    # by hand: the encoder with lang ids as segments and the reset positions, then the MLM head at the targets
    bb = model.backbone
    emb = bb.embeddings
    x = emb.norm(emb.tok(ids) + emb.pos(batch["position_ids"]) + emb.segment(batch["lang_ids"]))  # (1, T, H)
    torch.testing.assert_close(emb(ids, batch["position_ids"], batch["lang_ids"]), x)  # lang + reset positions used
    h = bb.layers[0](x, None)  # one post-norm block, full attention (no padding)
    h = h[0] if isinstance(h, tuple) else h
    logits = model.head(h[0, [2, 6]], bb.input_embeddings().weight)  # (2, V)
    expected = -(F.log_softmax(logits, -1)[0, 11] + F.log_softmax(logits, -1)[1, 21]) / 2
    torch.testing.assert_close(loss, expected)
    assert metrics["predicted_tokens"] == 2.0
    other = dict(batch, token_type_ids=torch.zeros_like(ids))
    assert not math.isclose(obj.loss(model, other)[0].item(), loss.item(), rel_tol=1e-6)


def test_retrieval_accuracy_identity_and_permutation():
    e = torch.eye(10)
    assert retrieval_accuracy(e, e) == 1.0
    perm = torch.roll(torch.arange(10), 1)
    assert retrieval_accuracy(e, e[perm]) == 0.0
    assert retrieval_accuracy(e, e[torch.tensor([0, 1, 2, 3, 4, 6, 5, 7, 8, 9])]) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        retrieval_accuracy(e, e[:5])


def test_mean_pool_ignores_padding():
    h = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert mean_pool(h, torch.tensor([[1, 1, 0]])).item() == 2.0
