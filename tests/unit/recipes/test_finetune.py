"""Tests for ptmkit.recipes.finetune / encode and the `ptm finetune` / `ptm evaluate` commands, on a tiny
BERT (1 layer, width 32) with a WordPiece tokenizer trained on the synthetic sentences below."""

from __future__ import annotations

import argparse
import json
import random

import numpy as np
import pytest
import torch

from ptmkit.data.encode import (
    IGNORE_INDEX, bucket_batches, collate, encode_texts, encode_words, prepare_backend, word_predictions,
)
from ptmkit.recipes.finetune import FinetuneConfig, evaluate, finetune
from ptmkit.config import ConfigError
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.models import build_model, load_model, make_config, save_model

POS = ["good", "great", "lovely", "superb", "fine"]
NEG = ["bad", "awful", "poor", "dreadful", "terrible"]
FILL = ["the", "movie", "was", "plot", "a", "film", "acting", "quite", "really", "story"]
NAMES = ["john", "mary", "smith", "obama"]
PLACES = ["paris", "london", "berlin"]


def _sentence(rng: random.Random, label: int) -> str:
    words = rng.sample(FILL, 4) + [rng.choice(POS if label else NEG)]
    rng.shuffle(words)
    return " ".join(words)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU extra threads only wait."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A saved base BERT (no head) + WordPiece tokenizer; fine-tuning adds the heads."""
    rng = random.Random(0)
    texts = [_sentence(rng, i % 2) for i in range(200)] + [" ".join(NAMES + PLACES + ["said", "in"])] * 5
    tok = Tokenizer.train(texts, "wordpiece", vocab_size=120, min_frequency=1)
    cfg = make_config("bert", dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                                   intermediate_size=64, max_position_embeddings=64, dropout=0.0,
                                   attention_dropout=0.0))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_model(build_model("bert", cfg), path)
    tok.save(path)
    return path


def _write_sst(d, n: int, seed: int, labelled: bool = True):
    rng = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        y = i % 2
        rows.append(f"{_sentence(rng, y)}\t{y}" if labelled else f"{i}\t{_sentence(rng, y)}")
    header = "sentence\tlabel" if labelled else "index\tsentence"
    return "\n".join([header, *rows]) + "\n"


@pytest.fixture(scope="module")
def sst_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sst")
    (d / "train.tsv").write_text(_write_sst(d, 96, 1))
    (d / "dev.tsv").write_text(_write_sst(d, 40, 2))
    (d / "test.tsv").write_text(_write_sst(d, 12, 3, labelled=False))
    return d


def _cfg(model, data_dir, out, **kw):
    base = dict(model=str(model), task="sst2", data_dir=str(data_dir), out=str(out), epochs=8.0,
                batch_size=16, lr=1e-2, warmup_ratio=0.0, precision="fp32", show_progress=False,
                log_every=2, max_length=32)
    return FinetuneConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- encoding


def test_token_alignment_labels_first_subtoken_only(tiny_model):
    backend = prepare_backend(Tokenizer.load(tiny_model))
    sents = [["john", "loves", "unbelievably", "paris"], ["mary", "\u200b", "berlin"]]
    tags = [[1, 0, 0, 3], [1, 0, 3]]
    enc = encode_words(backend, sents, tags, max_length=32)
    for s, (sent, t) in enumerate(zip(sents, tags)):
        words = np.array(backend.encode(sent, is_pretokenized=True).word_ids, dtype=float)
        labels = enc.labels[s]
        assert labels[0] == IGNORE_INDEX and labels[-1] == IGNORE_INDEX  # [CLS], [SEP]
        for pos, w in enumerate(words):
            first = not np.isnan(w) and (pos == 0 or words[pos - 1] != w)
            assert labels[pos] == (t[int(w)] if first else IGNORE_INDEX)
    # "unbelievably" is not in the tiny vocabulary: several pieces, only the first labelled
    assert (np.array(backend.encode(sents[0], is_pretokenized=True).word_ids[1:-1]) == 2).sum() > 1
    # the zero-width space yields no token: its word has no position and predicts the fill tag
    assert 1 not in enc.word_index[1].tolist()
    # reading predictions at the first pieces gives back one tag per word
    back = word_predictions(enc, [np.where(y == IGNORE_INDEX, 9, y) for y in enc.labels], fill=0)
    assert [b.tolist() for b in back] == [[1, 0, 0, 3], [1, 0, 3]]


