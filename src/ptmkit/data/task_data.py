"""Task data for fine-tuning and evaluation: which files a task reads (GLUE, CoNLL-2003, your own tables), its
label set and metrics, and the encoded splits. Shared by the fine-tuning and evaluation recipes.

Your own tables (task "table") come in the layouts users have: one file per split in ``data_dir``
(``train.csv``, ``dev.tsv.gz``, ...) or one ``data_file`` holding every split, chosen by a ``split_column``;
with a header line or, for header-less CSV/TSV, with the ``columns`` you name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptmkit.config import ConfigError
from ptmkit.data.conll import read_conll
from ptmkit.data.encode import Encoded, encode_texts, encode_words
from ptmkit.data.examples import TaskData, TokenTaskData
from ptmkit.data.glue import GLUE_TASKS, glue_file, glue_task, read_glue
from ptmkit.data.paths import data_root
from ptmkit.data.tables import TABLE_EXTS, check_columns, has_labels, read_table
from ptmkit.data.tasks import TASK_METRICS
from ptmkit.log import get as get_logger

log = get_logger(__name__)

TOKEN_TASKS = ("conll2003",)
OTHER_TASKS = ("conll2003", "table")
CONLL_EXTS = (".txt", ".conll", ".iob")
_TABLE_EXTS = TABLE_EXTS


def canonical_task(name: str) -> str:
    """"SST-2" / "sst_2" → "sst2"; "conll2003" and "table" as they are; else a ConfigError."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"task must be a non-empty string, got {name!r}")
    if name.lower() in OTHER_TASKS:
        return name.lower()
    try:
        return next(k for k, s in GLUE_TASKS.items() if s is glue_task(name))
    except ConfigError:
        raise ConfigError(
            f"unknown task {name!r}; choose a GLUE task {sorted(GLUE_TASKS)}, 'conll2003', or "
            "'table' (your own CSV/TSV/JSONL files with text_fields / label_field)"
        ) from None


@dataclass
class TaskSpec:
    """How to read and score one task (resolved from FinetuneConfig or a saved model's task file).

    GLUE and CoNLL tasks read ``<data_dir>/<split>.tsv`` / ``.txt`` (``data_dir`` defaults to the shared data
    root's copy). Task "table" reads your own files, with these options:

    - ``text_fields`` (default ["text"]) and ``label_field`` (default "label"): the columns to read;
    - ``regression``: float scores instead of classes;
    - ``columns``: the CSV/TSV files have no header line and these are their column names;
    - ``skip_bad_rows``: skip (and count) unreadable rows instead of stopping at the first;
    - ``split_column`` + ``data_file``: one file holds every split and this column names each row's split
      (train / dev / test, or your own names); ``data_file`` is relative to ``data_dir`` when that is given.
    Without ``data_file`` each split is its own file ``<data_dir>/<split>.{csv,tsv,jsonl}[.gz]``.
    """

    task: str
    data_dir: Path | None = None
    text_fields: list[str] | None = None
    label_field: str | None = None
    regression: bool = False
    columns: list[str] | None = None
    split_column: str | None = None
    data_file: Path | None = None
    skip_bad_rows: bool = False  # skip (and count, with one warning) rows that cannot be read, instead of stopping

    def __post_init__(self) -> None:
        self.task = canonical_task(self.task)
        table_only = {k: getattr(self, k) for k in ("columns", "split_column", "data_file")}
        if self.task != "table":
            given = [k for k, v in table_only.items() if v is not None]
            if given:
                raise ConfigError(f"{given} only apply to task='table' (your own files); task {self.task!r} has "
                                  "a fixed layout")
            self.data_dir = Path(self.data_dir) if self.data_dir is not None else default_data_dir(self.task)
            return
        self.text_fields = [self.text_fields] if isinstance(self.text_fields, str) else list(
            self.text_fields or ["text"])
        if not 1 <= len(self.text_fields) <= 2:
            raise ConfigError(f"text_fields must name 1 or 2 columns (text_a, text_b), got {self.text_fields}")
        self.label_field = self.label_field or "label"
        self.columns = check_columns(self.columns)
        if self.columns is not None:
            unknown = [c for c in [*self.text_fields, self.split_column] if c is not None and c not in self.columns]
            if unknown:
                raise ConfigError(f"column(s) {unknown} are not among columns {self.columns} (the names of the "
                                  "header-less file's columns); name them there, or fix text_fields / split_column")
        if (self.split_column is None) != (self.data_file is None):
            raise ConfigError(
                "split_column and data_file go together: data_file is the one file holding every split, "
                "split_column the column naming each row's split (train / dev / test); for one file per split "
                f"give data_dir alone (got split_column={self.split_column!r}, data_file={self.data_file!r})"
            )
        if self.split_column is not None and self.split_column in (*self.text_fields, self.label_field):
            raise ConfigError(f"split_column {self.split_column!r} is also a text or label column; name the column "
                              "that holds each row's split")
        self.data_dir = Path(self.data_dir).expanduser() if self.data_dir is not None else None
        if self.data_file is not None:
            f = Path(self.data_file).expanduser()
            self.data_file = self.data_dir / f if self.data_dir is not None and not f.is_absolute() else f
        elif self.data_dir is None:
            self.data_dir = default_data_dir(self.task)  # raises: a table needs its files named

    @property
    def is_token(self) -> bool:
        return self.task in TOKEN_TASKS

    @property
    def is_regression(self) -> bool:
        return GLUE_TASKS[self.task].is_regression if self.task in GLUE_TASKS else self.regression

    @property
    def metrics(self) -> list[str]:
        if self.task in TASK_METRICS:
            return list(TASK_METRICS[self.task])
        return ["pearson", "spearman"] if self.regression else ["accuracy", "macro_f1"]

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    def split_file(self, split: str) -> Path:
        """The file a split is read from (its own file, or the data_file holding every split)."""
        if self.task in GLUE_TASKS:
            return glue_file(self.task, self.data_dir, split)
        if self.is_token:
            return _find_file(self.data_dir, split, CONLL_EXTS, "CoNLL")
        if self.data_file is not None:
            if not self.data_file.is_file():
                where = _listing(self.data_file.parent)
                raise FileNotFoundError(f"data_file {self.data_file} not found ({where}); pass the path of the "
                                        "CSV/TSV/JSONL file holding every split (relative paths are under data_dir)")
            return self.data_file
        return _find_file(self.data_dir, split, TABLE_EXTS, "table")


