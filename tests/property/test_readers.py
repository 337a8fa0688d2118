"""Property tests of every reader (DESIGN.md, "Rules that protect users": bad data lines are counted and reported,
errors name the file and line): arbitrary bytes and rows give either a result or a ptmkit error, never another
exception type.

The contract, checked by ``reads_or_names``:

- Data readers (corpus, GLUE, CoNLL, tables, text I/O, parallel text, task data) return a result, or raise a
  ``ValueError`` that ptmkit raised itself: the class ``ValueError`` or one of ptmkit's subclasses (``ConfigError``,
  ``EmptyCorpusError``), never a library's subclass (``UnicodeDecodeError``, ``json.JSONDecodeError``) nor another
  type (``csv.Error``, ``EOFError``, ``gzip.BadGzipFile``, ``IndexError``, ``KeyError``, ``TypeError`` ...).
- The message contains the file's path; where the fault is in one line it says ``path:LINE`` with that line's
  number (checked exactly by the targeted tests at the end, and for range by every test).
- Config files (``load_yaml``, ``build_config``) raise ``ConfigError`` naming the file (``path:LINE`` for a YAML
  syntax or encoding fault); ``from_dict`` and the dotted overrides raise ``ConfigError`` naming the key.
- Nothing lost: where a reader skips bad rows (``skip_bad_rows=True``, corpus bad-line stats) every record is
  either read or listed among the skipped ones.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gzip
import io
import json
import os
import re
import tempfile
import zlib
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from ptmkit.cli.overrides import build_config, parse_dotted
from ptmkit.config import ConfigError, apply_overrides, from_dict, load_yaml
from ptmkit.data.conll import read_conll
from ptmkit.data.corpus import CorpusStats, EmptyCorpusError, iter_documents
from ptmkit.data.glue import GLUE_TASKS, read_glue
from ptmkit.data.multilingual import read_aligned
from ptmkit.data.tables import read_table
from ptmkit.data.task_data import TaskSpec, load_split
from ptmkit.data.textio import csv_rows, lines

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # skipped-row reports are warnings by design

# PTMKIT_PROPERTY_EXAMPLES=1000 for a longer hunt; the default keeps the file well under a minute on 2 cores
EXAMPLES = int(os.environ.get("PTMKIT_PROPERTY_EXAMPLES", "100"))
FAST = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
FEW = settings(FAST, max_examples=max(EXAMPLES // 2, 1))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("property")


@contextlib.contextmanager
def workdir(base: Path):
    """A fresh directory per hypothesis example (tmp_path is shared by all examples of a test)."""
    with tempfile.TemporaryDirectory(dir=base) as d:
        yield Path(d)


# ---- the contract --------------------------------------------------------------------------------------------------


def is_ptmkit_error(e: BaseException, kind: type[Exception] = ValueError) -> bool:
    """``kind`` itself, or a subclass ptmkit defines (not json's or codecs' ValueError subclasses)."""
    return isinstance(e, kind) and (type(e) is kind or type(e).__module__.startswith("ptmkit."))


def assert_named(e: BaseException, path: Path, n_lines: int | None = None, kind: type[Exception] = ValueError):
    msg = str(e)
    if not is_ptmkit_error(e, kind):
        raise AssertionError(f"{type(e).__module__}.{type(e).__name__} escaped: {msg}") from e
    if str(path) not in msg:
        raise AssertionError(f"the message does not name {path}: {msg}") from e
    if n_lines is not None:
        for m in re.finditer(re.escape(str(path)) + r":(\d+)", msg):
            if not 1 <= int(m.group(1)) <= n_lines + 1:
                raise AssertionError(f"line {m.group(1)} is outside the file's {n_lines} lines: {msg}") from e


def reads_or_names(fn, path: Path, n_lines: int | None = None, kind: type[Exception] = ValueError):
    """fn()'s result, or None after checking that what it raised is a ptmkit error naming ``path``."""
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - the property is about which exceptions escape
        event(f"error {type(e).__name__}")  # --hypothesis-show-statistics: how often each outcome was reached
        assert_named(e, path, n_lines, kind)
        return None
    event("read")
    return out


