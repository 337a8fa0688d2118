"""`ptm finetune --init random`: the same architecture, tokenizer and recipe without the pre-trained weights, the
baseline that tells what pre-training bought (issue 20)."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch

from ptmkit.cli import finetune as cli_finetune
from ptmkit.config import ConfigError
from ptmkit.models import init_model, load_model
from ptmkit.recipes.finetune import FinetuneConfig, finetune
from tests.unit.recipes.test_finetune import _cfg, _one_thread, sst_dir, tiny_model  # noqa: F401  (fixtures)


@pytest.fixture()
def config_only(tiny_model, tmp_path):  # noqa: F811
    """The tiny model's directory without its weights: config.json and tokenizer files only."""
    d = tmp_path / "config_only"
    shutil.copytree(tiny_model, d)
    (d / "model.safetensors").unlink()
    return d


def _backbone(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}


def test_init_model_is_the_architecture_without_the_weights(tiny_model):  # noqa: F811
    loaded = load_model(tiny_model, task="sequence-classification", num_labels=2)
    torch.manual_seed(5)  # the fixture saved seed 0's initialisation: draw others
    a = init_model(tiny_model, task="sequence-classification", num_labels=2)
    torch.manual_seed(5)
    b = init_model(tiny_model, task="sequence-classification", num_labels=2)
    torch.manual_seed(6)
    c = init_model(tiny_model, task="sequence-classification", num_labels=2)
    assert type(a) is type(loaded) and a.config == loaded.config
    sa, sl = a.state_dict(), loaded.state_dict()
    assert {k: v.shape for k, v in sa.items()} == {k: v.shape for k, v in sl.items()}
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in sa.items())  # seeded: reproducible
    weights = [k for k in _backbone(a) if k.endswith("weight") and "norm" not in k]
    assert weights and not any(torch.equal(sa[k], sl[k]) for k in weights)  # not the saved weights
    assert not any(torch.equal(sa[k], c.state_dict()[k]) for k in weights)  # another seed, another model


def test_finetune_random_init_reads_no_weights_and_learns(config_only, sst_dir, tmp_path):  # noqa: F811
    res = finetune(_cfg(config_only, sst_dir, tmp_path / "run", init="random"))
    assert res["init"] == "random" and res["dev"]["accuracy"] >= 0.9
    assert json.loads((tmp_path / "run" / "config.json").read_text())["init"] == "random"
    # the default still needs the weights, and says which file it looked for
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        finetune(_cfg(config_only, sst_dir, tmp_path / "run2"))


def test_random_and_pretrained_starts_differ_under_one_seed(tiny_model, sst_dir, tmp_path):  # noqa: F811
    kw = dict(max_steps=2, eval_every=2, seed=3)  # the fixture saved seed 0's initialisation
    pre = finetune(_cfg(tiny_model, sst_dir, tmp_path / "pre", **kw))
    rnd = finetune(_cfg(tiny_model, sst_dir, tmp_path / "rnd", init="random", **kw))
    assert pre["init"] == "pretrained" and rnd["final"]["loss"] != pre["final"]["loss"]


@pytest.mark.parametrize("key", ["hidden_size", "num_hidden_layers", "vocab_size"])
def test_random_init_names_a_missing_shape_key(config_only, sst_dir, tmp_path, key):  # noqa: F811
    cfg = json.loads((config_only / "config.json").read_text())
    del cfg[key]
    (config_only / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=f"missing '{key}'"):
        finetune(_cfg(config_only, sst_dir, tmp_path / "run", init="random"))
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_random_init_refuses_options_that_only_mean_something_for_loaded_weights():
    with pytest.raises(ConfigError, match="layer_decay=0.8 with init='random'"):
        FinetuneConfig(model="m", task="sst2", out="o", init="random", layer_decay=0.8)
    with pytest.raises(ConfigError, match="init must be 'pretrained' or 'random'"):
        FinetuneConfig(model="m", task="sst2", out="o", init="scratch")


