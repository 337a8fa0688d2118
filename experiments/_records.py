"""Finished results, kept: read a run's results back instead of measuring it again, and keep the small ones in git.

Run directories live under runs/, which git ignores and a new machine does not have. A table whose runs take several
sessions (issue 14's grid is about 190 fine-tunings) must not lose the finished ones with the machine, so an
experiment may also keep each result as a record: a JSON file under experiments/records/<experiment>/, committed with
the code. A record is reused like the run's own results.json; delete it (or pass the script's --rerun) to measure
again.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

RECORDS = Path(__file__).resolve().parent / "records"


def record_path(name: str) -> Path:
    """experiments/records/<name>.json; `name` is a relative path such as 'adaptation_methods/lora/rte-seed0'."""
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise ValueError(f"record name {name!r} must be a relative path inside experiments/records")
    return RECORDS / f"{name}.json"


def read_record(name: str) -> dict[str, Any] | None:
    path = record_path(name)
    return json.loads(path.read_text()) if path.is_file() else None


def write_record(name: str, result: dict[str, Any]) -> Path:
    path = record_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)  # never a half-written record, even if the run is killed here
    return path


def is_finished(out: Path, record: str | None) -> bool:
    """Whether the run in `out` has results there, or (with `record`) as a kept record."""
    return (out / "results.json").is_file() or bool(record and record_path(record).is_file())


def reuse_or_run(out: Path, compute: Callable[[], dict[str, Any]], *, reuse: bool = True, record: str | None = None,
                 needs: tuple[str, ...] = ("results.json",)) -> dict[str, Any]:
    """The result of the run in `out`: read from out/results.json when `reuse` and every file of `needs` is there,
    else from the record `record` when `reuse` and it exists, else measured by `compute()` (which writes out/) and,
    with `record`, kept as that record."""
    if reuse and all((out / f).is_file() for f in needs):
        result = json.loads((out / "results.json").read_text())
        if record and not record_path(record).is_file():  # a run finished before records were kept
            write_record(record, result)
        return result
    if reuse and record and (kept := read_record(record)) is not None:
        return kept
    result = compute()
    if record:
        write_record(record, result)
    return result


def seed_cell(values: list[float], seeds: int) -> str:
    """A table cell over seeds: mean ± std x 100; a cell with fewer finished seeds than the table's says how many it
    has (a single seed shows no spread: it has none to show); "–" when none has finished."""
    if not values:
        return "–"
    spread = f" ± {statistics.stdev(values) * 100:.1f}" if len(values) > 1 else ""
    partial = f" ({len(values)} of {seeds} seeds)" if len(values) < seeds else ""
    return f"{statistics.fmean(values) * 100:.1f}{spread}{partial}"
