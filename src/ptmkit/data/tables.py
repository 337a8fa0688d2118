"""Users' own tasks as tables: CSV, TSV (no quoting) or JSON lines, plain or gzipped, with a header line or with
column names given by the user, one file per split or one file holding every split in a column.

Labels keep the strings of the file (sorted; integer labels in numeric order) unless the caller fixes them
(``label_names``: the training split's classes, so every split shares ids). Strict by default: a missing column,
a row with the wrong number of fields or an unknown label raises an error naming file:line, the bad value and
the fix; ``skip_bad_rows=True`` skips (and counts) bad rows instead.
"""

from __future__ import annotations

import collections
import csv
import decimal
import itertools
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from ptmkit.config import ConfigError
from ptmkit.data.examples import Example, TaskData
from ptmkit.data.textio import BadRows, base_name, csv_rows, json_line, lines, parse_float

TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
TABLE_EXTS = tuple(TABLE_FORMATS)


def table_format(path: Path) -> str:
    """"csv", "tsv" or "jsonl", from the extension (a trailing .gz is ignored)."""
    fmt = TABLE_FORMATS.get(Path(base_name(path)).suffix)
    if fmt is None:
        raise ConfigError(
            f"cannot tell the format of {path} from its extension; name it .csv, .tsv or .jsonl "
            "(optionally + .gz)"
        )
    return fmt


def check_columns(columns: Sequence[str] | None) -> list[str] | None:
    """The user's column names for a header-less CSV/TSV file: non-empty, distinct strings."""
    if columns is None:
        return None
    if isinstance(columns, str) or not all(isinstance(c, str) and c.strip() for c in columns) or not columns:
        raise ConfigError(f"columns must be a list of non-empty column names, got {columns!r}")
    dup = sorted({c for c in columns if list(columns).count(c) > 1})
    if dup:
        raise ConfigError(f"columns names {dup} more than once: {list(columns)}; give each column its own name")
    return list(columns)


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
        # Decimal, not int: no 4300-digit limit; the text breaks ties ("1" / "01") so ids never depend on set order
        return sorted(keys, key=lambda k: (decimal.Decimal(k), k))
    return sorted(keys)


def _jsonl_records(path: Path, needed: list[str], bad: BadRows) -> Iterator[tuple[int, dict]]:
    first = True
    for line, text in enumerate(lines(path), start=1):
        if not text.strip():
            continue
        rec, why = json_line(text)
        if why is not None:
            bad(f"{path}:{line}: not valid JSON ({why})")
            continue
        if not isinstance(rec, dict):
            bad(f"{path}:{line}: expected a JSON object per line, got {type(rec).__name__}")
            continue
        missing = [c for c in needed if c not in rec]
        if missing:
            msg = f"{path}:{line}: field(s) {missing} not found; available fields: {sorted(rec)}"
            if first:  # the first record decides: a wrong field name, not a bad row
                raise ValueError(msg + "; pass the right names as text_fields / label_field / split_column")
            bad(msg)
            continue
        first = False
        yield line, rec


