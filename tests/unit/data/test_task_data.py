"""Tests for users' own task files through ptmkit.data.task_data (TaskSpec + load_split): header-less tables with
named columns, one file holding every split, labels only in dev, GLUE label names, every format gzipped, and each
error naming file, line, the problem and the fix. Every file is written in tmp_path."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from ptmkit.config import ConfigError
from ptmkit.data.glue import GLUE_TASKS, read_glue
from ptmkit.data.tables import has_labels, read_table
from ptmkit.data.task_data import TaskSpec, load_split


def P(path: Path) -> str:
    return re.escape(str(path))


def _write(path: Path, text: str, *, gz: bool = False, newline: str = "\n") -> Path:
    """Write `text` (lines joined by \\n) with the given line ending, gzipped when `gz`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.replace("\n", newline).encode("utf-8")
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def _labels(data) -> list[str]:
    return [data.label_names[e.label] if e.label is not None else None for e in data.examples]


# ---------------------------------------------------------------- GLUE label names


GLUE_NAMES = {
    "cola": ["unacceptable", "acceptable"],
    "sst2": ["negative", "positive"],
    "mrpc": ["not_equivalent", "equivalent"],
    "qqp": ["not_duplicate", "duplicate"],
    "mnli": ["entailment", "neutral", "contradiction"],
    "qnli": ["entailment", "not_entailment"],
    "rte": ["entailment", "not_entailment"],
    "wnli": ["not_entailment", "entailment"],
    "stsb": None,
}


def test_every_glue_task_carries_real_label_names():
    assert {k: (list(s.label_names) if s.label_names else None) for k, s in GLUE_TASKS.items()} == GLUE_NAMES


def test_glue_file_values_map_to_names_and_names_are_accepted(tmp_path):
    _write(tmp_path / "train.tsv", "sentence\tlabel\ngood .\t1\nbad .\t0\nfine .\tpositive\n")
    data = read_glue("sst2", tmp_path, "train")
    assert data.label_names == ["negative", "positive"] and [e.label for e in data.examples] == [1, 0, 1]
    _write(tmp_path / "dev.tsv", "sentence\tlabel\ngood .\t2\n")
    with pytest.raises(ValueError, match=r"dev\.tsv:2: unknown label '2'.*\['0', '1'\] \(negative, positive\)"):
        read_glue("sst2", tmp_path, "dev")


# ---------------------------------------------------------------- header-less tables


@pytest.mark.parametrize("fmt,sep", [("csv", ","), ("tsv", "\t")])
@pytest.mark.parametrize("gz", [False, True])
def test_headerless_table_with_named_columns(tmp_path, fmt, sep, gz):
    rows = [("a good film", "pos"), ("a dull film", "neg"), ("great", "pos")]
    _write(tmp_path / f"train.{fmt}", "\n".join(f"{t}{sep}{y}" for t, y in rows) + "\n", gz=gz)
    spec = TaskSpec("table", tmp_path, ["review"], "stars", columns=["review", "stars"])
    data, path = load_split(spec, "train")
    assert path.name == f"train.{fmt}" + (".gz" if gz else "")
    assert [e.text_a for e in data.examples] == [t for t, _ in rows]  # the first row is data, not a header
    assert data.label_names == ["neg", "pos"] and _labels(data) == ["pos", "neg", "pos"]


def test_headerless_row_with_wrong_field_count_names_file_and_line(tmp_path):
    path = _write(tmp_path / "train.tsv", "a\tpos\nb\tneg\textra\nc\tpos\n")
    with pytest.raises(ValueError, match=rf"{P(path)}:2: row has 3 columns, expected 2 as in the 2 columns you "
                                         r"named \['text', 'label'\] \(a tab inside a text\?\).*skip_bad_rows"):
        read_table(path, ["text"], "label", columns=["text", "label"])
    path = _write(tmp_path / "short.csv", "a,pos\nb\n")
    with pytest.raises(ValueError, match=rf"{P(path)}:2: row has 1 columns, expected 2"):
        read_table(path, ["text"], "label", columns=["text", "label"])
    with pytest.warns(UserWarning, match="skipped 1 bad row"):
        data = read_table(path, ["text"], "label", columns=["text", "label"], skip_bad_rows=True)
    assert len(data) == 1


