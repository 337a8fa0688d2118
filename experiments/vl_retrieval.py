"""Issue 18 (survey §5.2): image->text and text->image retrieval of the three kinds of vision-language model at equal
compute — a CLIP dual encoder (configs/clip-emoji.yaml), a single-stream encoder (configs/visualbert-emoji.yaml) and a
two-stream encoder (configs/lxmert-emoji.yaml) — all trained from scratch on emoji + COCO-mini (10% of the emoji and
half of the COCO-mini photos held out by image id), then scored on the held-out images: CLIP by cosine similarity of
its image and text vectors, the other two by the image-text matching score of every image-caption pair (UNITER §4).
Recall@1/5/10 both ways beside chance; writes the "vl-retrieval" block of docs/multimodal.md.

Equal compute: each model's training FLOPs per step are counted on a real batch (torch's FlopCounterMode: matmuls and
convolutions, forward + backward; CPU attention kernels count zero for all three), and each runs as many steps as
CLIP's recipe spends (its steps x its step FLOPs), at the recipes' own batch sizes.

    .venv/bin/python experiments/vl_retrieval.py --smoke            # tiny models, a few steps, 16 test images
    .venv/bin/python experiments/vl_retrieval.py --estimate-only    # the plan and timed steps of the full study
    .venv/bin/python experiments/vl_retrieval.py                    # the full study (finished runs are reused)
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
from ptmkit.config import to_dict  # noqa: E402
from ptmkit.cli.overrides import build_config  # noqa: E402
from ptmkit.data.images import ImageTextSource  # noqa: E402
from ptmkit.recipes.image_text import build_run  # noqa: E402
from ptmkit.recipes.pretrain import PretrainConfig, pretrain  # noqa: E402
from ptmkit.recipes.zero_shot import ZeroShotConfig, evaluate_zero_shot  # noqa: E402
from ptmkit.retrieval.fingerprint import files_fingerprint  # noqa: E402
from ptmkit.train.flops import measured_step_flops  # noqa: E402
from ptmkit.train.optim import OptimConfig, build_optimizer  # noqa: E402
from ptmkit.train.precision import Precision  # noqa: E402

MODELS = {"clip": "clip-emoji.yaml", "single-stream": "visualbert-emoji.yaml", "two-stream": "lxmert-emoji.yaml"}
EMOJI = "multimodal/emoji/emoji.jsonl"
COCO = "multimodal/coco-mini/captions.jsonl"
COCO_HELD_OUT = 0.5
EMOJI_HELD_OUT = 0.1
# --smoke: every model at width 32 and one layer per stack, 16-pair batches, images of 32 px
SMOKE = {
    "clip": {"model.config.vision.hidden_size": 32, "model.config.vision.num_layers": 1,
             "model.config.vision.num_heads": 2, "model.config.vision.intermediate_size": 64,
             "model.config.vision.image_size": 32, "model.config.text.hidden_size": 32,
             "model.config.text.num_layers": 1, "model.config.text.num_heads": 2,
             "model.config.text.intermediate_size": 64, "model.config.projection_dim": 32},
    "single-stream": {"model.config.hidden_size": 32, "model.config.num_layers": 1, "model.config.num_heads": 2,
                      "model.config.intermediate_size": 64, "model.config.image_size": 32,
                      "model.config.num_visual_classes": 32},
    "two-stream": {"model.config.hidden_size": 32, "model.config.num_text_layers": 1,
                   "model.config.num_image_layers": 1, "model.config.num_cross_layers": 1,
                   "model.config.num_heads": 2, "model.config.intermediate_size": 64, "model.config.image_size": 32,
                   "model.config.num_visual_classes": 32},
}


def run_config(name: str, args, steps: int | None = None) -> PretrainConfig:
    sources = [{"path": args.emoji, "captions": ["{name}", "{name}, {subcategory}"], "eval_captions": ["{name}"]},
               {"path": args.coco, "captions": ["{captions}"], "held_out": COCO_HELD_OUT}]
    over = {"images.train": sources, "images.held_out": EMOJI_HELD_OUT, "out": str(Path(args.out) / name),
            "images.cache_dir": str(Path(args.out) / "cache"), "train.progress_bar": False}
    if steps is not None:
        # checkpoints every eighth: a session's end (processes die with it) then loses at most 1/8 of a run
        over.update({"train.steps": steps, "train.eval_every": max(1, steps // 4),
                     "train.checkpoint_every": max(1, steps // 8), "schedule.warmup_steps": min(50, steps // 10)})
    if args.smoke:
        over.update(SMOKE[name])
        over.update({"images.image_size": 32, "images.vocab_size": 500, "data.batch_size": 16})
    return build_config(PretrainConfig, str(ROOT / "configs" / MODELS[name]), over)


def measure(cfg: PretrainConfig, probe_steps: int = 2) -> dict:
    """Training FLOPs of one step (counted) and its wall-clock / CPU seconds (median of `probe_steps` after a warm-up)
    of this recipe, on its own batches."""
    parts = build_run(cfg, None, resume=False)
    model, objective, batches = parts["model"], parts["objective"], parts["batches"]
    opt = build_optimizer(model, OptimConfig())
    prec = Precision(cfg.train.precision, torch.device("cpu"))

    def step():
        with prec.autocast():
            loss, _ = objective.loss(model, next(batches))
        prec.backward(loss)
        prec.step(opt, model.parameters(), 1.0)

    flops = measured_step_flops(step)
    wall, cpu = [], []
    for _ in range(probe_steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"step_flops": flops, "step_s": sorted(wall)[len(wall) // 2], "cpu_step_s": sorted(cpu)[len(cpu) // 2]}


def plan(args) -> dict:
    """Steps per model so every model spends CLIP's recipe budget (its steps x its step FLOPs)."""
    out = {name: measure(run_config(name, args)) for name in args.models}
    base = run_config("clip", args)
    budget = (args.steps or base.train.steps) * (out["clip"]["step_flops"] if "clip" in out
                                                 else measure(base)["step_flops"])
    for name, m in out.items():
        m["steps"] = max(1, round(budget / m["step_flops"]))
        m["train_min"] = round(m["steps"] * m["step_s"] / 60, 1)
        m["train_cpu_min"] = round(m["steps"] * m["cpu_step_s"] / 60, 1)
    return {"budget_flops": budget, "models": out}