def _delimited_records(
    path: Path, fmt: str, needed: list[str], bad: BadRows, columns: list[str] | None
) -> Iterator[tuple[int, dict]]:
    rows = csv_rows(
        path,
        delimiter="," if fmt == "csv" else "\t",
        quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE,
    )
    first_row = next(rows, None)
    if first_row is None:
        what = "rows" if columns is not None else "a header line naming the columns"
        raise ValueError(f"{path}: the file is empty; expected {what}")
    hline, first = first_row
    if columns is None:
        header, where, pending = first, f"the header on line {hline}", []
        fix = "pass the right names as text_fields / label_field / split_column"
        dup = sorted({c for c in needed if header.count(c) > 1})
        if dup:
            raise ValueError(f"{path}:{hline}: column(s) {dup} appear more than once in the header {header}; "
                             "rename them so each column has its own name")
    else:
        if [v.strip() for v in first] == columns:
            raise ValueError(
                f"{path}:{hline}: this row repeats the column names {columns}, so the file has a header line; "
                "drop columns (it names the columns of files without a header)"
            )
        header, where, pending = columns, f"the {len(columns)} columns you named {columns}", [first_row]
        fix = "name them in columns, or pass the right names as text_fields / label_field / split_column"
    missing = [c for c in needed if c not in header]
    if missing:
        avail = f"available columns: {header}" if columns is None else f"the columns you named: {columns}"
        raise ValueError(f"{path}:{hline}: column(s) {missing} not found; {avail}; {fix}")
    for line, row in itertools.chain(pending, rows):
        if len(row) != len(header):
            hint = ""
            if fmt == "tsv" and len(row) > len(header):
                hint = " (a tab inside a text?)"
            elif fmt == "csv" and len(row) > len(header):
                hint = ' (a comma inside an unquoted text? quote it: "a, b")'
            bad(f"{path}:{line}: row has {len(row)} columns, expected {len(header)} as in {where}{hint}")
            continue
        yield line, dict(zip(header, row, strict=True))


def _records(
    path: Path, fmt: str, needed: list[str], bad: BadRows, columns: list[str] | None = None
) -> Iterator[tuple[int, dict]]:
    """(line, {column: value}) per record; a missing column raises, a malformed row goes to ``bad``."""
    if fmt == "jsonl":
        if columns is not None:
            raise ConfigError(
                f"columns names the fields of a header-less CSV/TSV file, but {path} is JSON lines, whose records "
                "name their own fields; drop columns"
            )
        return _jsonl_records(path, needed, bad)
    return _delimited_records(path, fmt, needed, bad, columns)


def _check_split_args(split_column: str | None, split: str | None) -> None:
    if (split_column is None) != (split is None):
        raise ConfigError("split_column and split go together: the column naming each row's split, and the split "
                          f"to read (got split_column={split_column!r}, split={split!r})")


class _SplitFilter:
    """Keeps the rows whose ``column`` holds ``split``; counts the values seen, to list them when none matches."""

    def __init__(self, path: Path, column: str | None, split: str | None, bad: BadRows) -> None:
        self.path, self.column, self.split, self.bad = path, column, split, bad
        self.seen: collections.Counter[str] = collections.Counter()

    def keep(self, line: int, rec: dict) -> bool:
        if self.column is None:
            return True
        value = _label_key(rec[self.column])
        if not value:
            self.bad(f"{self.path}:{line}: empty {self.column!r}: the row belongs to no split; write its split "
                     f"(e.g. {self.split!r}) in that column")
            return False
        self.seen[value] += 1
        return value == self.split

    def check_found(self) -> None:
        if self.column is None or self.split in self.seen:
            return
        if not self.seen:
            raise ValueError(f"{self.path}: no rows to choose split {self.split!r} from; the file has no data rows")
        present = ", ".join(f"{v!r} ({n} row{'s' if n > 1 else ''})" for v, n in sorted(self.seen.items()))
        raise ValueError(
            f"{self.path}: no row has {self.column} = {self.split!r}; the values present in column {self.column!r} "
            f"are {present}. Name the split by one of them (e.g. train_split / eval_split), or fix the column"
        )


