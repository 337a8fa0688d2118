"""REALM at test time: LAMA's mask scored by the reader marginalised over retrieved passages (REALM.mask_log_probs,
analysis.knowledge's retrieval path). With one passage it is exactly the reader on [x ; z] built by hand; a planted
passage that holds the answer lifts P@1 from 0 to 1 for a reader that reads its passage; a saved retriever loads
back with the same retrieval; a missing index / retriever and a query encoder trained against other vectors are
refused with the fix named."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ptmkit.analysis.knowledge import Fact, mask_log_probs, probe_masked_lm
from ptmkit.config import ConfigError
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.objectives.realm import REALM, REALMConfig
from ptmkit.recipes.realm import load_realm
from ptmkit.retrieval.encoder import DenseEncoder
from ptmkit.retrieval.faiss_index import IndexConfig
from ptmkit.retrieval.passage_index import PassageIndex
from ptmkit.retrieval.passages import ChunkConfig
from ptmkit.retrieval.retriever import Retriever

from .augmented_fixtures import index_dir, retriever, tiny, tokenizer  # noqa: F401  (fixtures)
from .conftest import PLANTED

# the planted line "the zebra quartz xylophone juggled seven purple umbrellas" as two LAMA facts (one-token objects)
FACTS = [(Fact("the zebra quartz xylophone juggled seven", "umbrellas"), "[X] purple [Y]"),
         (Fact("the zebra quartz xylophone", "seven"), "[X] juggled [Y] purple umbrellas")]


def _realm(tok, retriever, **kw):
    cfg = REALMConfig(mask_token_id=tok.mask_id, vocab_size=tok.vocab_size, special_token_ids=tok.all_special_ids,
                      **kw)
    retriever.module.eval()
    return REALM(cfg, tok, retriever)


class CopyReader(nn.Module):
    """A reader that answers from its passage (an extractive reader in miniature): at the mask, the passage token
    after the passage's first copy of the token before the mask gets +20 over a fixed random bias. It finds the
    passage by BERT's segment ids, as the REALM rows mark it."""

    task = "masked-lm"

    def __init__(self, vocab: int):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab, type_vocab_size=2)
        self.bias = nn.Parameter(torch.randn(vocab, generator=torch.Generator().manual_seed(0)))

    def forward(self, ids, attention_mask=None, token_type_ids=None, score_positions=None):
        rows = []
        for r, at in score_positions.nonzero().tolist():
            out = self.bias.detach().clone()
            passage = ids[r][(token_type_ids[r] == 1) if token_type_ids is not None else torch.zeros_like(ids[r]) > 0]
            hit = (passage[:-1] == ids[r, at - 1]).nonzero()
            if len(hit):
                out[passage[int(hit[0]) + 1]] += 20.0
            rows.append(out)
        return SimpleNamespace(logits=torch.stack(rows))  # (N, V)


def test_one_passage_equals_the_reader_on_x_then_z_by_hand(tokenizer, retriever):
    obj = _realm(tokenizer, retriever, k=1, null_passage=False)
    model = tiny("bert", "masked-lm", tokenizer.vocab_size)
    m = tokenizer.id_to_token(tokenizer.mask_id)
    texts = [f"the zebra quartz xylophone juggled seven purple {m}", f"river mountain {m} garden winter summer",
             f"{m} castle"]
    got = mask_log_probs(model, tokenizer, texts, batch_size=2, retrieval=obj)  # (3, V), two batches
    for i, text in enumerate(texts):
        x = tokenizer.encode(text)  # [CLS] x [SEP], as the probe reads it
        query = tokenizer.decode([t for t in x if t not in obj.drop], skip_special_tokens=False)
        top = int(retriever.index.search(retriever.query.encode([query]), 1).ids[0, 0])
        z = tokenizer.encode(retriever.index.passage(top).text, add_special_tokens=False)[:64] + [tokenizer.sep_id]
        ids = torch.tensor([x + z])
        types = torch.tensor([[0] * len(x) + [1] * len(z)])
        with torch.no_grad():
            logits = model(ids, attention_mask=torch.ones_like(ids), token_type_ids=types,
                           score_positions=ids == tokenizer.mask_id).logits
        torch.testing.assert_close(got[i], logits.float().log_softmax(-1)[0], rtol=1e-5, atol=1e-5)


