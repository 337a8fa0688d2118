"""The manifest.json of an index or datastore directory: its format and version, what built it, and the size and
sha256 of every file, so a load can tell a complete directory from a truncated, corrupted or foreign one and say
how to rebuild it."""

from __future__ import annotations

import json
from pathlib import Path

from ptmkit.config import ConfigError
from ptmkit.retrieval.fingerprint import file_sha256


def file_records(directory: Path, names: tuple[str, ...]) -> dict[str, dict]:
    return {n: {"bytes": (directory / n).stat().st_size, "sha256": file_sha256(directory / n)} for n in names}


def read(directory: Path, fmt: str, version: int, build: str, what: str) -> dict:
    """The manifest of `directory`, which must be a version-`version` `fmt` directory; `build` is the command that
    makes one and `what` its name for people ("an index directory"), for the messages."""
    f = directory / "manifest.json"
    if not f.is_file():
        why = "does not exist" if not directory.exists() else "has no manifest.json"
        raise ConfigError(f"{directory} {why}: not {what} (an interrupted build leaves none); make one "
                          f"with `{build}`")
    try:
        manifest = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{f} is not valid JSON ({e}); the directory is damaged, rebuild it with `{build}`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != fmt or manifest.get("version") != version:
        got = (manifest.get("format"), manifest.get("version")) if isinstance(manifest, dict) else manifest
        raise ConfigError(f"{f}: not a version-{version} {fmt} directory (found {got!r}); rebuild it with `{build}`")
    return manifest


def check_files(directory: Path, manifest: dict, rebuild: str) -> None:
    """Every file the manifest lists is there, with its recorded size and sha256."""
    for name, want in manifest.get("files", {}).items():
        f = directory / name
        if not f.is_file():
            raise ConfigError(f"{f} is missing; the directory is incomplete, {rebuild}")
        size = f.stat().st_size
        if size != want["bytes"] or file_sha256(f) != want["sha256"]:
            raise ConfigError(f"{f} differs from what was written ({size:,} bytes, {want['bytes']:,} expected; "
                              f"sha256 checked): truncated or corrupt; {rebuild}")
