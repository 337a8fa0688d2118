"""The layering ../shared/DESIGN.md draws, kept by a test: imports go one way only,

    config, atomic, log  <-  nn, data  <-  models  <-  objectives, adapt, compress, analysis, retrieval
        <-  recipes  <-  cli

with train/ and parallel/ generic engines beside them (they import config, nn and each other one way, train ->
parallel, and never a model family or an objective, by import or by name). Every import counts, also those inside
functions. The checker is tested on a small fake package too, so it is known to fail on a violation."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ptmkit"

BASE = {"config", "atomic", "log", "outputs"}
ALLOWED: dict[str, set[str]] = {
    "config": {"atomic"}, "atomic": set(), "log": {"atomic"}, "outputs": {"config"},
    "nn": BASE, "data": BASE,
    "models": BASE | {"nn", "data"},
    "objectives": BASE | {"nn", "data", "models"},
    "adapt": BASE | {"nn", "data", "models", "objectives"},
    "compress": BASE | {"nn", "data", "models", "objectives"},
    "analysis": BASE | {"nn", "data", "models", "objectives"},
    "retrieval": BASE | {"nn", "data", "models", "objectives"},
    "parallel": BASE | {"nn"},
    "train": BASE | {"nn", "parallel"},
    "recipes": BASE | {"nn", "data", "models", "objectives", "adapt", "compress", "analysis", "retrieval", "train",
                       "parallel"},
    "cli": BASE | {"nn", "data", "models", "objectives", "adapt", "compress", "analysis", "retrieval", "train",
                   "parallel", "recipes"},
}
ENGINES = ("train", "parallel")


def _unit(path: Path, root: Path) -> str:
    """The layer a file belongs to: its top-level package, or the module name for top-level modules."""
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported_units(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names] if node.module == package else [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == package and len(parts) > 1:
                out.append((node.lineno, parts[1]))
    return out


def layering_violations(root: Path, allowed: dict[str, set[str]], package: str = "ptmkit") -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        unit = _unit(path, root)
        if unit == "__init__" or unit == "__main__":
            continue
        if unit not in allowed:
            found.append(f"{path.relative_to(root)}: package {unit!r} has no place in the layering (add it to ALLOWED)")
            continue
        for line, target in _imported_units(ast.parse(path.read_text()), package):
            if target != unit and target not in allowed[unit] and target != "__init__":
                found.append(f"{path.relative_to(root)}:{line}: {unit} imports {target}")
    return found


def engine_names(root: Path, forbidden: set[str]) -> list[str]:
    """String constants in train/ and parallel/ that name a model family or an objective."""
    found = []
    for engine in ENGINES:
        for path in sorted((root / engine).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in forbidden:
                    found.append(f"{path.relative_to(root)}:{node.lineno}: names {node.value!r}")
    return found


def test_imports_follow_the_layering():
    assert layering_violations(SRC, ALLOWED) == []


def test_engines_name_no_family_and_no_objective():
    from ptmkit.models.registry import FAMILIES
    from ptmkit.objectives import OBJECTIVES

    assert engine_names(SRC, set(FAMILIES) | set(OBJECTIVES)) == []


def _fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "ptmkit"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize("files, expected", [
    # a cycle: train -> recipes (upwards) while recipes -> train
    ({"train/loop.py": "from ptmkit.recipes.pretrain import x\n", "recipes/pretrain.py": "import ptmkit.train.loop\n"},
     ["train/loop.py:1: train imports recipes"]),
    # an import hidden in a function still counts
    ({"data/batches.py": "def f():\n    from ptmkit.objectives.base import g\n"}, ["data/batches.py:2: data imports objectives"]),
    # `from ptmkit import models` is an import of models
    ({"parallel/apply.py": "from ptmkit import models\n"}, ["parallel/apply.py:1: parallel imports models"]),
    # siblings do not import each other
    ({"analysis/sts.py": "from ptmkit.adapt.metrics import spearman\n"}, ["analysis/sts.py:1: analysis imports adapt"]),
])
def test_the_checker_catches_violations(tmp_path, files, expected):
    assert layering_violations(_fake_package(tmp_path, files), ALLOWED) == expected


def test_the_checker_catches_a_family_named_in_the_engine(tmp_path):
    root = _fake_package(tmp_path, {"train/loop.py": 'if family == "bert":\n    pass\n', "parallel/x.py": ""})
    assert engine_names(root, {"bert", "mlm"}) == ["train/loop.py:1: names 'bert'"]
