"""Task data for fine-tuning and evaluation: which files a task reads (GLUE, CoNLL-2003, your own tables), its
label set and metrics, and the encoded splits. Shared by the fine-tuning and evaluation recipes."""

from __future__ import annotations

import dataclasses
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptmkit.config import ConfigError
from ptmkit.data.encode import Encoded, encode_texts, encode_words
from ptmkit.data.paths import data_root
from ptmkit.data.tasks import (
    GLUE_TASKS, TASK_METRICS, TaskData, TokenTaskData, glue_task, read_conll, read_glue, read_table,
)

TOKEN_TASKS = ("conll2003",)
OTHER_TASKS = ("conll2003", "table")
_TABLE_EXTS = (".csv", ".tsv", ".jsonl", ".ndjson")


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
    """How to read and score one task (resolved from FinetuneConfig or a saved model's task file)."""

    task: str
    data_dir: Path
    text_fields: list[str] | None = None
    label_field: str | None = None
    regression: bool = False

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


def default_data_dir(task: str) -> Path:
    """Where the shared data root keeps a task: glue/<GLUE name>/ or ner/conll2003/."""
    if task in GLUE_TASKS:
        return data_root() / "glue" / GLUE_TASKS[task].name
    if task == "conll2003":
        return data_root() / "ner" / "conll2003"
    raise ConfigError("task 'table' needs data_dir: the folder with <split>.csv / .tsv / .jsonl files")


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


def _table_columns(path: Path) -> list[str]:
    """The header columns (CSV/TSV) or the first record's fields (JSONL) of a table file."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig") as f:
        for line in f:
            if not line.strip():
                continue
            name = path.name.lower().removesuffix(".gz")
            if name.endswith((".jsonl", ".ndjson")):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    return []
                return list(rec) if isinstance(rec, dict) else []
            import csv

            return next(csv.reader([line], delimiter="," if name.endswith(".csv") else "\t"))
    return []


def load_split(spec: TaskSpec, split: str, *, label_names: list[str] | None = None,
               allow_unlabelled: bool = False) -> tuple[TaskData | TokenTaskData, Path]:
    """Read one split of a task → (data, source file). ``label_names``: the training split's classes
    (or tags), so every split shares label ids."""
    d = spec.data_dir
    if spec.task in GLUE_TASKS:
        data = read_glue(spec.task, d, split)
        path = d / f"{split}.tsv"
        return data, path if path.is_file() else path.with_name(path.name + ".gz")
    if spec.is_token:
        path = _find_file(d, split, (".txt", ".conll", ".iob"), "CoNLL")
        return read_conll(path, tag_scheme="iob2", tag_names=label_names), path
    path = _find_file(d, split, _TABLE_EXTS, "table")
    label_field = spec.label_field
    if allow_unlabelled and label_field not in _table_columns(path):
        label_field = None  # e.g. a test file without labels: predictions only
    data = read_table(path, spec.text_fields, label_field,
                      label_names=None if spec.regression else label_names, regression=spec.regression)
    return data, path


def _subset(n: int, k: int | None, seed: int) -> np.ndarray | None:
    if k is None or k >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


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
