"""Nothing a user has is overwritten without asking: every command that writes a run, a model or a tokenizer checks
its output folder first (before any work), and replaces an earlier artefact only when told (`--overwrite`), by
moving the old folder aside in one rename and deleting it: the folder holds the old artefact or the new one, never
a mix of two."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Iterable

from ptmkit.config import ConfigError


def found(path: str | os.PathLike, markers: Iterable[str]) -> list[str]:
    """The marker files/folders (e.g. metrics.jsonl, checkpoints) present in `path`."""
    path = Path(path)
    return [m for m in markers if (path / m).exists()]


def check_free(path: str | os.PathLike, markers: Iterable[str], *, overwrite: bool, kind: str,
               resume_flag: str | None = None) -> list[str]:
    """Refuse to write a new `kind` into a folder that holds one, unless `overwrite`; returns what it holds.
    `resume_flag`: how to continue the existing one instead (e.g. --resume), named in the message."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is a file, not a folder; choose another output folder")
    held = found(path, markers)
    if held and not overwrite:
        cont = f"continue it with {resume_flag}, " if resume_flag else ""
        raise ConfigError(f"{path} already holds a {kind} ({', '.join(held)}); {cont}replace it with --overwrite, "
                          "or choose another output folder")
    return held


def discard(path: str | os.PathLike) -> None:
    """Remove an earlier artefact's folder: one rename (atomic), then delete the renamed copy."""
    path = Path(path)
    if not path.exists():
        return
    aside = path.parent / f".{path.name}.replaced-{uuid.uuid4().hex[:8]}"
    os.replace(path, aside)
    shutil.rmtree(aside, ignore_errors=True)
