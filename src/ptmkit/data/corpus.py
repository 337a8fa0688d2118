"""Corpus readers: turn a file, directory or glob of .txt/.jsonl(.gz) files into a stream of documents.
Bad lines are counted per reason with (file, line) examples in CorpusStats, never silently dropped.

Formats
- ``.txt`` / ``.txt.gz``: ``txt_mode="file"`` (default) makes each file one document (a book, an
  article); ``txt_mode="lines"`` makes every non-blank line a document (WikiText, one sentence per
  line corpora). Blank lines are separators in "lines" mode, not errors.
- ``.jsonl`` / ``.jsonl.gz``: one JSON object per line, the text under ``text_field``.
"""

from __future__ import annotations

import glob
import gzip
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptmkit.data.textio import json_line

SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz")
TXT_MODES = ("file", "lines")

# Reasons a line (or a .txt file) yields no document; each is counted in CorpusStats.bad_lines.
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"  # valid JSON, but a list/number/string instead of {...}
MISSING_FIELD = "missing_field"
NON_STRING_FIELD = "non_string_field"
EMPTY_TEXT = "empty_text"  # the text is empty or whitespace only
BLANK_LINE = "blank_line"  # a blank line inside a .jsonl file

class EmptyCorpusError(ValueError):
    """The corpus spec resolved to files, but they hold no usable document."""


