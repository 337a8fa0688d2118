"""Tests for ptmkit.data.tasks: every real GLUE / CoNLL-2003 file under the data root, synthetic
files in the real layouts of the other GLUE tasks, CSV/TSV/JSONL tables, every bad-input error."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from ptmkit.config import ConfigError
from ptmkit.data.tasks import (
    GLUE_TASKS,
    TASK_METRICS,
    Example,
    available_tasks,
    glue_task,
    read_conll,
    read_glue,
    read_table,
)
from tests.conftest import shared_path


def P(path: Path) -> str:
    """A path as a regex matching itself."""
    return re.escape(str(path))


def _write(path: Path, lines: list[str], bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def _tsv(*rows: tuple) -> list[str]:
    return ["\t".join(map(str, r)) for r in rows]


# ---------------------------------------------------------------- real data


REAL_GLUE = [
    ("sst2", "train", 67349, True),
    ("sst2", "dev", 872, True),
    ("sst2", "test", 1821, True),
    ("cola", "train", 8551, True),
    ("cola", "dev", 527, True),
    ("cola", "test", 516, True),
    ("rte", "train", 2490, True),
    ("rte", "dev", 277, True),
    ("rte", "test", 3000, False),
    ("stsb", "train", 5749, True),
    ("stsb", "dev", 1500, True),
    ("stsb", "test", 1379, False),
]


@pytest.mark.parametrize("task,split,count,labelled", REAL_GLUE)
def test_real_glue_counts(task, split, count, labelled):
    d = shared_path("glue", GLUE_TASKS[task].name, f"{split}.tsv").parent  # a missing file fails, naming it
    data = read_glue(task, d, split)
    assert len(data) == count
    assert data.has_labels == labelled
    assert data.skipped == []
    assert all(isinstance(e.text_a, str) and e.text_a for e in data.examples)
    assert all(
        (e.text_b is not None) == (GLUE_TASKS[task].text_b is not None) for e in data.examples
    )
    if not labelled:
        assert all(e.label is None for e in data.examples)


def test_real_glue_label_statistics():
    root = shared_path("glue")
    sst = read_glue("SST-2", root / "SST-2", "dev")
    assert sum(e.label for e in sst.examples) == 444 and sst.label_names == ["negative", "positive"]
    cola = read_glue("cola", root / "CoLA", "train")
    assert sum(e.label for e in cola.examples) == 6023
    rte = read_glue("rte", root / "RTE", "train")
    assert [e.label for e in rte.examples].count(0) == 1249  # entailment
    assert rte.examples[0] == Example(
        "No Weapons of Mass Destruction Found in Iraq Yet.",
        "Weapons of Mass Destruction Found in Iraq.",
        1,  # not_entailment
    )
    sts = read_glue("STS-B", root / "STS-B", "dev")
    assert sts.is_regression and sts.num_labels == 1 and sts.label_names is None
    assert sum(e.label for e in sts.examples) == pytest.approx(3545.86)
    assert all(0.0 <= e.label <= 5.0 for e in sts.examples)


@pytest.mark.parametrize(
    "split,count,tokens", [("train", 14041, 203621), ("dev", 3250, 51362), ("test", 3453, 46435)]
)
def test_real_conll(split, count, tokens):
    path = shared_path("ner", "conll2003", f"{split}.txt")
    data = read_conll(path)
    assert len(data) == count
    assert sum(map(len, data.sentences)) == tokens
    assert all(len(s) == len(t) for s, t in zip(data.sentences, data.tags, strict=True))
    assert data.tag_names == [
        "O",
        "B-LOC",
        "B-MISC",
        "B-ORG",
        "B-PER",
        "I-LOC",
        "I-MISC",
        "I-ORG",
        "I-PER",
    ]
    assert data.tag_scheme == "iob2"  # this copy is already IOB2
    # re-spelling to IOB1 keeps every entity (conlleval decoding is the same for both)
    iob1 = read_conll(path, tag_scheme="iob1")
    assert iob1.tag_scheme == "iob1" and iob1.tag_names == data.tag_names
    from ptmkit.analysis.metrics import entity_scores

    s = entity_scores(
        [iob1.tag_strings(i) for i in range(len(iob1))],
        [data.tag_strings(i) for i in range(len(data))],
        scheme="iob1",
    )
    assert s["f1"] == 1.0
    if split == "train":
        assert data.sentences[0] == [
            "EU",
            "rejects",
            "German",
            "call",
            "to",
            "boycott",
            "British",
            "lamb",
            ".",
        ]
        assert data.tag_strings(0)[:3] == ["B-ORG", "O", "B-MISC"]
        assert {k: v["support"] for k, v in s["per_type"].items()} == {
            "LOC": 7140,
            "MISC": 3438,
            "ORG": 6321,
            "PER": 6600,
        }


# ---------------------------------------------------------------- synthetic GLUE layouts

MNLI_HEAD = [
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
]


def test_mrpc_layout(tmp_path):
    head = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")
    _write(
        tmp_path / "train.tsv",
        _tsv(
            head,
            (
                1,
                702876,
                702977,
                'Amrozi accused his brother , whom he called " the witness " , of it .',
                'Referring to him as only " the witness " , Amrozi accused his brother .',
            ),
            (
                0,
                2108705,
                2108831,
                "Yucaipa owned Dominick 's before selling the chain .",
                "Yucaipa bought it .",
            ),
        ),
        bom=True,
    )  # the MSR files start with a byte-order mark
    _write(
        tmp_path / "test.tsv",
        _tsv(("index",) + head[1:], (0, 1089874, 1089925, "PCCW 's chief .", "Current Chief .")),
    )
    train = read_glue("mrpc", tmp_path, "train")
    assert [e.label for e in train.examples] == [1, 0]
    assert train.examples[0].text_a.startswith('Amrozi accused his brother , whom he called " the')
    assert train.text_fields == ("#1 String", "#2 String") and TASK_METRICS["mrpc"] == [
        "f1",
        "accuracy",
    ]
    test = read_glue("MRPC", tmp_path, "test")
    assert test.examples == [Example("PCCW 's chief .", "Current Chief .", None)]


def test_qqp_layout(tmp_path):
    _write(
        tmp_path / "train.tsv",
        _tsv(
            ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
            (133273, 213221, 213222, "How is the life of a math student?", 'What is "jlpt5"?', 0),
            (
                402555,
                536040,
                536041,
                "How do I control my horny emotions?",
                "How do you control your horniness?",
                1,
            ),
        ),
    )
    _write(
        tmp_path / "test.tsv",
        _tsv(
            ("id", "question1", "question2"),
            (0, "Why do rockets look white?", "Why are rockets white?"),
        ),
    )
    train = read_glue("qqp", tmp_path, "train")
    assert [e.label for e in train.examples] == [0, 1] and train.examples[
        0
    ].text_b == 'What is "jlpt5"?'
    assert read_glue("qqp", tmp_path, "test").examples[0].label is None


def test_mnli_layout(tmp_path):
    parses = ("( ( a ) b )", "( c )", "(ROOT (S a b))", "(ROOT (S c))")
    _write(
        tmp_path / "train.tsv",
        _tsv(
            tuple(MNLI_HEAD) + ("label1", "gold_label"),
            (0, 31193, "31193n", "government")
            + parses
            + (
                "Conceptually cream skimming has two dimensions.",
                "Product and geography are what make it work.",
                "neutral",
                "neutral",
            ),
            (1, 101457, "101457e", "telephone")
            + parses
            + ("you know during the season", "You lose the things.", "entailment", "entailment"),
        ),
    )
    _write(
        tmp_path / "dev_matched.tsv",
        _tsv(
            tuple(MNLI_HEAD) + ("label1", "label2", "label3", "label4", "label5", "gold_label"),
            (0, 63735, "63735n", "slate")
            + parses
            + (
                "The new rights are nice enough",
                "Everyone really likes them",
                "neutral",
                "entailment",
                "neutral",
                "neutral",
                "neutral",
                "contradiction",
            ),
        ),
    )
    _write(
        tmp_path / "test_matched.tsv",
        _tsv(
            tuple(MNLI_HEAD),
            (0, 31, "31", "fiction") + parses + ("Hierbas, ans seco.", "Hierbas is a name."),
        ),
    )
    train = read_glue("mnli", tmp_path, "train")
    assert train.label_names == ["entailment", "neutral", "contradiction"]  # the ids of HF datasets' glue/mnli
    assert [e.label for e in train.examples] == [1, 0]
    assert train.examples[0].text_a == "Conceptually cream skimming has two dimensions."  # column 8
    dev = read_glue("mnli", tmp_path, "dev_matched")
    assert dev.examples[0].label == 2  # gold_label (contradiction) is the last column, not label1
    assert read_glue("mnli", tmp_path, "test_matched").examples[0] == Example(
        "Hierbas, ans seco.", "Hierbas is a name.", None
    )
    with pytest.raises(FileNotFoundError, match="dev_matched"):
        read_glue(
            "mnli", tmp_path, "dev"
        )  # MNLI has no plain dev split: the error lists its splits


def test_qnli_and_wnli_layouts(tmp_path):
    _write(
        tmp_path / "QNLI" / "train.tsv",
        _tsv(
            ("index", "question", "sentence", "label"),
            (
                0,
                "When did the third Digimon series begin?",
                "Unlike the two seasons before it.",
                "not_entailment",
            ),
            (
                1,
                "Which missile batteries often have individual launchers?",
                "When MANPADS is operated.",
                "entailment",
            ),
        ),
    )
    q = read_glue("qnli", tmp_path / "QNLI", "train")
    assert [e.label for e in q.examples] == [1, 0] and q.examples[0].text_a.startswith("When did")
    _write(
        tmp_path / "WNLI" / "dev.tsv",
        _tsv(
            ("index", "sentence1", "sentence2", "label"),
            (
                0,
                "The drain is clogged with hair. It has to be cleaned.",
                "The hair has to be cleaned.",
                0,
            ),
            (1, "Jane knocked on Susan's door but she did not answer.", "Susan did not answer.", 1),
        ),
    )
    _write(
        tmp_path / "WNLI" / "test.tsv",
        _tsv(
            ("index", "sentence1", "sentence2"),
            (0, "Maude and Dora had seen the trains.", "Horses ran away."),
        ),
    )
    w = read_glue("WNLI", tmp_path / "WNLI", "dev")
    assert [e.label for e in w.examples] == [0, 1] and w.label_names == ["not_entailment", "entailment"]
    assert not read_glue("wnli", tmp_path / "WNLI", "test").has_labels


def test_glue_unlabelled_test_layouts_of_cola_and_sst2(tmp_path):
    # the GLUE download's CoLA / SST-2 test files: `index<TAB>sentence` with a header, no labels
    _write(
        tmp_path / "CoLA" / "test.tsv",
        _tsv(("index", "sentence"), (0, "Bill whistled past the house."), (1, 'He said "hi.')),
    )
    _write(
        tmp_path / "SST-2" / "test.tsv",
        _tsv(("index", "sentence"), (0, "uneasy mishmash of styles and genres .")),
    )
    cola = read_glue("cola", tmp_path / "CoLA", "test")
    assert [e.text_a for e in cola.examples] == ["Bill whistled past the house.", 'He said "hi.']
    assert not cola.has_labels and cola.label_names == ["unacceptable", "acceptable"]
    assert read_glue("sst2", tmp_path / "SST-2", "test").examples[0].label is None


def test_glue_stray_quotes_and_gzip(tmp_path):
    rows = _tsv(("sentence", "label"), ('a "quoted start', 1), ('"', 0), ('it \'s "fine" .', 1))
    with gzip.open(tmp_path / "train.tsv.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    data = read_glue("sst2", tmp_path, "train")
    assert [e.text_a for e in data.examples] == ['a "quoted start', '"', 'it \'s "fine" .']


# ---------------------------------------------------------------- GLUE errors


def test_glue_missing_file_names_path_and_hints_at_task_dir(tmp_path):
    _write(tmp_path / "RTE" / "train.tsv", _tsv(("index", "sentence1", "sentence2", "label")))
    with pytest.raises(FileNotFoundError, match=r"train\.tsv not found.*GLUE root.*RTE"):
        read_glue("rte", tmp_path, "train")
    with pytest.raises(FileNotFoundError, match=P(tmp_path / "nope")):
        read_glue("rte", tmp_path / "nope", "train")


def test_glue_short_row_names_file_and_line(tmp_path):
    path = _write(
        tmp_path / "dev.tsv",
        _tsv(
            ("index", "sentence1", "sentence2", "label"),
            (0, "A man sleeps.", "A person sleeps.", "entailment"),
            (1, "A man sleeps.", "not_entailment"),
        ),
    )
    with pytest.raises(
        ValueError, match=rf"{P(path)}:3: row has 3 columns, expected 4.*skip_bad_rows"
    ):
        read_glue("rte", tmp_path, "dev")


def test_glue_extra_column_is_an_error(tmp_path):
    path = _write(
        tmp_path / "train.tsv", _tsv(("sentence", "label"), ("fine .", 1), ("a\ttab .", 0))
    )
    with pytest.raises(
        ValueError, match=rf"{P(path)}:3: row has 3 columns, expected 2.*tab inside"
    ):
        read_glue("sst2", tmp_path, "train")


def test_glue_unknown_label_names_value_and_allowed(tmp_path):
    path = _write(
        tmp_path / "train.tsv",
        _tsv(
            ("index", "sentence1", "sentence2", "label"),
            (0, "x", "y", "entailment"),
            (1, "x", "y", "entailed"),
        ),
    )
    with pytest.raises(
        ValueError,
        match=rf"{P(path)}:3: unknown label 'entailed'.*\['entailment', 'not_entailment'\]",
    ):
        read_glue("rte", tmp_path, "train")


def test_glue_bad_score_and_missing_header(tmp_path):
    head = (
        "index",
        "genre",
        "filename",
        "year",
        "old_index",
        "source1",
        "source2",
        "sentence1",
        "sentence2",
        "score",
    )
    path = _write(
        tmp_path / "train.tsv", _tsv(head, (0, "g", "f", "y", "0", "n", "n", "a", "b", "n/a"))
    )
    with pytest.raises(ValueError, match=rf"{P(path)}:2: score 'n/a' is not a finite number"):
        read_glue("stsb", tmp_path, "train")
    path = _write(
        tmp_path / "dev.tsv", _tsv(("hide new secretions", 0))
    )  # SST-2 without its header
    with pytest.raises(ValueError, match=rf"{P(path)}:1: expected SST-2's header.*'sentence'"):
        read_glue("sst2", tmp_path, "dev")


def test_glue_skip_bad_rows_counts_and_warns(tmp_path):
    _write(
        tmp_path / "train.tsv",
        _tsv(("sentence", "label"), ("good .", 1), ("short",), ("bad label .", 7), ("ok .", 0)),
    )
    with pytest.warns(UserWarning, match="skipped 2 bad row"):
        data = read_glue("sst2", tmp_path, "train", skip_bad_rows=True)
    assert [e.label for e in data.examples] == [1, 0]
    assert len(data.skipped) == 2 and ":3:" in data.skipped[0] and ":4:" in data.skipped[1]


def test_glue_task_names():
    assert glue_task("SST-2") is glue_task("sst2") is glue_task("sst_2")
    assert glue_task("STS-B").is_regression
    with pytest.raises(ConfigError, match="did you mean 'mnli'"):
        glue_task("mnlii")
    tasks = available_tasks()
    assert set(tasks) == set(GLUE_TASKS) | {"conll2003"} == set(TASK_METRICS)
    assert TASK_METRICS["cola"] == ["matthews_corrcoef"] and TASK_METRICS["stsb"] == [
        "pearson",
        "spearman",
    ]
    assert TASK_METRICS["qqp"] == ["f1", "accuracy"]
    assert all(TASK_METRICS[t] == ["accuracy"] for t in ("sst2", "qnli", "rte", "wnli", "mnli"))


# ---------------------------------------------------------------- CoNLL

CONLL_IOB1 = """-DOCSTART- -X- O O

