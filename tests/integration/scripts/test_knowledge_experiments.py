"""The knowledge and retrieval studies (issue 17: RAG and REALM on LAMA, knowledge pre-training, retrieval recall,
kNN-LM, the retrieval benchmark) run end to end on a LAMA subset with tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import shared_path
from tests.integration.scripts.helpers import BENCH, EXP, load_script, run_main, tiny_causal_lm


# six T-REx relations with common one-word objects (languages, religions, places): enough for every stage of the
# knowledge scripts, read in half a second where all 28 take ~4 s (each time a script reads LAMA)
MINI_LAMA = ("P103", "P140", "P19", "P1412", "P407", "P364")


@pytest.fixture(scope="session")
def mini_data_root(tmp_path_factory) -> Path:
    """A data root (PTMKIT_DATA) holding only lama/: relations.jsonl and the MINI_LAMA T-REx files, linked to the
    shared data's."""
    lama = shared_path("lama")  # a missing shared data root fails here, by name
    root = tmp_path_factory.mktemp("data")
    (root / "lama" / "TREx").mkdir(parents=True)
    for rel in MINI_LAMA:
        (root / "lama" / "TREx" / f"{rel}.jsonl.gz").symlink_to(lama / "TREx" / f"{rel}.jsonl.gz")
    (root / "lama" / "relations.jsonl").symlink_to(lama / "relations.jsonl")
    return root


@pytest.fixture(scope="session")
def tiny_retrieval_models(tmp_path_factory, mini_data_root) -> tuple[Path, Path]:
    """A tiny BERT encoder (the retriever, and REALM's reader tokenizer: WordPiece with [MASK], 1,500 tokens, so
    common objects such as "English" are one token and LAMA asks them) and a tiny LLaMA generator with a byte-level
    BPE, both trained on LAMA evidence so the scripts' real data reads through them. Built once; read-only."""
    import torch

    from ptmkit.data.kg import read_lama
    from ptmkit.data.tokenizer import Tokenizer
    from ptmkit.models import build_model, make_config, save_model

    out = tmp_path_factory.mktemp("tiny_retrieval")
    _, evidence = read_lama(mini_data_root / "lama", held_out=0.0)
    texts = [e.text for e in evidence[::8]]
    torch.manual_seed(0)
    small = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    enc_tok = Tokenizer.train(texts, "wordpiece", vocab_size=1500, min_frequency=1, model_max_length=256)
    save_model(build_model("bert", make_config("bert", dict(vocab_size=enc_tok.vocab_size, max_position_embeddings=256,
                                                            **small)), "base"), out / "enc")
    enc_tok.save(out / "enc")
    gen_tok = Tokenizer.train(texts, "bpe", vocab_size=600, min_frequency=1)
    save_model(build_model("llama", make_config("llama", dict(vocab_size=gen_tok.vocab_size, num_kv_heads=1,
                                                              max_position_embeddings=512, **small)), "causal-lm"),
               out / "gen")
    gen_tok.save(out / "gen")
    return out / "enc", out / "gen"


def test_rag_lama(capsys, data_dir, tmp_path, tiny_retrieval_models):
    """--smoke on tiny stand-ins (every stage, no docs); a repeated command reuses the finished rows: a value planted
    in one shows up in the new summary."""
    enc, gen = tiny_retrieval_models
    argv = ["--smoke", "--generator", str(gen), "--encoder", str(enc), "--relations", "P103,P140",
            "--out", str(tmp_path / "rag")]
    _, line = run_main(EXP / "rag_lama.py", argv, capsys)
    assert line["experiment"] == "rag_lama" and line["facts"] == 4 and line["ks"] == [1, 2]
    assert set(line["macro"]) == {"none", "with-k1", "with-k2", "without-k1", "without-k2"}
    assert line["macro"]["without-k2"]["gold_recall"] == 0.0  # the asked facts' evidence is not in that index
    assert line["macro"]["with-k2"]["gold_recall"] >= line["macro"]["with-k1"]["gold_recall"]
    assert line["estimated_full_min"]["total"] > 0
    row = tmp_path / "rag" / "rows" / "with-k1" / "P140.json"
    saved = json.loads(row.read_text())
    row.write_text(json.dumps({**saved, "p@1": 0.5, "asked": saved["asked"]}))
    _, again = run_main(EXP / "rag_lama.py", argv, capsys)
    assert again["macro"]["with-k1"]["p@1"] == pytest.approx((0.5 + json.loads(
        (tmp_path / "rag" / "rows" / "with-k1" / "P103.json").read_text())["p@1"]) / 2)


