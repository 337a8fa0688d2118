"""What the script smoke tests share. Every benchmark (benchmarks/*.py) and experiment (experiments/*.py) runs end to
end at a tiny size in tests/integration/scripts/, one file per chapter, exits 0 and prints its result line. Speeds and
study results are not asserted, only that the scripts still work. Scripts are loaded by path and their main(argv)
called in the test's process (one torch import for all of them); one benchmark also runs as a subprocess, to check
the command line's exit status.

Covered elsewhere (not repeated there): benchmarks/gpu_train.py (tests/unit/train/test_gpu_train_benchmark.py, the
CPU --tiny path), benchmarks/activation_memory.py (tests/unit/train/test_activation_checkpoint.py),
experiments/objectives_equal_compute.py (tests/integration/test_experiment_equal_compute.py),
experiments/efficient_pretraining.py, long_context.py and moe_vs_dense.py
(tests/unit/train/test_efficient_experiment.py, tests/unit/nn/test_long_context_experiment.py,
tests/unit/train/test_moe_experiment.py; their end-to-end runs use the demo data at a tiny size, the demo_data
fixture of tests/conftest.py).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tests.conftest import REPO

BENCH = REPO / "benchmarks"
EXP = REPO / "experiments"


def load_script(path: Path):
    """A benchmark or experiment script as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"smoke_{path.parent.name}_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_main(path: Path, argv: list[str], capsys) -> tuple[object, dict]:
    """main(argv) of the script; a SystemExit must be a success. Returns (main's value, the last stdout JSON line)."""
    try:
        value = load_script(path).main(argv)
    except SystemExit as e:
        assert e.code in (0, None), f"{path.name} exited with {e.code}"
        value = None
    out = capsys.readouterr().out.strip().splitlines()
    assert out, f"{path.name} printed nothing"
    return value, json.loads(out[-1])


def tiny_bert(path: Path, num_layers: int = 2) -> Path:
    """A tiny BERT (2 layers unless told, 4 heads, width 32) with a WordPiece tokenizer of SST-2-like sentences: stands in for
    MiniLM where a smoke test checks a script's path, not what it measures."""
    from ptmkit.data.tokenizer import Tokenizer
    from ptmkit.models import build_model, make_config, save_model
    from tests.unit.recipes.test_finetune import _write_sst

    texts = [line.split("\t")[0] for line in _write_sst(path.parent, 200, 0).splitlines()[1:]]
    tok = Tokenizer.train(texts, "wordpiece", vocab_size=150, min_frequency=1)
    save_model(build_model("bert", make_config("bert", dict(vocab_size=tok.vocab_size, hidden_size=32,
                                                            num_layers=num_layers, num_heads=4, intermediate_size=64,
                                                            max_position_embeddings=64))), path)
    tok.save(path)
    return path


def tiny_causal_lm(path: Path) -> Path:
    """A tiny LLaMA whose byte-level BPE keeps the experiments' label words whole."""
    from ptmkit.data.tokenizer import Tokenizer
    from ptmkit.models import build_model, make_config, save_model

    texts = [f"Review: a film\nSentiment: {w}" for w in ("negative", "positive") * 50] + \
        [f"Question: x True or False?\nAnswer: {w}" for w in ("True", "False") * 50]
    tok = Tokenizer.train(texts, "bpe", vocab_size=400, min_frequency=1)
    save_model(build_model("llama", make_config("llama", dict(
        vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64,
        max_position_embeddings=2048)), "causal-lm"), path)
    tok.save(path)
    return path
