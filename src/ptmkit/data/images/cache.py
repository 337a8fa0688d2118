"""Decoded images cached once, like token shards: every image of a source decoded and preprocessed (decode.py) into
one memory-mapped (N, S, S, 3) uint8 array, so training reads pixels instead of decoding JPEG/PNG files at every step.

A cache is a directory named after the source and a fingerprint of what decides its bytes: the format version, the
preprocessing (side, resampling filter, background) and every image file's path, size and modification time. Change
any of them (a new image size, an edited file) and a new cache is built beside the old one; the same data and
preprocessing reuse it. Built under a temporary name and renamed whole (ptmkit.atomic), so a killed build leaves no
half-written cache.

    meta.json     format, version, fingerprint, preprocessing, per-row file, bad images (file, line, reason), timing
    images.u8     raw uint8, N x S x S x 3, rows in the source's line order (a bad image's row stays zero)

Images that cannot be decoded are recorded with their file and reason in meta.json, reported (a warning naming them)
every time the cache is used, and left out of the dataset: never silently skipped, never an error mid-run.

Dimension legend: N images, S side.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptmkit import atomic
from ptmkit.data.images.decode import BACKGROUND, RESAMPLE, ImageError, decode_image
from ptmkit.data.images.records import ImageTextRecord

FORMAT = "ptmkit-image-cache"
VERSION = 1
META = "meta.json"
DATA = "images.u8"


def fingerprint(records: list[ImageTextRecord], image_size: int) -> str:
    """sha256 of the preprocessing and of every image file's (path, size, mtime): what the cached bytes depend on."""
    files = []
    for r in records:
        try:
            st = r.image.stat()
            files.append([str(r.image), st.st_size, st.st_mtime_ns])
        except OSError:
            files.append([str(r.image), None, None])  # missing now; a cache built once it exists is another one
    spec = {"format": FORMAT, "version": VERSION, "image_size": image_size, "resample": RESAMPLE,
            "background": list(BACKGROUND), "files": files}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


@dataclass
class ImageCache:
    directory: Path
    images: np.ndarray  # (N, S, S, 3) uint8, memory-mapped read-only
    ok: np.ndarray  # (N,) bool: the row holds a decoded image
    bad: list[dict]  # {"file", "line", "reason"} of every image left out
    reused: bool  # True when an existing cache was read, False when this call built it
    build_s: float  # seconds the build took (0 when reused)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def report(self) -> str:
        if not self.bad:
            return "no bad images"
        shown = "; ".join(f"{b['file']} (line {b['line']}): {b['reason']}" for b in self.bad[:5])
        more = f"; and {len(self.bad) - 5} more (listed in {self.directory / META})" if len(self.bad) > 5 else ""
        return f"{len(self.bad)} image(s) left out: {shown}{more}"


def image_cache(records: list[ImageTextRecord], image_size: int, cache_dir: str | Path, name: str) -> ImageCache:
    """The cache of these records' images at `image_size` under `cache_dir`: reused when one with the same
    fingerprint exists, built (and published atomically) otherwise. Bad images are warned about either way."""
    fp = fingerprint(records, image_size)
    directory = Path(cache_dir) / f"{name}-{fp[:16]}"
    if (directory / META).is_file():
        cache = _load(directory, fp, len(records), image_size)
    else:
        cache = _build(directory, records, image_size, fp)
    if cache.bad:
        warnings.warn(f"image cache {directory.name}: {cache.report()}", stacklevel=2)
    return cache


def _build(directory: Path, records: list[ImageTextRecord], size: int, fp: str) -> ImageCache:
    t0 = time.perf_counter()
    bad: list[dict] = []
    with atomic.atomic_dir(directory) as tmp:
        images = np.memmap(tmp / DATA, dtype=np.uint8, mode="w+", shape=(len(records), size, size, 3))
        ok = np.zeros(len(records), dtype=bool)
        for i, r in enumerate(records):
            try:
                images[i] = decode_image(r.image, size)
                ok[i] = True
            except ImageError as e:
                bad.append({"file": str(e.path), "line": r.line, "reason": e.reason})
        images.flush()  # raw bytes: the reader maps them with the shape meta.json records
        del images
        seconds = time.perf_counter() - t0
        meta = {"format": FORMAT, "version": VERSION, "fingerprint": fp, "count": len(records), "image_size": size,
                "resample": RESAMPLE, "background": list(BACKGROUND), "ok": ok.astype(int).tolist(),
                "files": [str(r.image) for r in records], "bad": bad, "build_s": round(seconds, 3)}
        (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
    cache = _load(directory, fp, len(records), size)
    cache.reused, cache.build_s = False, seconds
    return cache


def _load(directory: Path, fp: str, count: int, size: int) -> ImageCache:
    meta_path = directory / META
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta_path}: unreadable ({e}); delete {directory} and the next run rebuilds it") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION or meta.get("fingerprint") != fp:
        raise ValueError(f"{meta_path} does not describe this data and preprocessing (format {meta.get('format')!r} "
                         f"v{meta.get('version')}); delete {directory} and the next run rebuilds it")
    path = directory / DATA
    want = count * size * size * 3
    if not path.is_file() or path.stat().st_size != want:
        have = path.stat().st_size if path.is_file() else "no"
        raise ValueError(f"{path}: {have} bytes where {count} images of {size}x{size} need {want}: the cache is "
                         f"truncated or corrupt; delete {directory} and the next run rebuilds it")
    images = np.memmap(path, dtype=np.uint8, mode="r", shape=(count, size, size, 3))
    return ImageCache(directory, images, np.asarray(meta["ok"], dtype=bool), list(meta["bad"]), True, 0.0)
