"""Discrete image codes computed once, like the decoded-image cache (cache.py) they are computed from: a text-to-image
run (DALL·E) reads each image as the VQ-VAE's (G, G) grid of codes, and encoding every image at every step would cost
more than the Transformer step itself. The codes of one image cache under one image tokenizer are stored beside that
cache, in a folder named after both fingerprints, built under a temporary name and renamed whole (ptmkit.atomic).

    meta.json   format, version, the image cache and tokenizer fingerprints, count, grid, codebook size, timing
    codes.npy   (N, G, G) int32 in the image cache's row order; rows of images the cache could not decode are -1

`CodedImages` serves a dataset's images as (caption ids, codes) pairs for ImageTextBatches: fixed-width caption ids
(the layout pads text to data.seq_len, data/images/layout.py) and no pixels.

Dimension legend: N images, G grid side, B batch, L caption positions.
"""

from __future__ import annotations

import json
import time
from typing import Callable

import numpy as np
import torch

from ptmkit import atomic
from ptmkit.data.images.cache import ImageCache

FORMAT = "ptmkit-image-codes"
VERSION = 1


def code_cache(cache: ImageCache, encode: Callable[[torch.Tensor], torch.Tensor], tokenizer_key: str, grid: int,
               codebook_size: int, batch_size: int = 256) -> np.ndarray:
    """(N, G, G) int32 codes of every row of `cache` under the image tokenizer `encode` ((B, S, S, 3) uint8 ->
    (B, G, G) codes) whose weights have fingerprint `tokenizer_key`: reused when computed before, else computed."""
    image_key = cache.directory.name.rsplit("-", 1)[-1]
    directory = cache.directory.parent / f"{cache.directory.name}-codes-{tokenizer_key[:16]}"
    meta_path = directory / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if (meta.get("format"), meta.get("version"), meta.get("tokenizer"), meta.get("grid"), meta.get("count")) != \
                (FORMAT, VERSION, tokenizer_key, grid, len(cache.images)):
            raise ValueError(f"{meta_path} does not describe these images and this image tokenizer; delete "
                             f"{directory} and the next run recomputes it")
        return np.load(directory / "codes.npy", mmap_mode="r")
    t0 = time.perf_counter()
    codes = np.full((len(cache.images), grid, grid), -1, dtype=np.int32)
    rows = np.flatnonzero(cache.ok)
    for lo in range(0, len(rows), batch_size):
        part = rows[lo: lo + batch_size]
        codes[part] = encode(torch.from_numpy(np.ascontiguousarray(cache.images[part]))).cpu().numpy()
    if len(rows) and (codes[rows].min() < 0 or codes[rows].max() >= codebook_size):
        raise ValueError(f"the image tokenizer returned codes outside 0..{codebook_size - 1}")
    with atomic.atomic_dir(directory) as tmp:
        np.save(tmp / "codes.npy", codes)
        (tmp / "meta.json").write_text(json.dumps({
            "format": FORMAT, "version": VERSION, "images": image_key, "tokenizer": tokenizer_key, "grid": grid,
            "codebook_size": codebook_size, "count": len(codes), "build_s": round(time.perf_counter() - t0, 3)},
            indent=1) + "\n")
    return codes


class CodedImages:
    """The images of an ImageTextDataset as (caption, codes) pairs; `codes[c]` holds cache c's codes (code_cache)."""

    def __init__(self, dataset, codes: list[np.ndarray]):
        if dataset.captions is None:
            raise ValueError("CodedImages pairs codes with captions: build the dataset with a tokenizer")
        self.dataset, self.codes = dataset, codes

    def __len__(self) -> int:
        return len(self.dataset)

    def image_codes(self, indices: np.ndarray) -> torch.Tensor:
        """(B, G, G) int64 codes of images `indices`."""
        rows = self.dataset.rows[np.asarray(indices, dtype=np.int64)]  # (B, 2): (cache, row)
        return torch.from_numpy(np.stack([self.codes[c][r] for c, r in rows])).long()

    def _pair(self, indices: np.ndarray, caption_rows: np.ndarray, which: str) -> dict[str, torch.Tensor]:
        caps = self.dataset.captions if which == "train" else self.dataset.eval_captions
        ids = torch.from_numpy(np.ascontiguousarray(caps.ids[caption_rows]))  # (B, L): already padded to seq_len
        mask = (torch.arange(ids.shape[1])[None] < torch.from_numpy(caps.lengths[caption_rows])[:, None]).long()
        return {"input_ids": ids, "attention_mask": mask, "image_codes": self.image_codes(indices)}

    def batch(self, indices: np.ndarray, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Each image's codes with one of its training captions, drawn at random (ImageTextBatches calls this)."""
        return self._pair(indices, self.dataset.caption_rows(indices, generator), "train")

    def eval_batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """Each image's codes with its first evaluation caption: fixed held-out batches."""
        idx = np.asarray(indices, dtype=np.int64)
        return self._pair(idx, self.dataset.eval_captions.offsets[idx], "eval")