def line_count(data: bytes, gz: bool) -> int | None:
    """Lines of the (decompressed) content, for the range check of `path:LINE`; None when not decompressible."""
    if gz:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            return None
    return data.count(b"\n") + 1


# ---- strategies ----------------------------------------------------------------------------------------------------

NASTY = [
    b"\x00", b"\xff", b"\xfe\xff", b"\xef\xbb\xbf", b"\r\n", b"\r", b"\n", b"\n\n", b"\t", b",", b";", b'"', b"'",
    b"\\", b"{", b"}", b"[", b"]", b":", b" ", b"a", b"1", b"-", b"\xc3", b"\xe2\x82", b"\xc3\xa9", b"\x1f\x8b",
    b"-DOCSTART-", b"B-PER", b"I-", b"O", b"text", b"label", b"sentence", b"null", b"true", b"1e999", b"NaN",
    b'{"text": "x"}', b'{"text": 1}', b"[" * 3000, b"9" * 400, b"9" * 5000, b"\x85", b"\xe2\x80\xa8",
]
chunks = st.lists(st.one_of(st.sampled_from(NASTY), st.binary(max_size=6)), max_size=40).map(b"".join)
# csv's default field size limit is 131072 characters: a longer line is a csv.Error
long_line = st.sampled_from([b"x" * 140_000, b"a\tb\n" + b"y" * 140_000 + b"\n", b"\xff" * 140_000])
raw_bytes = st.one_of(st.binary(max_size=200), chunks, chunks, long_line)


@st.composite
def gz_bytes(draw) -> bytes:
    """What a .gz file may hold: a good stream of arbitrary bytes, truncated, corrupted, with trailing junk, or
    no gzip at all."""
    payload = draw(raw_bytes)
    packed = gzip.compress(payload, mtime=0)
    how = draw(st.sampled_from(["whole", "truncated", "flipped", "trailing", "raw"]))
    if how == "truncated":
        packed = packed[: draw(st.integers(0, len(packed) - 1))]
    elif how == "flipped":
        i = draw(st.integers(0, len(packed) - 1))
        packed = packed[:i] + bytes([packed[i] ^ draw(st.integers(1, 255))]) + packed[i + 1:]
    elif how == "trailing":
        packed += draw(st.binary(min_size=1, max_size=20))
    elif how == "raw":
        packed = payload
    return packed


@st.composite
def file_bytes(draw) -> tuple[bool, bytes]:
    """(gzipped?, content) of a file."""
    gz = draw(st.booleans())
    return gz, draw(gz_bytes() if gz else raw_bytes)


def gz_suffix(gz: bool) -> str:
    return ".gz" if gz else ""


# a field of a row: no line ends (one row, one line), sometimes empty
field_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e"
                                   "\x85\u2028\u2029"), max_size=8)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(10**300, 10**320),
                         st.floats(allow_nan=True, allow_infinity=True), field_text)
json_values = st.recursive(json_scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=3), st.dictionaries(st.sampled_from(["text", "label", "split", "x"]) | field_text,
                                                kids, max_size=3)), max_leaves=8)


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)  # NaN / Infinity as Python writes them (invalid strict JSON)


# ---- text I/O and corpora ------------------------------------------------------------------------------------------


@FAST
@given(f=file_bytes())
def test_textio_any_bytes(base, f):
    gz, data = f
    with workdir(base) as d:
        path = d / ("f.txt" + gz_suffix(gz))
        path.write_bytes(data)
        n = line_count(data, gz)
        reads_or_names(lambda: list(lines(path)), path, n)
        reads_or_names(lambda: list(csv_rows(path, ",", csv.QUOTE_MINIMAL)), path, n)
        reads_or_names(lambda: list(csv_rows(path, "\t", csv.QUOTE_NONE)), path, n)


@FAST
@given(f=file_bytes(), kind=st.sampled_from([".txt", ".jsonl"]), txt_mode=st.sampled_from(["file", "lines"]),
       text_field=st.sampled_from(["text", "x"]))
