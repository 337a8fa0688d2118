"""`ptm index build|search` through the CLI entry: build a tiny index, search it by --query and --queries FILE (table
and JSON), and bad inputs end with exit code 2 and a message that names the fix; every option has help text."""

from __future__ import annotations

import json

import pytest

from ptmkit.cli.main import build_parser, main as ptm

from .conftest import PLANTED


@pytest.fixture(scope="module")
def index_dir(encoder_dir, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "ix"
    assert ptm(["index", "build", str(corpus), "--encoder", str(encoder_dir), "--out", str(out), "--max-tokens", "16",
                "--overlap", "4", "--kind", "hnsw", "--storage", "fp16", "--no-progress"]) == 0
    return out


def test_build_then_search_by_query_and_by_file(index_dir, tmp_path, capsys):
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["index"]["factory"] == "HNSW32_SQfp16" and manifest["chunking"]["max_tokens"] == 16
    capsys.readouterr()
    assert ptm(["index", "search", str(index_dir), "--query", PLANTED, "--k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    rank, score = out[1].split()[:2]  # the passage itself: cosine 1 up to fp16 storage (0.9999 or 1.0000)
    assert out[0] == f"query: {PLANTED}" and rank == "1" and float(score) >= 0.999 and out[1].endswith(PLANTED)
    (tmp_path / "q.txt").write_text(f"{PLANTED}\n\nriver castle garden\n")
    assert ptm(["index", "search", str(index_dir), "--queries", str(tmp_path / "q.txt"), "--k", "3", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["query"] for r in rows] == [PLANTED, "river castle garden"]
    assert rows[0]["hits"][0]["text"] == PLANTED and rows[0]["hits"][0]["doc"] == 150 and len(rows[1]["hits"]) == 3


def test_bad_inputs_exit_2_with_the_fix(index_dir, corpus, tmp_path, capsys):
    assert ptm(["index", "search", str(index_dir), "--query", "x", "--k", "100000"]) == 2
    assert "ask for k <=" in capsys.readouterr().err
    assert ptm(["index", "search", str(tmp_path / "none"), "--query", "x"]) == 2
    assert "ptm index build" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("")
    assert ptm(["index", "build", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "at least one passage" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_every_option_has_help():
    parser = build_parser()
    index = parser._subparsers._group_actions[0].choices["index"]
    actions = index._subparsers._group_actions[0].choices
    assert set(actions) == {"build", "search"}
    for sub in actions.values():
        for a in sub._actions:
            if a.option_strings and a.dest != "help":
                assert a.help and len(a.help) > 10, a.option_strings
