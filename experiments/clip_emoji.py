"""Issue 18 (survey §5.2, contrastive dual encoders): a small CLIP (Radford et al. 2021) trained from scratch with
configs/clip-emoji.yaml, evaluated on images it never trained on. Two models at equal compute (same recipe, same
steps): one on the emoji set alone, one on emoji + COCO-mini (half of COCO-mini held out). For each: image->text and
text->image recall@1/5/10 on the held-out emoji (queries: the emoji name) and the held-out COCO-mini photos (five
captions each), beside chance; zero-shot classification of the held-out emoji into their 10 categories with text
prompts, beside chance and beside a linear probe on the same image vectors. Writes the "clip" block of
docs/multimodal.md and a figure of the held-out recall during training (docs/multimodal/clip_emoji.png).

    .venv/bin/python experiments/clip_emoji.py --estimate-only    # time two steps, print the full run's estimate
    .venv/bin/python experiments/clip_emoji.py                    # both models (a finished run is reused)
    .venv/bin/python experiments/clip_emoji.py --models emoji --steps 300
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import ROOT  # noqa: E402

from ptmkit.analysis.report import write_results_block  # noqa: E402
from ptmkit.cli.overrides import build_config  # noqa: E402
from ptmkit.data.images import ImageTextSource  # noqa: E402
from ptmkit.recipes.image_text import build_run  # noqa: E402
from ptmkit.recipes.pretrain import PretrainConfig, pretrain  # noqa: E402
from ptmkit.recipes.zero_shot import ZeroShotConfig, evaluate_zero_shot  # noqa: E402
from ptmkit.train.logging import read_metrics  # noqa: E402
from ptmkit.train.optim import OptimConfig, build_optimizer  # noqa: E402
from ptmkit.train.precision import Precision  # noqa: E402

RECIPE = ROOT / "configs" / "clip-emoji.yaml"
EMOJI = "multimodal/emoji/emoji.jsonl"
COCO = "multimodal/coco-mini/captions.jsonl"
COCO_HELD_OUT = 0.5  # half of COCO-mini's 159 photos are test images: ~80 photos, ~400 captions
TEMPLATES = ["an emoji of {}", "{}", "a {} emoji"]  # prompt ensemble (CLIP §3.1.4)
TINY = {"model.config.vision.hidden_size": 32, "model.config.vision.num_layers": 1,
        "model.config.vision.num_heads": 2, "model.config.vision.intermediate_size": 64,
        "model.config.text.hidden_size": 32, "model.config.text.num_layers": 1, "model.config.text.num_heads": 2,
        "model.config.text.intermediate_size": 64, "model.config.projection_dim": 32, "data.batch_size": 16}


def sources(name: str, emoji: str, coco: str) -> list[dict]:
    out = [{"path": emoji, "captions": ["{name}", "{name}, {subcategory}"], "eval_captions": ["{name}"]}]
    if name == "emoji+coco":
        out.append({"path": coco, "captions": ["{captions}"], "held_out": COCO_HELD_OUT})
    return out


def run_config(name: str, args) -> PretrainConfig:
    over = {"images.train": sources(name, args.emoji, args.coco), "out": str(Path(args.out) / name),
            "images.cache_dir": str(Path(args.out) / "cache"), "train.progress_bar": False}
    if args.steps:
        over["train.steps"] = args.steps
        over["train.eval_every"] = max(1, args.steps // 6)
        over["train.checkpoint_every"] = max(1, args.steps // 3)
        over["schedule.warmup_steps"] = min(50, args.steps // 10)  # the recipe's 50, scaled down for short runs
    if args.tiny:
        over.update(TINY)
    return build_config(PretrainConfig, str(RECIPE), over)


def estimate(cfg: PretrainConfig, probe_steps: int = 2) -> dict:
    """Seconds per training step of this recipe, wall-clock and CPU (this process's, all threads), timed on two steps
    after a warm-up, and the run's estimate. On a shared machine the wall time depends on the other load; the CPU
    time is the work itself."""
    parts = build_run(cfg, None, resume=False)
    model, objective, batches = parts["model"], parts["objective"], parts["batches"]
    opt = build_optimizer(model, OptimConfig())
    prec = Precision(cfg.train.precision, torch.device("cpu"))
    wall, cpu = [], []
    for _ in range(probe_steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        with prec.autocast():
            loss, _ = objective.loss(model, next(batches))
        prec.backward(loss)
        prec.step(opt, model.parameters(), 1.0)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    step_s, cpu_s = (sorted(x[1:])[len(x[1:]) // 2] for x in (wall, cpu))
    return {"step_s": round(step_s, 2), "cpu_step_s": round(cpu_s, 2), "steps": cfg.train.steps,
            "threads": torch.get_num_threads(), "train_min": round(step_s * cfg.train.steps / 60, 1),
            "train_cpu_min": round(cpu_s * cfg.train.steps / 60, 1)}


def evaluate(model_dir: Path, args) -> dict:
    common = dict(model=str(model_dir), cache_dir=str(Path(args.out) / "cache"), split="held_out")
    emoji = evaluate_zero_shot(ZeroShotConfig(
        source=ImageTextSource(path=args.emoji, captions=["{name}"]), classes="category", templates=TEMPLATES,
        held_out=0.1, probe=True, **common))
    coco = evaluate_zero_shot(ZeroShotConfig(
        source=ImageTextSource(path=args.coco, captions=["{captions}"]), held_out=COCO_HELD_OUT, **common))
    return {"emoji": emoji, "coco": coco}


def plot(runs: dict[str, Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, run in runs.items():
        rows = read_metrics(run / "metrics.jsonl")
        train = [r for r in rows if r["split"] == "train"]
        evals = [r for r in rows if r["split"] == "eval"]
        ax[0].plot([r["step"] for r in train], [r["loss"] for r in train], label=name)
        ax[1].plot([r["step"] for r in evals], [r["t2i_r1"] for r in evals], marker="o", label=f"{name}: text->image")
        ax[1].plot([r["step"] for r in evals], [r["i2t_r1"] for r in evals], marker="x", ls="--",
                   label=f"{name}: image->text")
        if evals:
            ax[1].axhline(evals[-1]["t2i_r1_chance"], color="grey", lw=0.8)
    ax[0].set(xlabel="step", ylabel="training loss (symmetric InfoNCE)", title="training")
    ax[1].set(xlabel="step", ylabel="held-out R@1", title="each model's own held-out images (grey: chance)")
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def block(results: dict, summaries: dict, args, est: dict) -> str:
    lines = ["| model | test images | direction | R@1 | R@5 | R@10 | chance R@1 / R@5 / R@10 |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for test, label in (("emoji", "held-out emoji (name as query)"), ("coco", "held-out COCO-mini (5 captions)")):
            ret = r[test]["retrieval"]
            for way, arrow in (("image_to_text", "image → text"), ("text_to_image", "text → image")):
                rec, ch = ret["recall"][way], ret["chance"][way]
                lines.append(f"| {name} | {label}: {ret['images']} images, {ret['captions']} captions | {arrow} | "
                             f"{pct(rec[1])} | {pct(rec[5])} | {pct(rec[10])} | "
                             f"{pct(ch[1])} / {pct(ch[5])} / {pct(ch[10])} |")
    lines += ["", "| model | zero-shot category accuracy (prompts) | chance (uniform / majority class) | "
                  "linear probe on the same image vectors |", "|---|---|---|---|"]
    for name, r in results.items():
        z, probe = r["emoji"]["zero_shot"], r["emoji"]["linear_probe"]
        lines.append(f"| {name} | {pct(z['accuracy'])} | {pct(z['chance_uniform'])} / {pct(z['chance_majority'])} | "
                     f"{pct(probe['accuracy'])} (trained on {probe['train_images']} training emoji) |")
    lines += [""]
    for name, s in summaries.items():
        lines.append(f"- **{name}**: {s['steps']} steps of {s['batch']} pairs in {s['train_s'] / 60:.1f} min "
                     f"({s['train_s'] / max(1, s['steps']):.2f} s/step, {s['threads']} CPU threads); loading images "
                     f"from the cache took {100 * s['data_fraction']:.2f}% of the training time.")
    z0 = next(iter(results.values()))["emoji"]["zero_shot"]
    lines += ["", f"Zero-shot prompts: {', '.join(repr(t) for t in TEMPLATES)}, averaged per class; the "
              f"{z0['classes']} classes are the emoji categories ({', '.join(z0['class_names'])}), which no "
              "training caption names. Percentages; chance is exact (k / N for text → image, the hypergeometric "
              "probability for image → text). Before training, a two-step probe estimated "
              f"{est['step_s']} s/step ({est['cpu_step_s']} CPU-s, {est['threads']} threads): {est['train_min']} min "
              "of training per model. "
              f"Measured {date.today().isoformat()} with `python experiments/clip_emoji.py"
              + (f" --steps {args.steps}" if args.steps else "") + ("` (tiny models)." if args.tiny else "`.")]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="emoji,emoji+coco", help="which of emoji, emoji+coco to train and evaluate")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    p.add_argument("--emoji", default=EMOJI, help="the emoji JSON lines (default: under $PTMKIT_DATA)")
    p.add_argument("--coco", default=COCO, help="the COCO-mini JSON lines (default: under $PTMKIT_DATA)")
    p.add_argument("--out", default="runs/clip_emoji", help="run folders, the image cache and results.json")
    p.add_argument("--docs", default=str(ROOT / "docs" / "multimodal.md"), help="page whose 'clip' block is written")
    p.add_argument("--figure", default=str(ROOT / "docs" / "multimodal" / "clip_emoji.png"))
    p.add_argument("--tiny", action="store_true", help="tiny models (a smoke test in seconds)")
    p.add_argument("--estimate-only", action="store_true", help="time two steps, print the estimate, and stop")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    bad = [n for n in names if n not in ("emoji", "emoji+coco")]
    if bad:
        p.error(f"--models: unknown {bad}; choose from emoji, emoji+coco")
    est = estimate(run_config(names[0], args))
    print(f"estimate: {est['step_s']} s/step wall ({est['cpu_step_s']} CPU-s) on {est['threads']} threads -> "
          f"{est['train_min']} min of training per model ({est['train_cpu_min']} CPU-min), {len(names)} model(s)",
          flush=True)
    if args.estimate_only:
        out = {"experiment": "clip_emoji", "estimate": est}
        print(json.dumps(out))
        return out
    results, summaries, runs = {}, {}, {}
    for name in names:
        cfg = run_config(name, args)
        run = Path(cfg.out)
        done = run / "summary.json"
        if not (done.is_file() and not json.loads(done.read_text()).get("interrupted")):
            resume = (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir())
            pretrain(cfg, resume=resume, overwrite=not resume)  # a stopped run continues; a broken one restarts
        s = json.loads(done.read_text())
        summaries[name] = {"steps": s["steps"], "batch": cfg.data.batch_size, "train_s": s["train_s"],
                           "data_fraction": s["data_fraction"], "threads": torch.get_num_threads()}
        runs[name] = run
        results[name] = evaluate(run / "model", args)
    if args.figure:
        plot(runs, Path(args.figure))
    text = block(results, summaries, args, est)
    print(text)
    if args.docs:
        write_results_block(args.docs, text, "Multimodal pre-training", name="clip")
    compact = {name: {test: {"recall": r[test]["retrieval"]["recall"], "chance": r[test]["retrieval"]["chance"]}
                      for test in ("emoji", "coco")} for name, r in results.items()}
    for name, r in results.items():
        compact[name]["zero_shot"] = r["emoji"]["zero_shot"]["accuracy"]
        compact[name]["linear_probe"] = r["emoji"]["linear_probe"]["accuracy"]
    out = {"experiment": "clip_emoji", "estimate": est, "runs": summaries, "results": compact}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