def test_corpus_any_bytes(base, f, kind, txt_mode, text_field):
    gz, data = f
    with workdir(base) as d:
        path = d / ("c" + kind + gz_suffix(gz))
        path.write_bytes(data)
        stats = CorpusStats()
        try:
            docs = list(iter_documents(path, text_field=text_field, txt_mode=txt_mode, stats=stats))
        except EmptyCorpusError as e:
            assert_named(e, path)
            docs = []
        except Exception as e:  # noqa: BLE001
            assert_named(e, path, line_count(data, gz))
            return
        assert all(isinstance(t, str) and t.strip() for t in docs)
        if kind == ".jsonl" and not gz:  # nothing lost: every line is a document or a counted bad line
            assert stats.documents + stats.num_bad == data.count(b"\n") + (not data.endswith(b"\n") and bool(data))


@FAST
@given(records=st.lists(st.one_of(json_values.map(dumps), json_values.map(lambda v: dumps({"text": v})),
                                  st.sampled_from(["", " ", "{", '{"text": "a"', "[" * 5000, "9" * 5000,
                                                   '{"text": "\\ud800"}', '{"text": "ok"}'])), max_size=12),
       gz=st.booleans())
def test_corpus_json_lines(base, records, gz):
    """Each line is a document or a counted bad line, whatever JSON (or not-JSON) it holds."""
    data = "".join(r + "\n" for r in records).encode("utf-8", "surrogatepass")
    with workdir(base) as d:
        path = d / ("c.jsonl" + gz_suffix(gz))
        path.write_bytes(gzip.compress(data) if gz else data)
        stats = CorpusStats()
        docs = reads_or_names(lambda: list(iter_documents(path, stats=stats)), path, len(records))
        assert stats.documents + stats.num_bad == len(records)
        assert docs is None or len(docs) == stats.documents
        for examples in stats.examples.values():
            assert all(b.file == str(path) and 1 <= b.line <= len(records) for b in examples)


# ---- GLUE ----------------------------------------------------------------------------------------------------------

GLUE_KEYS = sorted(GLUE_TASKS)


@FAST
@given(task=st.sampled_from(GLUE_KEYS), f=file_bytes(), skip=st.booleans())
def test_glue_any_bytes(base, task, f, skip):
    gz, data = f
    with workdir(base) as d:
        path = d / ("train.tsv" + gz_suffix(gz))
        path.write_bytes(data)
        reads_or_names(lambda: read_glue(task, d, "train", skip_bad_rows=skip), path, line_count(data, gz))


def is_record(fields: list[str]) -> bool:
    """csv_rows' rule: a blank line (or one blank field) is not a record."""
    return len(fields) > 1 or bool(fields and fields[0].strip())


@st.composite
def glue_file_rows(draw):
    """A plausible GLUE file: the task's header (sometimes missing a column, with extra or duplicated ones, or
    none), then rows with about the right number of fields and valid, empty or unknown labels."""
    spec = GLUE_TASKS[draw(st.sampled_from(GLUE_KEYS))]
    cols = [c for c in (spec.text_a, spec.text_b, spec.label) if c is not None]
    cols += draw(st.lists(st.sampled_from(["index", "genre", "extra", "label", "#1 ID"]), max_size=3))
    cols = draw(st.permutations(cols))
    if draw(st.integers(0, 5)) == 0:
        cols = cols[:-1]
    labels = list(spec.label_values or ["0.5", "5", "-1"]) + list(spec.label_names or [])
    label_text = st.one_of(st.sampled_from(labels), st.sampled_from(["", " ", "banana", "nan", "inf", "1e999", "2"]),
                           field_text)
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        n = len(cols) + draw(st.sampled_from([0, 0, 0, 0, -1, 1, -len(cols)]))
        row = [draw(label_text) if c == spec.label else draw(field_text) for c in cols][: max(n, 0)]
        rows.append(row + [draw(field_text) for _ in range(n - len(row))])
    header = [] if spec.columns is not None and draw(st.booleans()) else [cols]
    return spec, header + rows


