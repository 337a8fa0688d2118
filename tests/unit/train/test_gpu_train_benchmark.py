"""benchmarks/gpu_train.py runs end to end on a CPU with --tiny and reports every field (speeds not asserted)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "gpu_train.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_train_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_run_reports_ratio_mfu_and_denominator(capsys):
    bench = _load()
    summary = bench.main(["--tiny", "--device", "cpu", "--rounds", "2", "--steps", "1", "--warmup", "1",
                          "--no-compile", "--mlm-masked-only"])
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1]) == json.loads(json.dumps(summary))  # the last line is the summary JSON
    assert summary["benchmark"] == "gpu_train" and summary["unit"] == "tokens/s"
    assert summary["device"] == "cpu" and summary["dtype"] == "float32" and summary["compile"] is False
    assert set(summary["models"]) == {"gpt2", "bert"}
    assert summary["mfu_denominator"].startswith("CPU fp32 torch.mm") and "measured" in summary["mfu_denominator"]
    assert summary["mfu_denominator_flops"] > 0
    for name, r in summary["models"].items():
        assert r["ours_tokens_per_s"] > 0 and r["reference_tokens_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["ours_tokens_per_s"] / r["reference_tokens_per_s"], rel=0.01)
        assert summary["all_ratios"][name] == r["ratio"]
        assert 0 < r["mfu_ours"] and 0 < r["mfu_reference"] and math.isfinite(r["mfu_ours"])
        assert r["loss_check"][0] == pytest.approx(r["loss_check"][1], rel=1e-3)
        assert r["peak_mem_GiB_ours"] is None  # CUDA only
        fpt = r["flops_per_token_reference"]
        assert fpt["total"] == fpt["params"] + fpt["attention"]
    # GPT-2 is causal: half the attention term of BERT at the same shape (2 layers x 64 wide, 64 tokens).
    gpt2, bert = summary["models"]["gpt2"], summary["models"]["bert"]
    assert gpt2["flops_per_token_ours"]["attention"] == 6 * 2 * 64 * 64
    assert bert["flops_per_token_ours"]["attention"] == 12 * 2 * 64 * 64
    # ptmkit scores only the masked positions: its MLM head counts at that fraction.
    assert bert["flops_per_token_ours"]["params"] < bert["flops_per_token_reference"]["params"]
    assert any("MFU" in line and "of" in line and "GFLOP/s" in line for line in out)


def test_by_default_both_score_every_position_and_count_the_same_flops(capsys):
    bench = _load()
    summary = bench.main(["--tiny", "--device", "cpu", "--model", "bert", "--rounds", "1", "--steps", "1",
                          "--warmup", "0", "--no-compile"])
    r = summary["models"]["bert"]
    assert summary["mlm_score_all"] is True and list(summary["models"]) == ["bert"]
    assert r["flops_per_token_ours"] == r["flops_per_token_reference"]
