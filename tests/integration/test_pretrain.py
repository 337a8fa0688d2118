"""Tiny end-to-end pre-training: tokenizer → shards → MLM / CLM; loss falls; Ctrl-C + --resume is exact."""

from __future__ import annotations

import json
import os
import signal

import pytest

from ptmkit.config import ConfigError
from ptmkit.data.batches import PretrainBatches
from ptmkit.data.shards import prepare_shards
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.train.logging import read_metrics
from ptmkit.recipes.pretrain import PretrainConfig, pretrain
from ptmkit.config import from_dict

SENTENCES = [
    "the cat sat on the mat and looked at the dog",
    "a dog ran in the park with a red ball",
    "the bird sang a song in the tall green tree",
    "children play in the garden when the sun is warm",
    "the river runs past the old mill to the sea",
    "she read a book about ships and the open sea",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    with open(d / "train.jsonl", "w") as f:
        for i in range(300):
            doc = " ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(4))
            f.write(json.dumps({"text": doc}) + "\n")
    with open(d / "valid.jsonl", "w") as f:
        for i in range(20):
            f.write(json.dumps({"text": " ".join(SENTENCES[(i * 5 + j) % 6] for j in range(3))}) + "\n")
    out = {}
    for kind in ("wordpiece", "bpe"):
        tok = Tokenizer.train(d / "train.jsonl", kind=kind, vocab_size=300)
        tok.save(d / f"tok-{kind}")
        prepare_shards(d / "train.jsonl", tok, d / f"shards-{kind}", progress=False)
        prepare_shards(d / "valid.jsonl", tok, d / f"valid-{kind}", progress=False)
        out[kind] = d
    return d


def _cfg(corpus, out, kind="wordpiece", **over):
    family = "bert" if kind == "wordpiece" else "gpt2"
    base = {
        "model": {"family": family, "config": {"hidden_size": 64, "num_layers": 2, "num_heads": 2,
                                               **({"intermediate_size": 128} if family == "bert" else {}),
                                               "max_position_embeddings": 64}},
        "data": {"train": str(corpus / f"shards-{kind}"), "eval": str(corpus / f"valid-{kind}"),
                 "tokenizer": str(corpus / f"tok-{kind}"), "seq_len": 32, "batch_size": 8, "eval_batches": 2,
                 "boundary": "no_cross" if family == "bert" else "mask"},
        "objective": {"name": "mlm" if family == "bert" else "clm"},
        "train": {"steps": 30, "log_every": 1, "eval_every": 10, "checkpoint_every": 10, "precision": "fp32",
                  "progress_bar": False},
        "optim": {"lr": 3e-3},
        "schedule": {"warmup_steps": 3},
        "out": str(out),
    }
    for k, v in over.items():
        section, key = k.split("__")
        base[section][key] = v
    return from_dict(PretrainConfig, base)


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"], ids=["bert-mlm", "gpt2-clm-packed"])
def test_pretraining_loss_falls_and_artifacts_are_written(corpus, tmp_path, kind):
    summary = pretrain(_cfg(corpus, tmp_path / "run", kind))
    records = read_metrics(tmp_path / "run")
    train = [r["loss"] for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    assert len(train) == 30 and len(evals) == 3
    assert sum(train[-5:]) / 5 < 0.8 * sum(train[:5]) / 5
    assert evals[-1]["loss"] < evals[0]["loss"]
    for name in ("run_config.json", "metrics.jsonl", "loss.png", "summary.json", "model/config.json",
                 "model/model.safetensors", "model/tokenizer.json"):
        assert (tmp_path / "run" / name).exists(), name
    assert 0 <= summary["data_fraction"] < 0.5
    assert {"lr", "grad_norm", "tokens_per_s", "skipped_steps"} <= set(records[0])


def test_resume_after_ctrl_c_is_bit_exact(corpus, tmp_path, monkeypatch):
    full = tmp_path / "full"
    pretrain(_cfg(corpus, full, train__steps=12, train__checkpoint_every=100))
    want = [r["loss"] for r in read_metrics(full) if r["split"] == "train"]

    # Interrupt: deliver SIGINT while the 5th batch is drawn; the loop finishes step 5, checkpoints, exits.
    real_next = PretrainBatches.__next__

    def next_with_interrupt(self):
        if self.drawn == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return real_next(self)

    monkeypatch.setattr(PretrainBatches, "__next__", next_with_interrupt)
    part = tmp_path / "part"
    summary = pretrain(_cfg(corpus, part, train__steps=12, train__checkpoint_every=100))
    assert summary["interrupted"] and summary["steps"] == 5
    assert not (part / "model").exists()
    monkeypatch.setattr(PretrainBatches, "__next__", real_next)
    pretrain(_cfg(corpus, part, train__steps=12, train__checkpoint_every=100), resume=True)
    got = [r["loss"] for r in read_metrics(part) if r["split"] == "train"]
    assert [r["step"] for r in read_metrics(part) if r["split"] == "train"] == list(range(1, 13))
    assert got == want  # bit for bit, including steps 6..12 after the resume


def test_fp16_loss_scaling_runs_and_counts_skips(corpus, tmp_path):
    summary = pretrain(_cfg(corpus, tmp_path / "run", train__steps=6, train__precision="fp16"))
    assert summary["steps"] == 6
    records = [r for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert all("skipped_steps" in r for r in records)


def test_shards_from_another_tokenizer_are_refused(corpus, tmp_path):
    cfg = _cfg(corpus, tmp_path / "run")
    cfg.data.tokenizer = str(corpus / "tok-bpe")
    with pytest.raises(ValueError, match="tokenizer"):
        pretrain(cfg)


def test_bad_run_configs(corpus, tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(PretrainConfig, {"train": {"stepz": 3}})
    with pytest.raises(ConfigError, match="seq_len 128 exceeds"):
        pretrain(_cfg(corpus, tmp_path / "r", data__seq_len=128))
    with pytest.raises(ConfigError, match="mask_prob"):
        pretrain(_cfg(corpus, tmp_path / "r", objective__params={"mask_prob": 1.5}))
    with pytest.raises(ConfigError, match="unknown name"):
        pretrain(_cfg(corpus, tmp_path / "r", objective__name="xlnet"))


def test_cli_pretrain_with_yaml_and_dotted_overrides(corpus, tmp_path, capsys):
    import yaml

    from ptmkit.cli.main import main
    from ptmkit.config import to_dict

    cfg = to_dict(_cfg(corpus, tmp_path / "run"))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(cfg))
    rc = main(["pretrain", str(tmp_path / "recipe.yaml"), "--train.steps", "4", "--optim.lr=1e-3",
               "--out", str(tmp_path / "cli-run"), "--schedule.warmup_steps", "0"])
    assert rc == 0
    resolved = json.loads((tmp_path / "cli-run" / "run_config.json").read_text())
    assert resolved["train"]["steps"] == 4 and resolved["optim"]["lr"] == 1e-3
    assert "model saved" in capsys.readouterr().out
    assert main(["pretrain", str(tmp_path / "recipe.yaml"), "--train.stepz", "4"]) == 2
    assert "unknown key(s) ['stepz']" in capsys.readouterr().err
    assert main(["pretrain", str(tmp_path / "recipe.yaml"), "--train.steps", "four"]) == 2
    assert "expected an integer" in capsys.readouterr().err


def test_pretrain_help_explains_every_key(capsys):
    from ptmkit.cli.main import main

    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = capsys.readouterr().out
    keys = [line for line in text.splitlines() if line.startswith("  --") and "default:" in line]
    lines = text.splitlines()
    undocumented = [k for k in keys if not lines[lines.index(k) + 1].startswith("      ")]
    assert len(keys) > 30 and not undocumented, undocumented


def test_moe_pretraining_logs_router_metrics_and_refuses_a_false_hf_export(corpus, tmp_path):
    """A sparse GPT-2 pre-trains (router losses and expert use in metrics.jsonl); it has no Hugging Face form, so the
    run keeps its training checkpoint and writes no model directory, and save_model says why."""
    from ptmkit.models import save_model
    from ptmkit.models.convert.base import CheckpointError

    cfg = _cfg(corpus, tmp_path / "run", "bpe", train__steps=4, train__eval_every=0)
    cfg.model.config["moe"] = {"num_experts": 4, "every": 1}
    summary = pretrain(cfg)
    train = [r for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert summary["steps"] == 4 and "moe_aux_loss" in train[0] and 0 <= train[0]["moe_dropped_fraction"] < 1
    assert "model_dir" not in summary and not (tmp_path / "run" / "model").exists()
    assert any((tmp_path / "run" / "checkpoints").iterdir())
    from ptmkit.recipes.pretrain import plain_training_module

    model = plain_training_module(cfg, Tokenizer.load(cfg.data.tokenizer)).model
    with pytest.raises(CheckpointError, match="Mixture-of-Experts"):
        save_model(model, tmp_path / "hf")