@FAST
@given(spec_rows=glue_file_rows(), skip=st.booleans(), gz=st.booleans(), crlf=st.booleans())
def test_glue_rows(base, spec_rows, skip, gz, crlf):
    spec, rows = spec_rows
    rows = [[f.replace("\t", " ") for f in r] for r in rows]
    text = "".join("\t".join(r) + ("\r\n" if crlf else "\n") for r in rows)
    data = text.encode()
    task = next(k for k, s in GLUE_TASKS.items() if s is spec)
    with workdir(base) as d:
        path = d / ("train.tsv" + gz_suffix(gz))
        path.write_bytes(gzip.compress(data) if gz else data)
        out = reads_or_names(lambda: read_glue(task, d, "train", skip_bad_rows=skip), path, len(rows))
        if out is not None:
            records = [r for r in rows if is_record(r)]
            header = 1 if records and (spec.columns is None or spec.text_a in records[0]) else 0
            assert len(out.examples) + len(out.skipped) == len(records) - header  # nothing lost
            assert skip or not out.skipped


# ---- CoNLL ---------------------------------------------------------------------------------------------------------


@FAST
@given(f=file_bytes(), scheme=st.sampled_from(["auto", "iob1", "iob2"]))
def test_conll_any_bytes(base, f, scheme):
    gz, data = f
    with workdir(base) as d:
        path = d / ("train.txt" + gz_suffix(gz))
        path.write_bytes(data)
        reads_or_names(lambda: read_conll(path, tag_scheme=scheme), path, line_count(data, gz))


TAGS = ["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-MISC", "E-PER", "S-LOC", "B-", "X", "b-per", "B-PER-X"]
token = st.text(st.characters(blacklist_categories=("Cs", "Zs", "Cc", "Zl", "Zp")), min_size=1, max_size=5)


@st.composite
def conll_lines(draw) -> list[str]:
    out = []
    ncols = draw(st.integers(2, 5))
    for _ in range(draw(st.integers(0, 20))):
        kind = draw(st.sampled_from(["token"] * 6 + ["blank", "docstart", "ragged", "one"]))
        if kind == "blank":
            out.append(draw(st.sampled_from(["", " ", "\t"])))
        elif kind == "docstart":
            out.append("-DOCSTART- -X- -X- O")
        else:
            n = {"token": ncols, "ragged": draw(st.integers(2, 6)), "one": 1}[kind]
            cols = [draw(token) for _ in range(n - 1)] + [draw(st.sampled_from(TAGS) | token)]
            out.append(draw(st.sampled_from([" ", "\t", "  "])).join(cols))
    return out


@FAST
@given(rows=conll_lines(), scheme=st.sampled_from(["auto", "iob1", "iob2"]), gz=st.booleans(),
       names=st.sampled_from([None, ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]]),
       tags_from=st.sampled_from([None, "the training split train.txt"]))
def test_conll_rows(base, rows, scheme, gz, names, tags_from):
    data = "".join(r + "\n" for r in rows).encode()
    with workdir(base) as d:
        path = d / ("train.txt" + gz_suffix(gz))
        path.write_bytes(gzip.compress(data) if gz else data)
        out = reads_or_names(lambda: read_conll(path, scheme, names, tags_from=tags_from), path, len(rows))
        if out is not None:  # nothing lost: every token line is a token of some sentence
            token_lines = [r for r in rows if r.split() and r.split()[0] != "-DOCSTART-"]
            assert sum(len(s) for s in out.sentences) == len(token_lines)
            assert [len(t) for t in out.tags] == [len(s) for s in out.sentences]


# ---- tables --------------------------------------------------------------------------------------------------------

table_options = st.fixed_dictionaries({
    "label_field": st.sampled_from(["label", None, "x"]),
    "regression": st.booleans(),
    "skip_bad_rows": st.booleans(),
    "split": st.sampled_from([None, "train"]),
    "label_names": st.sampled_from([None, ["0", "1"], ["neg", "pos"]]),
})


def table_call(path: Path, opts: dict, text_fields=("text",), columns=None):
    opts = dict(opts)
    if opts.pop("split") is not None:
        opts.update(split_column="split", split="train")
    if opts["regression"]:
        opts["label_names"] = None
    return lambda: read_table(path, list(text_fields), columns=columns, **opts)


@FAST
@given(fmt=st.sampled_from(["csv", "tsv", "jsonl"]), f=file_bytes(), opts=table_options,
       columns=st.sampled_from([None, ["text", "label", "split"], ["label", "text"]]))
