"""The compression studies (issue 15: the compression table and its curves) run end to end at a tiny size."""

from __future__ import annotations

import pytest

from tests.integration.scripts.helpers import EXP, load_script, run_main, tiny_bert


def test_compression(capsys, data_dir, tmp_path):
    docs = tmp_path / "compression.md"
    base = tiny_bert(tmp_path / "base", num_layers=6)  # the students keep 3 of the teacher's layers
    _, line = run_main(EXP / "compression.py",
                       ["--rows", "teacher,tinybert-3L,heads+ffn-40%,int8-dynamic", "--tasks", "sst2",
                        "--model", str(base), "--max-train", "16",
                        "--max-eval", "16", "--epochs", "1", "--rounds", "1", "--latency-length", "8",
                        "--workers", "2",
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
    assert mod.record_name(mod.parse_args(["--model", str(base)]), "pkd-3L", "rte") is None
    with pytest.raises(SystemExit):  # --model fine-tunes the teachers: finished ones cannot be given as well
        mod.parse_args(["--model", str(base), "--teachers", "runs/x/{task}"])
    assert "give one of them" in capsys.readouterr().err
    # a finished run is reused only if it started from the same model: an --out shared between two studies is refused
    with pytest.raises(SystemExit, match="holds a finished run that started from"):
        mod._finished(tmp_path / "runs" / "teacher" / "sst2", "results.json", str(tmp_path / "another"))
    assert mod._finished(tmp_path / "runs" / "teacher" / "sst2", "results.json", str(base))["task"] == "sst2"
    with pytest.raises(SystemExit):  # argparse's error: --workers must be at least 1
        mod.parse_args(["--workers", "0"])
    assert "--workers must be at least 1" in capsys.readouterr().err
    assert set(rows) == {"teacher", "tinybert-3L", "heads+ffn-40%", "int8-dynamic"}
    assert rows["heads+ffn-40%"]["parameters"] < rows["teacher"]["parameters"]
    assert rows["int8-dynamic"]["size_mb"] < rows["teacher"]["size_mb"]
    assert rows["tinybert-3L"]["parameters"] < rows["teacher"]["parameters"] and rows["teacher"]["retention_pct"] == 100
    assert (tmp_path / "runs" / "tinybert-3L" / "sst2-stage2" / "results.json").is_file()  # two stages
    assert "<!-- results:table:begin -->" in docs.read_text()


def test_compression_curves(capsys, data_dir, tmp_path):
    from ptmkit.recipes.finetune import FinetuneConfig, finetune

    base = tiny_bert(tmp_path / "base")  # stands in for MiniLM's full run: every curve runs, in a fifth of the time
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
