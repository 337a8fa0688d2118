"""Task readers for fine-tuning: GLUE in its standard layouts, CoNLL-2003 NER, user CSV/TSV/JSONL.
They return plain examples with integer label ids; TASK_METRICS names the metrics of each task."""

# GLUE: Wang et al. 2019 (https://gluebenchmark.com), files as written by the original download
# script. CoNLL-2003: Tjong Kim Sang & De Meulder 2003. Every reader is strict by default: a missing
# column, a short row or an unknown label raises an error naming file:line, the bad value and the
# fix; GLUE and table readers can instead skip bad rows (skip_bad_rows=True), which are then counted
# in TaskData.skipped and reported with a warning, never dropped silently.

from __future__ import annotations

import csv
import difflib
import gzip
import itertools
import json
import math
import re
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ptmkit.config import ConfigError

# --------------------------------------------------------------------------------------------
# containers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Example:
    """One text or text pair; ``label`` is a class id, a float score, or None when unlabelled."""

    text_a: str
    text_b: str | None = None
    label: int | float | None = None


@dataclass
class TaskData:
    """Examples of one split plus what a head needs to know about the labels."""

    examples: list[Example]
    label_names: list[str] | None  # class id -> name; None for regression
    is_regression: bool
    text_fields: tuple[str, ...]  # the source columns of text_a (and text_b)
    skipped: list[str] = field(default_factory=list)  # "file:line: reason" of each skipped row

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def num_labels(self) -> int:
        """Output size of a head: 1 for regression, else the number of classes."""
        return 1 if self.is_regression else len(self.label_names or ())

    @property
    def has_labels(self) -> bool:
        return bool(self.examples) and all(e.label is not None for e in self.examples)


@dataclass
class TokenTaskData:
    """Sentences of tokens with one tag id per token (``tag_names[id]`` is the tag string)."""

    sentences: list[list[str]]
    tags: list[list[int]]
    tag_names: list[str]
    tag_scheme: str = "iob2"  # the scheme of the returned tags: "iob1" or "iob2"

    def __len__(self) -> int:
        return len(self.sentences)

    def tag_strings(self, i: int) -> list[str]:
        """The tags of sentence ``i`` as strings."""
        return [self.tag_names[t] for t in self.tags[i]]


# --------------------------------------------------------------------------------------------
# GLUE
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GlueTaskSpec:
    """Where a GLUE task keeps its texts and labels. Columns are found by header name, so labelled
    and unlabelled (test) layouts of the same task read alike; a split whose header lacks the label
    column is unlabelled (label=None)."""

    name: str  # GLUE's spelling, also the usual directory name
    text_a: str
    text_b: str | None
    label: str
    label_names: tuple[str, ...] | None  # None: regression
    metrics: tuple[str, ...]  # names in ptmkit.analysis.metrics.METRICS
    splits: tuple[str, ...] = ("train", "dev", "test")
    columns: tuple[str, ...] | None = None  # headerless layout: the column names (CoLA)
    description: str = ""

    @property
    def is_regression(self) -> bool:
        return self.label_names is None