def test_table_any_bytes(base, fmt, f, opts, columns):
    gz, data = f
    if fmt == "jsonl":
        columns = None
    with workdir(base) as d:
        path = d / (f"train.{fmt}" + gz_suffix(gz))
        path.write_bytes(data)
        if columns is not None and opts["split"] is not None and "split" not in columns:
            columns = [*columns, "split"]
        if columns is not None and opts["label_field"] == "x":
            opts = {**opts, "label_field": None}
        reads_or_names(table_call(path, opts, columns=columns), path, line_count(data, gz))


@st.composite
def table_rows(draw):
    """Header (or user-named columns) and rows: missing / extra fields, empty and unknown labels, split values."""
    cols = draw(st.permutations(["text", "label", "split"] + draw(st.lists(st.sampled_from(["b", "id", "text"]),
                                                                           max_size=2))))
    if draw(st.integers(0, 6)) == 0:
        cols = cols[:-1]
    value = {
        "label": st.sampled_from(["0", "1", "neg", "pos", "", " ", "2", "10", "-3", "01", "\u0663", "9" * 5000, "1.5",
                                  "nan", "x,y"]) | field_text,
        "split": st.sampled_from(["train", "train", "dev", "", " train "]) | field_text,
    }
    rows = []
    for _ in range(draw(st.integers(0, 10))):
        n = len(cols) + draw(st.sampled_from([0, 0, 0, 0, 0, -1, 1]))
        row = [draw(value.get(c, field_text)) for c in cols][: max(n, 0)]
        rows.append(row + [draw(field_text) for _ in range(n - len(row))])
    return cols, rows


@FAST
@given(cr=table_rows(), fmt=st.sampled_from(["csv", "tsv"]), opts=table_options, headerless=st.booleans(),
       gz=st.booleans())
def test_table_rows(base, cr, fmt, opts, headerless, gz):
    """Rows written as the format spells them: with skip_bad_rows every record is an example or a skipped row."""
    cols, rows = cr
    assume(not headerless or len(set(cols)) == len(cols))  # duplicate user column names: a ConfigError up front
    buf = io.StringIO()
    if fmt == "csv":
        csv.writer(buf, lineterminator="\n").writerows(rows if headerless else [cols, *rows])
    else:  # TSV: no quoting, so a field holds no tab
        rows = [[f.replace("\t", " ") for f in r] for r in rows]
        buf.writelines("\t".join(r) + "\n" for r in (rows if headerless else [cols, *rows]))
    data = buf.getvalue().encode()
    columns = cols if headerless else None
    with workdir(base) as d:
        path = d / (f"train.{fmt}" + gz_suffix(gz))
        path.write_bytes(gzip.compress(data) if gz else data)
        out = reads_or_names(table_call(path, opts, columns=columns), path, data.count(b"\n"))
        if out is not None and opts["split"] is None:
            records = [r for r in rows if is_record(r)]
            assert len(out.examples) + len(out.skipped) == len(records)
            assert opts["skip_bad_rows"] or not out.skipped


@FAST
@given(cells=st.lists(st.lists(st.sampled_from(['a', 'b c', '"', '""', '"x"', "'", ",", ";", "\t", "|", "", " ",
                                                "label", "text", "0", "1", '"a,b"', '"open']) | field_text,
                               max_size=5), max_size=8),
       delim=st.sampled_from([",", "\t", ";", "|", ", "]), fmt=st.sampled_from(["csv", "tsv"]), opts=table_options)
def test_table_messy_delimiters(base, cells, delim, fmt, opts):
    """Rows joined with the wrong delimiter and stray or unbalanced quotes."""
    data = "".join(delim.join(r) + "\n" for r in [["text", "label", "split"], *cells]).encode()
    with workdir(base) as d:
        path = d / f"train.{fmt}"
        path.write_bytes(data)
        reads_or_names(table_call(path, opts), path, len(cells) + 1)


