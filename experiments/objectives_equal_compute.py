"""Survey §3.2/§4 (ELECTRA, Clark et al. 2020): is replaced-token detection more compute-efficient than masked LM?

Pre-trains the same small encoder on the Gutenberg corpus with MLM, whole-word masking, SpanBERT span masking
(+ SBO) and ELECTRA's RTD for the same number of training FLOPs, then fine-tunes each on SST-2, CoLA, RTE and
STS-B with several seeds and writes a results table and a plot under docs/.

Equal compute: the budget is `--budget` steps of the MLM model; every objective gets as many steps as fit in the
same FLOPs, counted by torch's FlopCounterMode on one real training step of each (so the SBO head and the ELECTRA
generator are paid for). Every model is the ELECTRA family with embedding size = width (a plain BERT encoder), so
the trunk, initialisation, optimiser, schedule, data order and fine-tuning head are the same for all objectives.

    python experiments/objectives_equal_compute.py                 # CPU default, under an hour on 2 cores
    python experiments/objectives_equal_compute.py --scale gpu     # ELECTRA-Small-sized study for a GPU

Finished runs are skipped when the command is repeated, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from ptmkit.cli.options import add_precision_option
from ptmkit.recipes.finetune import FinetuneConfig, finetune
from ptmkit.analysis.machine import device_text
from ptmkit.analysis.report import write_results_block
from ptmkit.config import from_dict
from ptmkit.data.batches import PretrainBatches
from ptmkit.data.demo import ensure_demo_data
from ptmkit.data.sampler import PackedDataset
from ptmkit.data.shards import TokenShards
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.train.flops import measured_step_flops
from ptmkit.train.precision import Precision, resolve
from ptmkit.recipes.pretrain import (
    PretrainConfig, plain_training_module, pretrain, save_trained,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lists import ints, names  # noqa: E402

OBJECTIVES = ("mlm", "wwm", "span", "rtd")
LABELS = {"mlm": "MLM", "wwm": "whole-word MLM", "span": "span + SBO", "rtd": "ELECTRA RTD",
          "none": "no pre-training (same init)"}
TASKS = ("sst2", "cola", "rte", "stsb")
# per task: (max tokens, training-example cap of the CPU default); the score is the task's GLUE main metric
TASK_SETTINGS = {"sst2": (64, 8000), "cola": (64, None), "rte": (128, None), "stsb": (128, None)}

SCALES = {
    # 2 CPU cores: 4 layers x 128, 1,200 MLM-step budget (~4.9M tokens per objective)
    "cpu": dict(hidden=128, layers=4, heads=2, embedding=None, budget=1200, batch_size=32, seq_len=128, lr=1e-3,
                pretrain_seeds=[0], finetune_seeds=[0, 1, 2], ft_epochs=3.0, ft_lr=3e-4, ft_full=False,
                precision="auto"),
    # ELECTRA-Small's shape (Clark et al. Table 6: 12 x 256, 128-wide embeddings), 20k steps of 128 x 128
    "gpu": dict(hidden=256, layers=12, heads=4, embedding=128, budget=20000, batch_size=128, seq_len=128, lr=5e-4,
                pretrain_seeds=[0, 1, 2], finetune_seeds=[0, 1, 2, 3, 4], ft_epochs=3.0, ft_lr=3e-4, ft_full=True,
                precision="bf16"),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu", help="preset sizes; the options below override it")
    p.add_argument("--objectives", type=names(OBJECTIVES), default=",".join(OBJECTIVES), help=f"comma list from {OBJECTIVES}")
    p.add_argument("--tasks", type=names(TASKS), default=",".join(TASKS), help=f"comma list from {TASKS}")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the reference row: the same initial weights fine-tuned without pre-training")
    p.add_argument("--budget", type=int, help="compute budget, in training steps of the MLM model")
    p.add_argument("--hidden", type=int, help="encoder width")
    p.add_argument("--layers", type=int, help="encoder depth")
    p.add_argument("--heads", type=int, help="attention heads")
    p.add_argument("--embedding", type=int, help="embedding size (ELECTRA factorisation); default = width")
    p.add_argument("--batch-size", type=int, help="pre-training sequences per step")
    p.add_argument("--seq-len", type=int, help="pre-training tokens per sequence")
    p.add_argument("--lr", type=float, help="pre-training peak learning rate (same for every objective)")
    p.add_argument("--pretrain-seeds", type=ints, help="comma list; one pre-training run per objective and seed")
    p.add_argument("--finetune-seeds", type=ints, help="comma list; one fine-tuning run per model, task and seed")
    p.add_argument("--ft-epochs", type=float, help="fine-tuning epochs")
    p.add_argument("--ft-lr", type=float, help="fine-tuning learning rate (same for every model and task)")
    p.add_argument("--ft-max-train", type=int, help="cap on training examples per task (default: the scale's)")
    p.add_argument("--ft-max-eval", type=int, help="cap on dev examples per task (default: all)")
    add_precision_option(p, default=None, extra="default: the scale's preset, auto at the cpu scale")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--tokenizer", help="tokenizer directory (default: runs/demo/tokenizer, built if missing)")
    p.add_argument("--shards", help="Gutenberg token shards (default: runs/demo/data/gutenberg, built if missing)")
    p.add_argument("--out", default="runs/objectives_equal_compute", help="run directory (resumable)")
    p.add_argument("--docs", default="docs/objectives_equal_compute.md",
                   help="markdown page whose results block is rewritten ('' = none); the plot goes beside it")
    args = p.parse_args(argv)
    for key, value in SCALES[args.scale].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key in ("pretrain_seeds", "finetune_seeds"):  # a scale's default is a list already
        setattr(args, key, list(getattr(args, key)))
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.precision = resolve(args.precision, torch.device(args.device))  # plans and tables record what ran
    return args


# ---- data -----------------------------------------------------------------------------------------------------------

def ensure_data(args) -> tuple[str, str]:
    """The demo's 16k WordPiece tokenizer and Gutenberg shards, built here when the demo has not run."""
    tok_dir, shards = args.tokenizer or "runs/demo/tokenizer", args.shards or "runs/demo/data/gutenberg"
    ensure_demo_data(tok_dir, shards, tag="[equal-compute]")
    return str(tok_dir), str(shards)


