"""The image data pipeline (ptmkit.data.images): decoding to RGB, the image-text reader, the decoded-image cache (bad
files counted by name, reused, invalidated), the held-out split by image id, caption truncation, augmentation and
resumable batches."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ptmkit.config import ConfigError, from_dict
from ptmkit.data.images import (
    ImageError, ImagesConfig, ImageTextBatches, ImageTextDataset, ImageTextSource, decode_image, held_out,
    image_cache, read_records,
)
from ptmkit.data.images.augment import random_resized_crop, to_float
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.objectives.clip import CLIPContrastive


def _png(path, mode, size=(8, 8), color=None):
    if mode == "I;16":
        Image.fromarray(np.full(size[::-1], 40000, dtype=np.uint16)).save(path)  # 16-bit greyscale PNG
        return path
    Image.new(mode, size, color).save(path)
    return path


@pytest.fixture
def images(tmp_path):
    """A JSON-lines file over good images of several modes, three bad ones, and two bad lines."""
    d = tmp_path / "set"
    (d / "img").mkdir(parents=True)
    _png(d / "img/red.png", "RGB", (12, 8), (255, 0, 0))
    _png(d / "img/clear.png", "RGBA", color=(0, 0, 255, 0))  # fully transparent blue: white on the page
    _png(d / "img/half.png", "RGBA", color=(0, 0, 0, 128))  # half-transparent black over white: mid grey
    _png(d / "img/grey.png", "L", color=77)
    _png(d / "img/deep.png", "I;16")
    Image.new("RGB", (16, 16), (0, 200, 0)).save(d / "img/green.jpg", quality=95)
    full = (d / "img/green.jpg").read_bytes()
    (d / "img/cut.jpg").write_bytes(full[: len(full) // 2])  # truncated mid-stream
    (d / "img/notes.png").write_text("not an image")
    lines = [
        {"image": "img/red.png", "name": "red box", "tags": ["warm", "square"], "kind": "colour"},
        {"image": "img/clear.png", "name": "clear glass", "tags": ["empty"], "kind": "colour"},
        {"image": "img/half.png", "name": "grey fog", "tags": [], "kind": "weather"},
        {"image": "img/grey.png", "name": "grey stone", "tags": ["rock"], "kind": "thing"},
        {"image": "img/deep.png", "name": "deep scan", "tags": ["scan"], "kind": "thing"},
        {"image": "img/green.jpg", "name": "green leaf", "tags": ["plant"], "kind": "thing"},
        {"image": "img/cut.jpg", "name": "cut photo", "tags": ["broken"], "kind": "thing"},
        {"image": "img/notes.png", "name": "notes", "tags": ["text"], "kind": "thing"},
        {"image": "img/gone.png", "name": "gone", "tags": ["lost"], "kind": "thing"},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n{broken json\n" + json.dumps({"name": "no image"}) + "\n"
    (d / "pairs.jsonl").write_text(text)
    return d / "pairs.jsonl"


def _source(path, **kw):
    return ImageTextSource(path=str(path), captions=["{name}", "{name}: {tags}"], **kw)


def _tokenizer():
    words = "red box clear glass grey fog stone deep scan green leaf cut photo notes gone warm square empty rock plant"
    return Tokenizer.train([words] * 5, "wordpiece", 80, min_frequency=1)


def test_decode_converts_every_mode_to_rgb(images):
    d = images.parent / "img"
    red = decode_image(d / "red.png", 4)
    assert red.shape == (4, 4, 3) and red.dtype == np.uint8 and (red == [255, 0, 0]).all()  # 12x8 -> 6x4 -> crop
    assert (decode_image(d / "clear.png", 4) == 255).all()  # transparent -> the white background
    half = decode_image(d / "half.png", 4)
    assert abs(int(half[0, 0, 0]) - 127) <= 2 and (half[..., 0] == half[..., 2]).all()
    grey = decode_image(d / "grey.png", 4)
    assert (grey == 77).all()  # L -> R = G = B
    assert (decode_image(d / "deep.png", 4) == 40000 >> 8).all()  # 16-bit scaled, not clipped to white
    for name, why in (("cut.jpg", "truncated"), ("notes.png", "not an image"), ("gone.png", "missing")):
        with pytest.raises(ImageError, match=why) as e:
            decode_image(d / name, 4)
        assert e.value.path.name == name


def test_reader_expands_templates_and_counts_bad_lines(images):
    with pytest.warns(UserWarning, match="2 bad line"):
        records, report = read_records(_source(images))
    assert len(records) == 9 and report.records == 9  # the reader reads lines; images are decoded by the cache
    by_name = {r.fields["name"]: r for r in records}
    assert by_name["red box"].captions == ["red box", "red box: warm", "red box: square"]
    assert by_name["grey fog"].captions == ["grey fog"]
    assert [b.split(": ", 1)[0].rsplit(":", 1)[1] for b in report.bad_lines] == ["10", "11"]  # file:line
    assert "no image path" in report.bad_lines[1]
    with pytest.raises(ConfigError, match="names no field"):
        ImageTextSource(path="x.jsonl", captions=["plain text"])


def test_cache_reports_bad_images_by_name_and_is_reused(images, tmp_path):
    with pytest.warns(UserWarning):
        records, _ = read_records(_source(images))
    with pytest.warns(UserWarning, match="3 image\\(s\\) left out") as w:
        first = image_cache(records, 8, tmp_path / "cache", "pairs")
    message = str(w[0].message)
    assert all(name in message for name in ("cut.jpg", "notes.png", "gone.png"))
    assert not first.reused and first.ok.tolist() == [True] * 6 + [False] * 3
    assert {os.path.basename(b["file"]) for b in first.bad} == {"cut.jpg", "notes.png", "gone.png"}
    assert (first.images[1] == 255).all()  # RGBA composited on white, stored

    with pytest.warns(UserWarning, match="3 image"):  # reported again on reuse: never silent
        again = image_cache(records, 8, tmp_path / "cache", "pairs")
    assert again.reused and again.directory == first.directory
    assert np.array_equal(np.asarray(again.images), np.asarray(first.images))

    with pytest.warns(UserWarning):
        other_size = image_cache(records, 4, tmp_path / "cache", "pairs")  # other preprocessing: a new cache
    assert not other_size.reused and other_size.directory != first.directory and other_size.image_size == 4

    _png(images.parent / "img/red.png", "RGB", (12, 8), (0, 0, 255))  # an edited file invalidates the cache
    os.utime(images.parent / "img/red.png", ns=(1, 1))
    with pytest.warns(UserWarning):
        edited = image_cache(records, 8, tmp_path / "cache", "pairs")
    assert not edited.reused and (edited.images[0] == [0, 0, 255]).all()


def test_truncated_cache_file_names_the_fix(images, tmp_path):
    with pytest.warns(UserWarning):
        records, _ = read_records(_source(images))
        cache = image_cache(records, 8, tmp_path / "cache", "pairs")
    data = cache.directory / "images.u8"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupt; delete .* rebuilds it"):
        image_cache(records, 8, tmp_path / "cache", "pairs")


def test_held_out_split_depends_on_the_id_only():
    ids = [f"img{i}.png" for i in range(2000)]
    out = [held_out(i, 0.1, seed=0) for i in ids]
    assert 150 < sum(out) < 250
    assert [held_out(i, 0.1, seed=0) for i in reversed(ids)] == out[::-1]  # order does not matter
    assert [held_out(i, 0.1, seed=1) for i in ids] != out  # another seed, another split
    assert not any(held_out(i, 0.0) for i in ids)


def _cfg(images, tmp_path, **kw):
    kw = {"held_out": 0.3, "max_bad_fraction": 0.5, **kw}
    return from_dict(ImagesConfig, dict(train=[dict(path=str(images), captions=["{name}", "{name}: {tags}"],
                                                    eval_captions=["{name}"])],
                                        image_size=8, cache_dir=str(tmp_path / "cache"), **kw))


def test_dataset_splits_truncates_and_batches(images, tmp_path):
    tok = _tokenizer()
    cfg = _cfg(images, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        splits = {s: ImageTextDataset(cfg, tok, seq_len=4, split=s) for s in ("train", "held_out", "all")}
    train, test, every = (splits[s] for s in ("train", "held_out", "all"))
    ids = lambda ds: {r.id for r in ds.records}  # noqa: E731
    assert ids(train).isdisjoint(ids(test)) and ids(train) | ids(test) == ids(every) and len(every) == 6
    assert every.truncated > 0  # "red box: warm" is [CLS] red box : warm [SEP]: 6 tokens > 4
    row = every.captions.ids[every.captions.lengths == 4][0]
    assert row[-1] == tok.eos_id and row[0] == tok.cls_id  # the end-of-text token survives the cut
    with pytest.warns(UserWarning, match="cut to 4 .*Raise data.seq_len"):
        ImageTextDataset(cfg, tok, seq_len=4, split="all")
    assert every.eval_captions.offsets.tolist() == list(range(7))  # one eval caption ({name}) per image
    assert every.field("kind")[:2] == ["colour", "colour"]

    batch = every.batch(np.array([0, 3]), torch.Generator().manual_seed(0))
    assert batch["pixel_values"].shape == (2, 3, 8, 8) and batch["input_ids"].shape[0] == 2
    assert batch["attention_mask"].sum(-1).tolist() == [(batch["input_ids"][i] != tok.pad_id).sum() for i in range(2)]


def test_bad_image_fraction_over_the_limit_is_an_error(images, tmp_path):
    with pytest.raises(ValueError, match="3 image\\(s\\) left out.*max_bad_fraction"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ImageTextDataset(_cfg(images, tmp_path, max_bad_fraction=0.1), _tokenizer(), seq_len=8)


def test_batches_resume_exactly(images, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ImageTextDataset(_cfg(images, tmp_path, crop_scale=[0.5, 1.0], flip=0.5, held_out=0.0), _tokenizer(), 8)
    a = ImageTextBatches(ds, 2, CLIPContrastive(), seed=3)
    next(a)
    state = a.state_dict()
    want = [next(a) for _ in range(3)]
    b = ImageTextBatches(ds, 2, CLIPContrastive(), seed=3)
    b.load_state_dict(state)
    for w, g in zip(want, (next(b) for _ in range(3))):
        assert all(torch.equal(w[k], g[k]) for k in w)
    with pytest.raises(ConfigError, match="exceeds the 6 training images"):
        ImageTextBatches(ds, 7, CLIPContrastive())


def test_augmentation_off_is_identity_and_flip_mirrors():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(random_resized_crop(x, (1.0, 1.0), (1.0, 1.0), 0.0, g), x)
    flipped = random_resized_crop(x, (1.0, 1.0), (1.0, 1.0), 1.0, g)
    torch.testing.assert_close(flipped, x.flip(-1))
    crop = random_resized_crop(x, (0.25, 0.5), (0.75, 1.33), 0.0, torch.Generator().manual_seed(1))
    assert crop.shape == x.shape and crop.min() >= x.min() and crop.max() <= x.max()
    again = random_resized_crop(x, (0.25, 0.5), (0.75, 1.33), 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(crop, again)
    u8 = torch.full((1, 2, 2, 3), 255, dtype=torch.uint8)
    torch.testing.assert_close(to_float(u8, [0.5] * 3, [0.5] * 3), torch.ones(1, 3, 2, 2))
