"""Zero-shot evaluation of an image-text dual encoder (`ptm zero-shot`): image<->text retrieval recall@1/5/10 over a
JSON-lines image-text set, zero-shot classification of the images by a label field with text prompts ("an emoji of
{}", averaged over templates: Radford et al. 2021 §3.1.4), and optionally the linear probe on the same image vectors
trained on the training split (§3.2), each with its chance level. Results go to OUT/results.json.

The split is the one pre-training used (images.held_out / images.split_seed, by image id): give the same values to
evaluate only images the model never saw.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ptmkit import atomic
from ptmkit.analysis.image_text import class_embeddings, image_embeddings, linear_probe, retrieval, zero_shot
from ptmkit.config import ConfigError
from ptmkit.data.images import ImagesConfig, ImageTextDataset, ImageTextSource
from ptmkit.data.images.augment import CLIP_MEAN, CLIP_STD
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.log import get
from ptmkit.models.io import load_model
from ptmkit.recipes.image_text import image_size_of, text_positions_of
from ptmkit.train.precision import Precision

log = get(__name__)


@dataclass
class ZeroShotConfig:
    model: str = ""  # a CLIP, visualbert or lxmert model directory (config.json, model.safetensors, tokenizer)
    source: ImageTextSource | None = None  # the images and their captions (required)
    classes: str | None = None  # JSON field holding each image's class (e.g. category); None = no classification
    templates: list[str] = field(default_factory=lambda: ["{}"])  # prompts, "{}" = the class name
    split: str = "held_out"  # held_out | train | all (the pre-training split, by image id)
    held_out: float = 0.1
    split_seed: int = 0
    probe: bool = False  # also train a linear probe on the training split's image vectors
    cache_dir: str = "runs/cache/images"
    batch_size: int = 256
    max_images: int | None = None  # score only the first images (a pairwise model runs N x M forward passes)
    device: str = "cpu"
    precision: str = "auto"  # bf16 where the device computes it natively, else fp32 (nn/autocast.py)
    out: str | None = None  # folder for results.json; None = not written

    def __post_init__(self) -> None:
        if self.source is None:
            raise ConfigError("zero-shot evaluation needs its images: source, a JSON-lines file of images and captions")
        if self.split not in ("held_out", "train", "all"):
            raise ConfigError(f"split must be held_out, train or all, got {self.split!r}")
        bad = [t for t in self.templates if "{}" not in t]
        if not self.templates or bad:
            raise ConfigError(f"every prompt template needs a '{{}}' for the class name; got {bad or self.templates}")
        if self.probe and (self.classes is None or self.split == "train"):
            raise ConfigError("the linear probe needs --classes and trains on the training split: evaluate "
                              "--split held_out (or all) with it")


def _preprocessing(model_dir: Path) -> tuple[list[float], list[float]]:
    """The image mean and std the model was trained with (its preprocessor_config.json), else CLIP's."""
    path = model_dir / "preprocessor_config.json"
    if path.is_file():
        p = json.loads(path.read_text())
        return list(p.get("image_mean", CLIP_MEAN)), list(p.get("image_std", CLIP_STD))
    return list(CLIP_MEAN), list(CLIP_STD)


def evaluate_zero_shot(cfg: ZeroShotConfig) -> dict[str, Any]:
    model_dir = Path(cfg.model)
    model = load_model(model_dir).eval()
    pairwise = hasattr(model, "match_score")  # single-/two-stream encoders score each pair jointly (UNITER §4)
    if not hasattr(model, "encode_image") and not pairwise:
        raise ConfigError(f"{model_dir} is a {type(model).__name__}; zero-shot evaluation needs an image-text model "
                          "(a CLIP, visualbert or lxmert model directory)")
    if pairwise and cfg.classes is not None:
        raise ConfigError(f"{model_dir} scores image-caption pairs jointly (image-text matching), so it has no image "
                          "vector for prompt classification or a linear probe: drop --classes/--probe (retrieval "
                          "works), or evaluate a CLIP model")
    tokenizer = Tokenizer.load(model_dir)
    c = model.config
    mean, std = _preprocessing(model_dir)
    images = ImagesConfig(train=[cfg.source], image_size=image_size_of(c), held_out=cfg.held_out,
                          split_seed=cfg.split_seed, cache_dir=cfg.cache_dir, mean=mean, std=std,
                          max_bad_fraction=1.0)
    device = torch.device(cfg.device)
    model.to(device)
    autocast = Precision(cfg.precision, device).autocast
    seq_len = text_positions_of(c)
    data = ImageTextDataset(images, tokenizer, seq_len, split=cfg.split)
    result: dict[str, Any] = {"model": str(model_dir), "data": str(cfg.source.path), "split": cfg.split,
                              "retrieval": retrieval(model, data, device, batch_size=cfg.batch_size, autocast=autocast,
                                                     max_images=cfg.max_images)}
    if cfg.classes is not None:
        every = ImageTextDataset(images, tokenizer, seq_len, split="all") if cfg.split != "all" else data
        names = sorted({str(v) for v in every.field(cfg.classes)})  # every class of the set, seen in training or not
        index = {n: i for i, n in enumerate(names)}
        labels = [index[str(v)] for v in data.field(cfg.classes)]
        vectors = image_embeddings(model, data, cfg.batch_size, device, autocast)
        classes = class_embeddings(model, tokenizer, names, cfg.templates, seq_len, device, autocast)
        result["zero_shot"] = {"field": cfg.classes, "templates": cfg.templates, "class_names": names,
                               **zero_shot(vectors, classes, labels)}
        if cfg.probe:
            train = ImageTextDataset(images, tokenizer, seq_len, split="train")
            train_labels = [index[str(v)] for v in train.field(cfg.classes)]
            train_vectors = image_embeddings(model, train, cfg.batch_size, device, autocast)
            result["linear_probe"] = {"accuracy": linear_probe(train_vectors, train_labels, vectors, labels,
                                                               len(names)), "train_images": len(train)}
    result["config"] = asdict(cfg)
    if cfg.out:
        atomic.write_text(Path(cfg.out) / "results.json", json.dumps(result, indent=2) + "\n")
    return result
