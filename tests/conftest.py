"""Shared test fixtures: the data root and small helpers. Tests use tiny models (2 layers, width 64)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    return Path(os.environ.get("PTMKIT_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def data_dir() -> Path:
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set PTMKIT_DATA)")
    return root


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def load_experiment(name: str):
    """An experiments/<name>.py script as a module (experiments are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
