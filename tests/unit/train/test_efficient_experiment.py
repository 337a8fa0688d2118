"""experiments/efficient_pretraining.py: the equal wall-clock step plan, the per-step hook that drives PLD through the
unchanged training loop, and a seconds-long run of every method on the demo's data at a tiny size (demo_data)."""

from __future__ import annotations

import json
import math
from argparse import Namespace

import pytest

from tests.conftest import demo_args, load_experiment


def _load():
    return load_experiment("efficient_pretraining")


def test_plan_fills_the_budget_for_every_method():
    exp = _load()
    args = Namespace(budget_s=10.0, layers=4, stack_fraction=0.3, layerdrop_rate=0.2, pld_theta=0.5, pld_gamma_t=10.0)
    plan = exp.plan_steps(args, {"full": 0.1, "lamb": 0.125, "half": 0.06})
    assert plan["baseline"] == {"steps": 100} and plan["lamb"] == {"steps": 80}
    assert plan["stacking"] == {"steps_half": 50, "steps_full": 70}  # 3 s at 60 ms, 7 s at 100 ms
    # per block (0.1 - 0.06) / 2 = 20 ms; LayerDrop skips 0.2 x 4 blocks per step: 84 ms per step
    assert plan["layerdrop"] == {"steps": round(10 / 0.084)}
    # PLD: the predicted times of its steps (skipping (1 - θ(t)) (L + 1) / 2 blocks) add up to the budget
    n, gamma = plan["pld"]["steps"], plan["pld"]["gamma"]
    assert gamma == pytest.approx(10.0 / n)
    total = sum(0.1 - 0.02 * (1 - exp.theta(t, 0.5, gamma)) * 2.5 for t in range(n))
    assert abs(total - 10.0) < 0.1 and plan["baseline"]["steps"] < n < plan["layerdrop"]["steps"] * 1.2


@pytest.mark.slow
def test_every_method_runs_for_a_second(tmp_path, monkeypatch, demo_data):
    monkeypatch.chdir(tmp_path)  # nothing may land in the checkout
    exp = _load()
    doc = tmp_path / "page.md"
    doc.write_text("# Page\n\nkept\n\n<!-- results:begin -->\nold\n<!-- results:end -->\n\nend kept\n")
    out = exp.main(["--budget-s", "1", "--hidden", "32", "--layers", "2", "--heads", "2", "--batch-size", "4",
                    "--seq-len", "32", "--eval-batches", "1", "--probe-steps", "2", *demo_args(demo_data),
                    "--out", str(tmp_path / "run"), "--docs", str(doc)])
    assert [r["method"] for r in out["results"]] == list(exp.METHODS)
    for r in out["results"]:
        assert r["steps"] >= 1 and math.isfinite(r["loss"]), r
    stacked = json.loads((tmp_path / "run/runs/stacking-seed0/stage2/run_config.json").read_text())
    assert stacked["model"]["config"]["num_layers"] == 2
    text = doc.read_text()
    assert "kept" in text and "end kept" in text and "old" not in text and "| LAMB |" in text
