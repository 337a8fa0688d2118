"""`ptm pretrain configs/{visualbert,lxmert}-emoji.yaml` at a tiny size on real emoji: the run fits its region codebook
from the training images and keeps it, trains, saves a model directory that `ptm zero-shot` scores by image-text
matching, and a codebook of another layout is refused before anything is written."""

from __future__ import annotations

import json

import pytest
import torch

from ptmkit.cli.main import main
from ptmkit.models import load_model
from ptmkit.objectives.codebook import save_codebook
from ptmkit.train.logging import read_metrics
from tests.conftest import REPO
from tests.integration.test_pretrain_clip import subset  # noqa: F401  (pytest fixture: 24 shared emoji)

TINY = {"visualbert": ["--model.config.num_layers", "1"],
        "lxmert": ["--model.config.num_text_layers", "1", "--model.config.num_image_layers", "1",
                   "--model.config.num_cross_layers", "1"]}
COMMON = ["--model.config.hidden_size", "32", "--model.config.num_heads", "2", "--model.config.intermediate_size",
          "64", "--model.config.image_size", "32", "--model.config.num_visual_classes", "16", "--images.image_size",
          "32", "--images.vocab_size", "200", "--data.batch_size", "16", "--schedule.warmup_steps", "2",
          "--train.precision", "fp32", "--train.log_every", "1", "--train.progress_bar", "false",
          "--images.split_seed", "3", "--images.held_out", "0.2"]


def _pretrain(subset, family, out, *extra):  # noqa: F811
    sources = f"[{{path: {subset / 'subset.jsonl'}, captions: ['{{name}}'], id_field: name}}]"
    return main(["pretrain", str(REPO / "configs" / f"{family}-emoji.yaml"), "--images.train", sources,
                 "--images.cache_dir", str(subset / "cache"), "--out", str(out), *COMMON, *TINY[family], *extra])


@pytest.mark.parametrize("family", ["visualbert", "lxmert"])
def test_vl_recipe_trains_keeps_its_codebook_and_retrieves(subset, tmp_path, family, capsys):  # noqa: F811
    run = tmp_path / "run"
    assert _pretrain(subset, family, run, "--train.steps", "12", "--train.eval_every", "12",
                     "--train.checkpoint_every", "12") == 0
    rows = read_metrics(run / "metrics.jsonl")
    train = [r for r in rows if r["split"] == "train"]
    assert {"mlm_loss", "mrfr_loss", "mrc_loss", "itm_loss"} <= set(train[-1])
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train)
    assert {"i2t_r1", "t2i_r10", "t2i_r1_chance"} <= set(rows[-1])
    saved = json.loads((run / "run_config.json").read_text())
    assert saved["objective"]["params"]["codebook"] == str(run / "codebook.safetensors")
    model = load_model(run / "model")
    assert model.codebook_fitted and type(model).__name__ == "VLPreTraining"
    capsys.readouterr()
    assert main(["zero-shot", str(run / "model"), "--data", str(subset / "subset.jsonl"), "--captions", "{name}",
                 "--id-field", "name", "--held-out", "0.2", "--split-seed", "3", "--cache-dir",
                 str(subset / "cache"), "--out", str(tmp_path / "zs")]) == 0
    result = json.loads((tmp_path / "zs" / "results.json").read_text())["retrieval"]
    assert result["images"] == 4 and result["chance"]["text_to_image"]["1"] == 0.25
    capsys.readouterr()
    assert main(["zero-shot", str(run / "model"), "--data", str(subset / "subset.jsonl"), "--captions", "{name}",
                 "--classes", "category", "--cache-dir", str(subset / "cache")]) != 0
    assert "no image vector for prompt classification" in capsys.readouterr().err


def test_a_codebook_of_another_layout_is_refused_before_the_run_starts(subset, tmp_path, capsys):  # noqa: F811
    bad = tmp_path / "cb.safetensors"
    save_codebook(bad, torch.randn(16, 4 * 4 * 3), {"patch_size": 4, "num_channels": 3, "mean": [0.0] * 3,
                                                     "std": [1.0] * 3})
    assert _pretrain(subset, "visualbert", tmp_path / "run", "--train.steps", "2", "--objective.params.codebook",
                     str(bad)) != 0
    assert "fitted for another patch layout: patch_size 4 (this run: 8)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
