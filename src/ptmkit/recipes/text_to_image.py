"""Text-to-image generation (DALL·E, Ramesh et al. 2021; CogView, Ding et al. 2021) on the one engine, in two stages:

1. an image tokenizer: a VQ-VAE trained on the images (`ptm pretrain configs/vqvae-emoji.yaml`, recipes/
   image_tokenizer.py);
2. a causal Transformer (family gpt2 or llama, its vocabulary = the caption tokenizer's ids + begin-of-image + the
   codebook) trained with the text-to-image objective on [caption ; image codes] (`ptm pretrain
   configs/dalle-emoji.yaml`, `build_run` below). The codes of every image are computed once with the VQ-VAE named
   by images.tokenizer and cached beside the decoded images (data/images/codes.py).

The generator's model directory is an ordinary gpt2/llama directory (transformers loads it) plus text_to_image.json:
the token layout and the image tokenizer it was trained with (path and weights fingerprint). `generate_images`
samples codes for captions (models/generate_image.py) and decodes them with the VQ-VAE, after checking that the
VQ-VAE's codebook size and grid are the ones the generator learned (`ptm generate-image`, cli/generate_image.py).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptmkit.config import ConfigError
from ptmkit.data.images import ImageTextBatches, ImageTextDataset
from ptmkit.data.images.codes import CodedImages, code_cache
from ptmkit.data.images.dataset import tokenize_captions
from ptmkit.data.images.layout import ImageTokenLayout
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.log import get
from ptmkit.models import load_model
from ptmkit.models.generate_image import sample_image_codes
from ptmkit.models.registry import backbone_of, family
from ptmkit.objectives import OBJECTIVES
from ptmkit.train.precision import Precision

log = get(__name__)

LAYOUT_FILE = "text_to_image.json"  # in the generator's model directory


def image_token_run(cfg, state, resume: bool) -> dict[str, Any] | None:
    """The run pieces when cfg trains an image tokenizer (objective task image-reconstruction) or a text-to-image
    generator (an objective reading image_codes); None for every other run."""
    entry = OBJECTIVES.get(cfg.objective.name)
    if entry is None:
        return None
    if entry[1].task == "image-reconstruction":
        from ptmkit.recipes.image_tokenizer import build_run as tokenizer_run

        return tokenizer_run(cfg, state, resume)
    if "image_codes" in getattr(entry[1], "inputs", ()):
        return build_run(cfg, state, resume)
    return None


# ---- the image tokenizer, as the generator sees it -----------------------------------------------------------------


def fingerprint(model_dir: str | Path) -> str:
    """sha256 of the VQ-VAE's weights file: codes computed with other weights mean something else."""
    h = hashlib.sha256()
    with open(Path(model_dir) / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_image_tokenizer(path: str | Path):
    """(VQ-VAE in eval mode, its weights fingerprint) of a model directory; refuses anything that is not one."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"image tokenizer {path}: no model directory there (no config.json); train one with "
                                "`ptm pretrain configs/vqvae-emoji.yaml` (it writes runs/vqvae-emoji/model)")
    model = load_model(path).eval()
    if backbone_of(model).family != "vqvae":
        raise ConfigError(f"image tokenizer {path} is a {backbone_of(model).family} model, not a VQ-VAE (model family "
                          "vqvae); point it at the model directory of a VQ-VAE run")
    return model, fingerprint(path)


def check_image_tokenizer(layout: ImageTokenLayout, vq, where: str, recorded: str | None = None) -> None:
    """Refuse a VQ-VAE whose codebook size or code grid differs from the generator's layout, naming the fix."""
    c = vq.config
    if (c.codebook_size, c.grid_size) != (layout.codebook_size, layout.grid_size):
        hint = f"pass the VQ-VAE it was trained with ({recorded})" if recorded else "pass the VQ-VAE it was trained with"
        raise ConfigError(f"the image tokenizer has {c.codebook_size} codes on a {c.grid_size} x {c.grid_size} grid "
                          f"but the generator {where} was trained on {layout.codebook_size} codes on a "
                          f"{layout.grid_size} x {layout.grid_size} grid: {hint}, or train a generator on this "
                          "tokenizer (images.tokenizer in configs/dalle-emoji.yaml)")


# ---- training the generator ----------------------------------------------------------------------------------------


def _encoder(vq, device):
    @torch.no_grad()
    def encode(images: torch.Tensor) -> torch.Tensor:  # (B, S, S, 3) uint8 -> (B, G, G)
        return vq.encode(vq.normalise(images).to(device))

    return encode


def coded_dataset(cfg, tokenizer: Tokenizer, vq, vq_key: str, split: str) -> CodedImages:
    """The images of `split` with their cached codes and tokenised captions."""
    dataset = ImageTextDataset(cfg.images, tokenizer, cfg.data.seq_len, split=split)
    c = vq.config
    codes = [code_cache(cache, _encoder(vq, next(vq.parameters()).device), vq_key, c.grid_size, c.codebook_size)
             for cache in dataset.caches]
    return CodedImages(dataset, codes)


def _fill(section: dict, key: str, value, where: str, why: str) -> None:
    if key in section and section[key] != value:
        raise ConfigError(f"{where}.{key} is {section[key]!r} but {why} needs {value!r}: remove it (it is set for you)")
    section[key] = value


def lm_evaluator(dataset: CodedImages, objective, batch_size: int, autocast, device, seed: int):
    """Held-out metrics over fixed batches (each image with its first evaluation caption): the weighted loss, and the
    text and image cross-entropies per token (nats)."""
    g = torch.Generator().manual_seed(seed)
    batches = [objective.corrupt(dataset.eval_batch(np.arange(lo, min(lo + batch_size, len(dataset)))), g)
               for lo in range(0, len(dataset), batch_size)]

    @torch.no_grad()
    def evaluate(module) -> dict[str, float]:
        module.eval()
        sums: dict[str, float] = {}
        for b in batches:
            with autocast():
                _, m = objective.loss(module.model, {k: v.to(device) for k, v in b.items()})
            for k in ("loss", "text_loss", "image_loss"):
                sums[k] = sums.get(k, 0.0) + m[k] * len(b["input_ids"])
        return {k: v / len(dataset) for k, v in sums.items()}

    return evaluate


def build_run(cfg, state, resume: bool) -> dict[str, Any]:
    """The pieces of recipes.pretrain._Run for a text-to-image generator, every check before the folder is touched."""
    from ptmkit.recipes.image_text import TOKENIZER_DIR, caption_tokenizer
    from ptmkit.recipes.pretrain import _flops_per_token, build_pretrain_model, pretrain_task, run_objective

    if state is not None:
        raise ConfigError("text-to-image pre-training runs in one process here; launch it without torchrun")
    if not cfg.images.train:
        raise ConfigError(f"objective {cfg.objective.name} trains on image-text pairs: set images.train (see "
                          "configs/dalle-emoji.yaml)")
    if not cfg.images.tokenizer:
        raise ConfigError(f"objective {cfg.objective.name} learns image codes: set images.tokenizer to a trained "
                          "VQ-VAE model directory (`ptm pretrain configs/vqvae-emoji.yaml` writes "
                          "runs/vqvae-emoji/model)")
    if cfg.data.train:
        raise ConfigError("images.train replaces data.train's token shards in a text-to-image run: leave data.train "
                          "empty")
    vq, vq_key = load_image_tokenizer(cfg.images.tokenizer)
    if vq.config.image_size != cfg.images.image_size:
        raise ConfigError(f"images.image_size {cfg.images.image_size} differs from the image tokenizer's "
                          f"{vq.config.image_size}: set images.image_size to {vq.config.image_size}")
    tokenizer, trained_here = caption_tokenizer(cfg, resume)
    if tokenizer.pad_id is None:
        raise ConfigError(f"{tokenizer!r} has no padding token: the text is padded to data.seq_len with it")
    torch.manual_seed(cfg.train.seed)
    layout = ImageTokenLayout(tokenizer.vocab_size, cfg.data.seq_len, vq.config.codebook_size, vq.config.grid_size)
    # what the objective and the model must agree on, recorded in run_config.json (export_checkpoint rebuilds them)
    cfg.objective.params = dict(cfg.objective.params)
    _fill(cfg.objective.params, "codebook_size", layout.codebook_size, "objective.params", "images.tokenizer")
    cfg.model.config = dict(cfg.model.config)
    _fill(cfg.model.config, "vocab_size", layout.vocab_size, "model.config",
          f"the layout (text {layout.text_vocab} + begin-of-image + {layout.codebook_size} codes)")
    fields = family(cfg.model.family).config.__dataclass_fields__
    for key, value in (("bos_token_id", tokenizer.bos_id), ("eos_token_id", tokenizer.eos_id)):
        if key in fields and value is not None:  # the caption tokenizer's, not the family default (GPT-2's 50256)
            cfg.model.config.setdefault(key, value)
    task = pretrain_task(OBJECTIVES[cfg.objective.name][1], cfg.model.family)
    objective = run_objective(cfg, tokenizer, task)
    model = build_pretrain_model(cfg.model, task, tokenizer)
    bcfg = backbone_of(model).config
    if getattr(bcfg, "max_position_embeddings", layout.seq_len) < layout.seq_len:
        raise ConfigError(f"the sequence [text {layout.text_len} ; begin-of-image ; {layout.image_tokens} codes] has "
                          f"{layout.seq_len} tokens but the model has {bcfg.max_position_embeddings} positions: set "
                          f"model.config.max_position_embeddings >= {layout.seq_len} (or lower data.seq_len)")
    train_set = coded_dataset(cfg, tokenizer, vq, vq_key, "train")
    batches = ImageTextBatches(train_set, cfg.data.batch_size, objective, seed=cfg.train.seed)
    evaluate = None
    if any((cfg.images.held_out if s.held_out is None else s.held_out) > 0 for s in cfg.images.train):
        held = coded_dataset(cfg, tokenizer, vq, vq_key, "held_out")
        device = torch.device(cfg.train.device)
        evaluate = lm_evaluator(held, objective, cfg.data.batch_size, Precision(cfg.train.precision, device).autocast,
                                device, cfg.train.seed)
        log.info("%d training and %d held-out images as %d x %d codes of %d; sequences of %d tokens", len(train_set),
                 len(held), layout.grid_size, layout.grid_size, layout.codebook_size, layout.seq_len)
    if trained_here:
        cfg.data.tokenizer = str(Path(cfg.out) / TOKENIZER_DIR)

    def save_tokenizer(out: Path) -> None:
        if trained_here:
            tokenizer.save(out / TOKENIZER_DIR)

    record = layout.to_json(image_tokenizer=str(Path(cfg.images.tokenizer).resolve()),
                            image_tokenizer_fingerprint=vq_key, image_size=vq.config.image_size)
    return dict(tokenizer=tokenizer, objective=objective, model=model, batches=batches, evaluate=evaluate,
                sequences=len(train_set), setup_out=save_tokenizer, model_files={LAYOUT_FILE: record},
                flops_per_token=_flops_per_token(model, layout.seq_len), peak=None, peak_source="")


# ---- generating -----------------------------------------------------------------------------------------------------


@dataclass
class Generator:
    model: Any  # the causal LM (gpt2 / llama, causal-lm head)
    layout: ImageTokenLayout
    tokenizer: Tokenizer  # the caption tokenizer
    vq: Any  # the VQ-VAE that decodes the codes
    directory: Path


def load_generator(model_dir: str | Path, image_tokenizer: str | Path | None = None) -> Generator:
    """A generator model directory with its caption tokenizer and its image tokenizer: `image_tokenizer`, or the one
    text_to_image.json records. A tokenizer whose codebook or grid differs is refused; one of the same shape with
    other weights is warned about (its codes mean something else)."""
    from ptmkit.models import CausalLM

    d = Path(model_dir)
    if not (d / LAYOUT_FILE).is_file():
        raise FileNotFoundError(f"{d} has no {LAYOUT_FILE}: it is not a text-to-image generator; train one with "
                                "`ptm pretrain configs/dalle-emoji.yaml` (its model directory is runs/dalle-emoji/model)")
    record = json.loads((d / LAYOUT_FILE).read_text())
    layout = ImageTokenLayout.from_dict(record)
    model = load_model(d).eval()
    if not isinstance(model, CausalLM):
        raise ConfigError(f"{d} is a {getattr(model, 'task', 'base')} model; a text-to-image generator is a causal LM")
    tokenizer = Tokenizer.load(d)
    if tokenizer.vocab_size != layout.text_vocab:
        raise ConfigError(f"{d}: the caption tokenizer has {tokenizer.vocab_size} ids but {LAYOUT_FILE} says the text "
                          f"vocabulary has {layout.text_vocab}: the directory mixes files of different runs")
    recorded = record.get("image_tokenizer")
    vq, key = load_image_tokenizer(image_tokenizer or recorded)
    check_image_tokenizer(layout, vq, str(d), recorded)
    if key != record.get("image_tokenizer_fingerprint"):
        warnings.warn(f"the image tokenizer {image_tokenizer or recorded} has the generator's codebook size and grid "
                      f"but other weights than the one it was trained with ({recorded}): its codes mean something "
                      "else, so the images will not show what the generator learned", stacklevel=2)
    return Generator(model, layout, tokenizer, vq, d)


@torch.no_grad()
def generate_images(gen: Generator, captions: list[str], samples: int = 1, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0, seed: int = 0, batch_size: int = 64, use_cache: bool = True) -> np.ndarray:
    """(len(captions), samples, S, S, 3) uint8: `samples` images per caption, sampled in batches of `batch_size`
    sequences and decoded by the VQ-VAE. Seeded: the same call draws the same images."""
    if not captions:
        raise ValueError("give at least one caption to draw")
    if samples < 1 or batch_size < 1:
        raise ValueError(f"samples and batch_size must be >= 1, got {samples} and {batch_size}")
    ids, _, cut = tokenize_captions(gen.tokenizer, captions, gen.layout.text_len)
    if cut:
        warnings.warn(f"{len(cut)} caption(s) longer than the generator's {gen.layout.text_len} text positions were "
                      f"cut (first: {captions[cut[0]]!r})", stacklevel=2)
    prompts = gen.layout.prompt(torch.from_numpy(ids)).repeat_interleave(samples, 0)  # (C * samples, L + 1)
    g = torch.Generator().manual_seed(seed)
    pixels = []
    for lo in range(0, len(prompts), batch_size):
        codes = sample_image_codes(gen.model, prompts[lo: lo + batch_size], gen.layout, temperature, top_k, top_p, g,
                                   use_cache)  # (b, G, G)
        pixels.append(gen.vq.to_pixels(gen.vq.decode(codes)))  # (b, S, S, 3)
    s = gen.vq.config.image_size
    return torch.cat(pixels).view(len(captions), samples, s, s, 3).numpy()