@dataclass(frozen=True)
class BadLine:
    file: str
    line: int
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class CorpusStats:
    """Counts of what a corpus read produced: files, documents, characters, bad lines by reason.

    ``examples[reason]`` keeps the first ``max_examples`` occurrences as BadLine(file, line, detail)
    so a report can point at the exact place to fix.
    """

    files: int = 0
    documents: int = 0
    chars: int = 0
    bad_lines: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[BadLine]] = field(default_factory=dict)
    max_examples: int = 3

    def record_bad(self, reason: str, file: str | os.PathLike[str], line: int, detail: str = "") -> None:
        self.bad_lines[reason] = self.bad_lines.get(reason, 0) + 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < self.max_examples:
            kept.append(BadLine(str(file), int(line), detail))

    @property
    def num_bad(self) -> int:
        return sum(self.bad_lines.values())

    def summary(self) -> str:
        """One line per bad-line reason with its first examples, or 'no bad lines'."""
        if not self.bad_lines:
            return "no bad lines"
        out = []
        for reason in sorted(self.bad_lines):
            ex = "; ".join(str(b) for b in self.examples.get(reason, []))
            out.append(f"{reason}: {self.bad_lines[reason]} (first: {ex})")
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "documents": self.documents,
            "chars": self.chars,
            "bad_lines": dict(sorted(self.bad_lines.items())),
            "bad_line_examples": {
                r: [{"file": b.file, "line": b.line, "detail": b.detail} for b in ex]
                for r, ex in sorted(self.examples.items())
            },
        }


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    for s in sorted(SUFFIXES, key=len, reverse=True):  # ".jsonl.gz" before ".gz"-less forms
        if name.endswith(s):
            return s
    return None


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def resolve_files(spec: Any) -> list[Path]:
    """Expand a corpus spec (file, directory, glob, or a list of these) into a sorted file list.

    Directories are searched recursively for *.txt, *.txt.gz, *.jsonl, *.jsonl.gz (hidden files
    skipped). A missing path is a FileNotFoundError naming it; a file with another suffix is a
    ValueError; a directory or glob with no corpus file is a FileNotFoundError.
    """
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError("empty corpus spec: give at least one file, directory or glob")
        files: list[Path] = []
        for s in spec:
            files.extend(resolve_files(s))
        return files
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_file():
        if _suffix(path) is None:
            raise ValueError(
                f"{path}: unsupported corpus file type; expected one of {', '.join(SUFFIXES)} "
                "(rename the file, or convert it to JSON lines with a 'text' field)"
            )
        return [path]
    if path.is_dir():
        found = sorted(
            p for p in path.rglob("*")
            if p.is_file() and _suffix(p) and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not found:
            raise FileNotFoundError(
                f"corpus directory {path} contains no {', '.join('*' + s for s in SUFFIXES)} files"
            )
        return found
    if _has_magic(text):
        matched = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
        found = [p for p in matched if p.is_file() and _suffix(p)]
        if not found:
            what = f"it matched only {[str(p) for p in matched[:5]]}" if matched else "it matched nothing"
            raise FileNotFoundError(
                f"corpus glob {text!r} matches no {', '.join('*' + s for s in SUFFIXES)} file: {what}"
            )
        return found
    raise FileNotFoundError(f"corpus path {text} does not exist (expected a file, directory or glob)")


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")


def _corrupt(path: Path, line: int, e: Exception) -> ValueError:
    return ValueError(
        f"{path}: compressed stream is corrupt or truncated after line {line} ({e}); "
        "re-download or re-compress the file"
    )


def _iter_jsonl(path: Path, text_field: str, stats: CorpusStats) -> Iterator[str]:
    lineno = 0
    with _open_binary(path) as f:
        it = iter(f)
        while True:
            try:
                raw = next(it)
            except StopIteration:
                return
            except (EOFError, OSError, zlib.error) as e:
                raise _corrupt(path, lineno, e) from None
            lineno += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                stats.record_bad(INVALID_UTF8, path, lineno, f"byte {e.start}: {e.reason}")
                continue
            if lineno == 1 and line.startswith("\ufeff"):  # tolerate a UTF-8 byte-order mark
                line = line[1:]
            if not line.strip():
                stats.record_bad(BLANK_LINE, path, lineno)
                continue
            obj, why = json_line(line)
            if why is not None:
                stats.record_bad(INVALID_JSON, path, lineno, why)
                continue
            if not isinstance(obj, dict):
                stats.record_bad(NOT_AN_OBJECT, path, lineno, f"got a JSON {type(obj).__name__}")
                continue
            if text_field not in obj:
                keys = sorted(obj)[:8]
                stats.record_bad(MISSING_FIELD, path, lineno, f"no {text_field!r}; keys are {keys}")
                continue
            text = obj[text_field]
            if not isinstance(text, str):
                stats.record_bad(NON_STRING_FIELD, path, lineno, f"{text_field!r} is a {type(text).__name__}")
                continue
            if not text.strip():
                stats.record_bad(EMPTY_TEXT, path, lineno)
                continue
            yield text


def _read_all(path: Path) -> bytes:
    try:
        with _open_binary(path) as f:
            return f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise _corrupt(path, 0, e) from None


def _decode_lines_tolerant(path: Path, data: bytes, stats: CorpusStats) -> list[str]:
    """Decode line by line, counting each line that is not valid UTF-8 (the rest is kept)."""
    lines = []
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            stats.record_bad(INVALID_UTF8, path, lineno, f"byte {e.start}: {e.reason}")
    return lines


def _iter_txt(path: Path, txt_mode: str, stats: CorpusStats) -> Iterator[str]:
    data = _read_all(path)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if txt_mode == "file":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = "\n".join(_decode_lines_tolerant(path, data, stats))
        if not text.strip():
            stats.record_bad(EMPTY_TEXT, path, 1, "the file is empty")
            return
        yield text
        return
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        lines = _decode_lines_tolerant(path, data, stats)
    for line in lines:
        if line.strip():  # blank lines separate documents in "lines" mode
            yield line.rstrip("\r")


def iter_documents(
    spec: Any,
    text_field: str = "text",
    txt_mode: str = "file",
    stats: CorpusStats | None = None,
) -> Iterator[str]:
    """Yield the documents of a corpus spec (file, directory, glob, or list of them), in file order.

    ``stats`` (optional, updated in place) receives file/document counts and bad lines by reason.
    A missing path (FileNotFoundError) or bad argument is raised at call time; EmptyCorpusError is
    raised when iteration ends without any document (its message carries the bad-line summary).
    """
    if txt_mode not in TXT_MODES:
        raise ValueError(f"txt_mode={txt_mode!r} is not one of {list(TXT_MODES)}")
    if not isinstance(text_field, str) or not text_field:
        raise ValueError(f"text_field must be a non-empty string, got {text_field!r}")
    files = resolve_files(spec)
    return _documents(spec, files, text_field, txt_mode, stats if stats is not None else CorpusStats())


def _documents(spec: Any, files: list[Path], text_field: str, txt_mode: str, stats: CorpusStats) -> Iterator[str]:
    start_docs = stats.documents
    for path in files:
        stats.files += 1
        suffix = _suffix(path) or ""
        docs: Iterable[str] = (
            _iter_jsonl(path, text_field, stats) if suffix.startswith(".jsonl") else _iter_txt(path, txt_mode, stats)
        )
        for text in docs:
            stats.documents += 1
            stats.chars += len(text)
            yield text
    if stats.documents == start_docs:
        shown = os.fspath(spec) if not isinstance(spec, (list, tuple)) else [os.fspath(s) for s in spec]
        hint = ""
        if stats.bad_lines.get(MISSING_FIELD):
            hint = f" Check the text field name (text_field / --text-field, now {text_field!r})."
        raise EmptyCorpusError(
            f"corpus {shown} has no documents ({len(files)} file(s) read). Bad lines:\n{stats.summary()}.{hint}"
        )


def read_documents(spec: Any, **kwargs: Any) -> tuple[list[str], CorpusStats]:
    """Read a whole (small) corpus into memory; returns (documents, stats)."""
    stats = CorpusStats()
    docs = list(iter_documents(spec, stats=stats, **kwargs))
    return docs, stats
