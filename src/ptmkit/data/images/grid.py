"""A grid of images as one PNG (Pillow): rows x columns of S x S RGB images on white, `pad` pixels between them and
around the edge. Text-to-image samples are written this way (one row per caption, one column per sample).

Dimension legend: R rows, C columns, S side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ptmkit import atomic


def image_grid(images: np.ndarray, pad: int = 2, background: int = 255) -> Image.Image:
    """(R, C, S, S, 3) uint8 -> an RGB image of C * (S + pad) + pad by R * (S + pad) + pad pixels."""
    images = np.asarray(images)
    if images.ndim != 5 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"image_grid needs (rows, columns, side, side, 3) uint8, got {images.shape} {images.dtype}")
    r, c, s, s2, _ = images.shape
    cells = np.pad(images, ((0, 0), (0, 0), (0, pad), (0, pad), (0, 0)), constant_values=background)  # pad below/right
    canvas = cells.transpose(0, 2, 1, 3, 4).reshape(r * (s + pad), c * (s2 + pad), 3)  # rows of cells side by side
    canvas = np.pad(canvas, ((pad, 0), (pad, 0), (0, 0)), constant_values=background)  # the top and left edge
    return Image.fromarray(canvas, mode="RGB")


def save_grid(images: np.ndarray, path: str | Path, pad: int = 2) -> Path:
    """Write image_grid(images) as a PNG at `path` (atomically: a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(path) as tmp:
        image_grid(images, pad).save(tmp, format="PNG")
    return path