U.N. NNP I-NP I-ORG
official NN I-NP O
Ekeus NNP I-NP I-PER
heads VBZ I-VP O
for IN I-PP O
Baghdad NNP I-NP I-LOC
. . O O

-DOCSTART- -X- O O

Germany NNP I-NP I-LOC
France NNP B-NP B-LOC
and CC O O
Jan NNP I-NP I-PER
Smit NNP I-NP I-PER
"""


def test_conll_iob1_detection_and_conversion(tmp_path):
    path = tmp_path / "eng.train"
    path.write_text(CONLL_IOB1)
    data = read_conll(path)
    assert data.tag_scheme == "iob1" and len(data) == 2
    assert data.sentences[1] == ["Germany", "France", "and", "Jan", "Smit"]
    assert data.tag_strings(1) == ["I-LOC", "B-LOC", "O", "I-PER", "I-PER"]
    assert data.tag_names == ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"]
    iob2 = read_conll(path, tag_scheme="iob2")
    assert iob2.tag_scheme == "iob2" and iob2.tag_names == data.tag_names
    assert iob2.tag_strings(0) == ["B-ORG", "O", "B-PER", "O", "O", "B-LOC", "O"]
    assert iob2.tag_strings(1) == ["B-LOC", "B-LOC", "O", "B-PER", "I-PER"]
    # and back: IOB2 -> IOB1 uses B- only between adjacent same-type entities
    path2 = tmp_path / "iob2.txt"
    path2.write_text(
        "\n".join(
            f"{w} X X {t}" for w, t in zip(iob2.sentences[1], iob2.tag_strings(1), strict=True)
        )
        + "\n"
    )
    assert read_conll(path2).tag_scheme == "iob2"
    assert read_conll(path2, tag_scheme="iob1").tag_strings(0) == [
        "I-LOC",
        "B-LOC",
        "O",
        "I-PER",
        "I-PER",
    ]


def test_conll_pinned_tag_names(tmp_path):
    path = tmp_path / "dev.txt"
    path.write_text("Paris NNP I-NP B-LOC\n\nx X X O\n")
    names = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    data = read_conll(path, tag_names=names)
    assert data.tags == [[1], [0]] and data.tag_names == names
    path.write_text("Paris NNP I-NP B-LOC\n\nx X X O\nIBM NNP I-NP B-ORG\n")
    with pytest.raises(ValueError, match=rf"{P(path)}:4: tag 'B-ORG' is not in tag_names"):
        read_conll(path, tag_names=names)


@pytest.mark.parametrize(
    "bad,line,what",
    [
        ("EU NNP B-NP B-ORG\nrejects VBZ B-VP\n", 2, "3 columns but line 1 has 4"),
        ("EU NNP B-NP B-ORG\n\nrejects\n", 3, "expected `token POS chunk NER`"),
        ("EU NNP B-NP B-ORG\nrejects VBZ B-VP E-ORG\n", 2, "NER tag 'E-ORG'"),
        ("EU NNP B-NP ORG\n", 1, "NER tag 'ORG'"),
    ],
)
def test_conll_malformed_lines(tmp_path, bad, line, what):
    path = tmp_path / "bad.txt"
    path.write_text(bad)
    with pytest.raises(ValueError, match=rf"{P(path)}:{line}: .*{what}"):
        read_conll(path)


def test_conll_missing_file_and_bad_utf8(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_conll(tmp_path / "missing.txt")
    path = tmp_path / "latin1.txt"
    path.write_bytes(
        "Köln NNP I-NP I-LOC\n".encode() + "M\xfcnchen NNP I-NP I-LOC\n".encode("latin-1")
    )
    with pytest.raises(ValueError, match=rf"{P(path)}:2: .*not valid UTF-8"):
        read_conll(path)
    with pytest.raises(ConfigError):
        read_conll(path, tag_scheme="bilou")


# ---------------------------------------------------------------- user tables


def test_read_table_csv_tsv_jsonl_and_gzip(tmp_path):
    csv_path = tmp_path / "train.csv"
    csv_path.write_text(
        'id,review,stars\n1,"Great, really great",pos\n2,"multi\nline ""quoted""",neg\n'
    )
    data = read_table(csv_path, ["review"], "stars")
    assert data.label_names == ["neg", "pos"] and [e.label for e in data.examples] == [1, 0]
    assert data.examples[1].text_a == 'multi\nline "quoted"'

    tsv_path = _write(
        tmp_path / "pairs.tsv",
        _tsv(("a", "b", "y"), ("x", 'y "z', 10), ("p", "q", 2), ("r", "s", 10)),
    )
    data = read_table(tsv_path, ["a", "b"], "y")
    assert data.label_names == ["2", "10"]  # integer labels in numeric order
    assert [(e.text_b, e.label) for e in data.examples] == [('y "z', 1), ("q", 0), ("s", 1)]
    assert data.text_fields == ("a", "b")

    jl = tmp_path / "scores.jsonl.gz"
    with gzip.open(jl, "wt", encoding="utf-8") as f:
        f.write(
            json.dumps({"s1": "a", "s2": "b", "score": 4.5})
            + "\n\n"
            + json.dumps({"s1": "c", "s2": "d", "score": "1"})
            + "\n"
        )
    data = read_table(jl, ["s1", "s2"], "score", regression=True)
    assert (
        data.is_regression
        and data.label_names is None
        and [e.label for e in data.examples] == [4.5, 1.0]
    )

    jl2 = _write(
        tmp_path / "cls.jsonl",
        [json.dumps({"text": "t", "label": 1}), json.dumps({"text": "u", "label": 0})],
    )
    data = read_table(jl2, ["text"], "label", label_names=["0", "1"])
    assert [e.label for e in data.examples] == [1, 0]
    assert read_table(jl2, "text").examples[0] == Example("t", None, None)  # unlabelled


