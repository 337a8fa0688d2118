"""The image-text branch of `ptm pretrain` (CLIP, Radford et al. 2021; single- and two-stream vision-language
encoders, objective vlp): what the run trains on when its `images` section names sources. It builds what
recipes/pretrain.py builds for text, from image-text pairs instead of token shards: the tokenizer (data.tokenizer, or
a WordPiece tokenizer trained on the training captions only and kept in the run folder), the model (and for vlp the
region codebook, recipes/vl_pretrain.py), the training batches (augmented images, one caption each), and an evaluator
on the held-out images (the objective's loss and recall@1/5/10 both ways, beside chance). The loop is the one
engine's.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptmkit.analysis.image_text import KS, retrieval
from ptmkit.config import ConfigError
from ptmkit.data.images import ImagesConfig, ImageTextBatches, ImageTextDataset, held_out, read_records
from ptmkit.data.seeding import seeded_generator
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.log import get
from ptmkit.models.clip import LEGACY_EOS_ID
from ptmkit.models.registry import backbone_of
from ptmkit.objectives import OBJECTIVES
from ptmkit.train.precision import Precision

log = get(__name__)

TOKENIZER_DIR = "tokenizer"  # inside the run folder, when the run trains its own


def reads_images(objective_name: str) -> bool:
    """Does this objective train on images (its `inputs` name pixel_values)?"""
    entry = OBJECTIVES.get(objective_name)
    return entry is not None and "pixel_values" in getattr(entry[1], "inputs", ())


def check_sections(cfg) -> None:
    """images.train and an image objective go together; say which half is missing."""
    if cfg.images.train and not reads_images(cfg.objective.name):
        raise ConfigError(f"images.train is set but objective {cfg.objective.name!r} reads token windows; use "
                          "objective clip (a dual encoder) or vlp (visualbert, lxmert) for image-text pairs (or "
                          "drop images.train)")
    if reads_images(cfg.objective.name) and not cfg.images.train:
        raise ConfigError(f"objective {cfg.objective.name!r} trains on image-text pairs: set images.train to "
                          "JSON-lines sources of images and captions (see configs/clip-emoji.yaml)")
    if cfg.data.train:
        raise ConfigError("images.train replaces data.train's token shards in an image-text run: leave data.train "
                          "empty")


def caption_tokenizer(cfg, resume: bool) -> tuple[Tokenizer, bool]:
    """(tokenizer, whether the run must save it): data.tokenizer when given; else the run folder's own on --resume;
    else a WordPiece tokenizer of images.vocab_size ids trained on the captions of the training images only."""
    if cfg.data.tokenizer:
        return Tokenizer.load(cfg.data.tokenizer), False
    own = Path(cfg.out) / TOKENIZER_DIR
    if resume and own.is_dir():
        return Tokenizer.load(own), False
    texts = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bad lines are reported once, when the dataset reads them
        for source in cfg.images.train:
            records, _ = read_records(source)
            fraction = cfg.images.held_out if source.held_out is None else source.held_out
            texts += [c for r in records if not held_out(r.id, fraction, cfg.images.split_seed) for c in r.captions]
    return Tokenizer.train(texts, "wordpiece", cfg.images.vocab_size, min_frequency=1), True


def check_tokenizer(tokenizer: Tokenizer) -> None:
    if tokenizer.eos_id is None or tokenizer.pad_id is None:
        raise ConfigError(f"{tokenizer!r}: CLIP's text tower needs an end-of-text (eos or sep) and a padding token")
    if tokenizer.eos_id == LEGACY_EOS_ID:
        raise ConfigError(f"the tokenizer's end-of-text token has id {LEGACY_EOS_ID}, which transformers' CLIP reads as "
                          "'pool the highest id' (configs from before its PR #24773): the exported model would pool the "
                          "wrong token there; use a tokenizer whose eos id is not 2 (e.g. WordPiece: [SEP] = 3)")


def image_size_of(c) -> int:
    """The image side a model reads: a dual encoder's vision tower's, or a vision-language encoder's own."""
    return c.vision.image_size if hasattr(c, "vision") else c.image_size


def text_positions_of(c) -> int:
    """The longest caption a model reads, in tokens."""
    return c.text.max_position_embeddings if hasattr(c, "text") else c.max_position_embeddings


def check_model(cfg, model) -> None:
    c = backbone_of(model).config
    nested = hasattr(c, "vision")  # a dual encoder's settings live in its towers' sections
    if not nested and not hasattr(c, "image_size"):
        raise ConfigError(f"an image-text run trains a model that reads images (families clip, visualbert, lxmert), "
                          f"not {cfg.model.family}")
    key = "vision.image_size" if nested else "image_size"
    if image_size_of(c) != cfg.images.image_size:
        raise ConfigError(f"images.image_size {cfg.images.image_size} differs from the "
                          f"{'vision tower' if nested else 'model'}'s image_size "
                          f"{image_size_of(c)}: set both to the same side (model.config.{key})")
    key = "text.max_position_embeddings" if nested else "max_position_embeddings"
    if cfg.data.seq_len > text_positions_of(c):
        raise ConfigError(f"data.seq_len {cfg.data.seq_len} exceeds the text side's max_position_embeddings "
                          f"{text_positions_of(c)}; lower data.seq_len or raise model.config.{key}")


# A model that scores pairs jointly (single-/two-stream) runs N x M forward passes per retrieval: during training its
# held-out recall is taken on the first images only (64 x 64 pairs); ptm zero-shot scores every held-out image.
PAIRWISE_EVAL_IMAGES = 64


