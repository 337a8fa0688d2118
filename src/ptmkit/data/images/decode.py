"""Decoding one image file with Pillow into the (S, S, 3) uint8 RGB array the models read: every mode converted to
RGB (transparency composited on white, so an RGBA emoji keeps its look instead of turning its clear background
black; greyscale, 16-bit greyscale and palette images expanded), the shorter side resized to S with bicubic
filtering (the filter CLIP's preprocessing uses) and the centre S x S kept.

A file that is missing, not an image, truncated or otherwise undecodable raises ImageError naming it and why; the
cache (cache.py) records such files and leaves them out, reported.

Dimension legend: S output side.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

BACKGROUND = (255, 255, 255)  # what transparent pixels become: white, the page emoji are drawn on
RESAMPLE = "bicubic"  # recorded in the cache fingerprint


class ImageError(ValueError):
    """An image file that cannot be decoded: `path` and `reason` say which and why."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Alpha (RGBA, LA, PA, palette or RGB with a transparent colour) is composited on
    BACKGROUND; 16-bit greyscale is scaled to 8 bits (Pillow's own conversion would clip it to white)."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        grey = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)  # 0..65535 -> 0..255
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, I, F ...


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Shorter side -> `size` (bicubic), then the centre size x size square."""
    w, h = image.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return image


def decode_image(path: str | Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8 RGB of the image at `path`; ImageError if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "missing (no such file)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is a bad file, not a warning
            with Image.open(path) as image:
                image.load()  # decodes now: a truncated file raises here, not later mid-run
                out = resize_center_crop(to_rgb(image), size)
                return np.asarray(out, dtype=np.uint8).copy()
    except UnidentifiedImageError:
        raise ImageError(path, "not an image Pillow can read (unknown format or not an image file)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        what = "truncated" if "truncated" in detail.lower() else "unreadable"
        raise ImageError(path, f"{what} ({type(e).__name__}: {detail})") from None
