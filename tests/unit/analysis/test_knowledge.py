"""LAMA probing: a planted fact ranks first (P@1 = 1, MRR = 1), an unplanted object ranks by the model's logits,
multi-token objects are left out and counted, SQuAD-style cloze sentences, the common vocabulary, and the error for
a model without a masked-LM head."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from ptmkit.analysis.knowledge import probe_masked_lm, read_facts, templates
from ptmkit.config import ConfigError
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import build_model, make_config

WORDS = "paris berlin rome france germany italy was born in the capital of is".split()


@pytest.fixture(scope="module")
def mlm():
    tok = Tokenizer.train([" ".join(WORDS)] * 50 + ["zanzibarian"], "wordpiece", vocab_size=90, min_frequency=1)
    torch.manual_seed(0)
    model = build_model("bert", make_config("bert", dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1,
                                                         num_heads=2, intermediate_size=64,
                                                         max_position_embeddings=32)), "masked-lm").eval()
    return model, tok


def _write(path, rows):
    with gzip.open(path, "wt") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def test_a_planted_fact_ranks_first_and_multi_token_objects_are_left_out(mlm, tmp_path):
    model, tok = mlm
    _write(tmp_path / "P19.jsonl.gz", [{"sub_label": "rome", "obj_label": "paris"},
                                       {"sub_label": "berlin", "obj_label": "paris"},
                                       {"sub_label": "italy", "obj_label": "zanzibarian"}])  # not one token
    facts = read_facts(tmp_path / "P19.jsonl.gz")
    with torch.no_grad():
        model.head.bias[tok.token_to_id("paris")] += 100.0  # plant the object
    r = probe_masked_lm(model, tok, facts, "[X] was born in [Y] .")
    assert r == {"facts": 3, "asked": 2, "skipped": 1, "p@1": 1.0, "p@10": 1.0, "mrr": 1.0}
    with torch.no_grad():
        model.head.bias[tok.token_to_id("paris")] -= 200.0  # now the least likely token
    r = probe_masked_lm(model, tok, facts, "[X] was born in [Y] .")
    assert r["p@10"] == 0.0 and r["mrr"] < 0.05
    common = ["paris", "rome", "berlin"]  # a 3-token common vocabulary: ranks 1..3
    r = probe_masked_lm(model, tok, facts, "[X] was born in [Y] .", vocab=common)
    assert r["p@10"] == 1.0 and r["mrr"] == pytest.approx(1 / 3)
    with torch.no_grad():
        model.head.bias[tok.token_to_id("paris")] += 100.0


def test_squad_style_sentences_and_relation_templates(mlm, tmp_path):
    model, tok = mlm
    _write(tmp_path / "squad.jsonl.gz", [{"masked_sentences": ["the capital of france is [MASK] ."],
                                          "obj_label": "paris", "sub_label": "Squad"}])
    with torch.no_grad():
        model.head.bias[tok.token_to_id("paris")] += 100.0
    r = probe_masked_lm(model, tok, read_facts(tmp_path / "squad.jsonl.gz"), None)
    with torch.no_grad():
        model.head.bias[tok.token_to_id("paris")] -= 100.0  # the fixture is shared: leave it as it was
    assert r["asked"] == 1 and r["p@1"] == 1.0
    (tmp_path / "relations.jsonl").write_text(json.dumps({"relation": "P36", "template": "The capital of [X] is [Y] ."})
                                              + "\n")
    assert templates(tmp_path / "relations.jsonl") == {"P36": "The capital of [X] is [Y] ."}
    with pytest.raises(ConfigError, match=r"\[X\]"):
        probe_masked_lm(model, tok, [read_facts(tmp_path / "squad.jsonl.gz")[0].__class__("a", "paris")], "no slots")


def test_lama_needs_a_masked_lm_head(mlm, tmp_path):
    _, tok = mlm
    enc = build_model("bert", make_config("bert", dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1,
                                                       num_heads=2, intermediate_size=64, max_position_embeddings=32)))
    with pytest.raises(ConfigError, match="masked-LM head"):
        probe_masked_lm(enc, tok, [], "[X] is [Y]")
    (tmp_path / "bad.jsonl").write_text('{"sub_label": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1.*obj_label"):
        read_facts(tmp_path / "bad.jsonl")


def test_causal_candidate_scores_equal_scoring_each_full_sequence():
    from ptmkit.analysis.knowledge import Fact, candidate_log_probs, probe_causal_lm

    tok = Tokenizer.train([" ".join(WORDS)] * 50, "bpe", vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    lm = build_model("llama", make_config("llama", dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2,
                                                        num_heads=4, num_kv_heads=2, intermediate_size=64,
                                                        max_position_embeddings=64)), "causal-lm").eval()
    prefix = tok.encode("rome was born in", add_special_tokens=False)
    cands = [tok.encode(" " + c, add_special_tokens=False) for c in ("paris", "berlin", "the capital of italy",
                                                                      "the capital of", "the capital", "the")]
    got = candidate_log_probs(lm, prefix, cands, batch_size=2)  # the stems that share a pass, across batches
    assert len({tuple(c[:-1]) for c in cands}) > 3
    for c, g in zip(cands, got):  # brute force: the whole sequence, no cache
        with torch.no_grad():
            lp = lm(torch.tensor([prefix + c])).logits[0].log_softmax(-1)
        want = sum(float(lp[len(prefix) - 1 + j, c[j]]) for j in range(len(c)))
        assert float(g) == pytest.approx(want, abs=1e-4)
    facts = [Fact("rome", "paris"), Fact("berlin", "berlin"), Fact("italy", "rome")]
    r = probe_causal_lm(lm, tok, facts, "[X] was born in [Y] .")
    assert r["asked"] == 3 and r["candidates"] == 3 and 1 / 3 <= r["mrr"] <= 1
    with pytest.raises(ConfigError, match="causal-LM head"):
        probe_causal_lm(build_model("bert", make_config("bert", dict(vocab_size=tok.vocab_size, hidden_size=32,
                                                                     num_layers=1, num_heads=2, intermediate_size=64,
                                                                     max_position_embeddings=32)), "masked-lm"),
                        tok, facts, "[X] was born in [Y] .")


def test_causal_probe_conditioned_on_passages_is_the_rag_sequence_marginal():
    """One context equal to the plain prefix (log prior 0) reproduces the plain probe; two passages rank by
    log Σ_z p(z|x) p(candidate | passage_z ; prefix), checked against the candidates' scores computed one by one."""
    from ptmkit.analysis.knowledge import Fact, candidate_log_probs, cloze_prefix, probe_causal_lm

    tok = Tokenizer.train([" ".join(WORDS)] * 50, "bpe", vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    lm = build_model("llama", make_config("llama", dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2,
                                                        num_heads=4, num_kv_heads=2, intermediate_size=64,
                                                        max_position_embeddings=64)), "causal-lm").eval()
    tpl = "[X] was born in [Y] ."
    facts = [Fact("rome", "paris"), Fact("berlin", "berlin"), Fact("italy", "rome"), Fact("france", "germany")]
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    plain = [(enc(cloze_prefix(f, tpl)),) for f in facts]
    same = probe_causal_lm(lm, tok, facts, tpl, contexts=[([p[0]], torch.zeros(1)) for p in plain])
    assert same == probe_causal_lm(lm, tok, facts, tpl)
    passages = [enc("the capital of france is paris\n"), enc("germany is the capital of berlin\n")]
    prior = torch.tensor([0.8, 0.2]).log()
    ctx = [([z + p[0] for z in passages], prior) for p in plain]
    cands = sorted(set(WORDS))
    got = probe_causal_lm(lm, tok, facts, tpl, candidates=cands, contexts=ctx)
    ids = [enc(" " + c) for c in cands]
    ranks, plain_ranks = [], []
    for f, (prefixes, _), (p,) in zip(facts, ctx, plain):
        p_y = sum(w * candidate_log_probs(lm, pre, ids).exp() for w, pre in zip((0.8, 0.2), prefixes))  # (C,)
        ranks.append(int((p_y > p_y[cands.index(f.obj)]).sum()) + 1)
        lp = candidate_log_probs(lm, p, ids)
        plain_ranks.append(int((lp > lp[cands.index(f.obj)]).sum()) + 1)
    assert ranks != plain_ranks  # the passages change the ranking here, so the check below is not empty
    assert got["mrr"] == pytest.approx(sum(1 / r for r in ranks) / len(ranks))
    assert got["p@1"] == pytest.approx(sum(r == 1 for r in ranks) / len(ranks))
    with pytest.raises(ConfigError, match="one \\(prefixes, log prior\\) per fact"):
        probe_causal_lm(lm, tok, facts, tpl, contexts=ctx[:2])


