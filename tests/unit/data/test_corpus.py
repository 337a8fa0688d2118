"""Tests for ptmkit.data.corpus: spec resolution, .txt/.jsonl(.gz) reading, bad-line accounting.
Every skipped line must be counted by reason with its file and line number.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from ptmkit.data.corpus import CorpusStats, EmptyCorpusError, iter_documents, read_documents, resolve_files

from .conftest import write_jsonl


def test_txt_file_and_lines_modes(tmp_path: Path) -> None:
    f = tmp_path / "wiki.txt"
    f.write_text(" \n = Title = \n \n First line .\n\nSecond line .\n")
    docs, stats = read_documents(f)
    assert docs == [f.read_text()] and stats.documents == 1
    docs, stats = read_documents(f, txt_mode="lines")
    assert docs == [" = Title = ", " First line .", "Second line ."]
    assert stats.num_bad == 0  # blank lines separate documents in lines mode; they are not bad


def test_directory_is_recursive_sorted_and_skips_hidden(tmp_path: Path) -> None:
    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / "a.txt").write_text("doc a")
    (tmp_path / "b" / "c" / "d.txt.gz").write_bytes(gzip.compress(b"doc d"))
    write_jsonl(tmp_path / "b" / "e.jsonl", [{"text": "doc e"}])
    with gzip.open(tmp_path / "b" / "f.jsonl.gz", "wt") as g:
        g.write('{"text": "doc f"}\n')
    (tmp_path / "notes.md").write_text("ignored")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("hidden")
    assert [p.relative_to(tmp_path).as_posix() for p in resolve_files(tmp_path)] == [
        "a.txt", "b/c/d.txt.gz", "b/e.jsonl", "b/f.jsonl.gz",
    ]
    stats = CorpusStats()
    assert list(iter_documents(tmp_path, stats=stats)) == ["doc a", "doc d", "doc e", "doc f"]
    assert stats.files == 4 and stats.documents == 4 and stats.chars == 20
    assert [p.name for p in resolve_files(str(tmp_path / "**" / "*.jsonl*"))] == ["e.jsonl", "f.jsonl.gz"]
    assert len(resolve_files([tmp_path / "a.txt", tmp_path / "b"])) == 4


def test_bad_lines_are_counted_with_file_and_line(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "c.jsonl", [
        {"text": "good one"},                 # 1
        "{not json",                          # 2
        b'{"text": "bad \xff byte"}',         # 3
        {"title": "no text"},                 # 4
        {"text": 42},                         # 5
        [1, 2],                               # 6
        "",                                   # 7
        {"text": "   "},                      # 8
        {"text": "good two"},                 # 9
        "{also not json",                     # 10
    ])
    stats = CorpusStats(max_examples=1)
    assert list(iter_documents(f, stats=stats)) == ["good one", "good two"]
    assert stats.bad_lines == {
        "invalid_json": 2, "invalid_utf8": 1, "missing_field": 1, "non_string_field": 1,
        "not_an_object": 1, "blank_line": 1, "empty_text": 1,
    }
    lines = {r: [(b.file, b.line) for b in ex] for r, ex in stats.examples.items()}
    assert lines["invalid_json"] == [(str(f), 2)]  # only the first example is kept
    assert lines["invalid_utf8"] == [(str(f), 3)] and lines["missing_field"] == [(str(f), 4)]
    assert "'title'" in stats.examples["missing_field"][0].detail  # says which keys were there
    assert f"{f}:2" in stats.summary()
    assert stats.to_dict()["bad_lines"]["invalid_json"] == 2


def test_invalid_utf8_in_txt_keeps_the_rest(tmp_path: Path) -> None:
    f = tmp_path / "book.txt"
    f.write_bytes(b"line one\nbad \xc3\x28 line\nline three\n")
    stats = CorpusStats()
    assert list(iter_documents(f, stats=stats)) == ["line one\nline three\n"]
    assert stats.bad_lines == {"invalid_utf8": 1} and stats.examples["invalid_utf8"][0].line == 2


def test_empty_corpus_names_the_spec_and_the_cause(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "c.jsonl", [{"body": "x"}, {"body": "y"}])
    with pytest.raises(EmptyCorpusError, match=r"(?s)c\.jsonl has no documents.*missing_field: 2.*--text-field"):
        list(iter_documents(f))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(EmptyCorpusError, match="empty.txt"):
        list(iter_documents(tmp_path / "empty.txt"))


def test_missing_and_unsupported_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist"):
        iter_documents(tmp_path / "nope.jsonl")  # raised at call time, not at first next()
    with pytest.raises(FileNotFoundError, match="matches no"):
        resolve_files(str(tmp_path / "*.jsonl"))
    with pytest.raises(FileNotFoundError, match="contains no"):
        resolve_files(tmp_path)
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(ValueError, match="unsupported corpus file type"):
        resolve_files(tmp_path / "data.csv")
    with pytest.raises(ValueError, match="txt_mode"):
        iter_documents(tmp_path / "data.csv", txt_mode="paragraphs")


def test_truncated_gzip_is_an_error_naming_the_file(tmp_path: Path) -> None:
    data = gzip.compress(b"".join(b'{"text": "document %d"}\n' % i for i in range(2000)))
    f = tmp_path / "cut.jsonl.gz"
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.jsonl\.gz: compressed stream is corrupt or truncated"):
        list(iter_documents(f))