# what may differ between two runs of one recipe: where they write, and when they evaluate and checkpoint (neither
# changes the trained weights' recipe)
BOOKKEEPING = (("out",), ("images", "cache_dir"), ("train", "progress_bar"), ("train", "eval_every"),
               ("train", "checkpoint_every"))


def finished(run: Path, steps: int) -> bool:
    done = run / "summary.json"
    if not done.is_file():
        return False
    try:
        summary = json.loads(done.read_text())
    except ValueError:  # torn: the run did not finish
        return False
    return not summary.get("interrupted") and summary.get("steps") == steps and (run / "model").is_dir()


def same_recipe(run: Path, cfg: PretrainConfig) -> bool:
    """Whether the run in `run` was trained with `cfg`'s recipe (its run_config.json equal but for BOOKKEEPING)."""
    try:
        theirs = json.loads((run / "run_config.json").read_text())
    except (OSError, ValueError):  # none, or not readable: not a run to reuse
        return False
    ours = json.loads(json.dumps(to_dict(cfg)))
    if not isinstance(theirs, dict) or not isinstance(theirs.get("data"), dict):
        return False
    for d in (theirs, ours):  # a tokenizer the run trained on its captions is recorded as kept in its out/tokenizer
        if d["data"].get("tokenizer") == str(Path(str(d.get("out"))) / "tokenizer"):
            d["data"]["tokenizer"] = ""
    for path in BOOKKEEPING:
        for d in (theirs, ours):
            for key in path[:-1]:
                d = d.get(key) if isinstance(d.get(key), dict) else {}
            d.pop(path[-1], None)
    return theirs == ours


def evaluate(name: str, model_dir: Path, args) -> dict:
    common = dict(model=str(model_dir), cache_dir=str(Path(args.out) / "cache"), split="held_out",
                  max_images=args.max_images)
    emoji = evaluate_zero_shot(ZeroShotConfig(source=ImageTextSource(path=args.emoji, captions=["{name}"]),
                                              held_out=EMOJI_HELD_OUT, **common))
    coco = evaluate_zero_shot(ZeroShotConfig(source=ImageTextSource(path=args.coco, captions=["{captions}"]),
                                             held_out=COCO_HELD_OUT, **common))
    return {"emoji": emoji["retrieval"], "coco": coco["retrieval"]}


