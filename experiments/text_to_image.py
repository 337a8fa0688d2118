"""Issue 18 (survey §5.2, text-to-image generation: DALL·E, CogView) at emoji scale. Two stages through `ptm pretrain`:
a VQ-VAE image tokenizer (configs/vqvae-emoji.yaml; 64 px -> 8 x 8 codes of 512), then a GPT-2-style generator over
[emoji name ; codes] (configs/dalle-emoji.yaml). Both hold out the same 10% of the emoji (by image path), which
configs/clip-emoji.yaml holds out too. Measured:

- the tokenizer's reconstruction error on the held-out images (pixel MSE in [0, 1] units, PSNR), beside bicubic
  down-/up-sampling through the same 8 x 8 grid (3 floats per cell instead of one code of 512);
- samples for held-out names (docs/multimodal/text_to_image_samples.png: real image, its VQ-VAE reconstruction, then
  samples), and the generator's held-out image-token loss;
- whether the CLIP model of experiments/clip_emoji.py (runs/clip_emoji/emoji/model) retrieves the right held-out name
  for a generated image above chance: image->name R@1/R@5 among all held-out names, for generated images, beside the
  real images and their reconstructions (the ceiling) and chance.

Writes the "text-to-image" block of docs/multimodal.md (not with --smoke).

    .venv/bin/python experiments/text_to_image.py --smoke                 # tiny models, a few steps: the pipeline runs
    .venv/bin/python experiments/clip_emoji.py --models emoji             # the CLIP judge first (if not yet trained)
    .venv/bin/python experiments/text_to_image.py                         # the full study (finished runs are reused)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import ROOT  # noqa: E402

from ptmkit.analysis.image_text import recall_at_k  # noqa: E402
from ptmkit.analysis.report import write_results_block  # noqa: E402
from ptmkit.cli.overrides import build_config  # noqa: E402
from ptmkit.data.images import ImageTextDataset  # noqa: E402
from ptmkit.data.images.augment import to_float  # noqa: E402
from ptmkit.data.images.dataset import tokenize_captions  # noqa: E402
from ptmkit.data.images.grid import save_grid  # noqa: E402
from ptmkit.data.tokenizer import Tokenizer  # noqa: E402
from ptmkit.models import load_model  # noqa: E402
from ptmkit.objectives.vqvae import psnr  # noqa: E402
from ptmkit.recipes.image_tokenizer import reconstruction_error  # noqa: E402
from ptmkit.recipes.pretrain import PretrainConfig, pretrain  # noqa: E402
from ptmkit.recipes.text_to_image import generate_images, load_generator  # noqa: E402
from ptmkit.train.logging import read_metrics  # noqa: E402

CONFIGS = ROOT / "configs"
EMOJI = "multimodal/emoji/emoji.jsonl"
SMOKE_VQ = {"model.config.hidden_size": 16, "model.config.codebook_size": 32, "model.config.embedding_dim": 8,
            "model.config.residual_hidden_size": 8, "data.batch_size": 16}
SMOKE_GEN = {"model.config.hidden_size": 32, "model.config.num_layers": 1, "model.config.num_heads": 2,
             "data.batch_size": 16}
SMOKE_CLIP = {"model.config.vision.hidden_size": 32, "model.config.vision.num_layers": 1,
              "model.config.vision.num_heads": 2, "model.config.vision.intermediate_size": 64,
              "model.config.text.hidden_size": 32, "model.config.text.num_layers": 1, "model.config.text.num_heads": 2,
              "model.config.text.intermediate_size": 64, "model.config.projection_dim": 32, "data.batch_size": 16}


def stage(recipe: str, out: Path, cache: Path, steps: int | None, extra: dict,
          emoji: str = EMOJI) -> tuple[PretrainConfig, Path, float]:
    """Run (or reuse) one `ptm pretrain` stage on the recipe's captions of the `emoji` JSON lines; (its config, its
    model directory, seconds spent here)."""
    over = {"out": str(out), "images.cache_dir": str(cache), "train.progress_bar": False, **extra}
    if steps:
        # checkpoints every eighth: a session's end (processes die with it) then loses at most 1/8 of a run
        over.update({"train.steps": steps, "train.eval_every": max(1, steps // 4),
                     "train.checkpoint_every": max(1, steps // 8), "schedule.warmup_steps": min(100, steps // 10)})
    cfg = build_config(PretrainConfig, str(CONFIGS / recipe), over)
    cfg.images.train = [dataclasses.replace(s, path=emoji) for s in cfg.images.train]
    t0 = time.perf_counter()
    if not (out / "summary.json").is_file() or not (out / "model").is_dir():
        pretrain(cfg, overwrite=True)
    else:
        print(f"reusing {out}")
    return cfg, out / "model", time.perf_counter() - t0


def bicubic_baseline(dataset: ImageTextDataset, grid: int, std) -> float:
    """PSNR of bicubic down-sampling to grid x grid pixels and back: the same spatial budget as the codes."""
    x = dataset.pixel_values(np.arange(len(dataset)))  # (N, C, S, S) in the VQ-VAE's normalisation
    small = F.interpolate(x, size=(grid, grid), mode="bicubic", align_corners=False, antialias=True)
    back = F.interpolate(small, size=x.shape[-2:], mode="bicubic", align_corners=False)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return psnr(float(((back.clamp(-1, 1) - x) * s).pow(2).mean()))


@torch.no_grad()
def clip_recall(clip_dir: Path, names: list[str], groups: dict[str, np.ndarray], owner: dict[str, np.ndarray]) -> dict:
    """Image -> name retrieval with CLIP among `names`: for each group of (K, S, S, 3) uint8 images whose k-th image
    shows names[owner[k]], R@1 and R@5 of the right name, beside chance (k / len(names))."""
    model = load_model(clip_dir).eval()
    tok = Tokenizer.load(clip_dir)
    pre = json.loads((clip_dir / "preprocessor_config.json").read_text())
    seq = model.config.text.max_position_embeddings
    ids, lengths, _ = tokenize_captions(tok, names, seq)
    mask = (torch.arange(ids.shape[1])[None] < torch.from_numpy(lengths)[:, None]).long()
    text = F.normalize(model.encode_text(torch.from_numpy(ids), mask), dim=-1)  # (M, P)
    side = model.config.vision.image_size
    out = {}
    for group, images in groups.items():
        x = torch.from_numpy(np.ascontiguousarray(images))
        if x.shape[1] != side:
            x = F.interpolate(x.permute(0, 3, 1, 2).float(), size=(side, side), mode="bicubic").clamp(0, 255) \
                .round().byte().permute(0, 2, 3, 1)
        vectors = torch.cat([model.encode_image(to_float(x[i: i + 256], pre["image_mean"], pre["image_std"]))
                             for i in range(0, len(x), 256)])
        sim = F.normalize(vectors, dim=-1) @ text.T  # (K, M)
        r = recall_at_k(sim.T, owner[group], ks=(1, 5))["text_to_image"]  # names as "images": each image's name
        out[group] = {"r1": r[1], "r5": r[5], "images": len(x)}
    out["chance"] = {"r1": 1 / len(names), "r5": min(1.0, 5 / len(names))}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "runs" / "text_to_image"))
    p.add_argument("--clip", default=str(ROOT / "runs" / "clip_emoji" / "emoji" / "model"),
                   help="CLIP model directory that judges the samples (experiments/clip_emoji.py trains it)")
    p.add_argument("--vq-steps", type=int, default=None, help="override configs/vqvae-emoji.yaml's steps")
    p.add_argument("--gen-steps", type=int, default=None, help="override configs/dalle-emoji.yaml's steps")
    p.add_argument("--samples", type=int, default=4, help="samples per held-out name")
    p.add_argument("--shown", type=int, default=12, help="held-out names shown in the figure")
    p.add_argument("--top-k", type=int, default=64, help="sample among the k most likely codes")
    p.add_argument("--emoji", default=EMOJI, help="the emoji JSON lines (a relative path is looked up under "
                                                  "$PTMKIT_DATA); tests pass a few of them")
    p.add_argument("--smoke", action="store_true", help="tiny models, a few steps, 8 names: checks the pipeline runs")
    args = p.parse_args(argv)
    out = Path(args.out) / ("smoke" if args.smoke else "full")
    cache = Path(args.out) / "cache"
    t_start = time.perf_counter()

    vq_cfg, vq_dir, vq_s = stage("vqvae-emoji.yaml", out / "vqvae", cache, 20 if args.smoke else args.vq_steps,
                                 SMOKE_VQ if args.smoke else {}, args.emoji)
    gen_cfg, gen_dir, gen_s = stage("dalle-emoji.yaml", out / "dalle", cache, 20 if args.smoke else args.gen_steps,
                                    {**(SMOKE_GEN if args.smoke else {}), "images.tokenizer": str(vq_dir)}, args.emoji)

    # reconstruction on the held-out images (and on training images, for the generalisation gap)
    vq = load_model(vq_dir).eval()
    held = ImageTextDataset(vq_cfg.images, None, 0, split="held_out")
    train = ImageTextDataset(vq_cfg.images, None, 0, split="train")
    rec_held, rec_train = reconstruction_error(vq, held), reconstruction_error(vq, train)
    bicubic = bicubic_baseline(held, vq.config.grid_size, vq.config.pixel_std)

    # samples for held-out names
    gen = load_generator(gen_dir)
    names = [r.eval_captions[0] for r in held.records]
    if args.smoke:
        names = names[:8]
        held_idx = np.arange(len(names))
    else:
        held_idx = np.arange(len(names))
    t0 = time.perf_counter()
    samples = generate_images(gen, names, args.samples, temperature=1.0, top_k=args.top_k, seed=0)  # (M, S, s, s, 3)
    sample_s = time.perf_counter() - t0
    real = held.images(held_idx).numpy()  # (M, s, s, 3)
    recon = vq.to_pixels(vq.decode(vq.encode(vq.normalise(torch.from_numpy(real))))).numpy()
    shown = min(args.shown, len(names))
    figure = np.concatenate([real[:shown, None], recon[:shown, None], samples[:shown]], axis=1)
    fig_path = (out if args.smoke else ROOT / "docs" / "multimodal") / "text_to_image_samples.png"
    save_grid(figure, fig_path)

    # does CLIP find the right name for a generated image?
    clip_dir = Path(args.clip)
    clip_s = 0.0
    if args.smoke and not (clip_dir / "config.json").is_file():
        clip_cfg, clip_dir, clip_s = stage("clip-emoji.yaml", out / "clip", cache, 20, SMOKE_CLIP, args.emoji)
    judged = None
    if (clip_dir / "config.json").is_file():
        owner = np.arange(len(names))
        judged = clip_recall(clip_dir, names, {"real": real, "reconstructed": recon,
                                               "generated": samples.reshape(-1, *samples.shape[2:])},
                             {"real": owner, "reconstructed": owner, "generated": np.repeat(owner, args.samples)})
    else:
        print(f"no CLIP model at {clip_dir}: train it with experiments/clip_emoji.py --models emoji (or pass --clip)")

    gen_eval = [r for r in read_metrics(gen_dir.parent / "metrics.jsonl") if r["split"] == "eval"]
    vq_eval = [r for r in read_metrics(vq_dir.parent / "metrics.jsonl") if r["split"] == "eval"]
    result = {"held_out_images": len(held), "train_images": len(train),
              "vqvae": {"held_out_pixel_mse": rec_held["pixel_mse"], "held_out_psnr": rec_held["psnr"],
                        "train_psnr": rec_train["psnr"], "bicubic_psnr": bicubic,
                        "codebook_perplexity": vq_eval[-1]["codebook_perplexity"] if vq_eval else None,
                        "grid": vq.config.grid_size, "codebook_size": vq.config.codebook_size},
              "generator": {"held_out_image_loss": gen_eval[-1]["image_loss"] if gen_eval else None,
                            "chance_image_loss": float(np.log(vq.config.codebook_size)),
                            "names": len(names), "samples_per_name": args.samples, "top_k": args.top_k},
              "clip": judged, "clip_model": str(clip_dir) if judged else None,
              "seconds": {"vqvae": round(vq_s, 1), "generator": round(gen_s, 1), "sampling": round(sample_s, 1),
                          "clip": round(clip_s, 1), "total": round(time.perf_counter() - t_start, 1)},
              "figure": str(fig_path)}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    block = render(result, args)
    if args.smoke:
        (out / "results.md").write_text(block + "\n")
    else:
        write_results_block(ROOT / "docs" / "multimodal.md", block, "Multimodal pre-training", name="text-to-image")
    print(block)
    print(json.dumps({"experiment": "text_to_image", "smoke": args.smoke, **result}))
    return 0


def render(r: dict, args) -> str:
    v, g, c = r["vqvae"], r["generator"], r["clip"]
    lines = [f"_{date.today()}, `experiments/text_to_image.py{' --smoke' if args.smoke else ''}`; "
             f"{r['train_images']} training / {r['held_out_images']} held-out emoji; wall times on a shared CPU: "
             f"VQ-VAE {r['seconds']['vqvae']:.0f} s, generator {r['seconds']['generator']:.0f} s, sampling "
             f"{r['seconds']['sampling']:.0f} s._", "",
             f"**Image tokenizer** ({v['grid']} x {v['grid']} codes of {v['codebook_size']}): held-out pixel MSE "
             f"{v['held_out_pixel_mse']:.4f}, PSNR {v['held_out_psnr']:.1f} dB (training images {v['train_psnr']:.1f} "
             f"dB; bicubic through the same {v['grid']} x {v['grid']} grid {v['bicubic_psnr']:.1f} dB); codebook "
             f"perplexity {v['codebook_perplexity'] or float('nan'):.0f} of {v['codebook_size']}.", "",
             f"**Generator**: held-out image-token loss {g['held_out_image_loss'] or float('nan'):.2f} nats "
             f"(uniform over the codebook: {g['chance_image_loss']:.2f}); {g['samples_per_name']} samples for each of "
             f"{g['names']} held-out names, top-k {g['top_k']}. Figure: `{Path(r['figure']).name}` (columns: real "
             "image, its reconstruction, samples).", ""]
    if c:
        lines += ["| images judged by CLIP (image -> held-out name) | images | R@1 | R@5 |", "|---|---:|---:|---:|"]
        for group in ("real", "reconstructed", "generated"):
            lines.append(f"| {group} | {c[group]['images']} | {c[group]['r1']:.3f} | {c[group]['r5']:.3f} |")
        lines.append(f"| chance | | {c['chance']['r1']:.3f} | {c['chance']['r5']:.3f} |")
    else:
        lines.append("No CLIP model was available to judge the samples.")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