# ---- pre-training ---------------------------------------------------------------------------------------------------

def pretrain_config(args, objective: str, steps: int, seed: int, out: Path, tok: str, shards: str) -> PretrainConfig:
    model = {"hidden_size": args.hidden, "num_layers": args.layers, "num_heads": args.heads,
             "intermediate_size": 4 * args.hidden, "embedding_size": args.embedding or args.hidden,
             # room for the longest fine-tuning input too (positions beyond seq_len stay at their initialisation)
             "max_position_embeddings": max(args.seq_len, *(n for n, _ in TASK_SETTINGS.values()))}
    return from_dict(PretrainConfig, {
        "model": {"family": "electra", "config": model},
        "data": {"train": shards, "tokenizer": tok, "seq_len": args.seq_len, "batch_size": args.batch_size,
                 "boundary": "no_cross"},
        "objective": {"name": objective},  # each objective at its paper's defaults (docs/objectives_*.md)
        "train": {"steps": steps, "precision": args.precision, "device": args.device, "seed": seed,
                  "log_every": 10, "eval_every": 0, "checkpoint_every": max(steps // 2, 1)},
        "optim": {"lr": args.lr, "weight_decay": 0.01, "betas": [0.9, 0.98], "grad_clip": 1.0},
        "schedule": {"warmup_steps": max(1, steps // 10), "decay": "linear"},
        "out": str(out),
    })


def step_flops(cfg: PretrainConfig, n_batches: int = 4) -> float:
    """Training FLOPs of one step (forward + backward) of this configuration, measured on a real batch."""
    tok = Tokenizer.load(cfg.data.tokenizer)
    module = plain_training_module(cfg, tok).to(cfg.train.device)  # the model with the objective's own networks
    data = PackedDataset(TokenShards(cfg.data.train, tok), cfg.data.seq_len, cfg.data.boundary, pad_id=tok.pad_id)
    batches = PretrainBatches(data, cfg.data.batch_size, module.loss_fn)
    precision = Precision(cfg.train.precision, torch.device(cfg.train.device))

    def step():
        batch = {k: v.to(cfg.train.device) for k, v in next(batches).items()}
        with precision.autocast():
            loss, _ = module(batch)
        loss.backward()

    # heads that score only the masked positions cost what the batch's mask draws: average a few batches
    return sum(measured_step_flops(step) for _ in range(n_batches)) / n_batches


PLAN_KEYS = ("budget", "hidden", "layers", "heads", "embedding", "batch_size", "seq_len", "precision")


def load_plan(args, path: Path) -> dict[str, dict]:
    """Steps and measured FLOPs per objective of an earlier invocation, so a repeated or extended command (more
    seeds, another objective) keeps the step counts of the runs it reuses."""
    if not path.exists():
        return {}
    saved = json.loads(path.read_text())
    now = {k: getattr(args, k) for k in PLAN_KEYS}
    if saved["signature"] != now:
        diff = {k: (saved["signature"].get(k), v) for k, v in now.items() if saved["signature"].get(k) != v}
        raise SystemExit(f"{path.parent} holds a study with other settings (was, now): {diff}; "
                         "pass another --out or the same settings")
    return saved["plan"]


def run_pretraining(args, tok: str, shards: str) -> dict[str, dict]:
    """Steps per objective for the equal-FLOPs budget, then one pre-training run per objective and seed."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plan = load_plan(args, out / "plan.json")
    missing = [o for o in ("mlm", *args.objectives) if o not in plan]
    if missing:
        probe = {o: step_flops(pretrain_config(args, o, 1, 0, out / "probe", tok, shards)) for o in missing}
        base = plan["mlm"]["step_flops"] if "mlm" in plan else probe["mlm"]
        plan.update({o: {"step_flops": f, "steps": max(1, round(args.budget * base / f))} for o, f in probe.items()})
        signature = {k: getattr(args, k) for k in PLAN_KEYS}
        (out / "plan.json").write_text(json.dumps({"signature": signature, "plan": plan}, indent=2) + "\n")
    print("[equal-compute] budget %.3g FLOPs (%d MLM steps); steps: %s" % (
        args.budget * plan["mlm"]["step_flops"], args.budget, {o: plan[o]["steps"] for o in args.objectives}),
        flush=True)
    plan = {o: {**plan[o], "runs": {}} for o in args.objectives}
    for seed in args.pretrain_seeds:
        for o in args.objectives:
            run = out / "pretrain" / f"{o}-seed{seed}"
            if not (run / "summary.json").exists() or not (run / "model").exists():
                print(f"[equal-compute] pre-training {o} seed {seed}: {plan[o]['steps']} steps", flush=True)
                pretrain(pretrain_config(args, o, plan[o]["steps"], seed, run, tok, shards), overwrite=True)  # an unfinished run restarts
            summary = json.loads((run / "summary.json").read_text())
            plan[o]["runs"][seed] = {"dir": str(run / "model"), "wall_s": summary["wall_s"],
                                     "steps": summary["steps"]}
    if not args.no_baseline:  # what pre-training adds: the same initialisation, fine-tuned directly
        plan["none"] = {"step_flops": 0.0, "steps": 0, "runs": {}}
        for seed in args.pretrain_seeds:
            model_dir = out / "pretrain" / f"none-seed{seed}" / "model"
            if not (model_dir / "config.json").exists():
                save_initial_model(pretrain_config(args, "mlm", 1, seed, model_dir.parent, tok, shards), model_dir)
            plan["none"]["runs"][seed] = {"dir": str(model_dir), "wall_s": 0.0, "steps": 0}
    return plan


def save_initial_model(cfg: PretrainConfig, model_dir: Path) -> None:
    """The weights every objective's run starts from (pretrain seeds torch, then builds the objective and model)."""
    tokenizer = Tokenizer.load(cfg.data.tokenizer)
    torch.manual_seed(cfg.train.seed)
    save_trained(plain_training_module(cfg, tokenizer).model, None, tokenizer, model_dir, model_dir.parent)


# ---- fine-tuning ----------------------------------------------------------------------------------------------------

def run_finetuning(args, plan: dict) -> list[dict]:
    rows = []
    for o, p in plan.items():
        for seed, run in p["runs"].items():
            for task in args.tasks:
                max_len, cap = TASK_SETTINGS[task]
                for fseed in args.finetune_seeds:
                    out = Path(args.out) / "finetune" / f"{o}-seed{seed}" / f"{task}-seed{fseed}"
                    if not (out / "results.json").exists():
                        print(f"[equal-compute] fine-tuning {o} seed {seed} on {task}, seed {fseed}", flush=True)
                        finetune(FinetuneConfig(
                            model=run["dir"], task=task, out=str(out), epochs=args.ft_epochs, lr=args.ft_lr,
                            max_length=max_len, batch_size=32, seed=fseed, precision=args.precision,
                            device=args.device, max_train_examples=args.ft_max_train or (None if args.ft_full else cap),
                            max_eval_examples=args.ft_max_eval, overwrite=True, show_progress=False))
                    res = json.loads((out / "results.json").read_text())
                    metric = res["main_metric"]
                    rows.append({"objective": o, "pretrain_seed": seed, "task": task, "finetune_seed": fseed,
                                 "metric": metric, "final": res["final"][metric], "best": res["dev"][metric],
                                 "train_examples": res["train_examples"], "wall_s": res["wall_time_s"]})
    return rows


def summarise(rows: list[dict], objectives: list[str], tasks: list[str]) -> dict[str, dict[str, dict]]:
    """Mean, standard deviation, min and max of the final dev score over every (pre-train, fine-tune) seed pair;
    'average' is the mean over tasks of each seed pair's scores (as the GLUE score)."""
    table: dict[str, dict[str, dict]] = {}
    for o in objectives:
        table[o] = {}
        per_pair: dict[tuple, list[float]] = {}
        for t in tasks:
            vals = [100 * r["final"] for r in rows if r["objective"] == o and r["task"] == t]
            table[o][t] = _stats(vals)
            for r in rows:
                if r["objective"] == o and r["task"] == t:
                    per_pair.setdefault((r["pretrain_seed"], r["finetune_seed"]), []).append(100 * r["final"])
        table[o]["average"] = _stats([statistics.fmean(v) for v in per_pair.values() if len(v) == len(tasks)])
    return table


def _stats(vals: list[float]) -> dict:
    if not vals:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "min": min(vals), "max": max(vals), "n": len(vals)}


# ---- report ---------------------------------------------------------------------------------------------------------

def plot(table: dict, tasks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [*tasks, "average"]
    objectives = list(table)
    fig, ax = plt.subplots(figsize=(1.6 * len(cols) + 2, 3.6))
    width = 0.8 / len(objectives)
    for i, o in enumerate(objectives):
        xs = [j + (i - (len(objectives) - 1) / 2) * width for j in range(len(cols))]
        ax.bar(xs, [table[o][c]["mean"] for c in cols], width, yerr=[table[o][c]["std"] for c in cols],
               capsize=3, label=LABELS[o])
    ax.set_xticks(range(len(cols)), [c.upper() if c != "average" else "average" for c in cols])
    ax.set_ylabel("dev score x 100 (mean ± std over seeds)")
    ax.set_title("Equal pre-training compute: MLM variants vs ELECTRA RTD")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(args, plan: dict, table: dict, rows: list[dict]) -> str:
    cols = [*args.tasks, "average"]
    metric = {r["task"]: r["metric"] for r in rows}
    head = "| objective | steps | step GFLOPs | pre-train min | " + " | ".join(
        f"{c.upper()} ({metric[c]})" if c in metric else "average" for c in cols) + " |"
    lines = [head, "|" + "---|" * (4 + len(cols))]
    for o, p in plan.items():
        minutes = statistics.fmean(r["wall_s"] for r in p["runs"].values()) / 60
        cells = [f"{table[o][c]['mean']:.1f} ± {table[o][c]['std']:.1f}" for c in cols]
        steps = statistics.fmean(r["steps"] for r in p["runs"].values())  # as run (plan.json keeps them)
        lines.append(f"| {LABELS[o]} | {steps:.0f} | {p['step_flops'] / 1e9:.1f} | {minutes:.1f} | "
                     + " | ".join(cells) + " |")
    n = len(args.pretrain_seeds) * len(args.finetune_seeds)
    pretrain_min = sum(r["wall_s"] for p in plan.values() for r in p["runs"].values()) / 60
    finetune_min = sum(r["wall_s"] for r in rows) / 60
    lines += ["", f"Mean ± standard deviation over {n} runs per cell (pre-training seeds {args.pretrain_seeds} × "
              f"fine-tuning seeds {args.finetune_seeds}); final dev score after {args.ft_epochs:g} epochs, no "
              f"checkpoint selection on dev. Scale `{args.scale}`: {args.layers} layers × {args.hidden}, "
              f"budget = {args.budget} MLM steps of {args.batch_size} × {args.seq_len} tokens, precision "
              f"{args.precision}, device {device_text(args.device)}; measured {date.today().isoformat()}. Time spent (sum of the "
              f"runs' wall clocks, across invocations): pre-training {pretrain_min:.0f} min, fine-tuning "
              f"{finetune_min:.0f} min."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    tok, shards = ensure_data(args)
    plan = run_pretraining(args, tok, shards)
    rows = run_finetuning(args, plan)
    table = summarise(rows, list(plan), args.tasks)
    wall = time.perf_counter() - t0
    out = Path(args.out)
    result = {"scale": args.scale, "args": {k: v for k, v in vars(args).items()}, "plan": plan, "table": table,
              "runs": rows, "wall_s": wall}
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    block = markdown(args, plan, table, rows)
    print(block)
    if args.docs:
        doc = Path(args.docs)
        plot(table, args.tasks, doc.with_suffix(".png"))
        figure = f"\n\n![results]({doc.with_suffix('.png').name})"
        write_results_block(doc, block + figure, "Objectives at equal compute")
    print(json.dumps({"table": {o: {c: round(v["mean"], 2) for c, v in t.items()} for o, t in table.items()},
                      "wall_s": round(wall, 1)}))
    return result


if __name__ == "__main__":
    main()
