"""experiments/objectives_equal_compute.py at a tiny size: the equal-FLOPs plan, every (objective, task, seed)
cell, the docs block rewritten in place, and a repeated command that reuses finished runs."""

from __future__ import annotations

import json

import torch
from torch import nn

from ptmkit.train.flops import measured_step_flops
from tests.conftest import load_experiment
from tests.integration.test_pretrain import corpus  # noqa: F401  (pytest fixture)


def _load():
    return load_experiment("objectives_equal_compute")


def test_measured_step_flops_counts_forward_and_backward_matmuls():
    lin = nn.Linear(64, 32, bias=False)
    x = torch.randn(8, 64)

    def step():
        lin(x).sum().backward()

    # forward 2·8·64·32; backward: grad of weight only (x needs no grad) = the same again
    assert measured_step_flops(step) == 2 * (2 * 8 * 64 * 32)


def test_equal_compute_study_end_to_end(corpus, tmp_path, data_dir):  # noqa: F811
    exp = _load()
    doc = tmp_path / "docs" / "study.md"
    doc.parent.mkdir()
    doc.write_text("# Study\n\nintro kept\n\n<!-- results:begin -->\nold\n<!-- results:end -->\n\nend kept\n")
    argv = ["--hidden", "32", "--layers", "1", "--heads", "1", "--budget", "6", "--batch-size", "4",
            "--seq-len", "32", "--precision", "fp32", "--device", "cpu", "--finetune-seeds", "0,1",
            "--ft-epochs", "1", "--ft-max-train", "32", "--ft-max-eval", "32",
            "--tokenizer", str(corpus / "tok-wordpiece"), "--shards", str(corpus / "shards-wordpiece"),
            "--out", str(tmp_path / "run"), "--docs", str(doc)]
    result = exp.main(argv)

    plan = result["plan"]
    budget = 6 * plan["mlm"]["step_flops"]
    for name, p in ((n, p) for n, p in plan.items() if n != "none"):
        # equal compute: each objective's steps spend the MLM budget to within one step
        assert abs(p["steps"] * p["step_flops"] - budget) <= p["step_flops"] / 2 + 1e-6, name
    # the SBO head and the ELECTRA generator cost FLOPs that plain MLM does not spend
    assert plan["span"]["step_flops"] > plan["mlm"]["step_flops"]
    assert plan["rtd"]["step_flops"] > plan["mlm"]["step_flops"]

    assert len(result["runs"]) == 5 * 4 * 2  # (objectives + the no-pre-training row) x tasks x fine-tuning seeds
    assert plan["none"]["steps"] == 0 and "| no pre-training (same init) | 0 |" in doc.read_text()
    for o in exp.OBJECTIVES:
        summary = json.loads((tmp_path / "run" / "pretrain" / f"{o}-seed0" / "summary.json").read_text())
        assert summary["steps"] == plan[o]["steps"]
        for t in (*exp.TASKS, "average"):
            assert result["table"][o][t]["n"] == 2
    text = doc.read_text()
    assert text.startswith("# Study\n\nintro kept") and text.rstrip().endswith("end kept")
    assert "old" not in text and text.count("<!-- results:begin -->") == 1 and "| ELECTRA RTD |" in text
    assert (tmp_path / "docs" / "study.png").stat().st_size > 0

    # repeating the command reuses every finished run (a study can be continued after an interruption)
    stamp = (tmp_path / "run" / "pretrain" / "rtd-seed0" / "summary.json").stat().st_mtime_ns
    again = exp.main(argv)
    assert (tmp_path / "run" / "pretrain" / "rtd-seed0" / "summary.json").stat().st_mtime_ns == stamp
    assert again["table"] == result["table"]

    # ... but refuses to mix runs of another budget or shape into the same study
    import pytest

    with pytest.raises(SystemExit, match="budget"):
        exp.main([*argv[:7], "7", *argv[8:]])