def test_mined_templates_and_the_ensemble(mlm, tmp_path):
    from ptmkit.analysis.knowledge import Fact, mine_templates, probe_ensemble, read_evidence

    _write(tmp_path / "P19.jsonl.gz", [
        {"sub_label": "rome", "obj_label": "paris", "evidences": [
            {"sub_surface": "Anna", "masked_sentence": "Anna was born in [MASK] in 1960."},
            {"sub_surface": "Bo", "masked_sentence": "Bo was born in [MASK] ."},
            {"sub_surface": "Cy", "masked_sentence": "[MASK] is the birthplace of Cy ."},
            {"sub_surface": "Di", "masked_sentence": "Di , a singer who was later famous , came from far [MASK] ."}]}])
    mined = mine_templates(read_evidence(tmp_path / "P19.jsonl.gz"), top=3)
    assert mined[0] == ("[X] was born in [Y] .", 2) and ("[Y] is the birthplace of [X] .", 1) in mined
    assert all("singer" not in t for t, _ in mined)  # more than 5 words apart: not a template
    model, tok = mlm
    facts = [Fact("rome", "paris"), Fact("berlin", "paris")]
    with torch.no_grad():
        model.head.bias[tok.token_to_id("paris")] += 100.0
    r = probe_ensemble(model, tok, facts, [t for t, _ in mined])
    assert r["p@1"] == 1.0 and r["templates"] == len(mined)
    with torch.no_grad():
        model.head.bias[tok.token_to_id("paris")] -= 100.0