def test_realm(capsys, tmp_path, monkeypatch, tiny_retrieval_models, mini_data_root):
    """--smoke on a tiny encoder/tokenizer and bert-tiny over six LAMA relations (the graph, the salient-span
    dictionary and the relation task read them): every stage, the equal-compute plan, LAMA of the reader alone and
    of REALM with the retriever its run saved, no docs."""
    enc, _ = tiny_retrieval_models
    monkeypatch.setenv("PTMKIT_DATA", str(mini_data_root))
    out = tmp_path / "realm"
    _, line = run_main(EXP / "realm.py", ["--smoke", "--encoder", str(enc), "--preset", "bert-tiny",
                                          "--rows", "realm,mlm", "--max-sentences", "200", "--lama-max", "20",
                                          "--ft-train", "24", "--ft-dev", "12", "--batch-size", "4", "--out", str(out)],
                       capsys)
    assert line["experiment"] == "realm" and line["steps"]["realm"] == 4 and line["steps"]["mlm"] <= 8
    plan = json.loads((out / "plan.json").read_text())
    # equal compute: a realm step (reader over k + 1 rows, query encoder, refreshes) buys more MLM steps than one
    assert plan["rows"]["mlm"]["steps"] > 4 and plan["refresh"]["per_step"] > 0
    assert set(line["relation_acc"]) == {"realm", "mlm", "random"} and line["estimated_full_min"]["total"] > 0
    # LAMA with retrieval asked the same facts as the reader alone, through the retriever the run saved
    ev = json.loads((out / "results.json").read_text())["evaluation"]["realm"]
    for split in ("seen", "unseen"):
        assert ev[f"lama_{split}_retrieval"]["asked"] == ev[f"lama_{split}"]["asked"] > 0
    assert set(line["lama_p@1_with_retrieval"]) == {"seen", "unseen"}
    assert ev["retrieval"]["k"] == 4 and ev["retrieval"]["null_passage"] and ev["retrieval"]["passages"] >= 200
    assert (out / "pretrain" / "realm" / "retriever" / "query_encoder" / "retriever.json").is_file()


def test_knowledge_pretraining(capsys, tmp_path, monkeypatch, mini_data_root):
    """--smoke at bert-tiny over six LAMA relations: graph, tokenizer, TransE, links, the equal-compute plan, every
    row's pre-training, held-out MLM and LAMA (ERNIE also with linked entities), relation classification with a
    random-init baseline; the command's own caps win over the smoke's, and a repeated command reuses finished runs."""
    monkeypatch.setenv("PTMKIT_DATA", str(mini_data_root))
    out = tmp_path / "kp"
    argv = ["--smoke", "--preset", "bert-tiny", "--batch-size", "4", "--rows", "bert,ernie,kepler", "--ft-train",
            "24", "--ft-dev", "12", "--lama-max", "20", "--out", str(out)]
    mod = load_script(EXP / "knowledge_pretraining.py")
    res = mod.main(argv)
    assert res["runs"]["bert"]["steps"] == 8  # the smoke's budget, in steps of the bert row
    for row in ("ernie", "kepler"):  # equal FLOPs: a costlier step buys fewer steps
        assert res["runs"][row]["step_flops"] > res["runs"]["bert"]["step_flops"]
        assert 1 <= res["runs"][row]["steps"] < 8
    assert set(res["evaluation"]) == {"bert", "ernie", "ernie + linked entities", "kepler"}
    for ev in res["evaluation"].values():
        assert 0 < ev["lama_seen"]["asked"] <= 20 and 0 < ev["lama_unseen"]["asked"] <= 20  # --lama-max kept
        assert 0 < ev["mlm_heldout"] < 20
    assert set(res["finetune"]) == {"bert", "ernie", "kepler", "random"} and "estimated_full_min" not in res
    text = (out / "knowledge.md").read_text()
    assert "| bert-tiny, MLM (no knowledge) | 8 |" in text and "no pre-training (bert-tiny, random init)" in text
    ft = out / "finetune" / "kepler" / "seed0" / "results.json"
    saved = json.loads(ft.read_text())
    ft.write_text(json.dumps({**saved, "final": {**saved["final"], saved["main_metric"]: 0.625}}))
    again = mod.main(argv)
    assert again["finetune"]["kepler"] == [62.5] and again["runs"] == res["runs"]


