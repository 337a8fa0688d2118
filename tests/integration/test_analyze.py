"""`ptm analyze`: each analysis end to end on a tiny model (with real UD, LAMA and WikiText files, a few lines),
results.json and plot written, the model directory unchanged; errors for the wrong head and bad labels."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from ptmkit.cli.main import main as ptm
from ptmkit.config import ConfigError
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import build_model, make_config, save_model
from ptmkit.recipes import analyze


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tests.conftest import shared_path

    data_dir = shared_path()
    d = tmp_path_factory.mktemp("an")
    texts = [line for line in (data_dir / "corpora" / "wikitext-2" / "valid.txt").read_text().splitlines()
             if line.strip()][:300]
    tok = Tokenizer.train(texts, "wordpiece", vocab_size=800, min_frequency=1)
    out = {}
    torch.manual_seed(0)
    for task in ("masked-lm", "base"):
        path = d / task
        save_model(build_model("bert", make_config("bert", dict(vocab_size=tok.vocab_size, hidden_size=32,
                                                                num_layers=2, num_heads=2, intermediate_size=64,
                                                                max_position_embeddings=128)), task), path)
        tok.save(path)
        out[task] = path
    (d / "text.txt").write_text("\n".join(texts[:40]) + "\n")
    return d, out


def _digest(path):
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_every_analysis_writes_results_and_a_plot(models, data_dir, tmp_path):
    d, m = models
    before = _digest(m["masked-lm"])
    lama = data_dir / "lama"
    assert ptm(["analyze", "lama", str(m["masked-lm"]), "--out", str(tmp_path / "lama"), "--facts",
                str(lama / "TREx" / "P19.jsonl.gz"), str(lama / "Squad" / "test.jsonl.gz"), "--relations",
                str(lama / "relations.jsonl")]) == 0
    r = json.loads((tmp_path / "lama" / "results.json").read_text())
    assert set(r["relations"]) == {"P19", "test"} and (tmp_path / "lama" / "lama.png").is_file()
    assert r["relations"]["P19"]["facts"] == 944
    r = analyze.lama(m["masked-lm"], tmp_path / "lama2", [lama / "TREx" / "P19.jsonl.gz"], lama / "relations.jsonl",
                     mined=3, optiprompt=2, autoprompt=2)
    ps = r["relations"]["P19"]["prompt_search"]
    assert {"manual", "mined", "mined_top1", "mined_ensemble", "optiprompt", "autoprompt"} <= set(ps)
    assert len(ps["mined"]) == 3
    r = analyze.attention(m["masked-lm"], tmp_path / "att", d / "text.txt", lines=10)
    assert len(r["statistics"]["entropy"]) == 2 and len(r["statistics"]["entropy"][0]) == 2
    assert (tmp_path / "att" / "attention.png").is_file()
    r = analyze.probe(m["base"], tmp_path / "probe", data_dir / "ud" / "en_ewt-ud-dev.conllu",
                      data_dir / "ud" / "en_pud-ud-test.conllu", transfer=data_dir / "ud" / "de_pud-ud-test.conllu",
                      max_train=100)
    assert len(r["curve"]) == 3 and len(r["transfer"]) == 3 and "NOUN" in r["labels"]
    assert all(0 <= x["accuracy"] <= 1 for x in r["curve"]) and (tmp_path / "probe" / "probe.png").is_file()
    r = analyze.syntax(m["base"], tmp_path / "syn", data_dir / "ud" / "en_ewt-ud-dev.conllu", max_sentences=30,
                       min_count=5)
    assert "nsubj" in r["relations"] and (tmp_path / "syn" / "syntax.png").is_file()
    r = analyze.perturbed(m["masked-lm"], tmp_path / "pm", data_dir / "ud" / "en_ewt-ud-dev.conllu", max_sentences=3,
                          max_words=8)
    assert r["sentences"] == 3 and 0 <= r["uas"] <= 1 and (tmp_path / "pm" / "perturbed.png").is_file()
    r = analyze.cka(m["masked-lm"], tmp_path / "cka", d / "text.txt", other=m["base"], lines=10)
    assert len(r["cka"]) == 3 and len(r["anisotropy"]) == 3
    assert _digest(m["masked-lm"]) == before  # analyses never change the model


def test_entity_probe_on_a_users_gzipped_conll_file(models, data_dir, tmp_path):
    """--label ner on CoNLL-2003-format files that are not in the shared data: gzip, IOB1 tags (re-spelled IOB2), the
    words' identities planted in the embeddings, so layer 0 finds the tags; the majority baseline is reported."""
    import gzip
    import random

    _, m = models
    rng = random.Random(0)
    entities = {"London": "LOC", "Paris": "LOC", "John": "PER", "Mary": "PER", "Google": "ORG", "Reuters": "ORG"}
    others = ["the", "city", "of", "was", "in", "and", "said", "to", "a", "new"]
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(300):
        for w in rng.sample(others, 4) + [rng.choice(list(entities))] + rng.sample(others, 2):
            lines.append(f"{w} NN I-NP {'I-' + entities[w] if w in entities else 'O'}")  # IOB1: entities open with I-
        lines.append("")
    path = tmp_path / "ner.txt.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    r = analyze.probe(m["base"], tmp_path / "ner", path, path, label="ner", max_train=200)
    assert r["labels"] == ["B-LOC", "B-ORG", "B-PER", "O"] and r["train_words"] == 200 * 7
    assert abs(r["majority_accuracy"] - 6 / 7) < 1e-6
    assert r["curve"][0]["accuracy"] > 0.99 and (tmp_path / "ner" / "probe.png").is_file()


