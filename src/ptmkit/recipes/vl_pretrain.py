"""The vision-language part of an image-text `ptm pretrain` run (recipes/image_text.py) for single- and two-stream
encoders (families visualbert, lxmert; objective vlp): the region codebook of masked region classification, fitted
once from the training images' cached pixels and kept in the run folder (codebook.safetensors), or loaded from
objective.params.codebook and checked against the model and the preprocessing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ptmkit.log import get
from ptmkit.nn.patches import patchify
from ptmkit.objectives.codebook import fit_codebook, load_codebook, save_codebook

log = get(__name__)

CODEBOOK_FILE = "codebook.safetensors"  # inside the run folder


def codebook_layout(cfg, model_config) -> dict:
    """What a codebook's centres assume: the patch grid and the pixel normalisation they were fitted under."""
    return {"patch_size": model_config.patch_size, "num_channels": model_config.num_channels,
            "mean": [float(x) for x in cfg.images.mean], "std": [float(x) for x in cfg.images.std]}


def sample_patches(dataset, samples: int, patch_size: int, seed: int) -> torch.Tensor:
    """(M, F) raw-pixel patches of `samples` patches drawn from the dataset's images (centre view, normalised as in
    training), read from the decoded-image cache a few hundred images at a time."""
    g = np.random.default_rng(seed)
    per_image = patchify(dataset.pixel_values(np.arange(1)), patch_size).shape[1]
    images = g.choice(len(dataset), size=min(len(dataset), -(-samples // per_image)), replace=False)
    out = [patchify(dataset.pixel_values(np.sort(images[i:i + 256])), patch_size).flatten(0, 1)
           for i in range(0, len(images), 256)]
    x = torch.cat(out)  # (images * N, F)
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:samples]]


def prepare_codebook(cfg, objective, model, train_set, resume: bool):
    """Put the region codebook into the model; returns a function writing it into the run folder (None when the run
    reuses a file). Order: objective.params.codebook when given; else the run folder's own on --resume; else fitted
    now from the training images (never the held-out ones) and recorded in the run config."""
    c = model.config
    layout = codebook_layout(cfg, c)
    given = objective.cfg.codebook
    own = Path(cfg.out) / CODEBOOK_FILE
    if given or (resume and own.is_file()):
        model.set_codebook(load_codebook(given or own, layout))  # a mismatch is refused here, naming the fix
        return None
    patches = sample_patches(train_set, objective.cfg.codebook_samples, c.patch_size, cfg.train.seed)
    codebook = fit_codebook(patches, c.num_visual_classes, seed=cfg.train.seed)
    model.set_codebook(codebook)
    log.info("region codebook: %d k-means codewords of %d-pixel patches, fitted on %d patches of the training images",
             c.num_visual_classes, c.patch_dim, len(patches))
    objective.cfg.codebook = str(own)
    cfg.objective.params["codebook"] = str(own)  # run_config.json records where it is kept

    def write(out: Path) -> None:
        save_codebook(out / CODEBOOK_FILE, codebook, layout)

    return write
