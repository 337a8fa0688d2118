"""The multimodal studies (issue 18: CLIP on emoji, vision-language retrieval, text-to-image) run end to end on a
few shared images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import shared_path
from tests.integration.scripts.helpers import EXP, load_script, run_main


def _image_text_subset(tmp_path: Path, name: str, jsonl: str, held: int, train: int, fraction: float) -> Path:
    """`held` images of the shared set's held-out split (at `fraction`, split seed 0) and `train` of its training
    split, in a JSON-lines file beside a link to the shared images: the lines keep their relative image paths, so the
    image ids, and with them the split, are those of the full set wherever the checkout lies."""
    from ptmkit.data.images.records import held_out

    src = shared_path("multimodal", name, jsonl)
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    pick = [r for r in rows if held_out(r["image"], fraction)][:held] + \
        [r for r in rows if not held_out(r["image"], fraction)][::7][:train]
    d = tmp_path / name
    d.mkdir()
    (d / "images").symlink_to(src.parent / "images")
    (d / jsonl).write_text("".join(json.dumps(r) + "\n" for r in pick))
    return d / jsonl


def test_vl_retrieval(capsys, tmp_path):
    """--smoke on 32 emoji (8 held out) and 8 COCO-mini photos (4 held out): the equal-compute plan, three tiny
    models trained, retrieval of each scored beside chance; the results block goes to the page given by --docs."""
    emoji = _image_text_subset(tmp_path, "emoji", "emoji.jsonl", 8, 24, 0.1)
    coco = _image_text_subset(tmp_path, "coco-mini", "captions.jsonl", 4, 4, 0.5)
    docs = tmp_path / "multimodal.md"
    _, line = run_main(EXP / "vl_retrieval.py", ["--smoke", "--emoji", str(emoji), "--coco", str(coco),
                                                 "--out", str(tmp_path / "vl"), "--docs", str(docs)], capsys)
    assert line["experiment"] == "vl_retrieval" and set(line["results"]) == {"clip", "single-stream", "two-stream"}
    assert line["plan"]["models"]["clip"]["steps"] == 4  # CLIP's budget; the others get as many FLOPs
    for r in line["results"].values():
        assert r["emoji"]["chance"]["text_to_image"]["1"] == pytest.approx(1 / 8)
        assert r["coco"]["chance"]["text_to_image"]["1"] == pytest.approx(1 / 4)
        assert all(0.0 <= v <= 1.0 for way in r["emoji"]["recall"].values() for v in way.values())
    assert "<!-- results:vl-retrieval:begin -->" in docs.read_text()
    # a finished CLIP run of the same recipe and budget (clip_emoji.py's emoji+coco model) is scored, not retrained
    _, again = run_main(EXP / "vl_retrieval.py", ["--smoke", "--models", "clip", "--emoji", str(emoji), "--coco",
                                                  str(coco), "--out", str(tmp_path / "vl2"), "--docs", "",
                                                  "--reuse-clip", str(tmp_path / "vl" / "clip")], capsys)
    assert again["plan"]["models"]["clip"]["run"] == str(tmp_path / "vl" / "clip")
    assert not (tmp_path / "vl2" / "clip").exists()
    assert again["results"]["clip"] == line["results"]["clip"]
    # each model's scores are kept beside the runs and reused while its weights and the test sets stay the same
    kept = json.loads((tmp_path / "vl" / "two-stream-retrieval.json").read_text())
    kept["results"]["emoji"]["recall"]["image_to_text"]["1"] = 0.99  # what the table shows comes from there
    (tmp_path / "vl" / "two-stream-retrieval.json").write_text(json.dumps(kept))
    _, third = run_main(EXP / "vl_retrieval.py", ["--smoke", "--emoji", str(emoji), "--coco", str(coco), "--out",
                                                  str(tmp_path / "vl"), "--docs", str(docs)], capsys)
    assert third["results"]["two-stream"]["emoji"]["recall"]["image_to_text"]["1"] == 0.99
    assert third["results"]["single-stream"] == line["results"]["single-stream"]
    # the key is the weights' content: a copied run keeps its kept scores; other weights are scored again
    import shutil
    shutil.copytree(tmp_path / "vl" / "two-stream", tmp_path / "copy" / "two-stream")
    shutil.copy(tmp_path / "vl" / "two-stream-retrieval.json", tmp_path / "copy")
    mod = load_script(EXP / "vl_retrieval.py")
    ns = mod.argparse.Namespace(emoji=str(emoji), coco=str(coco), out=str(tmp_path / "copy"), max_images=16)
    assert mod.scored("two-stream", tmp_path / "copy" / "two-stream", ns)["emoji"]["recall"]["image_to_text"][1] == 0.99
    weights = next((tmp_path / "copy" / "two-stream" / "model").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor: not the weights that were scored
    weights.write_bytes(bytes(data))
    assert mod.scored("two-stream", tmp_path / "copy" / "two-stream", ns)["emoji"]["recall"]["image_to_text"][1] != 0.99
    assert "| two-stream | held-out emoji (name as query): 8 images, 8 captions | image → text | 99.0 |" in \
        docs.read_text()
    # another recipe is never taken for this one
    args = mod.argparse.Namespace(emoji=str(emoji), coco=str(coco), out=str(tmp_path / "vl3"), smoke=True)
    cfg = mod.run_config("clip", args, steps=4)
    assert mod.same_recipe(tmp_path / "vl" / "clip", cfg)
    cfg.optim.lr *= 2
    assert not mod.same_recipe(tmp_path / "vl" / "clip", cfg)


def test_clip_emoji(capsys, tmp_path):
    """--tiny on 24 emoji (8 held out) and 8 COCO-mini photos (4 held out): both models train the same steps, each is
    scored beside chance (retrieval both ways, zero-shot categories, a linear probe); the figure and the results block
    go where --figure and --docs say; a repeated command reuses the finished runs."""
    emoji = _image_text_subset(tmp_path, "emoji", "emoji.jsonl", 8, 16, 0.1)
    coco = _image_text_subset(tmp_path, "coco-mini", "captions.jsonl", 4, 4, 0.5)
    argv = ["--tiny", "--steps", "3", "--emoji", str(emoji), "--coco", str(coco), "--out", str(tmp_path / "clip"),
            "--docs", str(tmp_path / "m.md"), "--figure", str(tmp_path / "c.png")]
    _, line = run_main(EXP / "clip_emoji.py", argv, capsys)
    assert line["experiment"] == "clip_emoji" and set(line["results"]) == {"emoji", "emoji+coco"}
    assert {r["steps"] for r in line["runs"].values()} == {3}  # equal compute: the same recipe and steps
    for r in line["results"].values():
        assert r["emoji"]["chance"]["text_to_image"]["1"] == pytest.approx(1 / 8)
        assert r["coco"]["chance"]["text_to_image"]["1"] == pytest.approx(1 / 4)
        for test in ("emoji", "coco"):
            for way in r[test]["recall"].values():
                assert all(0.0 <= v <= 1.0 for v in way.values()) and way["1"] <= way["5"] <= way["10"]
        assert 0.0 <= r["zero_shot"] <= 1.0 and 0.0 <= r["linear_probe"] <= 1.0
    assert (tmp_path / "c.png").is_file() and "<!-- results:clip:begin -->" in (tmp_path / "m.md").read_text()
    summary = tmp_path / "clip" / "emoji" / "summary.json"
    mtime = summary.stat().st_mtime_ns
    run_main(EXP / "clip_emoji.py", argv, capsys)
    assert summary.stat().st_mtime_ns == mtime  # reused, not trained again


def test_text_to_image(capsys, tmp_path):
    """--smoke on 24 emoji (8 held out): a tiny VQ-VAE, generator and CLIP judge, samples for the 8 held-out names,
    the figure and results in --out, no docs."""
    emoji = _image_text_subset(tmp_path, "emoji", "emoji.jsonl", 8, 16, 0.1)
    value, line = run_main(EXP / "text_to_image.py", ["--smoke", "--emoji", str(emoji), "--out", str(tmp_path / "t2i"),
                                                      "--clip", str(tmp_path / "no-clip"), "--samples", "2"], capsys)
    assert value == 0 and line["experiment"] == "text_to_image"
    assert line["held_out_images"] == 8 and line["train_images"] == 16 and line["generator"]["names"] == 8
    assert line["clip"]["generated"]["images"] == 16 and line["clip"]["chance"]["r1"] == pytest.approx(1 / 8)
    assert Path(line["figure"]).is_file() and Path(line["figure"]).is_relative_to(tmp_path)