def test_analysis_errors_name_the_fix(models, data_dir, tmp_path):
    d, m = models
    with pytest.raises(ConfigError, match="masked-LM head"):
        analyze.lama(m["base"], tmp_path / "x", [data_dir / "lama" / "TREx" / "P19.jsonl.gz"],
                     data_dir / "lama" / "relations.jsonl")
    with pytest.raises(ConfigError, match="no template"):
        analyze.lama(m["masked-lm"], tmp_path / "x", [data_dir / "lama" / "TREx" / "P19.jsonl.gz"])
    with pytest.raises(ConfigError, match="label must be"):
        analyze.probe(m["base"], tmp_path / "x", data_dir / "ud" / "en_ewt-ud-dev.conllu",
                      data_dir / "ud" / "en_pud-ud-test.conllu", label="xpos")
    with pytest.raises(ConfigError, match="CoNLL-2003"):  # a treebank where entity tags are expected
        analyze.probe(m["base"], tmp_path / "x", data_dir / "ud" / "en_ewt-ud-dev.conllu",
                      data_dir / "ud" / "en_pud-ud-test.conllu", label="ner")
    with pytest.raises(ConfigError, match="use --label ner"):  # an entity file where a treebank is expected
        analyze.probe(m["base"], tmp_path / "x", data_dir / "ner" / "conll2003" / "dev.txt",
                      data_dir / "ner" / "conll2003" / "test.txt", label="upos")


def test_attacks_on_a_classifier(models, data_dir, tmp_path):
    d, m = models
    tok = Tokenizer.load(m["base"])
    torch.manual_seed(0)
    clf = build_model("bert", make_config("bert", dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1,
                                                       num_heads=2, intermediate_size=64,
                                                       max_position_embeddings=128)), "sequence-classification",
                      num_labels=2)
    save_model(clf, tmp_path / "clf")
    tok.save(tmp_path / "clf")
    (tmp_path / "clf" / "finetune_task.json").write_text(json.dumps({"task": "sst2", "max_length": 64}))
    for kind in ("word", "char"):
        r = analyze.attack(tmp_path / "clf", tmp_path / kind, kind=kind, max_examples=6,
                           synonyms=data_dir / "lexical" / "ppdb_synonyms.txt",
                           treebank=data_dir / "ud" / "en_ewt-ud-dev.conllu")
        assert r["texts"] == 6 and 0 <= r["accuracy_after"] <= r["accuracy_before"] <= 1
        assert (tmp_path / kind / "attack.png").is_file()
    with pytest.raises(ConfigError, match="regression"):
        analyze.attack(tmp_path / "clf", tmp_path / "x", task="stsb", max_examples=2)
    r = analyze.heads(tmp_path / "clf", tmp_path / "heads", fractions=(0.5,), data_batches=1, max_eval_examples=20)
    assert [c["fraction"] for c in r["curve"]] == [0.0, 0.5] and len(r["importance"]) == 1
    assert (tmp_path / "heads" / "heads.png").is_file()
    from tests.unit.recipes.test_finetune import _write_sst
    sst = tmp_path / "sst"
    (sst.mkdir())
    (sst / "train.tsv").write_text(_write_sst(sst, 40, 1))
    (sst / "dev.tsv").write_text(_write_sst(sst, 20, 2))
    r = analyze.defend(tmp_path / "clf", m["base"], tmp_path / "def", data_dir=sst, attack_train=10, attack_dev=8,
                       synonyms=data_dir / "lexical" / "ppdb_synonyms.txt",
                       finetune_options={"epochs": 1.0, "batch_size": 8, "precision": "fp32", "max_length": 32})
    assert r["attacked_training_texts"] == 10 and set(r["original"]) == set(r["defended"])
    assert (tmp_path / "def" / "data" / "train.tsv").read_text().count("\n") == 41 + r["adversarial_training_examples"]
    r = analyze.calibration(tmp_path / "clf", tmp_path / "cal", ood_task="cola", passes=3, max_examples=40)
    assert r["examples"] == 20 and r["temperature"] > 0 and 0 <= r["plain"]["ece"] <= 1
    assert 0 <= r["ood"]["auroc_msp"] <= 1 and (tmp_path / "cal" / "calibration.png").is_file()
