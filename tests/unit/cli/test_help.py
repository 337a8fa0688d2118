"""`--help` explains every option of every command, and every config key the help epilogs list."""

from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest

from ptmkit.cli.main import build_parser
from ptmkit.cli.overrides import _field_comments


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for every command and sub-command."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, path + (name,))


def test_every_option_of_every_command_has_help():
    missing = []
    for path, parser in _commands(build_parser()):
        for a in parser._actions:
            if a.option_strings and a.dest != "help" and not (a.help and len(a.help) >= 10):
                missing.append(f"ptm {' '.join(path)} {'/'.join(a.option_strings)}")
    assert len(list(_commands(build_parser()))) > 30 and not missing, missing


def _undocumented(cls, prefix: str = "") -> list[str]:
    hints, comments, out = typing.get_type_hints(cls), _field_comments(cls), []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _undocumented(hints[f.name], prefix + f.name + ".")
        elif not comments.get(f.name):
            out.append(prefix + f.name)
    return out


def _epilog_configs():
    from ptmkit.adapt import METHODS
    from ptmkit.objectives import OBJECTIVES
    from ptmkit.objectives.rag import RAGConfig
    from ptmkit.recipes.pretrain import PretrainConfig
    from ptmkit.recipes.rag import RagRunConfig

    yield "pretrain", PretrainConfig
    yield "rag train", RagRunConfig
    yield "rag objective", RAGConfig
    for name, (cfg, _) in OBJECTIVES.items():
        if cfg is not None:
            yield f"objective {name}", cfg
    for name, m in METHODS.items():
        yield f"finetune --method {name}", m.config


@pytest.mark.parametrize("where,cls", list(_epilog_configs()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_config_key_in_a_help_epilog_is_explained(where, cls):
    assert not _undocumented(cls), f"{where}: keys without a comment: {_undocumented(cls)}"


def test_every_precision_option_is_the_shared_one():
    """--precision means the same on every command: choices among nn/autocast's modes, and where "auto" is offered,
    the shared help that says what it resolves to (cli/options.py)."""
    from ptmkit.cli.options import AUTO_HELP
    from ptmkit.nn.autocast import MODES

    seen, wrong = [], []
    for path, parser in _commands(build_parser()):
        for a in parser._actions:
            if "--precision" in a.option_strings:
                seen.append(path)
                if not set(a.choices) <= set(MODES) or ("auto" in a.choices and AUTO_HELP not in a.help) \
                        or a.default not in (None, *a.choices):
                    wrong.append(" ".join(path))
    assert {("finetune",), ("evaluate",), ("icl",), ("zero-shot",), ("index", "build")} <= set(seen), seen
    assert not wrong, f"--precision differs from cli/options.add_precision_option on: {wrong}"


def test_precision_option_refuses_a_default_outside_its_choices():
    from ptmkit.cli.options import add_precision_option

    p = argparse.ArgumentParser()
    with pytest.raises(ValueError, match="not among its choices"):
        add_precision_option(p, default="fp16", choices=("auto", "fp32", "bf16"))
    with pytest.raises(ValueError, match="not among"):
        add_precision_option(p, choices=("auto", "int8"))
    add_precision_option(p, choices=("auto", "fp32"))
    assert p.parse_args([]).precision == "auto" and p.parse_args(["--precision", "fp32"]).precision == "fp32"
    with pytest.raises(SystemExit):
        p.parse_args(["--precision", "bf16"])