def test_overlong_truncate_warns_once_and_error_names_example(tiny_model):
    backend = prepare_backend(Tokenizer.load(tiny_model))
    texts = ["good film", "the movie was " * 10, "bad", "a plot " * 20]
    with pytest.warns(UserWarning, match=r"train\.tsv: truncated 2 of 4 examples .*max_length=8") as rec:
        enc = encode_texts(backend, texts, None, [1, 0, 0, 1], max_length=8, source="train.tsv")
    assert len(rec) == 1 and enc.truncated == 2 and enc.lengths.max() == 8
    assert enc.input_ids[1][-1] == Tokenizer.load(tiny_model).sep_id  # still ends with [SEP]
    with pytest.raises(ValueError, match=r"train\.tsv: example 1 is 32 tokens long, over max_length=8"):
        encode_texts(backend, texts, None, None, max_length=8, overlong="error", source="train.tsv")
    # pairs: longest-first truncation keeps both segments
    with pytest.warns(UserWarning, match="truncated 1 of 1"):
        enc = encode_texts(backend, ["good " * 20], ["bad film"], [0], max_length=10)
    assert enc.lengths[0] == 10 and enc.type_ids[0][-1] == 1


def test_bucketing_covers_every_example_and_cuts_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=1000)
    batches = bucket_batches(lengths, 16, np.random.default_rng(1), chunk_batches=10)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))

    def pad(bs):
        return sum(len(b) * lengths[b].max() for b in bs)

    plain = bucket_batches(lengths, 16, np.random.default_rng(1), chunk_batches=0)
    assert pad(batches) < 0.75 * pad(plain)
    again = bucket_batches(lengths, 16, np.random.default_rng(1), chunk_batches=10)
    assert all((a == b).all() for a, b in zip(batches, again))  # seeded: same order


def test_compact_ids_keep_every_value_and_collate_widens_them():
    """Ids are stored as uint16 when a chunk's ids fit, else int32 (a 100k-token vocabulary); both collate exactly."""
    from types import SimpleNamespace

    from ptmkit.data.encode import Encoded, _ids

    small = [SimpleNamespace(ids=[2, 65535, 7], type_ids=[0, 0, 1])]
    large = [SimpleNamespace(ids=[2, 65536, 99_999], type_ids=[0, 1, 1])]
    (ids_s,), (types_s,) = _ids(small)
    (ids_l,), _ = _ids(large)
    assert ids_s.dtype == np.uint16 and types_s.dtype == np.int8 and ids_l.dtype == np.int32
    enc = Encoded(input_ids=[ids_s, ids_l], type_ids=[types_s, types_s], lengths=np.array([3, 3]),
                  labels=np.array([0, 1]))
    batch = collate(enc, np.array([0, 1]), pad_id=0)
    assert batch["input_ids"].dtype == torch.int64
    assert batch["input_ids"].tolist() == [[2, 65535, 7], [2, 65536, 99_999]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 1]]


