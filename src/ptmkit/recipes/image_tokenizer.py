"""The image-tokenizer branch of `ptm pretrain`: a VQ-VAE (models/vqvae.py) trained on the images of the `images`
section with the vqvae objective, through the one engine (checkpoints, exact resume, metrics.jsonl, loss.png). It reads
pixels only (no captions, no text tokenizer) and is evaluated on the held-out images by reconstruction error: mean
squared error in [0, 1] pixel units and PSNR. The saved model directory (config.json + model.safetensors) carries the
codebook and the pixel normalisation; text-to-image runs read it as images.tokenizer (recipes/text_to_image.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ptmkit.config import ConfigError
from ptmkit.data.images import ImageTextBatches, ImageTextDataset
from ptmkit.log import get
from ptmkit.models import build_model, load_model, make_config
from ptmkit.models.registry import PRESETS, backbone_of
from ptmkit.objectives.vqvae import pixel_mse, psnr
from ptmkit.train.precision import Precision

log = get(__name__)

FAMILY = "vqvae"


def build_model_for(cfg, task: str):
    """A fresh VQ-VAE for the images section (its image_size and normalisation), or model.init_from's."""
    if cfg.model.init_from:
        model = load_model(cfg.model.init_from)
    else:
        if cfg.model.family != FAMILY:
            raise ConfigError(f"objective {cfg.objective.name} trains an image autoencoder: set model.family to "
                              f"{FAMILY} (got {cfg.model.family!r})")
        params = dict(PRESETS[cfg.model.preset][1]) if cfg.model.preset else {}
        params.update(cfg.model.config)
        for key, value in (("image_size", cfg.images.image_size), ("pixel_mean", list(cfg.images.mean)),
                           ("pixel_std", list(cfg.images.std))):
            if key in params and params[key] != value:
                raise ConfigError(f"model.config.{key} {params[key]} differs from the images section's "
                                  f"{value}: the model reads the pipeline's pixels; set images."
                                  f"{'image_size' if key == 'image_size' else key.split('_')[1]} instead")
            params[key] = value
        model = build_model(FAMILY, make_config(FAMILY, params), task)
    c = backbone_of(model).config
    if c.image_size != cfg.images.image_size or list(c.pixel_mean) != list(cfg.images.mean) \
            or list(c.pixel_std) != list(cfg.images.std):
        raise ConfigError(f"model.init_from {cfg.model.init_from} was trained on {c.image_size} px images normalised "
                          f"by mean {c.pixel_mean} / std {c.pixel_std}: set images.image_size, images.mean and "
                          "images.std to the same")
    return model


@torch.no_grad()
def reconstruction_error(model, dataset: ImageTextDataset, batch_size: int = 256, device="cpu",
                         autocast=None) -> dict[str, Any]:
    """Reconstruction of every image of `dataset` through the codes (encode, then decode): the mean squared error in
    [0, 1] pixel units over all pixels and channels, its PSNR, and the per-image errors (N,)."""
    was_training = model.training
    model.eval()
    per_image = []
    for lo in range(0, len(dataset), batch_size):
        idx = np.arange(lo, min(lo + batch_size, len(dataset)))
        x = dataset.pixel_values(idx).to(device)
        with autocast() if autocast is not None else torch.autocast(torch.device(device).type, enabled=False):
            recon = model.decode(model.encode(x))
        per_image.append(pixel_mse(recon, x, model.config.pixel_std).cpu())
    model.train(was_training)
    mse = torch.cat(per_image)
    return {"pixel_mse": mse.mean().item(), "psnr": psnr(mse.mean().item()), "per_image": mse, "images": len(mse)}


def reconstruction_evaluator(dataset: ImageTextDataset, objective, batch_size: int, autocast, device):
    """Held-out metrics: the objective's loss terms over fixed, un-augmented batches, and the reconstruction error."""
    starts = list(range(0, len(dataset), batch_size))

    @torch.no_grad()
    def evaluate(module) -> dict[str, float]:
        model = module.model
        model.eval()
        sums: dict[str, float] = {}
        for lo in starts:
            idx = np.arange(lo, min(lo + batch_size, len(dataset)))
            batch = {"pixel_values": dataset.pixel_values(idx).to(device)}
            with autocast():
                _, metrics = objective.loss(model, batch)
            for k in ("loss", "reconstruction", "commitment", "codebook_perplexity"):
                sums[k] = sums.get(k, 0.0) + metrics[k] * len(idx)
        out = {k: v / len(dataset) for k, v in sums.items()}
        r = reconstruction_error(model, dataset, batch_size, device, autocast)
        out.update(pixel_mse=r["pixel_mse"], psnr=r["psnr"])
        return out

    return evaluate


def build_run(cfg, state, resume: bool) -> dict[str, Any]:
    """The pieces of recipes.pretrain._Run for a VQ-VAE run, every check done before the run folder is touched."""
    from ptmkit.recipes.pretrain import build_objective, pretrain_task
    from ptmkit.objectives import OBJECTIVES

    if state is not None:
        raise ConfigError("an image-tokenizer (VQ-VAE) run trains in one process (its EMA codebook is updated from "
                          "each process's own batch); launch it without torchrun")
    if not cfg.images.train:
        raise ConfigError(f"objective {cfg.objective.name} trains on images: set images.train to JSON-lines sources "
                          "of images (see configs/vqvae-emoji.yaml)")
    if cfg.data.train:
        raise ConfigError("a VQ-VAE run reads images.train, not token shards: leave data.train empty")
    if cfg.distill.method is not None:
        raise ConfigError("distill: a VQ-VAE run has no distillation method; leave the distill section empty")
    torch.manual_seed(cfg.train.seed)
    task = pretrain_task(OBJECTIVES[cfg.objective.name][1], cfg.model.family)
    objective = build_objective(cfg.objective, None, 0)
    model = build_model_for(cfg, task)
    train_set = ImageTextDataset(cfg.images, None, 0, split="train")
    batches = ImageTextBatches(train_set, cfg.data.batch_size, objective, seed=cfg.train.seed)
    evaluate = None
    if any((cfg.images.held_out if s.held_out is None else s.held_out) > 0 for s in cfg.images.train):
        held = ImageTextDataset(cfg.images, None, 0, split="held_out")
        device = torch.device(cfg.train.device)
        evaluate = reconstruction_evaluator(held, objective, cfg.data.batch_size,
                                            Precision(cfg.train.precision, device).autocast, device)
        log.info("%d training and %d held-out images (split by image id, images.split_seed %d)", len(train_set),
                 len(held), cfg.images.split_seed)
    return dict(tokenizer=None, objective=objective, model=model, batches=batches, evaluate=evaluate,
                sequences=len(train_set), flops_per_token=0.0, peak=None, peak_source="")
