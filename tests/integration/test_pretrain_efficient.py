"""Efficient pre-training through `ptm pretrain` configs: layer drop schedules and progressive stacking."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from ptmkit.config import ConfigError
from ptmkit.train.logging import read_metrics
from ptmkit.recipes.pretrain import pretrain
from tests.integration.test_pretrain import _cfg, corpus  # noqa: F401  (pytest fixture)


def _losses(run):
    return [r["loss"] for r in read_metrics(run) if r["split"] == "train"]


def _with_drop(cfg, **drop):
    for k, v in drop.items():
        setattr(cfg.layer_drop, k, v)
    return cfg


def test_progressive_layer_dropping_trains_and_is_reproducible(corpus, tmp_path):  # noqa: F811
    pld = dict(schedule="progressive", theta_bar=0.5, gamma=0.1)
    for name in ("b", "c"):
        pretrain(_with_drop(_cfg(corpus, tmp_path / name, train__steps=30), **pld))
    pretrain(_with_drop(_cfg(corpus, tmp_path / "a", train__steps=30), schedule="constant", rate=0.3))
    assert _losses(tmp_path / "b") == _losses(tmp_path / "c")  # same seed, same skipped blocks
    assert _losses(tmp_path / "b") != _losses(tmp_path / "a")
    losses = _losses(tmp_path / "b")
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])


def test_progressive_stacking_from_a_shallow_run(corpus, tmp_path):  # noqa: F811
    shallow = pretrain(_cfg(corpus, tmp_path / "shallow", train__steps=10))
    cfg = _cfg(corpus, tmp_path / "deep", train__steps=10, model__init_from=shallow["model_dir"])
    cfg.model.stack_to = 4
    deep = pretrain(cfg)
    config = json.loads((tmp_path / "deep" / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 4
    # the first deep step starts from the shallow model's function doubled, so its loss is far below a fresh start
    fresh = _losses(tmp_path / "shallow")[0]
    assert _losses(tmp_path / "deep")[0] < fresh
    assert deep["steps"] == 10
    weights = load_file(tmp_path / "deep" / "model" / "model.safetensors")
    assert any(k.startswith("bert.encoder.layer.3.") for k in weights)

    bad = _cfg(corpus, tmp_path / "bad")
    bad.model.stack_to = 4
    with pytest.raises(ConfigError, match="model.stack_to .* set model.init_from"):
        pretrain(bad)

    # preset/config beside init_from must describe the loaded model; a value that differs is refused, not ignored
    again = _cfg(corpus, tmp_path / "again", train__steps=4, model__init_from=shallow["model_dir"])
    assert pretrain(again)["steps"] == 4  # the same config as the loaded model: accepted
    clash = _cfg(corpus, tmp_path / "clash", model__init_from=shallow["model_dir"])
    clash.model.config = {**clash.model.config, "hidden_size": 2 * clash.model.config["hidden_size"]}
    with pytest.raises(ConfigError, match=r"model.init_from loads .* hidden_size=\d+ \(the model has \d+\)"):
        pretrain(clash)
    assert not (tmp_path / "clash").exists()


def test_cpu_runs_report_mfu_against_a_measured_matmul_peak(corpus, tmp_path):  # noqa: F811
    summary = pretrain(_cfg(corpus, tmp_path / "run", train__steps=3))
    denominator = summary["mfu_denominator"]
    assert denominator["flops_per_s"] > 1e8 and denominator["source"].startswith("measured CPU float32 matmul")
    mfu = [r["mfu"] for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert len(mfu) == 3 and all(0 < m < 1 for m in mfu)
