"""Shared test fixtures: the data root and small helpers. Tests use tiny models (2 layers, width 64).

Missing shared data is a failure, never a skip: a test that reads it goes through `shared_path` (or the `data_dir`
fixture), which fails with the missing path and the fix (set PTMKIT_DATA). A skipped test looks like a passed one in
a summary, so a missing data root would otherwise hide every regression those tests guard.
"""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import pytest
import torch

from ptmkit.data.paths import data_root  # the one place the data root is resolved (DESIGN.md § Data)

REPO = Path(__file__).resolve().parents[1]


def missing_data_message(path: Path) -> str:
    root = data_root()
    where = f"{path} is missing" + (f" (the data root {root} does not exist)" if not root.is_dir() else "")
    if path == root:
        where = f"the data root {root} does not exist"
    return (f"shared test data not found: {where}. Set PTMKIT_DATA to the folder that holds the shared data "
            f"(glue/, ner/, corpora/, tokenizers/ ...; see ../shared/data/README.md), e.g. "
            f"PTMKIT_DATA=/path/to/shared/data scripts/test.sh")


def shared_path(*parts: str) -> Path:
    """A file or folder under the shared data root; a missing one FAILS the calling test with the path and the fix."""
    path = data_root().joinpath(*parts)
    if not path.exists():
        pytest.fail(missing_data_message(path), pytrace=False)
    return path


@pytest.fixture
def data_dir() -> Path:
    return shared_path()


def pytest_report_header(config) -> str:
    root = data_root()
    return f"ptmkit shared data (PTMKIT_DATA): {root}" + ("" if root.is_dir() else "  -- MISSING: data tests will fail")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---- the demo's data at a tiny size ----------------------------------------------------------------------------------
# The experiments read the demo's tokenizer and shards (runs/demo, built by scripts/demo.sh in minutes). Tests build
# the same three artefacts, with the same functions as ptmkit.data.demo.ensure_demo_data, from a small slice of the
# same real corpora: a 1,000-token WordPiece tokenizer, ~34k Gutenberg tokens (8 books' openings) and ~24k WikiText-2
# valid tokens (133 paragraphs), built in well under a second.

DEMO_GUTENBERG_DOCS, DEMO_GUTENBERG_CHARS, DEMO_WIKITEXT_LINES, DEMO_VOCAB = 8, 20_000, 200, 1000


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> dict[str, Path]:
    """{"tokenizer", "shards", "eval_shards"}: the demo's data layout (runs/demo/...) at a tiny size, in tmp."""
    from ptmkit.data.shards import prepare_shards
    from ptmkit.data.tokenizer import Tokenizer

    gutenberg = shared_path("corpora", "gutenberg.jsonl.gz")
    wikitext = shared_path("corpora", "wikitext-2", "valid.txt")
    d = tmp_path_factory.mktemp("demo")
    with gzip.open(gutenberg, "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"][:DEMO_GUTENBERG_CHARS] for line in itertools.islice(f, DEMO_GUTENBERG_DOCS)]
    (d / "gutenberg.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(docs)))
    with open(wikitext, encoding="utf-8") as f:
        (d / "wikitext2-valid.txt").write_text("".join(itertools.islice(f, DEMO_WIKITEXT_LINES)))
    out = {"tokenizer": d / "tokenizer", "shards": d / "data" / "gutenberg",
           "eval_shards": d / "data" / "wikitext2-valid"}
    tok = Tokenizer.train(d / "gutenberg.jsonl", kind="wordpiece", vocab_size=DEMO_VOCAB, model_max_length=128)
    tok.save(out["tokenizer"])
    prepare_shards(d / "gutenberg.jsonl", tok, out["shards"], progress=False)
    prepare_shards(d / "wikitext2-valid.txt", tok, out["eval_shards"], txt_mode="lines", progress=False)
    return out


def demo_args(demo: dict[str, Path]) -> list[str]:
    """The experiments' data options pointing at the `demo_data` fixture's artefacts."""
    return ["--tokenizer", str(demo["tokenizer"]), "--shards", str(demo["shards"]),
            "--eval-shards", str(demo["eval_shards"])]


def load_experiment(name: str):
    """An experiments/<name>.py script as a module (experiments are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
