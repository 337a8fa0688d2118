"""Text-to-image on the one engine (recipes/text_to_image.py): `ptm pretrain` trains a tiny VQ-VAE and then a tiny
generator over [name ; codes] on 24 real emoji, `ptm generate-image` writes the PNG grid, a VQ-VAE of another
codebook is refused; the token layout, the objective's labels and the restricted sampler are checked directly."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from ptmkit.cli.main import main
from ptmkit.config import ConfigError
from ptmkit.data.images.layout import ImageTokenLayout
from ptmkit.models import build_model, make_config, save_model
from ptmkit.models.generate_image import sample_image_codes
from ptmkit.objectives.text_to_image import TextToImageConfig, TextToImageLM
from ptmkit.recipes.text_to_image import load_generator
from ptmkit.train.logging import read_metrics
from tests.conftest import REPO, shared_path

COMMON = ["--data.batch_size", "8", "--schedule.warmup_steps", "2", "--train.precision", "fp32",
          "--train.log_every", "1", "--train.progress_bar", "false", "--images.image_size", "16"]
VQ = ["--model.config.hidden_size", "16", "--model.config.num_downsamples", "2", "--model.config.codebook_size", "16",
      "--model.config.embedding_dim", "8", "--model.config.residual_hidden_size", "8", "--optim.lr", "3e-3"]
GEN = ["--model.config.hidden_size", "32", "--model.config.num_layers", "1", "--model.config.num_heads", "2",
       "--model.config.max_position_embeddings", "32", "--data.seq_len", "8", "--images.vocab_size", "120",
       "--optim.lr", "3e-3"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A VQ-VAE and a generator trained on 24 emoji (absolute image paths), 12 steps each."""
    src = shared_path("multimodal", "emoji", "emoji.jsonl")
    d = tmp_path_factory.mktemp("t2i")
    rows = [json.loads(line) for line in src.read_text().splitlines()[::80]][:24]
    for r in rows:
        r["image"] = str(src.parent / r["image"])
    (d / "subset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    images = ["--images.train", json.dumps([{"path": str(d / "subset.jsonl"), "captions": ["{name}"]}]),
              "--images.cache_dir", str(d / "cache"), "--images.held_out", "0.2", "--train.steps", "12"]
    assert main(["pretrain", str(REPO / "configs" / "vqvae-emoji.yaml"), "--out", str(d / "vq"), *images, *COMMON,
                 *VQ]) == 0
    assert main(["pretrain", str(REPO / "configs" / "dalle-emoji.yaml"), "--out", str(d / "gen"), *images, *COMMON,
                 *GEN, "--images.tokenizer", str(d / "vq" / "model")]) == 0
    return d


def test_both_stages_train_through_the_engine(runs):
    vq = read_metrics(runs / "vq" / "metrics.jsonl")
    train = [r for r in vq if r["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
    assert {"psnr", "pixel_mse"} <= set(vq[-1]) and vq[-1]["split"] == "eval"
    gen = [r for r in read_metrics(runs / "gen" / "metrics.jsonl") if r["split"] == "train"]
    assert gen[-1]["image_loss"] < gen[0]["image_loss"]
    layout = json.loads((runs / "gen" / "model" / "text_to_image.json").read_text())
    assert (layout["codebook_size"], layout["grid_size"], layout["text_len"]) == (16, 4, 8)
    config = json.loads((runs / "gen" / "model" / "config.json").read_text())
    assert config["vocab_size"] == layout["text_vocab"] + 1 + 16  # text ids + begin-of-image + codes
    assert list((runs / "cache").glob("*-codes-*/codes.npy")), "the codes are cached beside the decoded images"


def test_generate_image_writes_the_grid(runs, capsys):
    out = runs / "grid.png"
    assert main(["generate-image", str(runs / "gen" / "model"), "--caption", "red apple", "--caption", "cat face",
                 "--samples", "3", "--top-k", "8", "--out", str(out)]) == 0
    assert Image.open(out).size == (3 * (16 + 2) + 2, 2 * (16 + 2) + 2)  # 3 samples wide, 2 captions high
    assert "row 2: cat face" in capsys.readouterr().out


def test_a_tokenizer_of_another_codebook_is_refused(runs, tmp_path):
    other = build_model("vqvae", make_config("vqvae", dict(image_size=16, num_downsamples=2, hidden_size=16,
                                                           codebook_size=32, embedding_dim=8)))
    save_model(other, tmp_path / "other")
    with pytest.raises(ConfigError, match="32 codes on a 4 x 4 grid but the generator .* 16 codes .* pass the VQ-VAE "
                                          "it was trained with"):
        load_generator(runs / "gen" / "model", tmp_path / "other")


def test_layout_and_objective_labels():
    layout = ImageTokenLayout(text_vocab=10, text_len=4, codebook_size=5, grid_size=2)
    assert (layout.boi, layout.offset, layout.vocab_size, layout.seq_len) == (10, 11, 16, 9)
    objective = TextToImageLM(TextToImageConfig(vocab_size=10, codebook_size=5))
    text = torch.tensor([[2, 7, 3, 0]])  # [CLS] word [SEP] [PAD]
    codes = torch.tensor([[[4, 0], [1, 2]]])
    batch = objective.corrupt({"input_ids": text, "attention_mask": torch.tensor([[1, 1, 1, 0]]),
                               "image_codes": codes}, torch.Generator())
    assert batch["input_ids"].tolist() == [[2, 7, 3, 0, 10, 15, 11, 12, 13]]
    # targets: word, [SEP], never the padding nor begin-of-image, then the four image tokens; the last has none
    assert batch["labels"].tolist() == [[7, 3, -100, -100, 15, 11, 12, 13, -100]]
    assert batch["image_targets"].tolist() == [[False] * 4 + [True] * 4 + [False]]


def test_the_sampler_draws_only_image_tokens_and_caches_exactly():
    layout = ImageTokenLayout(text_vocab=20, text_len=3, codebook_size=6, grid_size=2)
    torch.manual_seed(0)
    model = build_model("llama", make_config("llama", dict(vocab_size=layout.vocab_size, hidden_size=32,
                                                           num_layers=1, num_heads=2, intermediate_size=64)),
                        "causal-lm").eval()
    with torch.no_grad():
        model.lm_head.weight[: layout.offset] *= 50  # text tokens dominate the logits everywhere
    prompt = layout.prompt(torch.tensor([[1, 5, 2], [1, 9, 2]]))
    logits = model(prompt).logits[:, -1]
    assert (logits.argmax(-1) < layout.offset).all()  # unrestricted, the model would draw text here
    g = torch.Generator().manual_seed(0)
    codes = sample_image_codes(model, prompt, layout, temperature=1.0, generator=g)
    assert codes.shape == (2, 2, 2) and codes.min() >= 0 and codes.max() < 6
    greedy = sample_image_codes(model, prompt, layout, temperature=0.0)
    assert torch.equal(greedy, sample_image_codes(model, prompt, layout, temperature=0.0, use_cache=False))