def scored(name: str, run: Path, args) -> dict:
    """evaluate(), kept in OUT/NAME-retrieval.json and reused while the run's model, the test sets and --max-images
    are the same: the pairwise models take minutes to score, and one process per model (--models) can each score
    its own before a last call assembles the table."""
    # the weights' content, not their path or mtime: a copied or moved run keeps its scores, retrained weights do not
    key = {"weights": files_fingerprint(sorted((run / "model").glob("*.safetensors"))), "emoji": args.emoji,
           "coco": args.coco, "max_images": args.max_images}
    path = Path(args.out) / f"{name}-retrieval.json"
    if path.is_file():
        kept = json.loads(path.read_text())
        if kept.get("key") == key:  # JSON made the recall levels (1, 5, 10) strings
            return {test: {**r, **{part: {way: {int(k): v for k, v in levels.items()} for way, levels in
                                          r[part].items()} for part in ("recall", "chance")}}
                    for test, r in kept["results"].items()}
    results = evaluate(name, run / "model", args)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")  # whole or absent: another process may read it
    tmp.write_text(json.dumps({"key": key, "results": results}, indent=2) + "\n")
    tmp.replace(path)
    return results


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def block(results: dict, the_plan: dict, args) -> str:
    lines = ["| model | test images | direction | R@1 | R@5 | R@10 | chance R@1 / R@5 / R@10 |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for test, label in (("emoji", "held-out emoji (name as query)"), ("coco", "held-out COCO-mini (5 captions)")):
            ret = r[test]
            for way, arrow in (("image_to_text", "image → text"), ("text_to_image", "text → image")):
                rec, ch = ret["recall"][way], ret["chance"][way]
                lines.append(f"| {name} | {label}: {ret['images']} images, {ret['captions']} captions | {arrow} | "
                             f"{pct(rec[1])} | {pct(rec[5])} | {pct(rec[10])} | "
                             f"{pct(ch[1])} / {pct(ch[5])} / {pct(ch[10])} |")
    lines += ["", "| model | training GFLOPs per step | steps | training time | CPU time |", "|---|---|---|---|---|"]
    for name, m in the_plan["models"].items():
        lines.append(f"| {name} | {m['step_flops'] / 1e9:.1f} | {m['steps']} | {m.get('train_s', 0) / 60:.1f} min | "
                     f"{m['train_cpu_min']} min (estimated) |")
    lines += ["", f"Equal compute: {the_plan['budget_flops'] / 1e12:.2f} TFLOPs of counted training matmuls per model "
              "(CLIP's recipe). CLIP ranks by cosine similarity; the single- and two-stream models by the image-text "
              "matching score of every pair. Percentages; chance is exact. "
              f"Measured {date.today().isoformat()} with `python experiments/vl_retrieval.py"
              + (" --smoke` (tiny models, a few steps: a check of the pipeline, not a result)." if args.smoke else "`.")]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"which of {', '.join(MODELS)}")
    p.add_argument("--steps", type=int, default=None, help="CLIP's steps, which fix the budget (default: its recipe's)")
    p.add_argument("--emoji", default=EMOJI)
    p.add_argument("--coco", default=COCO)
    p.add_argument("--max-images", type=int, default=None,
                   help="score only the first N held-out images of each set (pairwise models run N x M passes)")
    p.add_argument("--out", default="runs/vl_retrieval")
    p.add_argument("--docs", default=str(ROOT / "docs" / "multimodal.md"))
    p.add_argument("--reuse-clip", default="runs/clip_emoji/emoji+coco",
                   help="a finished CLIP run to score instead of training one, used only when its run_config.json is "
                        "this study's CLIP recipe and budget (experiments/clip_emoji.py's emoji+coco model is); "
                        "'' always trains")
    p.add_argument("--smoke", action="store_true", help="tiny models, CLIP budget of 4 steps, 16 test images")
    p.add_argument("--estimate-only", action="store_true", help="print the equal-compute plan and stop")
    args = p.parse_args(argv)
    args.models = [n.strip() for n in args.models.split(",") if n.strip()]
    bad = [n for n in args.models if n not in MODELS]
    if bad:
        p.error(f"--models: unknown {bad}; choose from {', '.join(MODELS)}")
    if args.smoke:
        args.steps, args.max_images = args.steps or 4, args.max_images or 16
    the_plan = plan(args)
    for name, m in the_plan["models"].items():
        print(f"{name}: {m['step_flops'] / 1e9:.2f} GFLOPs/step -> {m['steps']} steps, about {m['train_min']} min "
              f"({m['train_cpu_min']} CPU-min) of training", flush=True)
    if args.estimate_only:
        print(json.dumps({"experiment": "vl_retrieval", "plan": the_plan}))
        return {"plan": the_plan}
    results = {}
    for name, m in the_plan["models"].items():
        cfg = run_config(name, args, steps=m["steps"])
        run = Path(cfg.out)
        elsewhere = Path(args.reuse_clip) if name == "clip" and args.reuse_clip else None
        if not finished(run, m["steps"]) and elsewhere and finished(elsewhere, m["steps"]) \
                and same_recipe(elsewhere, cfg):
            print(f"clip: {elsewhere} was trained with this recipe and budget; it is scored instead of a new run",
                  flush=True)
            run = elsewhere
        elif not finished(run, m["steps"]):
            resume = (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir())
            pretrain(cfg, resume=resume, overwrite=not resume)
        m["train_s"] = json.loads((run / "summary.json").read_text())["train_s"]
        m["run"] = str(run)
        results[name] = scored(name, run, args)
    text = block(results, the_plan, args)
    print(text)
    if args.docs:
        write_results_block(args.docs, text, "Multimodal pre-training", name="vl-retrieval")
    out = {"experiment": "vl_retrieval", "plan": the_plan,
           "results": {n: {t: {"recall": r[t]["recall"], "chance": r[t]["chance"]} for t in r} for n, r in results.items()}}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