def contrastive_evaluator(dataset: ImageTextDataset, objective, batch_size: int, autocast, device, seed: int = 0):
    """Held-out metrics: the objective's loss over fixed batches (each image with its first evaluation caption, no
    augmentation, corrupted with fixed seeds) and recall@1/5/10 image->text and text->image over the held-out images,
    with chance R@1."""
    first = dataset.eval_captions.offsets[:-1]
    starts = list(range(0, len(dataset), batch_size))
    if len(dataset) - starts[-1] < 2 and len(starts) > 1:
        starts.pop()  # a batch of one image has no negative: fold it into the one before
    bounds = list(zip(starts, starts[1:] + [len(dataset)]))

    @torch.no_grad()
    def evaluate(module) -> dict[str, float]:
        model = module.model
        model.eval()
        total = 0.0
        for lo, hi in bounds:
            idx = np.arange(lo, hi)
            batch = {"pixel_values": dataset.pixel_values(idx), **dataset.tokens(first[idx], which="eval")}
            batch = objective.corrupt(batch, seeded_generator(seed, lo))  # the same masks at every evaluation
            with autocast():
                loss, _ = objective.loss(model, {k: v.to(device) for k, v in batch.items()})
            total += loss.item() * (hi - lo)
        cap = PAIRWISE_EVAL_IMAGES if hasattr(model, "match_score") else None  # a dual encoder scores them all
        r = retrieval(model, dataset, device, autocast=autocast, max_images=cap)
        out = {"loss": total / len(dataset)}
        for way, short in (("image_to_text", "i2t"), ("text_to_image", "t2i")):
            out.update({f"{short}_r{k}": r["recall"][way][k] for k in KS})
            out[f"{short}_r1_chance"] = r["chance"][way][1]
        return out

    return evaluate


def preprocessor_config(images: ImagesConfig) -> str:
    """transformers' CLIPImageProcessor settings for this preprocessing (preprocessor_config.json), so the saved
    model directory carries its image size and normalisation. One difference: ptmkit composites transparent pixels
    on white, transformers' convert_rgb drops the alpha channel."""
    s = images.image_size
    return json.dumps({"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": s},
                       "resample": 3, "do_center_crop": True, "crop_size": {"height": s, "width": s},
                       "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                       "image_mean": list(images.mean), "image_std": list(images.std), "do_convert_rgb": True},
                      indent=2) + "\n"


def build_run(cfg, state, resume: bool) -> dict[str, Any]:
    """Everything an image-text run trains on, checked before the run folder is touched: the pieces of
    recipes.pretrain._Run, plus the tokenizer to save first (if trained here) and the model directory's extra files."""
    from ptmkit.recipes.pretrain import build_pretrain_model, pretrain_task, run_objective

    check_sections(cfg)
    if state is not None:
        raise ConfigError("image-text pre-training runs in one process: with data parallelism each rank's contrastive "
                          "loss would see only its own slice of the batch as negatives (CLIP gathers the embeddings "
                          "of every rank first, which ptmkit does not do yet); launch it without torchrun")
    tokenizer, trained_here = caption_tokenizer(cfg, resume)
    if cfg.model.family == "clip":  # the end-of-text rule is CLIP's pooling (the vlp encoders pool [CLS])
        check_tokenizer(tokenizer)
    torch.manual_seed(cfg.train.seed)
    task = pretrain_task(OBJECTIVES[cfg.objective.name][1], cfg.model.family)
    objective = run_objective(cfg, tokenizer, task)
    model = build_pretrain_model(cfg.model, task, tokenizer)
    check_model(cfg, model)
    if hasattr(objective, "bind"):  # vlp reads the model's patch grid; its corruption draws one bit per patch
        objective.bind(model)
    train_set = ImageTextDataset(cfg.images, tokenizer, cfg.data.seq_len, split="train")
    write_codebook = None
    if hasattr(model, "set_codebook"):  # masked region classification's classes (recipes/vl_pretrain.py)
        from ptmkit.recipes.vl_pretrain import prepare_codebook

        write_codebook = prepare_codebook(cfg, objective, model, train_set, resume)
    batches = ImageTextBatches(train_set, cfg.data.batch_size, objective, seed=cfg.train.seed)
    evaluate = None
    if any((cfg.images.held_out if s.held_out is None else s.held_out) > 0 for s in cfg.images.train):
        held = ImageTextDataset(cfg.images, tokenizer, cfg.data.seq_len, split="held_out")
        device = torch.device(cfg.train.device)
        evaluate = contrastive_evaluator(held, objective, cfg.data.batch_size,
                                         Precision(cfg.train.precision, device).autocast, device, cfg.train.seed)
        log.info("%d training and %d held-out images (split by image id, images.split_seed %d); image cache %s",
                 len(train_set), len(held), cfg.images.split_seed, "reused" if train_set.reused_cache else "built")
    if trained_here:
        cfg.data.tokenizer = str(Path(cfg.out) / TOKENIZER_DIR)  # run_config.json records where it is kept

    def save_tokenizer(out: Path) -> None:
        if trained_here:
            tokenizer.save(out / TOKENIZER_DIR)
        if write_codebook is not None:
            write_codebook(out)

    return dict(tokenizer=tokenizer, objective=objective, model=model, batches=batches, evaluate=evaluate,
                sequences=len(train_set), setup_out=save_tokenizer,
                model_files={"preprocessor_config.json": preprocessor_config(cfg.images)})
