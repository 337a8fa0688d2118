"""`ptm generate-image MODEL --caption ...`: draw images for captions with a text-to-image generator (DALL·E-style,
configs/dalle-emoji.yaml) and write them as one PNG grid, a row per caption and a column per sample."""

from __future__ import annotations

import argparse
from pathlib import Path

from ptmkit.cli.formatting import Defaults


def add_parser(sub) -> None:
    p = sub.add_parser(
        "generate-image",
        help="draw images for captions with a text-to-image generator; writes a PNG grid",
        description="Sample image codes after each caption with a text-to-image model directory (trained by "
                    "`ptm pretrain configs/dalle-emoji.yaml`) and decode them with its VQ-VAE image tokenizer. "
                    "Only image tokens are drawn in image positions. Rows of the grid follow the captions in order.",
        formatter_class=Defaults,
    )
    p.add_argument("model", help="generator model directory (config.json, weights, tokenizer, text_to_image.json)")
    p.add_argument("--caption", action="append", default=[], help="text to draw (e.g. an emoji name); repeatable")
    p.add_argument("--captions-file", default=None, help="a text file of captions, one a line (added after --caption)")
    p.add_argument("--image-tokenizer", default=None,
                   help="VQ-VAE model directory that decodes the codes; default: the one the generator was trained "
                        "with (recorded in text_to_image.json)")
    p.add_argument("--samples", type=int, default=4, help="images per caption (grid columns)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy; > 0 samples from softmax(logits / T)")
    p.add_argument("--top-k", type=int, default=0, help="sample only among the k most likely codes (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: smallest set of codes with this mass")
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling")
    p.add_argument("--batch-size", type=int, default=64, help="sequences sampled together")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole prefix each step (slow; for checks)")
    p.add_argument("--out", default="samples.png", help="the PNG grid to write")
    p.set_defaults(run=run)


def run(args) -> int:
    from ptmkit.data.images.grid import save_grid
    from ptmkit.recipes.text_to_image import generate_images, load_generator

    captions = list(args.caption)
    if args.captions_file:
        captions += [line.strip() for line in Path(args.captions_file).read_text().splitlines() if line.strip()]
    if not captions:
        raise ValueError("give at least one --caption (or a --captions-file)")
    gen = load_generator(args.model, args.image_tokenizer)
    images = generate_images(gen, captions, args.samples, args.temperature, args.top_k, args.top_p, args.seed,
                             args.batch_size, use_cache=not args.no_cache)
    path = save_grid(images, args.out)
    print(f"wrote {path}: {len(captions)} row(s) x {args.samples} sample(s) of {images.shape[2]} px")
    for i, caption in enumerate(captions, start=1):
        print(f"  row {i}: {caption}")
    return 0