@FAST
@given(records=st.lists(st.one_of(
    json_values.map(dumps),
    st.fixed_dictionaries({"text": json_values, "label": json_values, "split": json_values}).map(dumps),
    st.fixed_dictionaries({"text": field_text, "label": st.sampled_from(["0", "1", "neg", "", 1, 0.5, True, None])
                           | st.integers(10**300, 10**320), "split": st.sampled_from(["train", "dev"])}).map(dumps),
    st.sampled_from(["", "{", '{"text": "a",', "[" * 5000, '{"text": "a", "label": ' + "9" * 5000 + "}",
                     '{"text": "a", "label": 1e999, "split": "train"}', "null"])), max_size=10),
    opts=table_options, gz=st.booleans())
def test_table_json_lines(base, records, opts, gz):
    """Random JSON lines: non-objects, wrong types, huge numbers, deep nesting, invalid JSON."""
    data = "".join(r + "\n" for r in records).encode("utf-8", "surrogatepass")
    with workdir(base) as d:
        path = d / ("train.jsonl" + gz_suffix(gz))
        path.write_bytes(gzip.compress(data) if gz else data)
        out = reads_or_names(table_call(path, opts), path, len(records))
        if out is not None and opts["split"] is None:  # nothing lost
            assert len(out.examples) + len(out.skipped) == sum(1 for r in records if r.strip())


# ---- parallel text and the task-data layer -------------------------------------------------------------------------


@FAST
@given(en=gz_bytes(), de=gz_bytes())
def test_multilingual_any_bytes(base, en, de):
    with workdir(base) as d:
        (d / "train.en.gz").write_bytes(en)
        (d / "train.de.gz").write_bytes(de)
        try:
            out = read_aligned("train", ("en", "de"), root=d)
        except Exception as e:  # noqa: BLE001
            n_lines = {d / "train.en.gz": line_count(en, True), d / "train.de.gz": line_count(de, True)}
            named = [p for p in n_lines if str(p) in str(e)]
            assert named, f"{type(e).__name__}: {e} names neither file"
            for p in named:
                assert_named(e, p, n_lines[p])
        else:
            assert len(out["en"]) == len(out["de"])


@FAST
@given(task=st.sampled_from(["sst2", "cola", "conll2003", "table-csv", "table-tsv", "table-jsonl"]), f=file_bytes(),
       unlabelled=st.booleans(), skip=st.booleans())
def test_load_split_any_bytes(base, task, f, unlabelled, skip):
    gz, data = f
    with workdir(base) as d:
        name = {"sst2": "train.tsv", "cola": "train.tsv", "conll2003": "train.txt"}.get(task, "train." + task[6:])
        path = d / (name + gz_suffix(gz))
        path.write_bytes(data)
        spec = TaskSpec(task=task.split("-")[0], data_dir=d, skip_bad_rows=skip)
        reads_or_names(lambda: load_split(spec, "train", allow_unlabelled=unlabelled), path, line_count(data, gz))


# ---- configs and overrides -----------------------------------------------------------------------------------------

YAML_BITS = [
    "a: 1", "train:", "  steps: 10", "  lr: x", "- item", "&a [1, *a]", "*a", "*nope", "!!binary", "!!binary AAA=",
    "!!set {a, b}", "? [a, b]\n: 1", "2024-13-45", "2024-02-30", "2001-12-14t21:59:43.10-05:00", "{", "}", "[", "]",
    "'", '"', ":", "\t", "%YAML 1.1", "%TAG ! tag:x,2000:", "---", "...", "<<: 1", "<<: *a",
    "!!python/object:os.system",
    "!!float x", "!!int x", "1e999", "9" * 400, "0x1F", "~", "null: 1", "1: 2", "true: x", "out: 2024-01-01",
    "data: {seq_len: !!str 5}", "model: [1, 2]", "\x00", "\x07", "\ufeff", "\u2028", "key: |\n  text", "[" * 2000,
    "optim: {lr: 1e-3, foo: 2}", "objective: {name: mlm, params: {x: [1, {y: 2}]}}",
]
yaml_text = st.lists(st.sampled_from(YAML_BITS) | st.text(max_size=10), max_size=8).flatmap(
    lambda bits: st.sampled_from(["\n", " ", "\n  ", ": "]).map(lambda sep: sep.join(bits)))


