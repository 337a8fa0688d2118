"""experiments/moe_vs_dense.py: parameter accounting (active = dense at equal expert size) and a seconds-long run of
both variants on the demo's data at a tiny size (demo_data) that writes results, the plot and the docs table."""

from __future__ import annotations

import json
import math

import pytest

from ptmkit.models import build_model, make_config
from tests.conftest import demo_args, load_experiment


def test_active_parameters_of_top1_moe_equal_the_dense_model_plus_routers():
    exp = load_experiment("moe_vs_dense")
    base = dict(vocab_size=100, hidden_size=32, num_layers=4, num_heads=2, intermediate_size=128)
    dense = exp.parameter_counts(build_model("gpt2", make_config("gpt2", base), "causal-lm"))
    moe = exp.parameter_counts(build_model("gpt2", make_config("gpt2", {**base, "moe": {"num_experts": 8}}),
                                           "causal-lm"))
    ffn = 32 * 128 + 128 + 128 * 32 + 32  # one dense FFN (weights + biases) = one expert
    routers = 2 * 8 * 32  # blocks 1 and 3
    assert moe["total"] == dense["total"] + 2 * 7 * ffn + routers
    assert moe["active"] == dense["active"] + routers
    assert dense["total"] == dense["active"]


@pytest.mark.slow
def test_both_variants_run_for_a_few_steps(tmp_path, monkeypatch, demo_data):
    monkeypatch.chdir(tmp_path)  # nothing may land in the checkout
    exp = load_experiment("moe_vs_dense")
    doc = tmp_path / "page.md"
    doc.write_text("# Page\n\nkept\n\n<!-- results:begin -->\nold\n<!-- results:end -->\n")
    out = exp.main(["--steps", "3", "--hidden", "32", "--layers", "2", "--heads", "2", "--batch-size", "4",
                    "--seq-len", "32", "--eval-batches", "1", *demo_args(demo_data), "--out", str(tmp_path / "run"),
                    "--docs", str(doc)])
    assert [r["variant"] for r in out["results"]] == ["dense", "moe"]
    for r in out["results"]:
        assert r["steps"] == 3 and math.isfinite(r["loss"]), r
    moe = out["results"][1]
    assert 0.0 <= moe["eval_moe_dropped_fraction"] <= 1.0 and "train_moe_aux_loss" in moe
    assert (tmp_path / "run/loss.png").exists() and (tmp_path / "moe_vs_dense.png").exists()
    saved = json.loads((tmp_path / "run/runs/moe-seed0/run_config.json").read_text())
    assert saved["model"]["config"]["moe"]["num_experts"] == 8
    text = doc.read_text()
    assert "kept" in text and "old" not in text and "| MoE, 8 experts, top-1 |" in text