def test_cli_init_flag_is_documented_and_reaches_the_config(tiny_model, sst_dir, tmp_path):  # noqa: F811
    parser = argparse.ArgumentParser()
    cli_finetune.add_parser(parser.add_subparsers())
    sub = parser._subparsers._group_actions[0].choices["finetune"]
    assert "freshly initialised" in sub.format_help()
    args = parser.parse_args(["finetune", str(tiny_model), "--task", "sst2", "--out", str(tmp_path / "r"),
                              "--init", "random"])
    assert cli_finetune.config_from_args(args).init == "random"
    args = parser.parse_args(["finetune", str(tiny_model), "--task", "sst2", "--out", str(tmp_path / "r")])
    assert cli_finetune.config_from_args(args).init == "pretrained"


def test_resume_refuses_a_changed_init(tiny_model, sst_dir, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    finetune(_cfg(tiny_model, sst_dir, out, max_steps=2, eval_every=2))
    with pytest.raises(ConfigError, match="init='pretrained' \\(now 'random'\\)"):
        finetune(_cfg(tiny_model, sst_dir, out, max_steps=2, eval_every=2, init="random"), resume=True)


@pytest.mark.parametrize("family", sorted(__import__("ptmkit.models.registry", fromlist=["FAMILIES"]).FAMILIES))
def test_every_saved_config_holds_the_keys_random_init_requires(family):
    """A directory ptmkit saved (or transformers wrote, for the same family) always builds randomly: the keys
    init_model insists on are ones config_to_hf writes, and the family's adapter names some."""
    from ptmkit.models.registry import FAMILIES

    fam = FAMILIES[family]
    written = fam.adapter.config_to_hf(fam.config())
    assert fam.adapter.shape_keys, family
    assert set(fam.adapter.shape_keys) <= set(written), set(fam.adapter.shape_keys) - set(written)


def test_dropout_override_sets_every_rate_and_is_saved(tiny_model, sst_dir, tmp_path):  # noqa: F811
    """--dropout: fine-tune a model pre-trained without dropout with it (Cramming), or the reverse."""
    kept = load_model(tiny_model, task="sequence-classification", num_labels=2)
    for init in (load_model, init_model):
        m = init(tiny_model, task="sequence-classification", num_labels=2, dropout=0.3)
        assert m.config.dropout == 0.3 and m.config.attention_dropout == 0.3
        # the modules were built with it (BERT has no dropout inside its FFN: that one stays 0)
        rates = {n: mod.p for n, mod in m.named_modules() if isinstance(mod, torch.nn.Dropout)}
        assert rates and all(p == (0.0 if n.endswith("ffn.drop") else 0.3) for n, p in rates.items()), rates
    assert kept.config.dropout != 0.3  # unset keeps the directory's rates
    finetune(_cfg(tiny_model, sst_dir, tmp_path / "run", max_steps=2, eval_every=2, dropout=0.0))
    saved = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert saved["hidden_dropout_prob"] == 0.0 and saved["attention_probs_dropout_prob"] == 0.0
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\)"):
        _cfg(tiny_model, sst_dir, tmp_path / "bad", dropout=1.0)
    with pytest.raises(ConfigError, match="other settings"):  # a resume keeps the rates it started with
        finetune(_cfg(tiny_model, sst_dir, tmp_path / "run", max_steps=2, eval_every=2, dropout=0.1), resume=True)


def test_finetune_with_mean_pooling_learns_and_keeps_it(tiny_model, sst_dir, tmp_path):  # noqa: F811
    res = finetune(_cfg(tiny_model, sst_dir, tmp_path / "run", pooling="mean"))
    assert res["dev"]["accuracy"] >= 0.9
    assert json.loads((tmp_path / "run" / "best" / "config.json").read_text())["ptmkit_pooling"] == "mean"
    assert load_model(tmp_path / "run" / "best").pooling == "mean"
    with pytest.raises(ConfigError, match="pooling must be 'cls' or 'mean'"):
        _cfg(tiny_model, sst_dir, tmp_path / "bad", pooling="max")
    parser = argparse.ArgumentParser()
    cli_finetune.add_parser(parser.add_subparsers())
    args = parser.parse_args(["finetune", str(tiny_model), "--task", "sst2", "--out", str(tmp_path / "x"),
                              "--pooling", "mean", "--dropout", "0.2"])
    cfg = cli_finetune.config_from_args(args)
    assert cfg.pooling == "mean" and cfg.dropout == 0.2