_NLI = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, GlueTaskSpec] = {
    # no header: source, label, original label (* if unacceptable), sentence; the test file of the
    # GLUE download is `index<TAB>sentence` with a header and no labels
    "cola": GlueTaskSpec(
        "CoLA",
        "sentence",
        None,
        "label",
        ("0", "1"),
        ("matthews_corrcoef",),
        columns=("source", "label", "original_label", "sentence"),
        description="grammatical acceptability (1 = acceptable)",
    ),
    # `sentence<TAB>label`; GLUE's test file is `index<TAB>sentence`
    "sst2": GlueTaskSpec(
        "SST-2",
        "sentence",
        None,
        "label",
        ("0", "1"),
        ("accuracy",),
        description="binary sentiment (1 = positive)",
    ),
    # `Quality  #1 ID  #2 ID  #1 String  #2 String`; test: `index` in place of `Quality`
    "mrpc": GlueTaskSpec(
        "MRPC",
        "#1 String",
        "#2 String",
        "Quality",
        ("0", "1"),
        ("f1", "accuracy"),
        description="paraphrase (1 = equivalent)",
    ),
    # 10 columns: index genre filename year old_index source1 source2 sentence1(7) sentence2(8)
    # score(last); test has the first 9
    "stsb": GlueTaskSpec(
        "STS-B",
        "sentence1",
        "sentence2",
        "score",
        None,
        ("pearson", "spearman"),
        description="semantic similarity, a score in [0, 5] (regression)",
    ),
    # `id qid1 qid2 question1 question2 is_duplicate`; test: `id question1 question2`
    "qqp": GlueTaskSpec(
        "QQP",
        "question1",
        "question2",
        "is_duplicate",
        ("0", "1"),
        ("f1", "accuracy"),
        description="duplicate question (1 = duplicate)",
    ),
    # index promptID pairID genre 4×parses sentence1(8) sentence2(9) label1 [label2..5] gold_label
    "mnli": GlueTaskSpec(
        "MNLI",
        "sentence1",
        "sentence2",
        "gold_label",
        ("contradiction", "entailment", "neutral"),
        ("accuracy",),
        splits=("train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched"),
        description="3-way entailment; matched / mismatched genres",
    ),
    # `index question sentence label`
    "qnli": GlueTaskSpec(
        "QNLI",
        "question",
        "sentence",
        "label",
        _NLI,
        ("accuracy",),
        description="does the sentence answer the question",
    ),
    # `index sentence1 sentence2 label`
    "rte": GlueTaskSpec(
        "RTE",
        "sentence1",
        "sentence2",
        "label",
        _NLI,
        ("accuracy",),
        description="2-way textual entailment",
    ),
    # `index sentence1 sentence2 label` with 0/1 labels (1 = entailment)
    "wnli": GlueTaskSpec(
        "WNLI",
        "sentence1",
        "sentence2",
        "label",
        ("0", "1"),
        ("accuracy",),
        description="Winograd NLI (1 = entailment)",
    ),
}

_CONLL_METRICS = ("entity_f1", "entity_precision", "entity_recall")

