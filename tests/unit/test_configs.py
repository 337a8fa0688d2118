"""Every recipe in configs/ parses into its command's config, objective parameters included: a renamed key or a
typo in a shipped recipe fails here, not in a user's first run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ptmkit.cli.overrides import build_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def _recipe_class(path: Path):
    if path.name.startswith("transe"):
        from ptmkit.recipes.knowledge import TransERunConfig
        return TransERunConfig
    if path.name.startswith("rag"):
        from ptmkit.recipes.rag import RagRunConfig
        return RagRunConfig
    from ptmkit.recipes.pretrain import PretrainConfig
    return PretrainConfig


def _objective_class(cfg):
    """The config class the recipe's objective keys go to (pretraining: by objective.name)."""
    objective = getattr(cfg, "objective", None)
    if hasattr(objective, "params"):
        from ptmkit.objectives import OBJECTIVES

        assert objective.name in OBJECTIVES, f"objective.name {objective.name!r} is not in {sorted(OBJECTIVES)}"
        return OBJECTIVES[objective.name][0], objective.params
    if type(cfg).__name__ == "TransERunConfig":
        from ptmkit.objectives.transe import TransEObjectiveConfig

        return TransEObjectiveConfig, objective
    from ptmkit.objectives.rag import RAGConfig

    return RAGConfig, objective


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipe_parses_and_its_objective_keys_exist(path):
    cfg = build_config(_recipe_class(path), str(path), {})
    cls, params = _objective_class(cfg)
    # the keys, not a build: some values (vocabulary sizes, mask ids) are filled from the tokenizer at run time
    unknown = set(params) - {f.name for f in dataclasses.fields(cls)} if cls is not None else set()
    assert not unknown, f"{path.name}: objective keys {sorted(unknown)} are not fields of {cls.__name__}"


def test_there_are_recipes():
    assert len(CONFIGS) >= 10
