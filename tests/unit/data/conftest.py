"""Shared fixtures for the data-pipeline tests: tiny corpora in tmp_path and the shared GPT-2 files.
Real data is found through PTMKIT_DATA (default <repo>/../shared/data); a test needing it fails when it is missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptmkit.data.tokenizer import Tokenizer
from tests.conftest import shared_path

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
    for name in ("vocab.json", "merges.txt"):
        shared_path("tokenizers", "gpt2", name)  # a missing file fails the test, naming it
    return shared_path("tokenizers", "gpt2")


@pytest.fixture(scope="session")
def gpt2(gpt2_dir: Path) -> Tokenizer:
    return Tokenizer.load(gpt2_dir)


@pytest.fixture(scope="session")
def small_bpe() -> Tokenizer:
    return Tokenizer.train(TEXTS, "bpe", 300)
