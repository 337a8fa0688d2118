"""Reading users' text files: plain or gzipped, UTF-8 with or without a byte-order mark, LF or CRLF line ends,
split into records with the line each starts on, and bad records counted instead of dropped silently.

Every task reader (GLUE, CoNLL, tables) goes through these helpers, so every format reads the same way from a
``.gz`` file and every error names ``file:line``, what is wrong and how to fix it.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def is_gzip(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def base_name(path: Path) -> str:
    """The file name without a trailing .gz, lower-cased: what decides its format."""
    return path.name.lower().removesuffix(".gz")


def lines(path: Path) -> Iterator[str]:
    """Decoded lines (endings kept) of a text or .gz file; bad UTF-8 is an error naming the line.

    A UTF-8 byte-order mark at the start is dropped (e.g. MRPC's msr_paraphrase files); CRLF endings are left to
    the callers, whose parsers (csv, str.split, json) all treat a trailing ``\\r`` as part of the line end.
    """
    opener = gzip.open if is_gzip(path) else open
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
                    text = text[1:]
                yield text
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise ValueError(f"{path}:{i + 1}: not a readable gzip file ({e}); re-compress it or drop .gz") from None


def csv_rows(path: Path, delimiter: str, quoting: int) -> Iterator[tuple[int, list[str]]]:
    """(line, fields) of each non-blank record; the line is where the record starts (a quoted CSV field may span
    several lines)."""
    reader = csv.reader(lines(path), delimiter=delimiter, quoting=quoting)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise ValueError(f"{path}:{reader.line_num}: {e}; check the quoting of this record") from None
        if row and (len(row) > 1 or row[0].strip()):  # blank lines are not records
            yield start, row
        start = reader.line_num + 1


def json_line(text: str) -> tuple[Any, str | None]:
    """(value, None) for one line of JSON, or (None, why it is not): besides json's own errors, an integer longer
    than Python's 4300-digit limit (a plain ValueError) and nesting deeper than the recursion limit (RecursionError)
    are bad lines too, for the caller to report with file:line."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, f"{e.msg} at column {e.colno}"
    except ValueError as e:  # "Exceeds the limit (4300 digits) for integer string conversion ..."
        return None, str(e).split(";")[0]
    except RecursionError:
        return None, "nested too deeply"


def parse_float(raw: str | int | float) -> float | None:
    """A finite float, or None for what is not one ('n/a', 'inf', '', a JSON integer beyond float's range)."""
    try:
        value = float(raw)
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


class BadRows:
    """Collects the bad records of one file: an error by default; with ``skip=True`` each is kept as
    "file:line: reason" and reported once, with a warning (the user's data is at fault), by ``report``."""

    def __init__(self, skip: bool) -> None:
        self.skip = skip
        self.skipped: list[str] = []

    def __call__(self, msg: str) -> None:
        if not self.skip:
            raise ValueError(
                msg + ". Fix or delete the line, or skip (and count) bad rows with --skip-bad-rows (skip_bad_rows=True)"
            )
        self.skipped.append(msg)

    def report(self, path: Path) -> None:
        if self.skipped:
            warnings.warn(
                f"{path}: skipped {len(self.skipped)} bad row(s) (listed in TaskData.skipped); "
                f"first: {self.skipped[0]}",
                stacklevel=3,
            )