def read_table(
    path: str | Path,
    text_fields: Sequence[str],
    label_field: str | None = None,
    label_names: Sequence[str] | None = None,
    regression: bool = False,
    *,
    columns: Sequence[str] | None = None,
    split_column: str | None = None,
    split: str | None = None,
    labels_from: str | None = None,
    skip_bad_rows: bool = False,
) -> TaskData:
    """Read your own task from CSV, TSV (no quoting) or JSON lines, chosen by extension (.gz ok).

    ``text_fields``: one or two column names (text_a, text_b). ``label_field``: the label column, or
    None for unlabelled data. Classes map to ids in ``label_names`` (unknown labels are errors);
    when not given they are the sorted distinct labels of the file (numeric order for integer
    labels), so read dev/test with the train split's ``label_names`` (and name where they come from in
    ``labels_from``, e.g. "the training split train.csv", for the error about a label it lacks).
    ``regression=True`` reads float scores.

    ``columns``: the file (CSV/TSV) has no header line and these are its column names; every row must have
    that many fields. ``split_column`` + ``split``: the file holds several splits and this column says which
    each row belongs to; only the rows whose value is ``split`` are read.
    """
    path = Path(path)
    text_fields = [text_fields] if isinstance(text_fields, str) else list(text_fields)
    if not 1 <= len(text_fields) <= 2:
        raise ConfigError(f"text_fields must name 1 or 2 columns (text_a, text_b), got {text_fields}")
    if regression and label_names is not None:
        raise ConfigError("regression=True reads float scores; drop label_names (they are for classes)")
    names = list(label_names) if label_names is not None else None
    if names is not None and len(set(names)) != len(names):
        raise ConfigError(f"label_names has duplicates: {names}")
    columns = check_columns(columns)
    _check_split_args(split_column, split)
    if split_column is not None and split_column in [*text_fields, label_field]:
        raise ConfigError(f"split_column {split_column!r} is also a text or label column; name the column that "
                          "holds each row's split (train / dev / test)")
    fmt = table_format(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; pass the path of your .csv / .tsv / .jsonl file")

    bad = BadRows(skip_bad_rows)
    needed = text_fields + [c for c in (label_field, split_column) if c is not None]
    label_id = {n: i for i, n in enumerate(names)} if names is not None else None
    rows = _SplitFilter(path, split_column, split, bad)
    texts: list[tuple[str, str | None]] = []
    labels: list[int | float | str | None] = []
    for line, rec in _records(path, fmt, needed, bad, columns):
        if not rows.keep(line, rec):
            continue
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
                    label = parse_float(raw.strip())
                elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
                    label = parse_float(raw)
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
                        bad(_unknown_label(path, line, key, label_field, names, labels_from))
                        continue
                else:
                    label = key  # mapped to an id once every label is known
        texts.append((values[0], values[1] if len(values) > 1 else None))
        labels.append(label)
    rows.check_found()

    if label_field is not None and not regression and names is None:
        names = _int_or_text_order({k for k in labels if isinstance(k, str)})
        label_id = {n: i for i, n in enumerate(names)}
        labels = [label_id[k] for k in labels]
    bad.report(path)
    return TaskData(
        examples=[Example(a, b, y) for (a, b), y in zip(texts, labels, strict=True)],
        label_names=None if regression else names,
        is_regression=regression,
        text_fields=tuple(text_fields),
        skipped=bad.skipped,
    )


def _unknown_label(path: Path, line: int, key: str, field: str, names: list[str], labels_from: str | None) -> str:
    if labels_from is None:
        return f"{path}:{line}: unknown label {key!r} in {field!r}; allowed labels: {names}"
    return (
        f"{path}:{line}: label {key!r} in {field!r} does not occur in {labels_from}, whose labels are {names} (a "
        "class the model never trained on can be neither learned nor scored); correct the label or add training "
        "rows with it"
    )


def has_labels(
    path: str | Path,
    label_field: str,
    *,
    columns: Sequence[str] | None = None,
    split_column: str | None = None,
    split: str | None = None,
) -> bool:
    """Whether the file (or its ``split`` rows) has a ``label_field`` column with some non-empty value: a test file
    without the column, or test rows with empty labels in a file holding every split, are unlabelled."""
    path = Path(path)
    _check_split_args(split_column, split)
    skip = BadRows(skip=True)  # bad rows are the reader's to report; here they only do not count
    rows = _SplitFilter(path, split_column, split, skip)
    needed = [split_column] if split_column is not None else []
    for line, rec in _records(path, table_format(path), needed, skip, check_columns(columns)):
        if rows.keep(line, rec) and _label_key(rec.get(label_field)):
            return True
    return False
