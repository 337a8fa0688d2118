"""Image-text records from JSON lines: one image a line, with one or more captions made from the line's fields by
templates ("{captions}" for COCO's list of five, "{name}" and "{name}, {subcategory}" for the emoji set). A template
naming a list field gives one caption per item. Bad lines (not JSON, a missing field, an empty caption) are counted
and reported with file:line, never dropped silently.

The held-out split is a property of the image, not of the file order: an image is held out when a hash of
(split_seed, its id) falls below the held-out fraction, so adding, removing or reordering lines never moves an image
between training and evaluation, and evaluation images are never trained on.
"""

from __future__ import annotations

import hashlib
import os
import string
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptmkit.config import ConfigError
from ptmkit.data.paths import data_root
from ptmkit.data.textio import json_line, lines


@dataclass
class ImageTextSource:
    """One JSON-lines file of images and their captions."""

    path: str = ""  # the .jsonl(.gz) file; a relative path not found from here is looked up under the data root
    image_field: str = "image"  # the image's path, relative to the file's folder
    captions: list[str] = field(default_factory=lambda: ["{captions}"])  # caption templates over the line's fields
    eval_captions: list[str] | None = None  # templates of the captions retrieval scores; None = `captions`
    id_field: str | None = None  # a unique image id for the held-out split; None = the image path
    held_out: float | None = None  # this source's held-out fraction; None = the images section's

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("images source: path is required (a JSON-lines file of images and captions)")
        if self.held_out is not None and not 0.0 <= self.held_out < 1.0:
            raise ConfigError(f"images source {self.path}: held_out must be in [0, 1), got {self.held_out}")
        if not self.captions or self.eval_captions == []:
            raise ConfigError(f"images source {self.path}: give at least one caption template")
        for t in [*self.captions, *(self.eval_captions or [])]:
            fields(t)  # a malformed template fails now


def fields(template: str) -> list[str]:
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise ConfigError(f"caption template {template!r}: {e}") from None
    if not names:
        raise ConfigError(f"caption template {template!r} names no field; write e.g. '{{name}}' or '{{captions}}'")
    return names


def resolve(path: str | os.PathLike) -> Path:
    """`path` as given if it exists, else under the data root ($PTMKIT_DATA): configs can name shared data as
    multimodal/emoji/emoji.jsonl."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    under = data_root() / p
    return under if under.exists() else p


@dataclass
class ImageTextRecord:
    image: Path  # absolute image path
    id: str  # the split key
    captions: list[str]  # training captions (at least one)
    eval_captions: list[str]  # captions retrieval scores
    fields: dict[str, Any]  # the line's JSON object (labels for zero-shot classification live here)
    line: int  # where it came from


@dataclass
class ReadReport:
    file: Path
    records: int = 0
    bad_lines: list[str] = field(default_factory=list)  # "file:line: why"


def expand(template: str, record: dict[str, Any], where: str) -> list[str]:
    """The captions one template makes from one line: a list field gives one caption per item."""
    names = fields(template)
    lists = [n for n in names if isinstance(record.get(n), list)]
    if len(set(lists)) > 1:
        raise ValueError(f"{where}: template {template!r} names two list fields {lists}; use one per template")
    missing = [n for n in names if record.get(n) is None]
    if missing:
        raise ValueError(f"{where}: no field {missing[0]!r} for caption template {template!r}")
    items = record[lists[0]] if lists else [None]
    out = []
    for item in items:
        values = {n: (item if n in lists else record[n]) for n in names}
        text = template.format(**{k: str(v) for k, v in values.items()}).strip()
        if text:
            out.append(text)
    return out


def read_records(source: ImageTextSource) -> tuple[list[ImageTextRecord], ReadReport]:
    """Every usable line of the source; bad lines are listed in the report (and warned about, with the first)."""
    path = resolve(source.path)
    if not path.is_file():
        raise FileNotFoundError(f"images source {source.path}: no such file (looked in the working directory and "
                                f"under the data root {data_root()}); set images.train[].path to a JSON-lines file")
    report = ReadReport(path)
    out: list[ImageTextRecord] = []
    seen: dict[str, int] = {}
    for i, text in enumerate(lines(path), start=1):
        if not text.strip():
            continue
        where = f"{path}:{i}"
        value, err = json_line(text)
        if err is not None or not isinstance(value, dict):
            report.bad_lines.append(f"{where}: {err or 'not a JSON object'}")
            continue
        image = value.get(source.image_field)
        if not isinstance(image, str) or not image:
            report.bad_lines.append(f"{where}: no image path in field {source.image_field!r}")
            continue
        try:
            captions = [c for t in source.captions for c in expand(t, value, where)]
            evals = [c for t in (source.eval_captions or source.captions) for c in expand(t, value, where)]
        except ValueError as e:
            report.bad_lines.append(str(e))
            continue
        if not captions or not evals:
            report.bad_lines.append(f"{where}: every caption is empty")
            continue
        key = str(value[source.id_field]) if source.id_field and value.get(source.id_field) is not None else image
        if key in seen:
            report.bad_lines.append(f"{where}: image id {key!r} repeats line {seen[key]} (ids must be unique: they "
                                    "decide the held-out split)")
            continue
        seen[key] = i
        out.append(ImageTextRecord((path.parent / image).resolve(), key, captions, evals, value, i))
    report.records = len(out)
    if report.bad_lines:
        warnings.warn(f"{path}: {len(report.bad_lines)} bad line(s) left out; first: {report.bad_lines[0]}",
                      stacklevel=2)
    if not out:
        raise ValueError(f"{path}: no usable image-text line (bad lines: {len(report.bad_lines)}"
                         + (f", first: {report.bad_lines[0]}" if report.bad_lines else "") + ")")
    return out, report


def held_out(image_id: str, fraction: float, seed: int = 0) -> bool:
    """True when this image belongs to the held-out split: a hash of (seed, id) mapped to [0, 1) is below
    `fraction`. Deterministic in the id alone, whatever else the data holds."""
    digest = hashlib.sha256(f"{seed}\x00{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction
