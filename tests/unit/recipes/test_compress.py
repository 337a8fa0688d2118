"""`ptm compress`: each post-training method writes a model directory that loads and scores (quantised ones too),
a report of what it reached (sparsity, bits, parameters, bytes) with dev scores before and after; distillation
trains a student; bad input is an error that names the fix."""

from __future__ import annotations

import json

import pytest

from ptmkit.cli.main import main as ptm
from ptmkit.config import ConfigError
from ptmkit.recipes.compress import CompressConfig, compress
from ptmkit.recipes.evaluate import evaluate
from tests.unit.recipes.test_finetune import _one_thread, sst_dir, tiny_model  # noqa: F401  (fixtures)
from tests.unit.recipes.test_finetune_distill import teacher  # noqa: F401  (a fine-tuned 2-layer BERT)


def _run(teacher, sst_dir, out, method, **options):  # noqa: F811
    return compress(CompressConfig(model=str(teacher), out=str(out), method=method, method_options=options,
                                   data_dir=str(sst_dir), batch_size=8, data_batches=2, show_progress=False))


def _scores_again(report, out, sst_dir):  # noqa: F811
    """The saved model, loaded afresh by `ptm evaluate`, scores what the report says."""
    again = evaluate(out / "model", data_dir=sst_dir, precision="fp32", show_progress=False)
    assert again["metrics"] == pytest.approx(report["dev"]["after"])


def test_magnitude_pruning_reaches_its_sparsity_and_scores(teacher, sst_dir, tmp_path):  # noqa: F811
    r = _run(teacher, sst_dir, tmp_path / "c", "magnitude", sparsity=0.5)
    assert r["sparsity"]["sparsity"] == pytest.approx(0.5, abs=1e-3) and r["task"] == "sst2"
    assert set(r["dev"]) == {"before", "after"} and "accuracy" in r["retention"]
    records = [json.loads(line) for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert [x["model"] for x in records] == ["before", "after"]
    _scores_again(r, tmp_path / "c", sst_dir)


def test_head_pruning_measures_importance_on_the_task_and_shrinks_the_model(teacher, sst_dir, tmp_path):  # noqa: F811
    r = _run(teacher, sst_dir, tmp_path / "c", "heads", fraction=0.5)
    assert r["after"]["parameters"] < r["before"]["parameters"]
    assert r["pruning"][0]["removed"] == r["pruning"][0]["total"] // 2
    _scores_again(r, tmp_path / "c", sst_dir)


@pytest.mark.parametrize("method", ["int8-dynamic", "static-int8", "qbert"])
def test_quantised_models_save_load_and_score(method, teacher, sst_dir, tmp_path):  # noqa: F811
    r = _run(teacher, sst_dir, tmp_path / "c", method)
    assert r["after"]["bytes"] < r["before"]["bytes"]
    bits = r["quantisation"]["weight_bits"]
    assert bits and all(b in (2, 4, 8) for b in bits.values())
    cfg = json.loads((tmp_path / "c" / "model" / "config.json").read_text())
    assert cfg["quantization_config"]["method"] == method
    _scores_again(r, tmp_path / "c", sst_dir)


def test_sharing_ties_layers_and_the_directory_loads(teacher, sst_dir, tmp_path):  # noqa: F811
    r = _run(teacher, sst_dir, tmp_path / "c", "share", num_groups=1)
    assert r["shared_groups"] == [[0, 1]] and r["after"]["parameters"] < r["before"]["parameters"]
    _scores_again(r, tmp_path / "c", sst_dir)


def test_distillation_from_compress_trains_a_student(teacher, sst_dir, tmp_path):  # noqa: F811
    r = compress(CompressConfig(model=str(teacher), out=str(tmp_path / "d"), method="minilm", student_layers=1,
                                data_dir=str(sst_dir), epochs=1.0, batch_size=8, show_progress=False))
    assert r["kind"] == "distill" and (tmp_path / "d" / "best" / "config.json").is_file()


def test_methods_that_train_run_as_fine_tuning(teacher, sst_dir, tmp_path):  # noqa: F811
    r = compress(CompressConfig(model=str(teacher), out=str(tmp_path / "g"), method="gradual-magnitude",
                                method_options={"schedule": {"final": 0.5, "end": 4, "every": 2}},
                                data_dir=str(sst_dir), epochs=2.0, batch_size=8, show_progress=False))
    assert r["kind"] == "train" and (tmp_path / "g" / "best" / "config.json").is_file()


def test_the_cli_and_bad_input(teacher, sst_dir, tiny_model, tmp_path, capsys):  # noqa: F811
    code = ptm(["compress", str(teacher), "--out", str(tmp_path / "c"), "--method", "magnitude",
                "--magnitude.sparsity", "0.25", "--data-dir", str(sst_dir), "--no-progress"])
    assert code == 0 and "parameters" in capsys.readouterr().out
    assert json.loads((tmp_path / "c" / "report.json").read_text())["sparsity"]["sparsity"] == pytest.approx(0.25,
                                                                                                            abs=1e-3)
    with pytest.raises(ConfigError, match="unknown method"):
        CompressConfig(model=str(teacher), out=str(tmp_path / "x"), method="prune-all")
    with pytest.raises(ConfigError, match="sparsty"):
        CompressConfig(model=str(teacher), out=str(tmp_path / "x"), method="magnitude",
                       method_options={"sparsty": 0.5})
    with pytest.raises(ConfigError, match="--task"):  # a base model records no task, and heads measure on one
        compress(CompressConfig(model=str(tiny_model), out=str(tmp_path / "x"), method="heads",
                                method_options={"fraction": 0.5}))
    with pytest.raises(ConfigError, match="own directory"):
        compress(CompressConfig(model=str(teacher), out=str(teacher), method="int8-dynamic"))
    with pytest.raises(ConfigError, match="holds|already"):
        _run(teacher, sst_dir, tmp_path / "c", "magnitude")
    assert ptm(["compress", str(teacher), "--out", str(tmp_path / "y"), "--method", "magnitude",
                "--heads.fraction", "0.5"]) == 2
