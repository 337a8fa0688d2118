"""End-to-end tests of `ptm tokenizer train|info` and `ptm data prepare|info` through add_parser/run.
The parser is built here with argparse exactly as ptmkit.cli.main builds it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ptmkit.cli import data as data_cli
from ptmkit.cli import tokenizer as tokenizer_cli
from ptmkit.data.shards import TokenShards
from ptmkit.data.tokenizer import Tokenizer

from .conftest import TEXTS, write_jsonl


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptm")
    sub = parser.add_subparsers(dest="command", required=True)
    tokenizer_cli.add_parser(sub)
    data_cli.add_parser(sub)
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return args.run(args)


def test_tokenizer_train_then_data_prepare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"content": t} for t in TEXTS] + ["{broken"])
    assert _run([
        "tokenizer", "train", "--input", str(corpus), "--kind", "wordpiece", "--vocab-size", "150",
        "--out", str(tmp_path / "tok"), "--text-field", "content", "--extra-special", "[unused0]",
    ]) == 0
    out = capsys.readouterr().out
    assert "on 100 documents" in out and "invalid_json: 1" in out and "fingerprint" in out
    tok = Tokenizer.load(tmp_path / "tok")
    assert tok.cls_id == 2 and tok.token_to_id("[unused0]") == 5

    assert _run([
        "data", "prepare", "--input", str(corpus), "--tokenizer", str(tmp_path / "tok"),
        "--out", str(tmp_path / "shards"), "--text-field", "content", "--shard-tokens", "300", "--no-progress",
    ]) == 0
    out = capsys.readouterr().out
    sh = TokenShards(tmp_path / "shards", tok)
    assert f"tokens       {sh.num_tokens:,}" in out and "documents    100" in out
    assert "tokens/s" in out and "invalid_json: 1" in out and f"{corpus}:101" in out
    assert sh.document(0).tolist() == tok.encode(TEXTS[0], add_special_tokens=False) + [tok.sep_id]

    assert _run(["data", "info", str(tmp_path / "shards"), "--tokenizer", str(tmp_path / "tok")]) == 0
    assert "(matches)" in capsys.readouterr().out
    assert _run(["tokenizer", "info", str(tmp_path / "tok")]) == 0
    assert tok.fingerprint() in capsys.readouterr().out


def test_cli_options_have_help_and_errors_propagate(tmp_path: Path) -> None:
    parser = _parser()
    for action in parser._subparsers._group_actions[0].choices.values():
        for sub in action._subparsers._group_actions[0].choices.values():
            for opt in sub._actions:
                if not isinstance(opt, argparse._HelpAction):
                    assert opt.help, f"{sub.prog} {opt.dest} has no help text"
    prepare = ["data", "prepare", "--input", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]
    with pytest.raises(FileNotFoundError, match="no tokenizer found"):
        _run([*prepare, "--tokenizer", str(tmp_path)])
    Tokenizer.train(TEXTS, "bpe", 300).save(tmp_path / "tok")
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        _run([*prepare, "--tokenizer", str(tmp_path / "tok")])
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        _parser().parse_args(["tokenizer", "train", "--input", "x", "--kind", "sentencepiece", "--vocab-size", "5", "--out", "y"])