@FAST
@given(data=st.one_of(raw_bytes, yaml_text.map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_load_yaml_any_bytes(base, data):
    with workdir(base) as d:
        path = d / "c.yaml"
        path.write_bytes(data)
        out = reads_or_names(lambda: load_yaml(path), path, data.count(b"\n") + 1, ConfigError)
        assert out is None or isinstance(out, dict)


# PretrainConfig's real sections and keys, with junk beside them
CONFIG_KEYS = {
    "model": ["family", "preset", "config", "init_from", "stack_to"],
    "data": ["train", "eval", "tokenizer", "seq_len", "boundary", "batch_size", "eval_batches"],
    "objective": ["name", "params"],
    "train": ["steps", "grad_accum", "log_every", "eval_every", "precision", "keep_last"],
    "optim": ["lr", "weight_decay", "betas", "name"],
    "schedule": ["warmup_steps", "decay"],
    "out": [],
    "junk": ["x"],
}
yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.integers(10**308, 10**330),
                         st.floats(allow_nan=True), field_text, st.dates(), st.binary(max_size=4),
                         st.sampled_from(["bf16", "mlm", "bert", "cosine", "auto", ""]))
yaml_values = st.recursive(yaml_scalars, lambda kids: st.lists(kids, max_size=3)
                           | st.dictionaries(field_text | st.integers(0, 3) | st.none(), kids, max_size=3),
                           max_leaves=6)


@st.composite
def config_dicts(draw) -> dict:
    out: dict = {}
    for section in draw(st.lists(st.sampled_from(sorted(CONFIG_KEYS)), max_size=4, unique=True)):
        keys = CONFIG_KEYS[section]
        if not keys or draw(st.integers(0, 5)) == 0:
            out[section] = draw(yaml_values)
        else:
            out[section] = {k: draw(yaml_values) for k in draw(st.lists(st.sampled_from(keys), max_size=3))}
    if draw(st.integers(0, 8)) == 0:
        out[draw(st.integers(0, 2) | st.none())] = 1  # a non-string key
    return out


@FEW
@given(cfg=config_dicts(), overrides=st.dictionaries(st.sampled_from(["train.steps", "optim.lr", "data.seq_len",
                                                                       "out", "model.config.x", "junk"]),
                                                      yaml_values, max_size=2))
def test_build_config_random_yaml(base, cfg, overrides):
    from ptmkit.recipes.pretrain import PretrainConfig

    with workdir(base) as d:
        path = d / "run.yaml"
        path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False))
        reads_or_names(lambda: build_config(PretrainConfig, str(path), overrides), path, None, ConfigError)


@dataclasses.dataclass
class Inner:
    n: int = 1
    names: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Every:
    """One field of every kind from_dict builds."""

    i: int = 0
    f: float = 0.0
    b: bool = False
    s: str = ""
    opt: int | None = None
    either: int | str = 0
    lit: Literal["a", "b"] = "a"
    nums: list[float] = dataclasses.field(default_factory=list)
    pair: tuple[int, ...] = ()
    table: dict[str, Any] = dataclasses.field(default_factory=dict)
    inner: Inner = dataclasses.field(default_factory=Inner)


every_keys = st.sampled_from([f.name for f in dataclasses.fields(Every)] + ["inner.n", "zzz"])


@FAST
@given(data=st.dictionaries(every_keys | st.integers(0, 2) | st.none(),
                            yaml_values | st.fixed_dictionaries({"n": yaml_values, "names": yaml_values}), max_size=5))
def test_from_dict_random(data):
    try:
        from_dict(Every, data)
    except Exception as e:  # noqa: BLE001
        assert is_ptmkit_error(e, ConfigError), f"{type(e).__name__} escaped: {e}"
        assert "Every" in str(e)  # the key path: Every.inner.n ...


argv_bits = st.text(max_size=6) | st.sampled_from([
    "--train.steps", "--optim.lr=3e-4", "--a..b", "--", "--=1", "-x", "x", "[1,", "{a: 1", "!!binary", "2024-13-45",
    ": x", "'", "&a [*a]", "*a", "1e999", "9" * 5000, "\x00", "!!python/name:os.system", "%", "@x", "`", "--x=[",
    "--y={", "--z=*a"])


