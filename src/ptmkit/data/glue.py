"""GLUE tasks (Wang et al. 2019, https://gluebenchmark.com): where each task keeps its texts and labels in the
files of the original download script, its real label names, its metrics, and the reader."""

# Label ids and names follow the `glue` dataset of Hugging Face `datasets` (e.g. SST-2 0 = negative, MNLI
# 0 = entailment, 1 = neutral, 2 = contradiction), so the id2label a fine-tuned model exports means what a
# transformers user expects. The reader is strict by default: a missing column, a short row or an unknown
# label raises an error naming file:line, the bad value and the fix; skip_bad_rows=True skips such rows
# instead, counting them in TaskData.skipped and reporting them with a warning, never dropping them silently.

from __future__ import annotations

import csv
import difflib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from ptmkit.config import ConfigError
from ptmkit.data.examples import Example, TaskData
from ptmkit.data.textio import BadRows, csv_rows, parse_float


@dataclass(frozen=True)
class GlueTaskSpec:
    """Where a GLUE task keeps its texts and labels. Columns are found by header name, so labelled
    and unlabelled (test) layouts of the same task read alike; a split whose header lacks the label
    column is unlabelled (label=None)."""

    name: str  # GLUE's spelling, also the usual directory name
    text_a: str
    text_b: str | None
    label: str  # the label (or score) column
    label_values: tuple[str, ...] | None  # class id -> the label as the files spell it; None: regression
    metrics: tuple[str, ...]  # names in ptmkit.analysis.metrics.METRICS
    label_names: tuple[str, ...] | None = None  # class id -> its meaning (id2label); default label_values
    splits: tuple[str, ...] = ("train", "dev", "test")
    columns: tuple[str, ...] | None = None  # headerless layout: the column names (CoLA)
    description: str = ""

    def __post_init__(self) -> None:
        if self.label_names is None:
            object.__setattr__(self, "label_names", self.label_values)
        if (self.label_values is None) != (self.label_names is None) or (
            self.label_values is not None and len(self.label_values) != len(self.label_names)
        ):
            raise ConfigError(f"{self.name}: label_names {self.label_names} must pair up with label_values "
                              f"{self.label_values}")

    @property
    def is_regression(self) -> bool:
        return self.label_values is None

    def label_ids(self) -> dict[str, int]:
        """Label spelling -> class id; the names are accepted as well as the files' values ("positive" as "1")."""
        if self.label_values is None:
            return {}
        return {**{n: i for i, n in enumerate(self.label_names)}, **{v: i for i, v in enumerate(self.label_values)}}

    def labels_text(self) -> str:
        """The labels for messages: "['0', '1'] (negative, positive)", or "['entailment', ...]" when they agree."""
        values = list(self.label_values or ())
        if self.label_names == self.label_values:
            return str(values)
        return f"{values} ({', '.join(self.label_names)})"


_NLI = ("entailment", "not_entailment")
_BINARY = ("0", "1")

GLUE_TASKS: dict[str, GlueTaskSpec] = {
    # no header: source, label, original label (* if unacceptable), sentence; the test file of the
    # GLUE download is `index<TAB>sentence` with a header and no labels
    "cola": GlueTaskSpec(
        "CoLA", "sentence", None, "label", _BINARY, ("matthews_corrcoef",),
        label_names=("unacceptable", "acceptable"),
        columns=("source", "label", "original_label", "sentence"),
        description="grammatical acceptability (1 = acceptable)",
    ),
    # `sentence<TAB>label`; GLUE's test file is `index<TAB>sentence`
    "sst2": GlueTaskSpec(
        "SST-2", "sentence", None, "label", _BINARY, ("accuracy",),
        label_names=("negative", "positive"),
        description="binary sentiment (1 = positive)",
    ),
    # `Quality  #1 ID  #2 ID  #1 String  #2 String`; test: `index` in place of `Quality`
    "mrpc": GlueTaskSpec(
        "MRPC", "#1 String", "#2 String", "Quality", _BINARY, ("f1", "accuracy"),
        label_names=("not_equivalent", "equivalent"),
        description="paraphrase (1 = equivalent)",
    ),
    # 10 columns: index genre filename year old_index source1 source2 sentence1(7) sentence2(8)
    # score(last); test has the first 9
    "stsb": GlueTaskSpec(
        "STS-B", "sentence1", "sentence2", "score", None, ("pearson", "spearman"),
        description="semantic similarity, a score in [0, 5] (regression)",
    ),
    # `id qid1 qid2 question1 question2 is_duplicate`; test: `id question1 question2`
    "qqp": GlueTaskSpec(
        "QQP", "question1", "question2", "is_duplicate", _BINARY, ("f1", "accuracy"),
        label_names=("not_duplicate", "duplicate"),
        description="duplicate question (1 = duplicate)",
    ),
    # index promptID pairID genre 4×parses sentence1(8) sentence2(9) label1 [label2..5] gold_label
    "mnli": GlueTaskSpec(
        "MNLI", "sentence1", "sentence2", "gold_label", ("entailment", "neutral", "contradiction"), ("accuracy",),
        splits=("train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched"),
        description="3-way entailment; matched / mismatched genres",
    ),
    # `index question sentence label`
    "qnli": GlueTaskSpec(
        "QNLI", "question", "sentence", "label", _NLI, ("accuracy",),
        description="does the sentence answer the question",
    ),
    # `index sentence1 sentence2 label`
    "rte": GlueTaskSpec(
        "RTE", "sentence1", "sentence2", "label", _NLI, ("accuracy",),
        description="2-way textual entailment",
    ),
    # `index sentence1 sentence2 label` with 0/1 labels (1 = entailment)
    "wnli": GlueTaskSpec(
        "WNLI", "sentence1", "sentence2", "label", _BINARY, ("accuracy",),
        label_names=("not_entailment", "entailment"),
        description="Winograd NLI (1 = entailment)",
    ),
}