def test_collate_pads_and_masks(tiny_model):
    backend = prepare_backend(Tokenizer.load(tiny_model))
    enc = encode_words(backend, [["john"], ["mary", "said", "in", "paris"]], [[1], [1, 0, 0, 3]], 32)
    b = collate(enc, np.array([0, 1]), pad_id=0)
    t = int(enc.lengths.max())
    assert b["input_ids"].shape == b["labels"].shape == (2, t)
    assert b["attention_mask"].sum(1).tolist() == enc.lengths.tolist()
    assert (b["labels"][0, enc.lengths[0]:] == IGNORE_INDEX).all()


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("kw, msg", [
    (dict(task="sst3"), "unknown task 'sst3'"),
    (dict(text_fields=["a"]), "only apply to task='table'"),
    (dict(lr=-1.0), "lr=-1.0"),
    (dict(warmup_ratio=1.0), "warmup_ratio"),
    (dict(overlong="drop"), "overlong"),
    (dict(max_length=2), "max_length"),
    (dict(eval_split="train"), "held-out"),
])
def test_config_errors(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        FinetuneConfig(**{**dict(model="m", task="sst2", out="o"), **kw})


def test_config_accepts_glue_spellings():
    assert FinetuneConfig(model="m", task="SST-2", out="o").task == "sst2"
    assert FinetuneConfig(model="m", task="table", out="o").text_fields == ["text"]


# ----------------------------------------------------------------------------- training


def test_finetune_classification_learns_and_writes_run(tiny_model, sst_dir, tmp_path):
    out = tmp_path / "run"
    res = finetune(_cfg(tiny_model, sst_dir, out, eval_every=12, test_split="test"))
    assert res["dev"]["accuracy"] >= 0.9 > res["majority_baseline_accuracy"]
    assert res["majority_baseline_accuracy"] == pytest.approx(0.5)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in records if r["split"] == "train"]
    assert np.mean(train[-3:]) < 0.5 * np.mean(train[:3])  # loss falls
    assert [r["step"] for r in records if r["split"] == "eval"] == [12, 24, 36, 48]
    for name in ("config.json", "loss.png", "results.json", "best/model.safetensors", "best/tokenizer.json"):
        assert (out / name).is_file(), name
    saved_cfg = json.loads((out / "config.json").read_text())
    assert saved_cfg["lr"] == 1e-2 and saved_cfg["data_dir"] == str(sst_dir)
    saved = json.loads((out / "best" / "config.json").read_text())
    assert saved["id2label"] == {"0": "negative", "1": "positive"} and saved["architectures"] == ["BertForSequenceClassification"]
    assert res["examples_per_s"] > 0 and res["tokens_per_s"] > 0 and res["train_time_s"] > 0
    # the unlabelled test split: predictions only
    assert res["test"] == {}
    rows = (out / "test" / "predictions.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 13 and rows[1].split("\t")[1] in ("negative", "positive")

    # evaluate() on the saved best model reproduces the dev accuracy of the best step
    ev = evaluate(out / "best", "sst2", sst_dir, "dev", tmp_path / "ev", precision="fp32", show_progress=False)
    assert ev["metrics"]["accuracy"] == pytest.approx(res["dev"]["accuracy"])
    rows = (tmp_path / "ev" / "predictions.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction\tgold" and len(rows) == 41
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["labelled"] is True

    with pytest.raises(ConfigError, match="already holds a fine-tuning run"):
        finetune(_cfg(tiny_model, sst_dir, out))


def test_finetune_regression_table(tiny_model, tmp_path):
    rng = random.Random(0)
    for split, n in (("train", 96), ("dev", 32)):
        lines = []
        for i in range(n):
            y = i % 2
            lines.append(json.dumps({"text": _sentence(rng, y), "score": 4.0 * y + 0.5}))
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    res = finetune(_cfg(tiny_model, tmp_path, tmp_path / "run", task="table", label_field="score",
                        regression=True))
    assert res["main_metric"] == "pearson" and res["dev"]["pearson"] > 0.8
    assert "majority_baseline_accuracy" not in res
    model = load_model(tmp_path / "run" / "best")
    assert model.num_labels == 1
    # evaluate reads the task, columns and regression flag from the saved model directory
    ev = evaluate(tmp_path / "run" / "best", data_dir=tmp_path, split="dev", out=tmp_path / "ev",
                  precision="fp32", show_progress=False)
    assert ev["metrics"]["pearson"] == pytest.approx(res["dev"]["pearson"], abs=1e-5)
    first = (tmp_path / "ev" / "predictions.tsv").read_text().splitlines()[1].split("\t")
    assert float(first[2]) == 0.5


def _one_headerless_file(path, rows_per_split: dict[str, int]):
    """Every split in one gzipped CSV without a header: split, label name, text."""
    import gzip

    rng = random.Random(5)
    rows = [f"{split},{'pos' if i % 2 else 'neg'},{_sentence(rng, i % 2)}"
            for split, n in rows_per_split.items() for i in range(n)]
    rng.shuffle(rows)
    with gzip.open(path, "wt") as f:
        f.write("\n".join(rows) + "\n")


def test_cli_finetune_headerless_table_with_a_split_column_then_evaluate(tiny_model, tmp_path, capsys):
    """A user's own file as it arrives: no header, all splits in one gzipped CSV, label names as text."""
    from ptmkit.cli.main import main

    data = tmp_path / "all.csv.gz"
    _one_headerless_file(data, {"training": 96, "held-out": 40})
    common = ["--task", "table", "--data-file", str(data), "--columns", "part", "label", "text",
              "--split-column", "part"]
    rc = main(["finetune", str(tiny_model), *common, "--out", str(tmp_path / "run"), "--train-split", "training",
               "--eval-split", "held-out", "--epochs", "8", "--batch-size", "16", "--lr", "1e-2", "--max-length", "32",
               "--precision", "fp32", "--no-progress"])
    assert rc == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["train_examples"] == 96 and res["eval_examples"] == 40 and res["dev"]["accuracy"] >= 0.9
    saved = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert saved["id2label"] == {"0": "neg", "1": "pos"}  # the file's own label names
    # evaluate reads the file, columns and split column from the saved model directory
    ev = evaluate(tmp_path / "run" / "best", split="held-out", precision="fp32", show_progress=False)
    assert ev["metrics"]["accuracy"] == pytest.approx(res["dev"]["accuracy"])
    # a split value the file does not have, and a column the file does not have: errors that say what is there
    assert main(["finetune", str(tiny_model), *common, "--out", str(tmp_path / "bad"), "--train-split", "train",
                 "--eval-split", "held-out"]) == 2
    err = capsys.readouterr().err
    assert "train" in err and "training" in err and "held-out" in err
    assert main(["finetune", str(tiny_model), "--task", "table", "--data-file", str(data), "--columns", "part",
                 "label", "text", "--split-column", "fold", "--out", str(tmp_path / "bad2")]) == 2
    assert "fold" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad2").exists()  # refused runs write nothing


def test_label_only_in_dev_is_an_error_naming_file_and_label(tiny_model, tmp_path):
    (tmp_path / "train.tsv").write_text("text\tlabel\ngood film\tpos\nbad film\tneg\n")
    (tmp_path / "dev.tsv").write_text("text\tlabel\nfine film\tpos\nodd film\tmeh\n")
    with pytest.raises(ValueError, match=r"dev.tsv.*meh.*training split"):
        finetune(_cfg(tiny_model, tmp_path, tmp_path / "run", task="table"))
    assert not (tmp_path / "run").exists()


def _write_conll(path, n: int, seed: int):
    rng = random.Random(seed)
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
        toks = []
        for _ in range(rng.randint(3, 7)):
            r = rng.random()
            if r < 0.25:
                toks += [(rng.choice(NAMES), "B-PER")] + ([("smith", "I-PER")] if rng.random() < 0.5 else [])
            elif r < 0.45:
                toks.append((rng.choice(PLACES), "B-LOC"))
            else:
                toks.append((rng.choice(FILL + ["said", "in"]), "O"))
        lines += [f"{w} NN O {t}" for w, t in toks] + [""]
    path.write_text("\n".join(lines) + "\n")


def test_finetune_token_classification(tiny_model, tmp_path):
    _write_conll(tmp_path / "train.txt", 120, 0)
    _write_conll(tmp_path / "dev.txt", 40, 1)
    res = finetune(_cfg(tiny_model, tmp_path, tmp_path / "run", task="conll2003", epochs=10.0,
                        max_length=64))
    assert res["main_metric"] == "entity_f1" and res["dev"]["entity_f1"] > 0.8
    saved = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert saved["id2label"] == {"0": "O", "1": "B-LOC", "2": "B-PER", "3": "I-LOC", "4": "I-PER"}
    ev = evaluate(tmp_path / "run" / "best", "conll2003", tmp_path, "dev", tmp_path / "ev",
                  precision="fp32", show_progress=False)
    assert ev["metrics"]["entity_f1"] == pytest.approx(res["dev"]["entity_f1"])
    assert set(ev["per_type"]) == {"PER", "LOC"}
    rows = (tmp_path / "ev" / "predictions.tsv").read_text().splitlines()
    _, pred, gold = rows[1].split("\t")
    assert len(pred.split()) == len(gold.split())  # one tag per word


# ----------------------------------------------------------------------------- errors


def test_missing_files_and_columns(tiny_model, sst_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"validation\.tsv not found .*holds \[.dev\.tsv"):
        finetune(_cfg(tiny_model, sst_dir, tmp_path / "a", eval_split="validation"))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        finetune(_cfg(tmp_path / "nope", sst_dir, tmp_path / "b"))
    (tmp_path / "train.csv").write_text("txt,label\nhello,1\n")
    (tmp_path / "dev.csv").write_text("txt,label\nhello,1\n")
    with pytest.raises(ValueError, match=r"column\(s\) \['text'\] not found; available columns: \['txt', 'label'\]"):
        finetune(_cfg(tiny_model, tmp_path, tmp_path / "c", task="table"))
    with pytest.raises(FileNotFoundError, match=r"no table file for split 'test'.*holds \['dev.csv', 'train.csv'\]"):
        finetune(_cfg(tiny_model, tmp_path, tmp_path / "d", task="table", text_fields=["txt"], eval_split="test"))


def test_overlong_error_stops_finetune(tiny_model, sst_dir, tmp_path):
    with pytest.raises(ValueError, match=r"train\.tsv: example \d+ is \d+ tokens long, over max_length=4"):
        finetune(_cfg(tiny_model, sst_dir, tmp_path / "r", max_length=4, overlong="error"))


def test_evaluate_rejects_wrong_head(tiny_model, sst_dir):
    with pytest.raises(ValueError, match="is a base model"):
        evaluate(tiny_model, "sst2", sst_dir, "dev", show_progress=False)


# ----------------------------------------------------------------------------- CLI


def _parser(module):
    parser = argparse.ArgumentParser()
    module.add_parser(parser.add_subparsers())
    return parser


def test_cli_finetune_then_evaluate(tiny_model, sst_dir, tmp_path, capsys):
    from ptmkit.cli import evaluate as ev_cli
    from ptmkit.cli import finetune as ft_cli

    args = _parser(ft_cli).parse_args([
        "finetune", str(tiny_model), "--task", "sst2", "--data-dir", str(sst_dir), "--out", str(tmp_path / "r"),
        "--epochs", "2", "--batch-size", "16", "--lr", "3e-3", "--precision", "fp32", "--no-progress",
        "--max-train-examples", "48", "--max-length", "32",
    ])
    assert args.run(args) == 0
    assert "accuracy" in capsys.readouterr().out
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["train_examples"] == 48 and res["steps"] == 6
    args = _parser(ev_cli).parse_args([
        "evaluate", str(tmp_path / "r" / "best"), "--data-dir", str(sst_dir), "--split", "test",
        "--out", str(tmp_path / "e"), "--no-progress",
    ])
    assert args.run(args) == 0
    assert "predictions only" in capsys.readouterr().out
    assert (tmp_path / "e" / "predictions.tsv").is_file()


def test_cli_defaults_mirror_config():
    import dataclasses

    from ptmkit.cli import finetune as ft_cli

    args = _parser(ft_cli).parse_args(["finetune", "m", "--task", "sst2", "--out", "o"])
    cfg = ft_cli.config_from_args(args)
    ref = FinetuneConfig(model="m", task="sst2", out="o")
    assert dataclasses.asdict(cfg) == dataclasses.asdict(ref)


def test_decoder_family_classifies_with_ids_and_mask_only(sst_dir, tmp_path):
    """GPT-2 heads take (input_ids, attention_mask); the last real token is pooled under right padding."""
    rng = random.Random(0)
    tok = Tokenizer.train([_sentence(rng, i % 2) for i in range(100)], "bpe", vocab_size=300, min_frequency=1)
    cfg = make_config("gpt2", dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                                   max_position_embeddings=64))
    save_model(build_model("gpt2", cfg, task="causal-lm"), tmp_path / "gpt")
    tok.save(tmp_path / "gpt")
    res = finetune(_cfg(tmp_path / "gpt", sst_dir, tmp_path / "run", max_steps=4))
    assert res["steps"] == 4 and 0 <= res["dev"]["accuracy"] <= 1
    assert load_model(tmp_path / "run" / "best").label_names == ["negative", "positive"]  # SST-2's real label names
    # padding must not change a prediction: each dev example alone vs in its padded batch
    for bs in (1, 64):
        evaluate(tmp_path / "run" / "best", "sst2", sst_dir, "dev", tmp_path / f"ev{bs}", precision="fp32",
                 batch_size=bs, show_progress=False)
    assert (tmp_path / "ev1" / "predictions.tsv").read_text() == (tmp_path / "ev64" / "predictions.tsv").read_text()