def test_headerless_columns_on_a_file_with_a_header_is_an_error(tmp_path):
    path = _write(tmp_path / "train.csv", "text,label\na,pos\n")
    with pytest.raises(ValueError, match=rf"{P(path)}:1: this row repeats the column names.*has a header line; "
                                         "drop columns"):
        read_table(path, ["text"], "label", columns=["text", "label"])


def test_columns_do_not_apply_to_jsonl_or_fixed_tasks(tmp_path):
    path = _write(tmp_path / "train.jsonl", json.dumps({"text": "a", "label": "x"}) + "\n")
    with pytest.raises(ConfigError, match="JSON lines.*drop columns"):
        read_table(path, ["text"], "label", columns=["text", "label"])
    with pytest.raises(ConfigError, match=r"\['columns'\] only apply to task='table'"):
        TaskSpec("sst2", tmp_path, columns=["sentence", "label"])
    with pytest.raises(ConfigError, match="more than once"):
        TaskSpec("table", tmp_path, ["a"], columns=["a", "a"])


# ---------------------------------------------------------------- unknown columns


def test_unknown_column_errors_list_what_there_is(tmp_path):
    path = _write(tmp_path / "train.csv", "sentence,label,part\na,pos,train\n")
    with pytest.raises(ValueError, match=rf"{P(path)}:1: column\(s\) \['text'\] not found; available columns: "
                                         r"\['sentence', 'label', 'part'\]; pass the right names"):
        load_split(TaskSpec("table", tmp_path), "train")
    # the split column, in a file holding every split
    spec = TaskSpec("table", tmp_path, ["sentence"], split_column="split", data_file="train.csv")
    with pytest.raises(ValueError, match=rf"{P(path)}:1: column\(s\) \['split'\] not found; available columns"):
        load_split(spec, "train")
    # header-less: the names must be among the columns the user gave
    with pytest.raises(ConfigError, match=r"column\(s\) \['review'\] are not among columns \['text', 'label'\]"):
        TaskSpec("table", tmp_path, ["review"], columns=["text", "label"])
    hl = _write(tmp_path / "hl" / "train.tsv", "a\tb\n")
    spec = TaskSpec("table", tmp_path / "hl", ["text"], "stars", columns=["text", "label"])
    with pytest.raises(ValueError, match=rf"{P(hl)}:1: column\(s\) \['stars'\] not found; the columns you named: "
                                         r"\['text', 'label'\]; name them in columns"):
        load_split(spec, "train")


# ---------------------------------------------------------------- one file, every split


SPLITS_CSV = """text,label,split
good film,pos,train
bad film,neg,train
fine film,pos,dev
awful film,neg,dev
unseen film,,test
"""


@pytest.mark.parametrize("gz", [False, True])
def test_split_column_chooses_rows_by_value(tmp_path, gz):
    path = _write(tmp_path / "all.csv", SPLITS_CSV, gz=gz)
    spec = TaskSpec("table", tmp_path, split_column="split", data_file=path.name)
    assert spec.data_file == path
    train, src = load_split(spec, "train")
    assert src == path and [e.text_a for e in train.examples] == ["good film", "bad film"]
    dev, _ = load_split(spec, "dev", label_names=train.label_names)
    assert _labels(dev) == ["pos", "neg"] and dev.label_names == ["neg", "pos"]
    # test rows with empty labels: unlabelled for evaluation, an error for training
    test, _ = load_split(spec, "test", allow_unlabelled=True)
    assert test.examples[0].text_a == "unseen film" and not test.has_labels
    with pytest.raises(ValueError, match=rf"{P(path)}:6: empty label in 'label'"):
        load_split(spec, "test")


