"""`ptm zero-shot MODEL --data SET.jsonl [--classes FIELD --template T ...] [--probe]`: evaluate a CLIP model directory
by image<->text retrieval (recall@1/5/10 both ways) and zero-shot classification with text prompts, beside chance."""

from __future__ import annotations

import argparse

from ptmkit.cli.options import add_precision_option


def add_parser(sub) -> None:
    p = sub.add_parser(
        "zero-shot",
        help="evaluate an image-text model: retrieval R@1/5/10 (CLIP, visualbert, lxmert) and CLIP's zero-shot "
             "classification with prompts",
        description=(
            "Embed the images of a JSON-lines image-text set and their captions with a CLIP model directory; report "
            "recall@1/5/10 image->text and text->image, zero-shot classification accuracy of the images by a label "
            "field with prompt templates (--classes, --template), and with --probe a linear probe on the same image "
            "vectors trained on the training split; chance levels beside each. A single- or two-stream model "
            "(visualbert, lxmert) is scored by retrieval only, ranking every image-caption pair by its image-text "
            "matching score (N x M forward passes; lxmert encodes each caption and image once and runs only its "
            "cross-modality layers per pair). Use the pre-training's --held-out and --split-seed to score only "
            "images it never trained on. Writes OUT/results.json."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="CLIP model directory (ptm pretrain's OUT/model, or a transformers CLIPModel), or a "
                                 "visualbert / lxmert model directory (retrieval by image-text matching)")
    p.add_argument("--data", required=True, metavar="JSONL",
                   help="image-text JSON lines; a relative path not found here is looked up under $PTMKIT_DATA")
    p.add_argument("--image-field", default="image", help="field holding the image path (default: image)")
    p.add_argument("--captions", nargs="+", default=["{captions}"], metavar="TEMPLATE",
                   help="caption templates over the line's fields, e.g. '{name}' (default: '{captions}')")
    p.add_argument("--id-field", default=None, help="unique image id field for the split (default: the image path)")
    p.add_argument("--classes", default=None, metavar="FIELD", help="label field to classify the images by")
    p.add_argument("--template", nargs="+", default=["{}"], metavar="PROMPT",
                   help="prompt templates, '{}' = the class name, e.g. 'an emoji of {}' (several are averaged)")
    p.add_argument("--split", choices=("held_out", "train", "all"), default="held_out",
                   help="which images to evaluate (the pre-training split; default held_out)")
    p.add_argument("--held-out", type=float, default=0.1, help="the pre-training's images.held_out (default 0.1)")
    p.add_argument("--split-seed", type=int, default=0, help="the pre-training's images.split_seed (default 0)")
    p.add_argument("--probe", action="store_true", help="also fit a linear probe on the training split's images")
    p.add_argument("--cache-dir", default="runs/cache/images", help="decoded-image cache folder")
    p.add_argument("--batch-size", type=int, default=256, help="images or captions embedded per forward pass")
    p.add_argument("--max-images", type=int, default=None, metavar="N",
                   help="score only the first N images of the split and their captions (a visualbert / lxmert model "
                        "runs N x M pair passes)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_precision_option(p, what="autocast precision of the forward passes")
    p.add_argument("--out", default=None, metavar="DIR", help="write DIR/results.json")
    p.set_defaults(run=run)


def run(args) -> int:
    from ptmkit.data.images import ImageTextSource
    from ptmkit.recipes.zero_shot import ZeroShotConfig, evaluate_zero_shot

    source = ImageTextSource(path=args.data, image_field=args.image_field, captions=args.captions,
                             id_field=args.id_field)
    cfg = ZeroShotConfig(model=args.model, source=source, classes=args.classes, templates=args.template,
                         split=args.split, held_out=args.held_out, split_seed=args.split_seed, probe=args.probe,
                         cache_dir=args.cache_dir, batch_size=args.batch_size, max_images=args.max_images,
                         device=args.device,
                         precision=args.precision, out=args.out)
    r = evaluate_zero_shot(cfg)
    ret = r["retrieval"]
    print(f"{ret['images']} {args.split} images, {ret['captions']} captions")
    for way, label in (("image_to_text", "image->text"), ("text_to_image", "text->image")):
        cells = ", ".join(f"R@{k} {ret['recall'][way][k]:.3f} (chance {ret['chance'][way][k]:.3f})"
                          for k in ret["recall"][way])
        print(f"  {label}: {cells}")
    if "zero_shot" in r:
        z = r["zero_shot"]
        print(f"  zero-shot {z['field']} ({z['classes']} classes): accuracy {z['accuracy']:.3f} (chance "
              f"{z['chance_uniform']:.3f}, majority class {z['chance_majority']:.3f})")
    if "linear_probe" in r:
        print(f"  linear probe on the same image vectors: accuracy {r['linear_probe']['accuracy']:.3f}")
    if args.out:
        print(f"results written to {args.out}/results.json")
    return 0