# task -> metric names (ptmkit.analysis.metrics.METRICS keys); GLUE's come from the specs above
TASK_METRICS: dict[str, list[str]] = {
    **{key: list(spec.metrics) for key, spec in GLUE_TASKS.items()},
    "conll2003": list(_CONLL_METRICS),
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


def available_tasks() -> dict[str, str]:
    """Every task with a reader: name -> one line saying how to read it and how it is scored."""
    out = {}
    for key, spec in GLUE_TASKS.items():
        kind = "regression" if spec.is_regression else f"labels {list(spec.label_names)}"
        pair = "pair" if spec.text_b else "single sentence"
        out[key] = (
            f"GLUE {spec.name}: {spec.description}; {pair}, {kind}; metrics {list(spec.metrics)}; "
            f"read_glue({key!r}, data_dir, split) with split in {list(spec.splits)}"
        )
    out["conll2003"] = (
        "CoNLL-2003 NER (PER, LOC, ORG, MISC): `token POS chunk NER` lines; metrics "
        f"{list(_CONLL_METRICS)}; read_conll(path, tag_scheme='auto'|'iob1'|'iob2')"
    )
    return out


def _glue_missing(spec: GlueTaskSpec, data_dir: Path, split: str, path: Path) -> str:
    msg = f"{path} not found ({spec.name}, split {split!r})"
    if split not in spec.splits:
        msg += f"; {spec.name}'s standard splits are {list(spec.splits)}"
    nested = data_dir / spec.name / f"{split}.tsv"
    if nested.is_file():
        return (
            msg
            + f"; data_dir looks like the GLUE root: pass data_dir={str(data_dir / spec.name)!r}"
        )
    fix = f"Point data_dir at the folder with {spec.name}'s .tsv files"
    if data_dir.is_dir():
        present = sorted(p.name for p in data_dir.iterdir() if p.is_file())[:20]
        return msg + f"; {data_dir} holds {present}. {fix}"
    return msg + f"; the directory {data_dir} does not exist. {fix}"


def read_glue(
    task_name: str, data_dir: str | Path, split: str = "train", *, skip_bad_rows: bool = False
) -> TaskData:
    """Read ``{data_dir}/{split}.tsv`` (or ``.tsv.gz``) of a GLUE task in its standard layout.

    Class labels become ids into ``spec.label_names``; STS-B scores become floats; a split without
    the label column (GLUE's test files) gives ``label=None``. Fields are split on tabs with quoting
    off (``csv.QUOTE_NONE``): GLUE texts contain unbalanced quotes.
    """
    spec = glue_task(task_name)
    data_dir = Path(data_dir)
    path = data_dir / f"{split}.tsv"
    if not path.is_file() and path.with_name(path.name + ".gz").is_file():
        path = path.with_name(path.name + ".gz")
    if not path.is_file():
        raise FileNotFoundError(_glue_missing(spec, data_dir, split, path))

    rows = _csv_rows(path, delimiter="\t", quoting=csv.QUOTE_NONE)
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
    label_id = {n: i for i, n in enumerate(spec.label_names or ())}
    ncols = len(header)

    examples: list[Example] = []
    skipped: list[str] = []

    def bad(msg: str) -> None:
        if not skip_bad_rows:
            raise ValueError(
                msg + ". Fix or delete the line, or pass skip_bad_rows=True to skip (and count) "
                "bad rows"
            )
        skipped.append(msg)

    for line, row in itertools.chain(pending, rows):
        if len(row) != ncols:
            why = "a missing field?" if len(row) < ncols else "a tab inside a text?"
            bad(
                f"{path}:{line}: row has {len(row)} columns, expected {ncols} as in {where} ({why})"
            )
            continue
        label: int | float | None = None
        if il is not None:
            raw = row[il].strip()
            if spec.is_regression:
                label = _parse_float(raw)
                if label is None:
                    bad(f"{path}:{line}: {spec.label} {raw!r} is not a finite number")
                    continue
            else:
                label = label_id.get(raw)
                if label is None:
                    bad(
                        f"{path}:{line}: unknown label {raw!r} in column {spec.label!r}; "
                        f"{spec.name} labels are {list(spec.label_names)}"
                    )
                    continue
        examples.append(Example(row[ia], row[ib] if ib is not None else None, label))

    _report_skipped(path, skipped)
    return TaskData(
        examples=examples,
        label_names=list(spec.label_names) if spec.label_names is not None else None,
        is_regression=spec.is_regression,
        text_fields=(spec.text_a,) if spec.text_b is None else (spec.text_a, spec.text_b),
        skipped=skipped,
    )


# --------------------------------------------------------------------------------------------
# CoNLL-2003
# --------------------------------------------------------------------------------------------

_IOB_TAG = re.compile(r"^([BI])-(\S+)$")


def _recode(tags: list[str], scheme: str) -> list[str]:
    """Re-spell one sentence's tags in IOB1 or IOB2 without changing its entities (conlleval rules:
    B- always opens an entity; I- opens one after O or after another type)."""
    out, prev = [], None
    for t in tags:
        if t == "O":
            out.append(t)
            prev = None
            continue
        typ = t[2:]
        opens = t[0] == "B" or prev != typ
        if scheme == "iob2":
            out.append(("B-" if opens else "I-") + typ)
        else:  # IOB1: B- only where an entity directly follows one of the same type
            out.append(("B-" if opens and prev == typ else "I-") + typ)
        prev = typ
    return out


def _is_iob1(tags: list[str]) -> bool:
    """True when some entity opens with I- (which IOB2 forbids)."""
    prev = None
    for t in tags:
        if t == "O":
            prev = None
            continue
        if t[0] == "I" and prev != t[2:]:
            return True
        prev = t[2:]
    return False


def read_conll(
    path: str | Path, tag_scheme: str = "auto", tag_names: Sequence[str] | None = None
) -> TokenTaskData:
    """Read CoNLL-2003 NER: ``token POS chunk NER`` per line, blank lines between sentences.

    ``-DOCSTART-`` lines are skipped; the token is the first column and the tag the last, so the
    German 5-column files read too. ``tag_scheme`` is the scheme of the returned tags: "auto" keeps
    the file's own (detected: "iob1" if some entity opens with I-, else "iob2"); "iob1" / "iob2"
    re-spell the tags losslessly. ``tag_names`` defaults to "O" followed by B-/I- of every entity
    type in the file, sorted (so splits with the same types share ids); pass the training split's
    ``tag_names`` to read dev/test with the same ids.
    """
    if tag_scheme not in ("auto", "iob1", "iob2"):
        raise ConfigError(f"tag_scheme must be 'auto', 'iob1' or 'iob2', got {tag_scheme!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; pass the path of a CoNLL-2003 file (e.g. train.txt)"
        )

    sentences: list[list[str]] = []
    raw_tags: list[list[str]] = []
    first_lines: list[int] = []  # line of each sentence's first token (tokens are consecutive)
    tokens: list[str] = []
    tags: list[str] = []
    ncols, ncols_line = None, 0

    def flush(lineno: int) -> None:
        nonlocal tokens, tags
        if tokens:
            sentences.append(tokens)
            raw_tags.append(tags)
            first_lines.append(lineno - len(tokens))
            tokens, tags = [], []

    lineno = 0
    for lineno, line in enumerate(_lines(path), start=1):
        parts = line.split()
        if not parts:
            flush(lineno)
            continue
        if parts[0] == "-DOCSTART-":  # document boundary, not a sentence
            flush(lineno)
            continue
        if len(parts) < 2:
            raise ValueError(
                f"{path}:{lineno}: expected `token POS chunk NER` columns, got {line.strip()!r}; "
                "separate the columns with spaces and sentences with a blank line"
            )
        if ncols is None:
            ncols, ncols_line = len(parts), lineno
        elif len(parts) != ncols:
            raise ValueError(
                f"{path}:{lineno}: {len(parts)} columns but line {ncols_line} has {ncols} "
                f"({line.strip()!r}); every token line needs the same columns (token ... NER)"
            )
        tag = parts[-1]
        if tag != "O" and not _IOB_TAG.match(tag):
            raise ValueError(
                f"{path}:{lineno}: NER tag {tag!r} (last column) is not IOB; expected 'O', "
                "'B-TYPE' or 'I-TYPE' (convert IOBES/BILOU files to IOB2 first)"
            )
        tokens.append(parts[0])
        tags.append(tag)
    flush(lineno + 1)

    if tag_scheme == "auto":
        scheme = "iob1" if any(_is_iob1(t) for t in raw_tags) else "iob2"
        out_tags = raw_tags
    else:
        scheme = tag_scheme
        out_tags = [_recode(t, scheme) for t in raw_tags]

    if tag_names is None:
        types = sorted({t[2:] for sent in out_tags for t in sent if t != "O"})
        names = ["O"] + sorted(f"{p}-{typ}" for typ in types for p in "BI")
    else:
        names = list(tag_names)
        if len(set(names)) != len(names):
            raise ConfigError(f"tag_names has duplicates: {names}")
    index = {n: i for i, n in enumerate(names)}
    ids: list[list[int]] = []
    for s, sent in enumerate(out_tags):
        row = []
        for j, t in enumerate(sent):
            k = index.get(t)
            if k is None:
                raise ValueError(
                    f"{path}:{first_lines[s] + j}: tag {t!r} is not in tag_names {names}; read "
                    "with the tag_names of a split that has it, or leave tag_names=None"
                )
            row.append(k)
        ids.append(row)
    return TokenTaskData(sentences=sentences, tags=ids, tag_names=names, tag_scheme=scheme)


# --------------------------------------------------------------------------------------------
# user tables: CSV / TSV / JSONL
# --------------------------------------------------------------------------------------------

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _table_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    fmt = _FORMATS.get(Path(name).suffix)
    if fmt is None:
        raise ConfigError(
            f"cannot tell the format of {path} from its extension; name it .csv, .tsv or .jsonl "
            "(optionally + .gz)"
        )
    return fmt


def _label_key(value: object) -> str | None:
    """A label as the string it is matched by: JSON non-strings by their JSON spelling (1, true)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip()
    return json.dumps(value)


def _int_or_text_order(keys: set[str]) -> list[str]:
    """Sorted label names: numerically when every name is an integer ("2" before "10")."""
    if keys and all(re.fullmatch(r"[+-]?\d+", k) for k in keys):
        return sorted(keys, key=int)
    return sorted(keys)


def _records(path: Path, fmt: str, needed: list[str], bad) -> Iterator[tuple[int, dict]]:
    """(line, {column: value}) per record; a missing column raises, a malformed row goes to bad."""
    if fmt == "jsonl":
        first = True
        for line, text in enumerate(_lines(path), start=1):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                bad(f"{path}:{line}: not valid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(rec, dict):
                bad(f"{path}:{line}: expected a JSON object per line, got {type(rec).__name__}")
                continue
            missing = [c for c in needed if c not in rec]
            if missing:
                msg = (
                    f"{path}:{line}: field(s) {missing} not found; available fields: {sorted(rec)}"
                )
                if first:  # the first record decides: a wrong field name, not a bad row
                    raise ValueError(msg + "; pass the right names as text_fields / label_field")
                bad(msg)
                continue
            first = False
            yield line, rec
        return
    rows = _csv_rows(
        path,
        delimiter="," if fmt == "csv" else "\t",
        quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE,
    )
    first_row = next(rows, None)
    if first_row is None:
        raise ValueError(f"{path}: the file is empty; expected a header line naming the columns")
    hline, header = first_row
    missing = [c for c in needed if c not in header]
    if missing:
        raise ValueError(
            f"{path}:{hline}: column(s) {missing} not found; available columns: {header}; pass the "
            "right names as text_fields / label_field"
        )
    for line, row in rows:
        if len(row) != len(header):
            bad(
                f"{path}:{line}: row has {len(row)} columns, expected {len(header)} as in the "
                f"header on line {hline}"
            )
            continue
        yield line, dict(zip(header, row, strict=True))


def read_table(
    path: str | Path,
    text_fields: Sequence[str],
    label_field: str | None = None,
    label_names: Sequence[str] | None = None,
    regression: bool = False,
    *,
    skip_bad_rows: bool = False,
) -> TaskData:
    """Read your own task from CSV, TSV (no quoting) or JSON lines, chosen by extension (.gz ok).

    ``text_fields``: one or two column names (text_a, text_b). ``label_field``: the label column, or
    None for unlabelled data. Classes map to ids in ``label_names`` (unknown labels are errors);
    when not given they are the sorted distinct labels of the file (numeric order for integer
    labels), so read dev/test with the train split's ``label_names``. ``regression=True`` reads
    float scores.
    """
    path = Path(path)
    text_fields = [text_fields] if isinstance(text_fields, str) else list(text_fields)
    if not 1 <= len(text_fields) <= 2:
        raise ConfigError(
            f"text_fields must name 1 or 2 columns (text_a, text_b), got {text_fields}"
        )
    if regression and label_names is not None:
        raise ConfigError(
            "regression=True reads float scores; drop label_names (they are for classes)"
        )
    names = list(label_names) if label_names is not None else None
    if names is not None and len(set(names)) != len(names):
        raise ConfigError(f"label_names has duplicates: {names}")
    fmt = _table_format(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; pass the path of your .csv / .tsv / .jsonl file"
        )

    skipped: list[str] = []

    def bad(msg: str) -> None:
        if not skip_bad_rows:
            raise ValueError(
                msg + ". Fix or delete the line, or pass skip_bad_rows=True to skip (and count) "
                "bad rows"
            )
        skipped.append(msg)

    needed = text_fields + ([label_field] if label_field is not None else [])
    label_id = {n: i for i, n in enumerate(names)} if names is not None else None
    texts: list[tuple[str, str | None]] = []
    labels: list[int | float | str | None] = []
    for line, rec in _records(path, fmt, needed, bad):
        values = [rec[c] for c in text_fields]
        wrong = [(c, v) for c, v in zip(text_fields, values, strict=True) if not isinstance(v, str)]
        if wrong:
            c, v = wrong[0]
            bad(f"{path}:{line}: field {c!r} is {v!r}, expected a string")
            continue
        label: int | float | str | None = None
        if label_field is not None:
            raw = rec[label_field]
            if regression:
                if isinstance(raw, str):
                    label = _parse_float(raw.strip())
                elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
                    label = float(raw) if math.isfinite(raw) else None
                if label is None:
                    bad(f"{path}:{line}: {label_field} {raw!r} is not a finite number")
                    continue
            else:
                key = _label_key(raw)
                if not key:
                    bad(f"{path}:{line}: empty label in {label_field!r}")
                    continue
                if label_id is not None:
                    label = label_id.get(key)
                    if label is None:
                        bad(
                            f"{path}:{line}: unknown label {key!r} in {label_field!r}; "
                            f"allowed labels: {names}"
                        )
                        continue
                else:
                    label = key  # mapped to an id once every label is known
        texts.append((values[0], values[1] if len(values) > 1 else None))
        labels.append(label)

    if label_field is not None and not regression and names is None:
        names = _int_or_text_order({k for k in labels if isinstance(k, str)})
        label_id = {n: i for i, n in enumerate(names)}
        labels = [label_id[k] for k in labels]
    _report_skipped(path, skipped)
    return TaskData(
        examples=[Example(a, b, y) for (a, b), y in zip(texts, labels, strict=True)],
        label_names=None if regression else names,
        is_regression=regression,
        text_fields=tuple(text_fields),
        skipped=skipped,
    )


# --------------------------------------------------------------------------------------------
# shared file helpers
# --------------------------------------------------------------------------------------------


def _lines(path: Path) -> Iterator[str]:
    """Decoded lines (endings kept) of a text or .gz file; bad UTF-8 is an error naming the line."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        i = 0
        try:
            for i, raw in enumerate(f, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(
                        f"{path}:{i}: byte {e.start} of the line is not valid UTF-8 ({e.reason}); "
                        "re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
                    ) from None
                if i == 1 and text.startswith("\ufeff"):
                    text = text[1:]  # byte-order mark (e.g. MRPC's msr_paraphrase files)
                yield text
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise ValueError(
                f"{path}:{i + 1}: not a readable gzip file ({e}); re-compress it or drop .gz"
            ) from None


def _csv_rows(path: Path, delimiter: str, quoting: int) -> Iterator[tuple[int, list[str]]]:
    """(line, fields) of each non-blank record; the line is where the record starts."""
    reader = csv.reader(_lines(path), delimiter=delimiter, quoting=quoting)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise ValueError(
                f"{path}:{reader.line_num}: {e}; check the quoting of this record"
            ) from None
        if row and (len(row) > 1 or row[0].strip()):  # blank lines are not records
            yield start, row
        start = reader.line_num + 1


def _parse_float(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _report_skipped(path: Path, skipped: list[str]) -> None:
    if skipped:
        warnings.warn(
            f"{path}: skipped {len(skipped)} bad row(s) (listed in TaskData.skipped); "
            f"first: {skipped[0]}",
            stacklevel=3,
        )