def _task_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())  # "SST-2", "sst_2", "sst2" -> "sst2"


def glue_task(name: str) -> GlueTaskSpec:
    """The spec of a GLUE task, by any common spelling ("SST-2", "sst2", "STS-B", "stsb", ...)."""
    key = _task_key(name)
    if key in GLUE_TASKS:
        return GLUE_TASKS[key]
    close = difflib.get_close_matches(key, GLUE_TASKS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown GLUE task {name!r}; available: {sorted(GLUE_TASKS)}{hint}")


def glue_file(task_name: str, data_dir: str | Path, split: str) -> Path:
    """``{data_dir}/{split}.tsv``, or ``.tsv.gz`` when only that exists; a missing file is an error saying where
    the task's files might be instead."""
    spec = glue_task(task_name)
    data_dir = Path(data_dir)
    path = data_dir / f"{split}.tsv"
    if not path.is_file() and path.with_name(path.name + ".gz").is_file():
        path = path.with_name(path.name + ".gz")
    if not path.is_file():
        raise FileNotFoundError(_glue_missing(spec, data_dir, split, path))
    return path


def _glue_missing(spec: GlueTaskSpec, data_dir: Path, split: str, path: Path) -> str:
    msg = f"{path} not found ({spec.name}, split {split!r})"
    if split not in spec.splits:
        msg += f"; {spec.name}'s standard splits are {list(spec.splits)}"
    nested = data_dir / spec.name / f"{split}.tsv"
    if nested.is_file():
        return msg + f"; data_dir looks like the GLUE root: pass data_dir={str(data_dir / spec.name)!r}"
    fix = f"Point data_dir at the folder with {spec.name}'s .tsv files"
    if data_dir.is_dir():
        present = sorted(p.name for p in data_dir.iterdir() if p.is_file())[:20]
        return msg + f"; {data_dir} holds {present}. {fix}"
    return msg + f"; the directory {data_dir} does not exist. {fix}"


def read_glue(
    task_name: str, data_dir: str | Path, split: str = "train", *, skip_bad_rows: bool = False
) -> TaskData:
    """Read ``{data_dir}/{split}.tsv`` (or ``.tsv.gz``) of a GLUE task in its standard layout.

    Class labels become ids into ``spec.label_values`` and the returned ``label_names`` are their meanings
    (SST-2: negative, positive); STS-B scores become floats; a split without the label column (GLUE's test
    files) gives ``label=None``. Fields are split on tabs with quoting off (``csv.QUOTE_NONE``): GLUE texts
    contain unbalanced quotes.
    """
    spec = glue_task(task_name)
    path = glue_file(task_name, data_dir, split)

    rows = csv_rows(path, delimiter="\t", quoting=csv.QUOTE_NONE)
    first = next(rows, None)
    if first is None:
        raise ValueError(f"{path}: the file is empty; expected {spec.name} rows")
    line, row = first
    pending: list[tuple[int, list[str]]] = []
    if spec.columns is None:
        if spec.text_a not in row:
            raise ValueError(
                f"{path}:{line}: expected {spec.name}'s header naming the column {spec.text_a!r}, "
                f"found {row[:12]}; restore the header line of the GLUE file (or use read_table "
                "with your own column names)"
            )
        header, where = row, f"the header on line {line}"
    elif spec.text_a in row:  # e.g. GLUE's CoLA test file: `index<TAB>sentence` with a header
        header, where = row, f"the header on line {line}"
    else:
        header, where = list(spec.columns), f"{spec.name}'s layout {list(spec.columns)}"
        pending.append((line, row))
    if spec.text_b is not None and spec.text_b not in header:
        raise ValueError(
            f"{path}:{line}: {spec.name} needs the column {spec.text_b!r} but the header has "
            f"{header}; restore the header line of the GLUE file"
        )
    ia = header.index(spec.text_a)
    ib = header.index(spec.text_b) if spec.text_b is not None else None
    il = header.index(spec.label) if spec.label in header else None  # None: unlabelled split
    label_id = spec.label_ids()
    ncols = len(header)

    examples: list[Example] = []
    bad = BadRows(skip_bad_rows)
    for line, row in itertools.chain(pending, rows):
        if len(row) != ncols:
            why = "a missing field?" if len(row) < ncols else "a tab inside a text?"
            bad(f"{path}:{line}: row has {len(row)} columns, expected {ncols} as in {where} ({why})")
            continue
        label: int | float | None = None
        if il is not None:
            raw = row[il].strip()
            if spec.is_regression:
                label = parse_float(raw)
                if label is None:
                    bad(f"{path}:{line}: {spec.label} {raw!r} is not a finite number")
                    continue
            else:
                label = label_id.get(raw)
                if label is None:
                    bad(f"{path}:{line}: unknown label {raw!r} in column {spec.label!r}; "
                        f"{spec.name} labels are {spec.labels_text()}")
                    continue
        examples.append(Example(row[ia], row[ib] if ib is not None else None, label))

    bad.report(path)
    return TaskData(
        examples=examples,
        label_names=list(spec.label_names) if spec.label_names is not None else None,
        is_regression=spec.is_regression,
        text_fields=(spec.text_a,) if spec.text_b is None else (spec.text_a, spec.text_b),
        skipped=bad.skipped,
    )
