"""REALM: with one retrieved passage the marginal loss is exactly the reader's masked-LM loss on [x ; z]; the
retrieval gradient reaches the query encoder and never the document side; a planted passage comes first for its own
text; refresh re-embeds the index and a restored snapshot re-embeds it back; bad settings are refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptmkit.config import ConfigError
from ptmkit.objectives.masking import masked_lm_loss
from ptmkit.objectives.realm import REALM, REALMConfig
from ptmkit.recipes.pretrain import ObjectiveSection, build_objective
from ptmkit.retrieval.retriever import Retriever

from .augmented_fixtures import index_dir, retriever, tiny, tokenizer  # noqa: F401  (fixtures)
from .conftest import PLANTED


def _cfg(tok, **kw):
    return REALMConfig(mask_token_id=tok.mask_id, vocab_size=tok.vocab_size, special_token_ids=tok.all_special_ids,
                       **kw)


def _batch(tok, texts, objective, seed=0):
    enc = tok.encode_batch(texts)
    T = max(map(len, enc))
    ids = torch.full((len(enc), T), tok.pad_id, dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, :len(e)] = torch.tensor(e)
    batch = {"input_ids": ids, "attention_mask": (ids != tok.pad_id).long()}
    return objective.corrupt(batch, torch.Generator().manual_seed(seed))


def test_one_passage_equals_the_reader_on_x_then_z(tokenizer, retriever):
    obj = REALM(_cfg(tokenizer, k=1, null_passage=False, mask_prob=0.3), tokenizer, retriever)
    model = tiny("bert", "masked-lm", tokenizer.vocab_size)
    batch = _batch(tokenizer, [PLANTED, "river mountain castle garden winter summer"], obj)
    loss, metrics = obj.loss(model, batch)
    # the plain model on [CLS] x [SEP] z [SEP], built here by hand from the retrieved passage's text
    queries = [tokenizer.decode([i for i in r.tolist() if i not in obj.drop], skip_special_tokens=False)
               for r in batch["input_ids"]]
    top = retriever.index.search(retriever.query.encode(queries), 1).ids[:, 0]
    rows, labels, types = [], [], []
    for r, (ids, lab) in enumerate(zip(batch["input_ids"], batch["labels"])):
        n = int(batch["attention_mask"][r].sum())
        z = tokenizer.encode(retriever.index.passage(int(top[r])).text, add_special_tokens=False)[:64]
        z += [tokenizer.sep_id]
        rows.append(ids[:n].tolist() + z)
        labels.append(lab[:n].tolist() + [-100] * len(z))
        types.append([0] * n + [1] * len(z))
    L = max(map(len, rows))
    pad = lambda xs, v: torch.tensor([x + [v] * (L - len(x)) for x in xs])  # noqa: E731
    plain = {"input_ids": pad(rows, tokenizer.pad_id), "labels": pad(labels, -100), "token_type_ids": pad(types, 0),
             "attention_mask": pad([[1] * len(x) for x in rows], 0)}
    expected, _ = masked_lm_loss(model, plain)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    assert metrics["top_passage_prob"] == pytest.approx(1.0)


def test_gradient_reaches_the_query_encoder_only(tokenizer, retriever):
    obj = REALM(_cfg(tokenizer, k=3, mask_prob=0.3), tokenizer, retriever)
    model = tiny("bert", "masked-lm", tokenizer.vocab_size)
    module = obj.bind(model)
    loss, m = obj.loss(model, _batch(tokenizer, [PLANTED, "the river mountain castle"], obj))
    loss.backward()
    q_grads = [p.grad for p in module["query"].parameters() if p.grad is not None]
    assert q_grads and any(float(g.abs().sum()) > 0 for g in q_grads)
    assert all(p.grad is None and not p.requires_grad for p in module["document"].parameters())
    assert 0 < m["null_prob"] < 1


def test_planted_passage_is_retrieved_first(retriever):
    ids, scores = retriever.retrieve([PLANTED], k=3, null=True)
    assert retriever.index.passage(int(ids[0, 0])).text == PLANTED
    assert ids[0, -1] == -1 and scores.shape == (1, 4)
    assert torch.softmax(scores, -1)[0, 0] == torch.softmax(scores, -1)[0].max()


def test_refresh_re_embeds_and_a_restored_snapshot_re_embeds_back(retriever):
    before = retriever.index.vectors(np.arange(5)).copy()
    saved = {k: v.clone() for k, v in retriever.module["document"].state_dict().items()}
    with torch.no_grad():
        for p in retriever.module["query"].parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert not retriever.sync()  # the document snapshot did not change: nothing to do
    retriever.refresh()
    after = retriever.index.vectors(np.arange(5))
    assert not np.allclose(before, after)
    retriever.module["document"].load_state_dict(saved)  # what resuming from an older checkpoint does
    assert retriever.sync()
    np.testing.assert_allclose(retriever.index.vectors(np.arange(5)), before, rtol=0, atol=1e-6)


def test_on_step_refreshes_every_n_steps(tokenizer, retriever):
    obj = REALM(_cfg(tokenizer, refresh_every=2), tokenizer, retriever)
    fp = lambda: retriever.index.manifest["encoder"]["fingerprint"]  # noqa: E731
    with torch.no_grad():
        next(retriever.module["query"].parameters()).add_(1.0)
    start = fp()
    obj.on_step(0)
    obj.on_step(1)
    assert fp() == start
    obj.on_step(2)
    assert fp() != start


def test_trivial_retrievals_are_excluded(tokenizer, retriever):
    obj = REALM(_cfg(tokenizer, k=2, mask_prob=0.1, exclude_overlap=0.8), tokenizer, retriever)
    _, _, _, pid, log_prior = obj.retrieve(_batch(tokenizer, [PLANTED], obj))
    texts = [retriever.index.passage(int(i)).text for i in pid[0, :-1]]
    assert PLANTED not in texts and pid[0, -1] == -1
    assert torch.isfinite(log_prior).all()


def test_refusals_name_the_fix(tokenizer, retriever, index_dir, tmp_path):
    with pytest.raises(ConfigError, match="k <= "):
        REALM(_cfg(tokenizer, k=len(retriever) + 1), tokenizer, retriever)
    with pytest.raises(ConfigError, match="ptm index build"):
        build_objective(ObjectiveSection(name="realm"), tokenizer, tokenizer.vocab_size)
    with pytest.raises(ConfigError, match="null_passage"):
        _cfg(tokenizer, exclude_overlap=0.5, null_passage=False)
    with pytest.raises(ConfigError, match="masking"):
        _cfg(tokenizer, masking="words")
    # a query encoder trained against other document vectors
    out = retriever.save_query_encoder(tmp_path / "q")
    record = out / "retriever.json"
    record.write_text(record.read_text().replace(retriever.index.manifest["encoder"]["fingerprint"], "0" * 64))
    with pytest.raises(ConfigError, match="trained against document vectors"):
        Retriever.load(index_dir, out)
    with pytest.raises(ConfigError, match="not a query encoder"):
        Retriever.load(index_dir, index_dir)


def test_registered_and_built_by_the_pretrain_recipe(tokenizer, index_dir):
    obj = build_objective(ObjectiveSection(name="realm", params={"index": str(index_dir), "k": 2}), tokenizer,
                          tokenizer.vocab_size)
    assert isinstance(obj, REALM) and obj.cfg.k == 2 and len(obj.passages) == len(obj.retriever)
