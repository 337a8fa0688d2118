"""`ptm pretrain configs/clip-emoji.yaml` at a tiny size on real emoji: the recipe runs, the contrastive loss falls,
the model directory loads in ptmkit and transformers (model, tokenizer, image processor), a resumed run continues
exactly, `ptm zero-shot` scores it, and mismatched sections are refused before anything is written."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ptmkit.cli.main import main
from ptmkit.data.images.records import held_out
from ptmkit.train.logging import read_metrics
from tests.conftest import REPO, shared_path

TINY = ["--model.config.vision.image_size", "32", "--model.config.vision.patch_size", "8",
        "--model.config.vision.hidden_size", "32", "--model.config.vision.num_layers", "2",
        "--model.config.vision.num_heads", "2", "--model.config.vision.intermediate_size", "64",
        "--model.config.text.hidden_size", "32", "--model.config.text.num_layers", "2",
        "--model.config.text.num_heads", "2", "--model.config.text.intermediate_size", "64",
        "--model.config.projection_dim", "32", "--images.image_size", "32", "--images.vocab_size", "200",
        "--data.batch_size", "16", "--schedule.warmup_steps", "2", "--optim.lr", "3e-3", "--train.precision", "fp32",
        "--train.log_every", "1", "--train.progress_bar", "false"]


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """24 emoji of the shared set (absolute image paths), one caption each: small enough to memorise."""
    src = shared_path("multimodal", "emoji", "emoji.jsonl")
    d = tmp_path_factory.mktemp("emoji")
    rows = [json.loads(line) for line in src.read_text().splitlines()[::80]][:24]
    for r in rows:
        r["image"] = str(src.parent / r["image"])
    (d / "subset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _pretrain(subset, out, *extra):
    # ids by name: the split must not depend on where the checkout lies (the image paths are absolute); split
    # seed 3 holds out 4 of the 24 at images.held_out 0.2
    sources = f"[{{path: {subset / 'subset.jsonl'}, captions: ['{{name}}'], id_field: name}}]"
    return main(["pretrain", str(REPO / "configs" / "clip-emoji.yaml"), "--images.train", sources,
                 "--images.cache_dir", str(subset / "cache"), "--images.split_seed", "3", "--out", str(out), *TINY,
                 *extra])


def test_clip_recipe_trains_saves_resumes_and_evaluates(subset, tmp_path, capsys):
    import transformers as T

    run = tmp_path / "run"
    assert _pretrain(subset, run, "--images.held_out", "0.2", "--train.steps", "40", "--train.eval_every", "20",
                     "--train.checkpoint_every", "20") == 0
    train = [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"]
    first, last = (sum(r["loss"] for r in rows) / 5 for rows in (train[:5], train[-5:]))
    assert last < 0.6 * first, (first, last)  # memorising 16-image batches of ~19 training emoji
    evals = [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [20, 40] and {"i2t_r1", "t2i_r10", "t2i_r1_chance"} <= set(evals[-1])
    summary = json.loads((run / "summary.json").read_text())
    assert 0 <= summary["data_fraction"] < 1 and summary["model_dir"] == str(run / "model")
    saved = json.loads((run / "run_config.json").read_text())
    assert saved["data"]["tokenizer"] == str(run / "tokenizer")  # trained on the training captions, kept with the run

    # the model directory is a transformers CLIP directory: model, tokenizer and image processor
    ref = T.CLIPModel.from_pretrained(run / "model").eval()
    tok = T.AutoTokenizer.from_pretrained(run / "model")
    proc = T.CLIPImageProcessor.from_pretrained(run / "model")
    assert proc.crop_size == {"height": 32, "width": 32}
    from ptmkit.models import load_model
    ours = load_model(run / "model").eval()
    enc = tok(["grinning face", "red heart"], padding=True, return_tensors="pt")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = ref(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels)
        got = ours(enc["input_ids"], pixels, enc["attention_mask"])
    torch.testing.assert_close(got.logits_per_image, want.logits_per_image, atol=1e-4, rtol=1e-4)

    # a run stopped after its step-20 checkpoint resumes to the uninterrupted run's losses, exactly
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    for late in (resumed / "checkpoints").glob("step-*"):
        if late.name != "step-00000020":
            shutil.rmtree(late)
    for leftover in ("model", "summary.json"):
        shutil.rmtree(resumed / leftover) if (resumed / leftover).is_dir() else (resumed / leftover).unlink()
    assert _pretrain(subset, resumed, "--images.held_out", "0.2", "--train.steps", "40", "--train.eval_every", "20",
                     "--train.checkpoint_every", "20", "--resume") == 0
    again = [r["loss"] for r in read_metrics(resumed / "metrics.jsonl") if r["split"] == "train"]
    assert again == [r["loss"] for r in train]

    capsys.readouterr()
    assert main(["zero-shot", str(run / "model"), "--data", str(subset / "subset.jsonl"), "--captions", "{name}",
                 "--classes", "category", "--template", "an emoji of {}", "{} emoji", "--held-out", "0.2",
                 "--id-field", "name", "--split-seed", "3", "--split", "held_out", "--probe",
                 "--cache-dir", str(subset / "cache"),
                 "--out", str(tmp_path / "zs")]) == 0
    printed = capsys.readouterr().out
    assert "image->text: R@1" in printed and "zero-shot category" in printed and "linear probe" in printed
    result = json.loads((tmp_path / "zs" / "results.json").read_text())
    n = result["retrieval"]["images"]
    rows = [json.loads(line) for line in (subset / "subset.jsonl").read_text().splitlines()]
    assert n == sum(held_out(r["name"], 0.2, seed=3) for r in rows) == 4
    assert result["retrieval"]["chance"]["text_to_image"]["1"] == pytest.approx(1 / n)
    assert result["zero_shot"]["templates"] == ["an emoji of {}", "{} emoji"]


@pytest.mark.parametrize("extra, message", [
    (["--model.config.vision.image_size", "64"], "images.image_size 32 differs from the vision tower's image_size 64"),
    (["--objective.name", "mlm"], "images.train is set but objective 'mlm' reads token windows"),
    (["--model.family", "bert", "--model.config", "{}"], "image-text-contrastive needs an image-text dual encoder"),
])
def test_mismatched_sections_are_refused_before_writing(subset, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    assert _pretrain(subset, out, "--train.steps", "2", *extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_clip_objective_without_images_names_the_fix(tmp_path, capsys):
    assert main(["pretrain", str(REPO / "configs" / "clip-emoji.yaml"), "--images.train", "[]",
                 "--out", str(tmp_path / "x")]) == 2
    assert "set images.train to JSON-lines sources" in capsys.readouterr().err
