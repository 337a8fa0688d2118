"""Shared fixtures for the data-pipeline tests: tiny corpora in tmp_path and the shared GPT-2 files.
Real data is found through PTMKIT_DATA (default <repo>/../shared/data); tests needing it skip cleanly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptmkit.data.paths import data_root
from ptmkit.data.tokenizer import Tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs!",
    "How vexingly quick daft zebras jump; the five boxing wizards jump quickly.",
    "Sphinx of black quartz, judge my vow. Hello world, hello tokenizers.",
    "A wizard's job is to vex chumps quickly in fog. Über café naïve résumé.",
] * 20


def write_jsonl(path: Path, records: list) -> Path:
    """Write records (dicts are JSON-encoded, str/bytes written raw) one per line."""
    with open(path, "wb") as f:
        for r in records:
            if isinstance(r, bytes):
                f.write(r + b"\n")
            elif isinstance(r, str):
                f.write(r.encode() + b"\n")
            else:
                f.write(json.dumps(r).encode() + b"\n")
    return path


@pytest.fixture(scope="session")
def gpt2_dir() -> Path:
    d = data_root() / "tokenizers" / "gpt2"
    if not (d / "vocab.json").is_file() or not (d / "merges.txt").is_file():
        pytest.skip(f"GPT-2 tokenizer files not found under {d} (set PTMKIT_DATA)")
    return d


@pytest.fixture(scope="session")
def gpt2(gpt2_dir: Path) -> Tokenizer:
    return Tokenizer.load(gpt2_dir)


@pytest.fixture(scope="session")
def small_bpe() -> Tokenizer:
    return Tokenizer.train(TEXTS, "bpe", 300)