def test_split_column_with_user_split_names_jsonl_and_no_data_dir(tmp_path):
    recs = [{"t": "a", "y": 1, "fold": "training"}, {"t": "b", "y": 0, "fold": "validation"},
            {"t": "c", "y": 0, "fold": "training"}]
    path = _write(tmp_path / "data.jsonl", "\n".join(json.dumps(r) for r in recs) + "\n", gz=True)
    spec = TaskSpec("table", None, ["t"], "y", split_column="fold", data_file=path)
    train, _ = load_split(spec, "training")
    assert [e.text_a for e in train.examples] == ["a", "c"] and train.label_names == ["0", "1"]
    dev, _ = load_split(spec, "validation", label_names=train.label_names)
    assert _labels(dev) == ["0"]


def test_split_value_absent_lists_the_values_present(tmp_path):
    path = _write(tmp_path / "all.tsv", "text\tlabel\tsplit\na\tx\ttrain\nb\ty\ttrain\nc\tx\tvalid\n")
    spec = TaskSpec("table", tmp_path, split_column="split", data_file="all.tsv")
    with pytest.raises(ValueError, match=rf"{P(path)}: no row has split = 'dev'; the values present in column "
                                         r"'split' are 'train' \(2 rows\), 'valid' \(1 row\)\. Name the split"):
        load_split(spec, "dev")


def test_row_without_a_split_value_names_its_line(tmp_path):
    path = _write(tmp_path / "all.csv", "text,label,split\na,x,train\nb,y,\n")
    spec = TaskSpec("table", tmp_path, split_column="split", data_file="all.csv")
    with pytest.raises(ValueError, match=rf"{P(path)}:3: empty 'split': the row belongs to no split"):
        load_split(spec, "train")


def test_split_column_options_go_together(tmp_path):
    with pytest.raises(ConfigError, match="split_column and data_file go together"):
        TaskSpec("table", tmp_path, split_column="split")
    with pytest.raises(ConfigError, match="split_column and data_file go together"):
        TaskSpec("table", tmp_path, data_file="all.csv")
    with pytest.raises(ConfigError, match="also a text or label column"):
        TaskSpec("table", tmp_path, split_column="label", data_file="all.csv")
    with pytest.raises(ConfigError, match="needs data_dir"):
        TaskSpec("table")
    with pytest.raises(ConfigError, match=r"\['split_column', 'data_file'\] only apply to task='table'"):
        TaskSpec("rte", tmp_path, split_column="split", data_file="all.csv")
    spec = TaskSpec("table", tmp_path, split_column="split", data_file="missing.csv")
    with pytest.raises(FileNotFoundError, match=rf"data_file {P(tmp_path / 'missing.csv')} not found"):
        load_split(spec, "train")


# ---------------------------------------------------------------- labels only in dev


def test_label_only_in_dev_names_file_line_and_label(tmp_path):
    _write(tmp_path / "train.csv", "text,label\na,pos\nb,neg\n")
    dev_path = _write(tmp_path / "dev.csv", "text,label\nc,pos\nd,neutral\n")
    spec = TaskSpec("table", tmp_path)
    train, train_path = load_split(spec, "train")
    with pytest.raises(ValueError, match=rf"{P(dev_path)}:3: label 'neutral' in 'label' does not occur in the "
                                         r"training split, whose labels are \['neg', 'pos'\] \(a class.*\); correct the label or add training rows"):
        load_split(spec, "dev", label_names=train.label_names)
    with pytest.raises(ValueError, match=rf"does not occur in the training split {P(train_path)}"):
        load_split(spec, "dev", label_names=train.label_names, labels_from=f"the training split {train_path}")