def test_read_table_missing_column_lists_available(tmp_path):
    path = _write(tmp_path / "t.csv", ["text,label", "a,b"])
    with pytest.raises(
        ValueError,
        match=rf"{P(path)}:1: column\(s\) \['sentence'\] not found; "
        r"available columns: \['text', 'label'\]",
    ):
        read_table(path, ["sentence"], "label")
    jl = _write(tmp_path / "t.jsonl", [json.dumps({"text": "a", "label": "x"})])
    with pytest.raises(
        ValueError,
        match=rf"{P(jl)}:1: field\(s\) \['y'\] not found; available fields: \['label', 'text'\]",
    ):
        read_table(jl, ["text"], "y")


def test_read_table_unknown_label_and_bad_rows(tmp_path):
    path = _write(tmp_path / "t.tsv", _tsv(("text", "label"), ("a", "pos"), ("b", "neutral")))
    with pytest.raises(
        ValueError, match=rf"{P(path)}:3: unknown label 'neutral'.*allowed labels: \['neg', 'pos'\]"
    ):
        read_table(path, ["text"], "label", label_names=["neg", "pos"])
    path = _write(tmp_path / "short.tsv", _tsv(("text", "label"), ("a", "pos"), ("b",)))
    with pytest.raises(ValueError, match=rf"{P(path)}:3: row has 1 columns, expected 2"):
        read_table(path, ["text"], "label")
    path = _write(tmp_path / "r.csv", ["text,score", "a,1.5", "b,high"])
    with pytest.raises(ValueError, match=rf"{P(path)}:3: score 'high' is not a finite number"):
        read_table(path, ["text"], "score", regression=True)
    path = _write(
        tmp_path / "j.jsonl",
        [json.dumps({"text": "a", "label": "x"}), "{oops", json.dumps({"text": 3, "label": "x"})],
    )
    with pytest.raises(ValueError, match=rf"{P(path)}:2: not valid JSON"):
        read_table(path, ["text"], "label")
    with pytest.warns(UserWarning, match="skipped 2"):
        data = read_table(path, ["text"], "label", skip_bad_rows=True)
    assert len(data) == 1 and ":3: field 'text' is 3" in data.skipped[1]


def test_read_table_config_errors(tmp_path):
    path = _write(tmp_path / "t.csv", ["a,b,c,y", "1,2,3,4"])
    with pytest.raises(ConfigError, match="1 or 2"):
        read_table(path, ["a", "b", "c"], "y")
    with pytest.raises(ConfigError, match="regression"):
        read_table(path, ["a"], "y", label_names=["0"], regression=True)
    with pytest.raises(ConfigError, match=r"\.csv, \.tsv or \.jsonl"):
        read_table(tmp_path / "t.xlsx", ["a"], "y")
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_table(tmp_path / "nope.csv", ["a"], "y")
