"""Image-text pairs ready to train on: records (records.py) with their images cached (cache.py) and their captions
tokenised once, split into training and held-out images by image id, served as batches of
{pixel_values (B, C, S, S), input_ids (B, T), attention_mask (B, T)}.

Captions longer than `seq_len` tokens are cut to seq_len, keeping their last token (the end-of-text token whose
state is CLIP's text vector), and counted: a warning says how many and shows the first, with the fix (a longer
data.seq_len, up to the text tower's max_position_embeddings). CLIP did the same (Radford et al. 2021 caps captions
at 76 tokens + end-of-text).

Dimension legend: N images, M captions, B batch, T caption tokens, S side, C channels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ptmkit.config import ConfigError, check_positive
from ptmkit.data.images.augment import CLIP_MEAN, CLIP_STD, random_resized_crop, to_float
from ptmkit.data.images.cache import ImageCache, image_cache
from ptmkit.data.images.records import ImageTextRecord, ImageTextSource, held_out, read_records
from ptmkit.data.batches import SeededBatches

SPLITS = ("train", "held_out", "all")


@dataclass
class ImagesConfig:
    """Image-text pre-training data (clip, vlp, vqvae, text-to-image): used instead of data.train's token shards
    when `train` names sources."""

    train: list[ImageTextSource] = field(default_factory=list)  # [{path, captions, image_field, id_field, ...}]
    image_size: int = 224  # side of the square images the vision tower reads (= its config's image_size)
    held_out: float = 0.1  # fraction of images (by a hash of their id) never trained on: the evaluation split
    split_seed: int = 0  # salt of that hash: another seed, another split
    cache_dir: str = "runs/cache/images"  # decoded images are cached here, one folder per source and preprocessing
    crop_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])  # random-resized-crop area range; [1, 1] = off
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])  # its aspect range (width / height)
    flip: float = 0.0  # horizontal-flip probability; 0: mirrored emoji, arrows and text change meaning
    mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))  # per-channel normalisation (OpenAI CLIP's)
    std: list[float] = field(default_factory=lambda: list(CLIP_STD))  # per-channel scale after the mean
    max_bad_fraction: float = 0.05  # more unreadable images than this in a source is an error, not a warning
    vocab_size: int = 4096  # WordPiece tokenizer trained on the training captions when data.tokenizer is empty
    tokenizer: str = ""  # text-to-image: the image tokenizer (a VQ-VAE model directory) whose codes the model learns

    def __post_init__(self) -> None:
        check_positive("images", image_size=self.image_size, vocab_size=self.vocab_size)
        if not 0.0 <= self.held_out < 1.0:
            raise ConfigError(f"images.held_out must be in [0, 1), got {self.held_out}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ConfigError(f"images.crop_scale must be [low, high] with 0 < low <= high <= 1, got {self.crop_scale}")
        if len(self.crop_ratio) != 2 or not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ConfigError(f"images.crop_ratio must be [low, high] with 0 < low <= high, got {self.crop_ratio}")
        if not 0.0 <= self.flip <= 1.0:
            raise ConfigError(f"images.flip is a probability in [0, 1], got {self.flip}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("images.mean and images.std need three values (R, G, B), std > 0")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError(f"images.max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")


@dataclass
class _Captions:
    """Tokenised captions of the kept images: caption j of image i is row offsets[i] + j of `ids`."""

    ids: np.ndarray  # (M, T) int64, right-padded
    lengths: np.ndarray  # (M,)
    offsets: np.ndarray  # (N + 1,)
    texts: list[str]


def tokenize_captions(tokenizer, texts: list[str], seq_len: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(M, seq_len) right-padded ids with the tokenizer's start and end tokens, (M,) lengths, and the indices of the
    texts that were cut: a caption longer than seq_len keeps its first seq_len - 1 tokens and its last token (the
    end-of-text token whose state is the text vector)."""
    if tokenizer.pad_id is None:
        raise ConfigError("the tokenizer has no padding token; captions of different lengths are padded with it")
    encoded = tokenizer.encode_batch(list(texts), add_special_tokens=True)
    ids = np.full((len(texts), seq_len), tokenizer.pad_id, dtype=np.int64)
    lengths = np.zeros(len(texts), dtype=np.int64)
    cut = []
    for j, e in enumerate(encoded):
        if len(e) > seq_len:
            e = e[: seq_len - 1] + e[-1:]
            cut.append(j)
        ids[j, : len(e)] = e
        lengths[j] = len(e)
    return ids, lengths, cut