def default_data_dir(task: str) -> Path:
    """Where the shared data root keeps a task: glue/<GLUE name>/ or ner/conll2003/."""
    if task in GLUE_TASKS:
        return data_root() / "glue" / GLUE_TASKS[task].name
    if task == "conll2003":
        return data_root() / "ner" / "conll2003"
    raise ConfigError("task 'table' needs data_dir: the folder with <split>.csv / .tsv / .jsonl files (or data_file "
                      "+ split_column: one file holding every split)")


def _listing(d: Path) -> str:
    if not d.is_dir():
        return f"the directory {d} does not exist"
    return f"{d} holds {sorted(p.name for p in d.iterdir() if p.is_file())[:20]}"


def _find_file(d: Path, split: str, exts: tuple[str, ...], what: str) -> Path:
    for ext in exts:
        for name in (split + ext, split + ext + ".gz"):
            if (d / name).is_file():
                return d / name
    if (d / split).is_file():
        return d / split
    raise FileNotFoundError(
        f"no {what} file for split {split!r} in {d}: looked for {split}{{{','.join(exts)}}}[.gz]; "
        f"{_listing(d)}. Pass the split's file name (without extension) or point data_dir elsewhere"
    )


def load_split(spec: TaskSpec, split: str, *, label_names: list[str] | None = None,
               allow_unlabelled: bool = False, labels_from: str | None = None) -> tuple[TaskData | TokenTaskData, Path]:
    """Read one split of a task → (data, source file). ``label_names``: the training split's classes
    (or tags), so every split shares label ids; a label outside them is an error naming ``labels_from`` (default
    "the training split"). ``allow_unlabelled``: a table split without labels (no label column, or only empty
    labels in its rows) reads as unlabelled, for predictions only."""
    path = spec.split_file(split)
    if spec.task in GLUE_TASKS:
        return read_glue(spec.task, spec.data_dir, split, skip_bad_rows=spec.skip_bad_rows), path
    if label_names is not None and labels_from is None:
        labels_from = "the training split"
    if spec.is_token:
        return read_conll(path, tag_scheme="iob2", tag_names=label_names, tags_from=labels_from), path
    where = dict(split_column=spec.split_column, split=split if spec.split_column is not None else None)
    label_field = spec.label_field
    if allow_unlabelled and not has_labels(path, label_field, columns=spec.columns, **where):
        log.info("%s: split %r has no %r labels; reading it for predictions only", path, split, label_field)
        label_field = None
    data = read_table(path, spec.text_fields, label_field, label_names=None if spec.regression else label_names,
                      regression=spec.regression, columns=spec.columns, labels_from=labels_from,
                      skip_bad_rows=spec.skip_bad_rows, **where)
    return data, path


def _subset(n: int, k: int | None, seed: int) -> np.ndarray | None:
    if k is None or k >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def _per_class(data, k: int, seed: int, source) -> np.ndarray:
    """Indices of k examples of every class, drawn with `seed` (LM-BFF's few-shot sets: K per class)."""
    labels = np.array([e.label for e in data.examples])
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(len(data.label_names)):
        idx = np.flatnonzero(labels == c)
        if len(idx) < k:
            raise ConfigError(f"{source}: class {data.label_names[c]!r} has {len(idx)} examples, fewer than "
                              f"shots_per_class={k}")
        keep.extend(rng.choice(idx, size=k, replace=False).tolist())
    return np.sort(np.array(keep))


def _take(data, keep: np.ndarray | None):
    if keep is None:
        return data
    if isinstance(data, TokenTaskData):
        return dataclasses.replace(data, sentences=[data.sentences[i] for i in keep],
                                   tags=[data.tags[i] for i in keep])
    return dataclasses.replace(data, examples=[data.examples[i] for i in keep])


def encode_split(spec: TaskSpec, backend, data, max_length: int, overlong: str, source: Path) -> Encoded:
    if spec.is_token:
        return encode_words(backend, data.sentences, data.tags, max_length, overlong, str(source))
    ex = data.examples
    texts_b = [e.text_b for e in ex] if ex and ex[0].text_b is not None else None
    return encode_texts(backend, [e.text_a for e in ex], texts_b, [e.label for e in ex], max_length,
                        overlong, str(source), regression=spec.is_regression)


def _labelled(data) -> bool:
    return isinstance(data, TokenTaskData) or data.has_labels
