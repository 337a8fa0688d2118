"""Fold a trained adapter into its base model: a plain model directory that runs anywhere (transformers included)
at the base model's speed, with no adapter to carry (Hu et al. 2021 §4.1: no inference latency after merging)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ptmkit import adapt, atomic, outputs
from ptmkit.config import ConfigError
from ptmkit.models import load_model, save_model
from ptmkit.recipes.evaluate import ADAPTER_DIR, TASK_FILE

MODEL_MARKERS = ("config.json", "model.safetensors")


def merge_adapter(model_dir: str | Path, out: str | Path, adapter: str | Path | None = None,
                  overwrite: bool = False) -> dict:
    """Load `model_dir` (a fine-tuned run's best/, or any base model), apply `adapter` (default model_dir/adapter),
    merge it into the weights and save a plain model directory in `out`. Returns what was merged."""
    model_dir, out = Path(model_dir), Path(out)
    adapter = Path(adapter) if adapter is not None else model_dir / ADAPTER_DIR
    if not adapter.is_dir():
        raise FileNotFoundError(f"no adapter at {adapter}; pass --adapter DIR (an adapter_config.json directory)")
    if out.resolve() == model_dir.resolve():
        raise ConfigError(f"merge: --out {out} is the base model's directory; write the merged model elsewhere (the "
                          "base weights are never overwritten)")
    outputs.check_free(out, MODEL_MARKERS, overwrite=overwrite, kind="model")
    model = load_model(model_dir)
    adapt.load_adapter(model, adapter)
    names = list(adapt.base.applied(model))
    adapt.merge(model)  # a non-mergeable method is an error that names it
    counts = adapt.count_parameters(model)
    outputs.discard(out)
    with atomic.atomic_dir(out) as tmp:
        save_model(model, tmp, tokenizer_from=model_dir)
        if (model_dir / TASK_FILE).is_file():  # a fine-tuned run's task settings: ptm evaluate reads them
            shutil.copyfile(model_dir / TASK_FILE, tmp / TASK_FILE)
    return {"methods": names, "out": str(out), "parameters": counts["total"] - sum(
        p.numel() for p in adapt.delta_parameters(model).values())}