def test_label_only_in_dev_in_a_file_holding_every_split(tmp_path):
    path = _write(tmp_path / "all.tsv", "text\tlabel\tsplit\na\tpos\ttrain\nb\tneg\ttrain\nc\tmixed\tdev\n")
    spec = TaskSpec("table", tmp_path, split_column="split", data_file="all.tsv")
    train, _ = load_split(spec, "train")
    with pytest.raises(ValueError, match=rf"{P(path)}:4: label 'mixed' in 'label' does not occur in the training"):
        load_split(spec, "dev", label_names=train.label_names)


def test_tag_only_in_dev_conll(tmp_path):
    _write(tmp_path / "train.txt", "Paris NNP I-NP B-LOC\n\nJan NNP I-NP B-PER\n")
    dev = _write(tmp_path / "dev.txt", "Paris NNP I-NP B-LOC\nIBM NNP I-NP B-ORG\n")
    spec = TaskSpec("conll2003", tmp_path)
    train, _ = load_split(spec, "train")
    with pytest.raises(ValueError, match=rf"{P(dev)}:2: tag 'B-ORG' does not occur in the training split, whose "
                                         r"tags are \['O', 'B-LOC', 'B-PER', 'I-LOC', 'I-PER'\]"):
        load_split(spec, "dev", label_names=train.tag_names)


# ---------------------------------------------------------------- every format gzipped, CRLF and BOM


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_every_format_reads_plain_gzipped_and_crlf(tmp_path, gz, newline):
    def w(sub: str, name: str, text: str) -> Path:
        return _write(tmp_path / sub / name, "\ufeff" + text, gz=gz, newline=newline)  # with a byte-order mark

    w("csv", "train.csv", 'text,label\n"a, quoted",pos\nb,neg\n')
    w("tsv", "train.tsv", "text\tlabel\na \"q\tpos\nb\tneg\n")
    w("jsonl", "train.jsonl", json.dumps({"text": "a", "label": "pos"}) + "\n" + json.dumps(
        {"text": "b", "label": "neg"}) + "\n")
    w("conll", "train.txt", "-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n")
    w("glue", "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tc\td\tnot_entailment\n")
    for fmt in ("csv", "tsv", "jsonl"):
        data, path = load_split(TaskSpec("table", tmp_path / fmt), "train")
        assert path.name.endswith(".gz") == gz
        assert _labels(data) == ["pos", "neg"], fmt
        assert data.examples[1].text_a == "b" and data.examples[0].text_a in ("a, quoted", 'a "q', "a"), fmt
    conll, _ = load_split(TaskSpec("conll2003", tmp_path / "conll"), "train")
    assert conll.sentences == [["EU", "rejects"], ["Peter"]]
    assert [conll.tag_strings(i) for i in range(2)] == [["B-ORG", "O"], ["B-PER"]]
    glue, path = load_split(TaskSpec("rte", tmp_path / "glue"), "train")
    assert path.name.endswith(".gz") == gz
    assert [(e.text_a, e.text_b) for e in glue.examples] == [("a", "b"), ("c", "d")]
    assert _labels(glue) == ["entailment", "not_entailment"]


def test_corrupt_gzip_names_the_file(tmp_path):
    path = tmp_path / "train.csv.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=rf"{P(path)}:1: not a readable gzip file.*re-compress it or drop \.gz"):
        load_split(TaskSpec("table", tmp_path), "train")


# ---------------------------------------------------------------- unlabelled test files


def test_test_file_without_label_column_reads_unlabelled(tmp_path):
    _write(tmp_path / "test.tsv", "text\na\nb\n")
    data, _ = load_split(TaskSpec("table", tmp_path), "test", allow_unlabelled=True)
    assert len(data) == 2 and not data.has_labels
    assert not has_labels(tmp_path / "test.tsv", "label")
    with pytest.raises(ValueError, match=r"column\(s\) \['label'\] not found"):
        load_split(TaskSpec("table", tmp_path), "test")
