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