def test_retrieval_recall(capsys, tmp_path, monkeypatch, tiny_retrieval_models, mini_data_root):
    """Issue 17's recall@k on the tiny encoder over a seeded sample of the six LAMA relations, no docs: the counts
    of the json line match the corpus written, recall@k lies in [0, 1] and grows with k, a cut-off past the corpus's
    size finds every gold sentence (the passage -> sentence mapping is whole), and BM25, which sees the subject's
    words, beats chance at k = 1."""
    import numpy as np

    enc, _ = tiny_retrieval_models
    monkeypatch.setenv("PTMKIT_DATA", str(mini_data_root))
    mod = load_script(EXP / "retrieval_recall.py")
    # recall() on a planted ranking: question 0's gold document is second, question 1's is never retrieved
    assert mod.recall(np.array([[2, 0, 1], [1, 2, 0]]), [{0}, {5}], [1, 2, 3]) == {1: 0.0, 2: 0.5, 3: 0.5}
    assert mod.question("[X] was born in [Y] .", "Allan Peiper") == "Allan Peiper was born in ?"
    out = tmp_path / "rr"
    summary, line = run_main(EXP / "retrieval_recall.py",
                             ["--encoder", str(enc), "--max-facts", "40", "--ks", "1,5,100000", "--precision", "fp32",
                              "--batch-size", "64", "--out", str(out), "--docs", ""], capsys)
    assert line == json.loads(json.dumps(summary)) == json.loads((out / "result.json").read_text())
    assert line["experiment"] == "retrieval_recall" and line["questions"] == 40
    sentences = (out / "corpus.txt").read_text().splitlines()
    assert line["sentences"] == len(sentences) == len(set(sentences)) >= 40  # deduplicated, one a line
    assert line["passages"] >= line["sentences"]
    assert set(line["recall"]) == {"bm25", "dense"}
    for r in line["recall"].values():
        assert list(r) == ["1", "5", "100000"] and all(0.0 <= v <= 1.0 for v in r.values())
        assert r["1"] <= r["5"] <= r["100000"] == 1.0
    # each question owns about sentences / questions of the corpus's sentences, so chance at k = 1 is ~ 1 / questions
    assert line["recall"]["bm25"]["1"] > 10 / line["questions"]
    assert (out / "index").is_dir()