def test_optiprompt_learns_a_relation_on_a_frozen_model(mlm):
    from ptmkit.analysis.knowledge import Fact, probe_optiprompt, train_optiprompt

    _, tok = mlm
    torch.manual_seed(0)  # weights at std 0.2: BERT's 0.02 gives a random model whose output ignores its input
    model = build_model("bert", make_config("bert", dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2,
                                                         num_heads=2, intermediate_size=64, max_position_embeddings=32,
                                                         initializer_range=0.2)), "masked-lm").eval()
    facts = [Fact(s, "berlin") for s in ("rome", "paris", "italy", "germany")] + [Fact("france", "capital")]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    untrained = train_optiprompt(model, tok, facts, n=3, init_template="[X] was born in [Y] .", epochs=0)
    prompt = train_optiprompt(model, tok, facts, n=3, init_template="[X] was born in [Y] .", epochs=30, lr=5e-2)
    r = probe_optiprompt(model, tok, facts, prompt)
    assert r["asked"] == 5 and r["p@1"] >= 0.8  # the trained vectors point the mask at the relation's object
    assert probe_optiprompt(model, tok, facts, untrained)["p@1"] == 0.0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is unchanged


def test_autoprompt_finds_triggers_that_lower_the_loss(mlm):
    from ptmkit.analysis.knowledge import Fact, autoprompt, probe_triggers

    _, tok = mlm
    torch.manual_seed(0)
    model = build_model("bert", make_config("bert", dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2,
                                                         num_heads=2, intermediate_size=64, max_position_embeddings=32,
                                                         initializer_range=0.2)), "masked-lm").eval()
    facts = [Fact(s, "berlin") for s in ("rome", "paris", "italy", "germany")]
    the = tok.encode("the", add_special_tokens=False)[0]
    start = probe_triggers(model, tok, facts, [the] * 3)
    found = autoprompt(model, tok, facts, n_triggers=3, iterations=20, candidates=8)
    after = probe_triggers(model, tok, facts, found)
    assert found != [the] * 3 and after["mrr"] > start["mrr"]
    assert not any(p.requires_grad is False for p in model.parameters())  # the model's flags are restored
