"""The one atomic writer: every file or directory ptmkit publishes is written under a temporary name in the same
folder, flushed to disk, then renamed into place, so a crash, a kill or a full disk at any moment leaves either the
old artefact or the new one, never a torn mix.

    write_text(path, text)                       # a small file (JSON, TSV, config)
    with atomic_path(path) as tmp: save(tmp)      # a file some library writes (safetensors, torch.save)
    with atomic_dir(path) as tmp: fill(tmp)       # a whole directory (model dir, checkpoint, shards)

A replaced directory is moved aside first and deleted only after the new one is in place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator


def _tmp_name(path: Path) -> Path:
    # hidden, unique per writer: two processes never share a temporary, and readers listing the folder skip it
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _fsync_tree(path: Path) -> None:
    """Make the bytes durable before the rename publishes them."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside `path`; on success it replaces `path`, on any error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        _fsync_tree(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def publish_dir(tmp: Path, path: str | os.PathLike) -> None:
    """Make the finished directory `tmp` (beside `path`) durable and swap it in: an existing `path` is moved aside
    and deleted after the swap; if the swap fails half-way the old directory is put back."""
    path = Path(path)
    _fsync_tree(tmp)
    old = None
    try:
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        if old is not None and old.exists() and not path.exists():
            os.replace(old, path)
        raise
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; on success it becomes `path` (see publish_dir), on any
    error it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    tmp.mkdir()
    try:
        yield tmp
        publish_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