def test_the_marginal_over_k_passages_and_null(tokenizer, retriever):
    """k = 3 + null: log Σ_z p(z|x) p(v|x, z) of the per-passage reader distributions (each checked at k = 1 above)."""
    obj = _realm(tokenizer, retriever, k=3, null_passage=True)
    model = tiny("bert", "masked-lm", tokenizer.vocab_size)
    m = tokenizer.id_to_token(tokenizer.mask_id)
    got = mask_log_probs(model, tokenizer, [f"river {m} castle garden"], retrieval=obj)[0]
    ids = torch.tensor([tokenizer.encode(f"river {m} castle garden")])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": torch.where(ids == tokenizer.mask_id, ids, torch.full_like(ids, -100))}
    x, n, labels, pid, log_prior = obj.retrieve(batch, exclude=False, grad=False)
    assert pid.shape == (1, 4) and int(pid[0, -1]) == -1
    with torch.no_grad():
        per, _, _ = obj.read(model, x, n, labels, pid)  # (4, V)
    torch.testing.assert_close(got, torch.logsumexp(log_prior[0, :, None] + per, 0), rtol=1e-5, atol=1e-5)
    assert torch.exp(got).sum() == pytest.approx(1.0, abs=1e-4)  # a distribution over the vocabulary


def test_a_planted_passage_holding_the_answer_raises_p_at_1(tokenizer, retriever, encoder_dir, corpus, tmp_path):
    reader = CopyReader(tokenizer.vocab_size)
    without = tmp_path / "without.txt"
    without.write_text("\n".join(x for x in corpus.read_text().splitlines() if x != PLANTED) + "\n")
    bare = PassageIndex.build(without, DenseEncoder.from_dir(encoder_dir), IndexConfig(),
                              ChunkConfig(max_tokens=16, overlap=4), show_progress=False).save(tmp_path / "bare")
    with_planted = _realm(tokenizer, retriever, k=3, null_passage=True, temperature=0.1)
    no_planted = _realm(tokenizer, Retriever.load(bare, temperature=0.1), k=3, null_passage=True, temperature=0.1)
    for fact, template in FACTS:
        alone = probe_masked_lm(reader, tokenizer, [fact], template)
        planted = probe_masked_lm(reader, tokenizer, [fact], template, retrieval=with_planted)
        missing = probe_masked_lm(reader, tokenizer, [fact], template, retrieval=no_planted)
        assert (alone["p@1"], missing["p@1"], planted["p@1"]) == (0.0, 0.0, 1.0), fact


def test_a_saved_retriever_loads_back_and_its_query_encoder_fits_only_its_index(tokenizer, retriever, index_dir,
                                                                                 tmp_path):
    with torch.no_grad():  # training moved the query encoder, then a refresh re-embedded the index with it
        for p in retriever.module["query"].parameters():
            p.add_(0.05 * torch.randn_like(p))
    retriever.refresh()
    out = retriever.save(tmp_path / "saved" / "retriever")
    (tmp_path / "saved").rename(tmp_path / "moved")  # the saved retriever reads its document encoder from beside it
    moved = tmp_path / "moved" / "retriever"
    again = Retriever.load(moved / "index", moved / "query_encoder", temperature=0.1)
    q = ["river mountain castle", PLANTED]
    ids, scores = retriever.retrieve(q, 3, null=True, grad=False)
    ids2, scores2 = again.retrieve(q, 3, null=True, grad=False)
    assert torch.equal(ids, ids2) and out.name == "retriever"
    torch.testing.assert_close(scores, scores2, rtol=1e-4, atol=1e-4)
    assert not again.sync()  # its vectors are the saved snapshot's: nothing re-embedded
    # the trained query encoder against the index as first built (other document vectors): refused, fix named
    with pytest.raises(ConfigError, match="use the index that run trained with"):
        Retriever.load(index_dir, moved / "query_encoder")


def test_refusals_name_the_fix(tokenizer, retriever, tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "run_config.json").write_text(json.dumps({"objective": {"name": "mlm", "params": {}}}))
    with pytest.raises(ConfigError, match="not realm: it has no retriever"):
        load_realm(run)
    (run / "run_config.json").write_text(json.dumps({"objective": {"name": "realm", "params": {}}}))
    with pytest.raises(ConfigError, match="no trained retriever.*ptm convert"):
        load_realm(run)
    with pytest.raises(ConfigError, match="not a finished pre-training run"):
        load_realm(tmp_path / "nothing")
    tokenizer.save(run / "model")
    with pytest.raises(ConfigError, match="no index directory given; build one with `ptm index build"):
        load_realm(run, index="")
    other = Tokenizer.train(["river castle"] * 5, "wordpiece", vocab_size=40, min_frequency=1)
    model = tiny("bert", "masked-lm", tokenizer.vocab_size)
    with pytest.raises(ConfigError, match="another tokenizer.*load_realm"):
        mask_log_probs(model, other, ["river [MASK]"], retrieval=_realm(tokenizer, retriever, k=1))
    with pytest.raises(ConfigError, match="one \\[MASK\\] per row"):
        ids = torch.tensor([tokenizer.encode("river castle")])
        _realm(tokenizer, retriever, k=1).mask_log_probs(model, {"input_ids": ids})