def test_knn_lm(capsys, tmp_path):
    """kNN-LM on a tiny causal LM with a flat datastore from a WikiText-2 valid slice, scoring a test slice, no docs:
    the grid holds exactly the (k, T, λ) asked (k capped by the entries), λ = 0 reproduces the plain sliding-window
    perplexity (causal_perplexity) bit for bit, and a repeated command reuses the datastore."""
    import itertools

    from ptmkit.analysis.lm_eval import causal_perplexity
    from ptmkit.data.tokenizer import Tokenizer
    from ptmkit.recipes.evaluate import load_adapted
    from ptmkit.recipes.knn_lm import eval_tokens

    model = tiny_causal_lm(tmp_path / "lm")
    wt = shared_path("corpora", "wikitext-2")
    texts = {}
    for split, n in (("valid", 40), ("test", 20)):
        with open(wt / f"{split}.txt", encoding="utf-8") as f:
            texts[split] = tmp_path / f"{split}.txt"
            texts[split].write_text("".join(itertools.islice((x for x in f if x.strip()), n)))
    out = tmp_path / "knn"
    argv = ["--model", str(model), "--datastore-corpus", str(texts["valid"]), "--eval-text", str(texts["test"]),
            "--max-datastore-tokens", "1500", "--max-eval-tokens", "300", "--window", "64", "--stride", "32",
            "--precision", "fp32", "--kind", "flat", "--ks", "4,16,100000", "--lambdas", "0,0.25,0.5",
            "--temperatures", "1,10", "--out", str(out), "--docs", ""]
    summary, line = run_main(EXP / "knn_lm.py", argv, capsys)
    assert line == json.loads(json.dumps(summary))
    assert line["experiment"] == "knn_lm" and line["entries"] == 1500 - 1 and line["eval_tokens"] == 300 - 1
    grid = json.loads((out / "result.json").read_text())["grid"]
    assert sorted((g["k"], g["temperature"], g["lambda"]) for g in grid) == \
        sorted(itertools.product([4, 16], [1.0, 10.0], [0.0, 0.25, 0.5]))  # 100000 > entries: dropped
    lm, tok = load_adapted(model).eval(), Tokenizer.load(model)
    plain = causal_perplexity(lm, eval_tokens(texts["test"], tok, 300), window=64, stride=32, show_progress=False)
    assert plain["tokens"] == line["eval_tokens"]
    assert all(g["perplexity"] == plain["perplexity"] for g in grid if g["lambda"] == 0)  # exactly, not approximately
    assert line["base"] == round(plain["perplexity"], 4)
    assert line["best"]["perplexity"] == min(g["perplexity"] for g in grid) and line["paper_setting"] is None
    assert all(math.isfinite(g["perplexity"]) and g["perplexity"] > 1 for g in grid)
    assert all(g["perplexity"] != plain["perplexity"] for g in grid if g["lambda"] > 0)  # the neighbours count
    again = load_script(EXP / "knn_lm.py").main(argv)
    assert f"reusing the datastore in {out / 'store'} (1,499 entries" in capsys.readouterr().out
    assert again["entries"] == line["entries"] and again["base"] == line["base"] and again["best"] == line["best"]


def test_retrieval_benchmark(capsys, tiny_retrieval_models):
    """Index build and batched search, ptmkit against sentence-transformers + FAISS, on the tiny encoder: both
    sides' rates, positive ratios consistent with them, the counts asked, and both sides finding the same passages.
    (Most of its time is importing sentence-transformers.)"""
    enc, _ = tiny_retrieval_models
    summary, line = run_main(BENCH / "retrieval.py", ["--model", str(enc), "--passages", "40", "--queries", "16",
                                                      "--k", "5", "--batch-size", "16", "--rounds", "1"], capsys)
    assert line == json.loads(json.dumps(summary))
    assert line["benchmark"] == "retrieval" and line["model"] == "enc" and line["passages"] == 40
    assert line["ours"] > 0 and line["reference"] > 0 and line["ratio"] > 0
    s = line["search"]
    assert s["queries"] == 16 and s["k"] == 5 and s["ours"] > 0 and s["reference"] > 0 and s["ratio"] > 0
    assert line["ratio"] == pytest.approx(line["ours"] / line["reference"], rel=0.01)  # the same medians
    assert s["ratio"] == pytest.approx(s["ours"] / s["reference"], rel=0.01)
    # the same weights and pooling on both sides: the same top 5 of 40 (chance would share ~ 5 / 40 of them)
    assert 0.9 <= s["top_k_agreement"] <= 1.0
    assert line["ours_s"]["n"] == line["reference_s"]["n"] == 1