@FAST
@given(argv=st.lists(argv_bits, max_size=6), data=st.dictionaries(field_text, yaml_values, max_size=3))
def test_overrides_random(argv, data):
    try:
        overrides = parse_dotted(argv)
        apply_overrides(data, overrides)
    except Exception as e:  # noqa: BLE001
        assert is_ptmkit_error(e, ConfigError), f"{type(e).__name__} escaped: {e}"


# ---- a bad line is named by its number -----------------------------------------------------------------------------

GOOD = {
    "glue": ("train.tsv", "sentence\tlabel", lambda i: f"good text {i}\t{i % 2}"),
    "conll": ("train.txt", "EU NNP B-NP B-ORG", lambda i: f"w{i} NN B-NP O" if i % 4 else ""),  # blank: sentence end
    "csv": ("train.csv", "text,label", lambda i: f"text {i},{'pos' if i % 2 else 'neg'}"),
    "jsonl": ("train.jsonl", '{"text": "a", "label": "neg"}', lambda i: dumps({"text": f"t{i}", "label": "pos"})),
    "corpus": ("c.jsonl", '{"text": "a"}', lambda i: dumps({"text": f"t{i}"})),
    "aligned": ("train.en.gz", "a sentence", lambda i: f"sentence {i}"),
    "yaml": ("c.yaml", "a: 1", lambda i: f"k{i}: {i}"),
}
BAD = {"utf8": b"caf\xe9 \xff\xfe", "value": None}
BAD_VALUE = {
    "glue": b"some text\tbanana", "conll": b"EU NNP B-NP B-ZZZ", "csv": b"text,banana",
    "jsonl": b'{"text": 5, "label": "pos"}', "corpus": b'{"text": 5}', "aligned": None, "yaml": b"a: b: c",
}


def read(kind: str, path: Path):
    if kind == "glue":
        return read_glue("sst2", path.parent, "train")
    if kind == "conll":  # a tag outside tag_names is found after the sentence is read: its line is computed
        return read_conll(path, tag_names=["O", "B-ORG", "I-ORG"])
    if kind in ("csv", "jsonl"):
        return read_table(path, ["text"], "label", label_names=["neg", "pos"] if kind == "csv" else None)
    if kind == "aligned":
        (path.parent / "train.de.gz").write_bytes(gzip.compress(gzip.decompress(path.read_bytes())))
        return read_aligned("train", ("en", "de"), root=path.parent)
    if kind == "yaml":
        return load_yaml(path)
    stats = CorpusStats()
    list(iter_documents(path, stats=stats))
    return stats


@FAST
@given(kind=st.sampled_from(sorted(GOOD)), n=st.integers(1, 30), data=st.data(), bad=st.sampled_from(sorted(BAD)),
       gz=st.booleans(), crlf=st.booleans())
def test_bad_line_is_named(base, kind, n, data, bad, gz, crlf):
    """One bad line (invalid UTF-8, an unknown label or tag, a wrong type, a YAML syntax error) among good ones:
    the error, or the corpus' bad-line record, names file:LINE of that line."""
    name, header, good = GOOD[kind]
    raw = BAD[bad] if bad == "utf8" else BAD_VALUE[kind]
    assume(raw is not None)
    k = data.draw(st.integers(2, n + 1), label="bad line")  # line 1 is the header
    body = [header.encode()] + [good(i).encode() for i in range(2, n + 2)]
    body[k - 1] = raw
    content = b"".join(line + (b"\r\n" if crlf and kind != "yaml" else b"\n") for line in body)
    gz = (gz and kind != "yaml") or kind == "aligned"  # parallel text is gzipped; configs never are
    with workdir(base) as d:
        path = d / (name + (".gz" if gz and not name.endswith(".gz") else ""))
        path.write_bytes(gzip.compress(content) if gz else content)
        if kind == "corpus":
            stats = read(kind, path)
            assert stats.num_bad == 1
            [[where]] = stats.examples.values()
            assert (where.file, where.line) == (str(path), k)
            return
        with pytest.raises(ValueError) as info:
            read(kind, path)
        assert_named(info.value, path, len(body), ConfigError if kind == "yaml" else ValueError)
        assert f"{path}:{k}" in str(info.value), str(info.value)