def padded(ids: np.ndarray, lengths: np.ndarray) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask (B, T) of tokenised rows, cut to the longest of them."""
    t = int(lengths.max())
    mask = (torch.arange(t)[None] < torch.from_numpy(lengths)[:, None]).long()
    return {"input_ids": torch.from_numpy(np.ascontiguousarray(ids[:, :t])), "attention_mask": mask}


class ImageTextDataset:
    """The kept images of `split` ("train", "held_out" or "all") of every source, their captions tokenised.

    `tokenizer` is a ptmkit Tokenizer whose encode() adds the text tower's start and end tokens; None reads the
    images alone (an image tokenizer such as the VQ-VAE trains on pixels only): batches then hold no captions."""

    def __init__(self, cfg: ImagesConfig, tokenizer, seq_len: int, split: str = "train"):
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
        if not cfg.train:
            raise ConfigError("images.train names no source: give at least one JSON-lines file of images and captions")
        self.cfg, self.split, self.seq_len = cfg, split, seq_len
        self.pad_id = tokenizer.pad_id if tokenizer is not None else None
        self.caches: list[ImageCache] = []
        self.records: list[ImageTextRecord] = []
        self.bad_lines: list[str] = []
        rows: list[tuple[int, int]] = []  # (cache, row) of each kept image
        for s, source in enumerate(cfg.train):
            records, report = read_records(source)
            self.bad_lines += report.bad_lines
            cache = image_cache(records, cfg.image_size, cfg.cache_dir, name=f"{report.file.stem}-{cfg.image_size}px")
            if len(cache.bad) > cfg.max_bad_fraction * len(records):
                raise ValueError(f"{report.file}: {cache.report()}: more than images.max_bad_fraction "
                                 f"({cfg.max_bad_fraction:g}) of its {len(records)} images; fix or remove those lines")
            self.caches.append(cache)
            fraction = cfg.held_out if source.held_out is None else source.held_out
            for i, r in enumerate(records):
                out = held_out(r.id, fraction, cfg.split_seed)
                if cache.ok[i] and (split == "all" or out == (split == "held_out")):
                    rows.append((len(self.caches) - 1, i))
                    self.records.append(r)
        if not rows:
            raise ValueError(f"no {split} images: every image of {[str(s.path) for s in cfg.train]} is "
                             f"{'held out' if split == 'train' else 'in training'} or unreadable; check images.held_out")
        self.rows = np.asarray(rows, dtype=np.int64)  # (N, 2)
        self.truncated, self.first_truncated = 0, ""
        if tokenizer is None:
            self.captions = self.eval_captions = None
            return
        self.captions = self._tokenise(tokenizer, [r.captions for r in self.records])
        self.eval_captions = self._tokenise(tokenizer, [r.eval_captions for r in self.records])
        if self.truncated:
            warnings.warn(f"{self.truncated} caption(s) longer than data.seq_len = {seq_len} tokens were cut to "
                          f"{seq_len} (their end-of-text token kept); first: {self.first_truncated!r}. "
                          "Raise data.seq_len (up to the text tower's max_position_embeddings) to keep them whole",
                          stacklevel=2)

    def _tokenise(self, tokenizer, per_image: list[list[str]]) -> _Captions:
        texts = [c for caps in per_image for c in caps]
        ids, lengths, cut = tokenize_captions(tokenizer, texts, self.seq_len)
        self.truncated += len(cut)
        self.first_truncated = self.first_truncated or (texts[cut[0]] if cut else "")
        offsets = np.zeros(len(per_image) + 1, dtype=np.int64)
        np.cumsum([len(c) for c in per_image], out=offsets[1:])
        return _Captions(ids, lengths, offsets, texts)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def reused_cache(self) -> bool:
        return all(c.reused for c in self.caches)

    def field(self, name: str) -> list[Any]:
        """Each kept image's value of a JSON field (e.g. "category": zero-shot classification labels)."""
        missing = [r.line for r in self.records if name not in r.fields]
        if missing:
            raise ValueError(f"field {name!r} is missing on {len(missing)} line(s), first line {missing[0]}")
        return [r.fields[name] for r in self.records]

    # ---- pixels and tokens ---------------------------------------------------------------------------------------

    def images(self, indices: np.ndarray) -> torch.Tensor:
        """(B, S, S, C) uint8 of images `indices`, read from the memory-mapped caches."""
        idx = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(idx), self.cfg.image_size, self.cfg.image_size, 3), dtype=np.uint8)
        rows = self.rows[idx]  # (B, 2)
        for c in np.unique(rows[:, 0]):
            where = rows[:, 0] == c
            out[where] = self.caches[c].images[rows[where, 1]]
        return torch.from_numpy(out)

    def pixel_values(self, indices: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, C, S, S) normalised pixels; with a generator, augmented (random resized crop, flip) as configured."""
        x = to_float(self.images(indices), self.cfg.mean, self.cfg.std)
        if generator is not None:
            c = self.cfg
            x = random_resized_crop(x, tuple(c.crop_scale), tuple(c.crop_ratio), c.flip, generator)
        return x

    def tokens(self, caption_rows: np.ndarray, which: str = "train") -> dict[str, torch.Tensor]:
        """input_ids and attention_mask (B, T) of caption rows, padded to the longest of them."""
        caps = self.captions if which == "train" else self.eval_captions
        rows = np.asarray(caption_rows, dtype=np.int64)
        return padded(caps.ids[rows], caps.lengths[rows])

    def batch(self, indices: np.ndarray, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A training batch: each image augmented, with one of its captions drawn at random (images alone when the
        dataset has no tokenizer)."""
        idx = np.asarray(indices, dtype=np.int64)
        if self.captions is None:
            return {"pixel_values": self.pixel_values(idx, generator)}
        rows = self.caption_rows(idx, generator)  # drawn before the augmentation, as always: same batches as before
        return {"pixel_values": self.pixel_values(idx, generator), **self.tokens(rows)}

    def caption_rows(self, indices: np.ndarray, generator: torch.Generator) -> np.ndarray:
        """(B,) one training caption row of each image, drawn uniformly among its captions."""
        idx = np.asarray(indices, dtype=np.int64)
        offsets = self.captions.offsets
        count = torch.from_numpy(offsets[idx + 1] - offsets[idx])  # (B,) captions per image
        pick = (torch.rand(len(idx), generator=generator) * count).long().clamp_max(count - 1).numpy()
        return offsets[idx] + pick

    def eval_caption_owners(self) -> np.ndarray:
        """(M,) the image index of every evaluation caption (a retrieval query's right answer)."""
        return np.repeat(np.arange(len(self)), np.diff(self.eval_captions.offsets))


class ImageTextBatches(SeededBatches):
    """Training batches of `dataset` for `objective` (as PretrainBatches): the k-th batch's captions and augmentation
    are drawn from seeded_generator(seed, k), so a resumed run re-creates it."""

    def __init__(self, dataset: ImageTextDataset, batch_size: int, objective, seed: int = 0):
        if batch_size > len(dataset):
            raise ConfigError(f"data.batch_size {batch_size} exceeds the {len(dataset)} training images; lower "
                              "data.batch_size or add images")
        if batch_size < 2:
            raise ConfigError("data.batch_size must be at least 2: the other pairs of a batch are the negatives")
        super().__init__(len(dataset), batch_size, seed)
        self.dataset, self.objective = dataset, objective

    def make(self, indices, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.objective.corrupt(self.dataset.batch(indices, generator), generator)
