"""Issue 20: what makes a few CPU-minutes of pre-training pay off? Each variant changes one thing in the demo's recipe
(BERT-mini, 4 x 256, masked LM on Gutenberg, 600 steps of 32 x 128 tokens, lr 1e-3, dropout 0.1, 16k WordPiece),
pre-trains, and is fine-tuned on SST-2 (a 2,000-example training subset) and CoLA (all 8,551) with 3 seeds; the
reference row is the same architecture fine-tuned from random initialisation with the same recipe
(`ptm finetune --init random`). Variants follow Geiping & Goldstein 2023 ("Cramming": no dropout, larger lr and
batch, shorter sequences), Wettig et al. 2023 (mask rate), Clark et al. 2020 (ELECTRA), Joshi et al. 2020
(span masking) and Gururangan et al. 2020 (task-adaptive pre-training on the tasks' own unlabelled training text).

    python experiments/pretraining_budget.py                          # every variant (resumable)
    python experiments/pretraining_budget.py --variants base,tapt     # some of them
    python experiments/pretraining_budget.py --steps 20 --seeds 0 --ft-epochs 0.05 --out /tmp/x --docs ''   # smoke
    python experiments/pretraining_budget.py --curve 500,2000,6000,18000 --variants base    # learning curve

--curve STEPS: one long pre-training run of the first variant keeps its checkpoints at these steps (train.keep_steps);
each is exported and fine-tuned like the variants, beside the random-initialisation point (0 steps), and the curve of
dev score against pre-training tokens and CPU-minutes is written to docs/pretraining_curve.{md,png}.

Finished pre-training and fine-tuning runs are reused when the command is repeated (same --out), so a study can be
extended or continued after an interruption; results.json and the docs block are rebuilt from every finished run.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

from ptmkit.analysis.report import write_results_block
from ptmkit.config import from_dict
from ptmkit.data.demo import ensure_demo_data
from ptmkit.data.paths import data_root
from ptmkit.data.shards import prepare_shards
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.recipes.finetune import FinetuneConfig, finetune
from ptmkit.recipes.pretrain import PretrainConfig, pretrain
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lists import floats, ints, names  # noqa: E402

# The demo's recipe (configs/bert-mini-mlm.yaml), at the demo's 600 steps.
BASE = {
    "model": {"family": "bert", "preset": "bert-mini",
              "config": {"max_position_embeddings": 128, "dropout": 0.1, "attention_dropout": 0.1}},
    "data": {"seq_len": 128, "batch_size": 32, "boundary": "no_cross", "eval_batches": 8},
    "objective": {"name": "mlm", "params": {"mask_prob": 0.15}},
    "train": {"steps": 600, "precision": "auto", "log_every": 10, "eval_every": 0, "checkpoint_every": 200},
    "optim": {"lr": 1e-3, "weight_decay": 0.01, "betas": [0.9, 0.98], "grad_clip": 1.0},
    "schedule": {"warmup_steps": 100, "decay": "linear"},
}
# name -> (what changes, dotted overrides of BASE). Token budgets stay equal: a larger batch takes fewer steps.
# "<tapt>" and "<gutenberg8k>"/"<tok8k>" name data this script builds.
VARIANTS = {
    "base": ("the demo's recipe", {}),
    "lr3e-4": ("peak lr 3e-4", {"optim.lr": 3e-4}),
    "lr2e-3": ("peak lr 2e-3", {"optim.lr": 2e-3}),
    "pre-norm": ("pre-norm blocks + final norm (Megatron-BERT)", {"model.family": "megatron-bert",
                                                                  "model.preset": "megatron-bert-mini"}),
    "pre-norm-lr2e-3": ("pre-norm, peak lr 2e-3 (Cramming)", {"model.family": "megatron-bert",
                                                              "model.preset": "megatron-bert-mini",
                                                              "optim.lr": 2e-3}),
    "no-dropout": ("no dropout (Cramming)", {"model.config.dropout": 0.0, "model.config.attention_dropout": 0.0}),
    "batch128": ("batch 128 (4 x 32 accumulated), 150 steps", {"train.grad_accum": 4, "train.steps": 150,
                                                               "schedule.warmup_steps": 25}),
    "seq64": ("64-token sequences, batch 64", {"data.seq_len": 64, "data.batch_size": 64}),
    "mask30": ("30% masking (Wettig et al.)", {"objective.params.mask_prob": 0.3}),
    "vocab8k": ("8k WordPiece vocabulary (its MLM loss is over other tokens: not comparable)",
                {"data.tokenizer": "<tok8k>", "data.train": "<gutenberg8k>", "data.eval": "<valid8k>"}),
    "span": ("span masking + SBO (SpanBERT)", {"objective.name": "span", "objective.params": {}}),
    "electra": ("ELECTRA replaced-token detection", {"model.family": "electra", "model.preset": None,
                                                     "model.config.hidden_size": 256, "model.config.num_layers": 4,
                                                     "model.config.num_heads": 4,
                                                     "model.config.intermediate_size": 1024,
                                                     "objective.name": "rtd", "objective.params": {}}),
    # packed across sentence boundaries (RoBERTa's FULL-SENTENCES): the sentences are short, and "mask" packing's
    # per-row document masks ran ~5x slower per step here
    "tapt": ("task-adaptive from scratch: SST-2 + CoLA training text instead of Gutenberg",
             {"data.train": "<tapt>", "data.boundary": "cross"}),
    # Gururangan et al.'s TAPT proper: the base model's pre-training continued on the task text (+1/3 compute)
    "base+tapt": ("base, then 200 more steps on SST-2 + CoLA training text (lr 5e-4)",
                  {"model.init_from": "<model:base>", "data.train": "<tapt>", "data.boundary": "cross",
                   "train.steps": 200, "schedule.warmup_steps": 20, "optim.lr": 5e-4}),
    # the no-dropout model again, fine-tuned with dropout 0.1 (Cramming pre-trains without and fine-tunes with it):
    # "same_model" reuses another variant's pre-trained model, "finetune.*" sets a fine-tuning option
    "no-dropout-ft0.1": ("the no-dropout model, fine-tuned with dropout 0.1 (Cramming)",
                         {"same_model": "no-dropout", "finetune.dropout": 0.1}),
    # mean pooling for the classifier (MLM never trains [CLS]), for the base model and for random initialisation
    "base-mean": ("the base model, classifier on the mean of the token vectors", {"same_model": "base",
                                                                                   "finetune.pooling": "mean"}),
    "random-mean": ("no pre-training, classifier on the mean of the token vectors",
                    {"same_model": "base", "finetune.pooling": "mean", "finetune.init": "random"}),
    "no-dropout+tapt": ("no-dropout, then 200 more steps on SST-2 + CoLA training text (lr 5e-4)",
                        {"model.init_from": "<model:no-dropout>", "model.config.dropout": 0.0,
                         "model.config.attention_dropout": 0.0, "data.train": "<tapt>", "data.boundary": "cross",
                         "train.steps": 200, "schedule.warmup_steps": 20, "optim.lr": 5e-4}),
}
TASKS = {"sst2": dict(max_train_examples=2000, max_length=64), "cola": dict(max_train_examples=None, max_length=64)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variants", type=names(VARIANTS), default=",".join(VARIANTS), help=f"comma list from {list(VARIANTS)}")
    p.add_argument("--no-random", action="store_true", help="skip the random-initialisation reference row")
    p.add_argument("--steps", type=int, help="pre-training steps of the base recipe (default 600; variants that "
                                             "change the batch scale it to keep the tokens equal)")
    p.add_argument("--tasks", type=names(TASKS), default=",".join(TASKS), help=f"comma list from {list(TASKS)}")
    p.add_argument("--seeds", type=ints, default="0,1,2", help="fine-tuning seeds")
    p.add_argument("--ft-epochs", type=float, default=3.0, help="fine-tuning epochs")
    p.add_argument("--ft-lr", type=float, default=1e-4, help="fine-tuning peak lr (every model, every task)")
    p.add_argument("--ft-lrs", type=floats, default="",
                   help="comma list of further fine-tuning lrs for every model (random initialisation included): each "
                        "model is then compared at its best lr, so no model is judged at an lr that suits another")
    p.add_argument("--random-lrs", type=floats, default="",
                   help="comma list of further fine-tuning lrs for the random-initialisation rows (random-lrX): a "
                        "random model may want a larger lr than a pre-trained one, so its best lr is a fairer floor")
    p.add_argument("--ft-batch-size", type=int, default=32, help="fine-tuning batch size")
    p.add_argument("--sst2-train", type=int, default=TASKS["sst2"]["max_train_examples"],
                   help="SST-2 training examples (a seeded subset)")
    p.add_argument("--width", type=int, help="encoder width over every variant's (heads = width / 64, at least 2)")
    p.add_argument("--layers", type=int, help="encoder depth over every variant's")
    p.add_argument("--tokenizer", default="runs/demo/tokenizer", help="16k tokenizer (built here when missing)")
    p.add_argument("--shards", default="runs/demo/data/gutenberg", help="Gutenberg shards (built when missing)")
    p.add_argument("--eval-shards", default="runs/demo/data/wikitext2-valid", help="held-out shards (built when "
                                                                                   "missing)")
    p.add_argument("--task-text-limit", type=int, help="tapt: use only the first N task sentences")
    p.add_argument("--curve", type=ints, default="", help="comma list of pre-training steps: the learning-curve mode (see above)")
    p.add_argument("--curve-docs", default="docs/pretraining_curve.md", help="page of the curve ('' = none)")
    p.add_argument("--curve-block", default="", help="name of the page's results block the curve fills ('' = its "
                   "only block); the plot is then <page>_<name>.png (several curves on one page)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rewrite results.json and the docs block from the runs that have finished")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--out", default="runs/pretraining_budget", help="study folder (resumable)")
    p.add_argument("--docs", default="docs/pretraining_budget.md", help="page whose results block is rewritten "
                                                                        "('' = none)")
    args = p.parse_args(argv)
    args.curve = sorted(set(args.curve))
    if any(v <= 0 for v in args.curve):
        p.error(f"--curve: steps must be positive, got {args.curve}")
    return args


# ---- data -----------------------------------------------------------------------------------------------------------

def ensure_data(args, out: Path, variants: list[str]) -> dict[str, str]:
    """Tokenizers and shards the variants read: the demo's (16k WordPiece, Gutenberg, WikiText-2 valid), plus an 8k
    tokenizer and its Gutenberg shards, and the task text (SST-2 + CoLA training sentences, no labels, no dev text)."""
    paths = {"tok": args.tokenizer, "gutenberg": args.shards, "valid": args.eval_shards}
    ensure_demo_data(paths["tok"], paths["gutenberg"], paths["valid"], tag="[budget]")
    if "vocab8k" in variants:
        paths["tok8k"], paths["gutenberg8k"] = str(out / "data" / "tok8k"), str(out / "data" / "gutenberg8k")
        if not (Path(paths["tok8k"]) / "tokenizer.json").exists():
            corpus = data_root() / "corpora" / "gutenberg.jsonl.gz"
            Tokenizer.train(corpus, kind="wordpiece", vocab_size=8000, model_max_length=128).save(paths["tok8k"])
        if not (Path(paths["gutenberg8k"]) / "meta.json").exists():
            prepare_shards(data_root() / "corpora" / "gutenberg.jsonl.gz", paths["tok8k"], paths["gutenberg8k"],
                           overwrite=True)
        paths["valid8k"] = str(out / "data" / "wikitext2-valid8k")  # held-out text under the 8k tokenizer
        if not (Path(paths["valid8k"]) / "meta.json").exists():
            prepare_shards(data_root() / "corpora" / "wikitext-2" / "valid.txt", paths["tok8k"], paths["valid8k"],
                           txt_mode="lines", overwrite=True)
    if any(v.endswith("tapt") for v in variants):
        paths["tapt"] = str(out / "data" / "tapt")
        if not (Path(paths["tapt"]) / "meta.json").exists():
            text = out / "data" / "task_text.txt"
            text.parent.mkdir(parents=True, exist_ok=True)
            text.write_text("\n".join(task_sentences()[:args.task_text_limit]) + "\n", encoding="utf-8")
            prepare_shards(text, paths["tok"], paths["tapt"], txt_mode="lines", overwrite=True)
    return paths


def task_sentences() -> list[str]:
    """The training sentences of SST-2 (header: sentence, label) and CoLA (no header; sentence in column 4)."""
    glue = data_root() / "glue"
    with (glue / "SST-2" / "train.tsv").open(encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(rows)
        sentences = [r[0] for r in rows if r]
    with (glue / "CoLA" / "train.tsv").open(encoding="utf-8", newline="") as f:
        sentences += [r[3] for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r) >= 4]
    return sentences


# ---- pre-training ---------------------------------------------------------------------------------------------------

def variant_config(name: str, args, paths: dict[str, str], run: Path) -> PretrainConfig:
    cfg = json.loads(json.dumps(BASE))
    cfg["data"].update(train=paths["gutenberg"], eval=paths["valid"], tokenizer=paths["tok"])
    if args.steps is not None:
        cfg["train"]["steps"] = args.steps
        cfg["schedule"]["warmup_steps"] = max(1, args.steps // 6)
    for key, value in VARIANTS[name][1].items():
        if key == "same_model" or key.startswith("finetune."):  # not pre-training settings
            continue
        if isinstance(value, str) and value.startswith("<model:"):  # another variant's pre-trained model
            value = str(Path(args.out) / "pretrain" / value[len("<model:"):-1] / "model")
        elif isinstance(value, str) and value.startswith("<"):
            value = paths[value.strip("<>")]
        if key in ("train.steps", "schedule.warmup_steps") and args.steps is not None:  # the same token budget
            value = max(1, value * args.steps // BASE["train"]["steps"])
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    if args.width is not None:
        cfg["model"]["config"].update(hidden_size=args.width, num_heads=max(2, args.width // 64),
                                      intermediate_size=4 * args.width)
    if args.layers is not None:
        cfg["model"]["config"]["num_layers"] = args.layers
    cfg["train"]["device"] = args.device
    cfg["out"] = str(run)
    return from_dict(PretrainConfig, cfg)


def pretrain_variant(name: str, args, paths) -> dict:
    if "same_model" in VARIANTS[name][1]:  # a fine-tuning variant of another variant's model
        return pretrain_variant(VARIANTS[name][1]["same_model"], args, paths)
    run = Path(args.out) / "pretrain" / name
    finished = (run / "summary.json").exists() and (run / "model" / "config.json").exists()
    if args.report_only and not finished:
        return None
    if not finished:
        print(f"[budget] pre-training {name}: {VARIANTS[name][0]}", flush=True)
        pretrain(variant_config(name, args, paths, run), overwrite=True)  # an unfinished run restarts
    summary = json.loads((run / "summary.json").read_text())
    return {"dir": str(run / "model"), "wall_s": summary["wall_s"], "steps": summary["steps"],
            "eval_loss": (summary.get("eval") or {}).get("loss"), "tokens": summary.get("tokens")}


# ---- fine-tuning ----------------------------------------------------------------------------------------------------

def finetune_model(args, name: str, model_dir: str, init: str, lr: float | None = None,
                   options: dict | None = None) -> list[dict]:
    """Every (task, seed) of one model; `init` random fine-tunes its architecture from a fresh initialisation;
    `options` are further FinetuneConfig fields (a variant's finetune.* keys: dropout, pooling)."""
    rows, lr = [], lr or args.ft_lr
    for task in args.tasks:
        for seed in args.seeds:
            out = Path(args.out) / "finetune" / name / f"{task}-seed{seed}"
            if not (out / "results.json").exists():
                if args.report_only:
                    continue
                print(f"[budget] fine-tuning {name} on {task}, seed {seed}", flush=True)
                finetune(FinetuneConfig(
                    model=model_dir, init=init, task=task, out=str(out), epochs=args.ft_epochs, lr=lr,
                    batch_size=args.ft_batch_size, max_length=TASKS[task]["max_length"], seed=seed,
                    max_train_examples=args.sst2_train if task == "sst2" else TASKS[task]["max_train_examples"],
                    device=args.device, overwrite=True, show_progress=False, **(options or {})))
            res = json.loads((out / "results.json").read_text())
            metric = res["main_metric"]
            rows.append({"variant": name, "task": task, "seed": seed, "lr": lr, "metric": metric,
                         "final": res["final"][metric], "best": res["dev"][metric], "wall_s": res["wall_time_s"]})
    return rows


def ft_options(name: str) -> dict:
    """A variant's fine-tuning options (its finetune.* keys), e.g. {"dropout": 0.1} or {"pooling": "mean"}."""
    return {k[len("finetune."):]: v for k, v in VARIANTS[name][1].items() if k.startswith("finetune.")}


def lrs_of(args, random: bool = False) -> list[float]:
    """The fine-tuning lrs a model is tried at: the reference --ft-lr first, then --ft-lrs (and --random-lrs for the
    random-initialisation rows)."""
    return list(dict.fromkeys([args.ft_lr, *args.ft_lrs, *(args.random_lrs if random else [])]))


def lr_name(args, name: str, lr: float) -> str:
    """A model's row at one fine-tuning lr: its own name at the reference lr, `<name>-lr<lr>` at another."""
    return name if lr == args.ft_lr else f"{name}-lr{lr:g}"


def split_name(args, row: str) -> tuple[str, float]:
    """(model, fine-tuning lr) of a row name made by lr_name."""
    model, _, lr = row.rpartition("-lr")
    if row in VARIANTS or row == "random" or not model:
        return row, args.ft_lr
    try:
        return model, float(lr)
    except ValueError:  # "-lr" belongs to the model's own name (pre-norm-lr2e-3-step500)
        return row, args.ft_lr


def stats(values: list[float]) -> dict:
    if not values:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarise(rows: list[dict], names: list[str], tasks: list[str]) -> dict[str, dict[str, dict]]:
    """Mean ± std over fine-tuning seeds of the final dev score (x 100), per variant and task."""
    return {n: {t: stats([100 * r["final"] for r in rows if r["variant"] == n and r["task"] == t]) for t in tasks}
            for n in names}


# ---- report ---------------------------------------------------------------------------------------------------------

def best_lr(args, table: dict) -> dict[str, dict[str, dict]]:
    """model -> task -> its best row over fine-tuning lrs (by mean over seeds), with that row's lr."""
    best: dict[str, dict[str, dict]] = {}
    for row, cells in table.items():
        model, lr = split_name(args, row)
        for task, cell in cells.items():
            if cell["n"] and (task not in best.get(model, {}) or cell["mean"] > best[model][task]["mean"]):
                best.setdefault(model, {})[task] = {**cell, "lr": lr}
    return best


def describe(args, row: str) -> str:
    model, lr = split_name(args, row)
    what = "no pre-training (same architecture, `--init random`)" if model == "random" else VARIANTS[model][0]
    return what if lr == args.ft_lr else f"{what}; fine-tuned at lr {lr:g}"


def markdown(args, models: dict, table: dict, rows: list[dict]) -> str:
    metric = {r["task"]: r["metric"] for r in rows}
    cols = [f"{t.upper()} ({metric.get(t, '')})" for t in args.tasks]

    def pre(model: str) -> tuple[str, str]:
        random_init = model == "random" or VARIANTS.get(model, ("", {}))[1].get("finetune.init") == "random"
        m = None if random_init else models.get(model)
        return (f"{m['wall_s'] / 60:.1f}" if m else "0",
                f"{m['eval_loss']:.2f}" if m and m["eval_loss"] is not None else "–")

    lines = []
    best = best_lr(args, table)
    tried = {split_name(args, r)[1] for r in table}
    if len(tried) > 1:  # each model at its best fine-tuning lr: the fair comparison
        ref = best.get("random")
        lines += [f"Each model at its best fine-tuning lr (of {', '.join(f'{lr:g}' for lr in sorted(tried))}; "
                  "the lr in brackets; * = not yet tried at every lr, so no gain is stated):", "",
                  "| model | what changes | pre-train min | WikiText-2 MLM loss | " + " | ".join(cols)
                  + " | gain over random |", "|" + "---|" * (5 + len(cols))]
        for model, cells in best.items():
            got = {split_name(args, r)[1] for r in table if split_name(args, r)[0] == model}
            star = "" if set(lrs_of(args, random=model == "random")) <= got else " *"
            scores = [f"{cells[t]['mean']:.1f} ± {cells[t]['std']:.1f} ({cells[t]['lr']:g})" if t in cells else "–"
                      for t in args.tasks]
            gain = "" if ref is None or model == "random" else "–" if star else ", ".join(
                f"{cells[t]['mean'] - ref[t]['mean']:+.1f}" for t in args.tasks if t in cells and t in ref)
            minutes, loss = pre(model)
            lines.append(f"| {model}{star} | {describe(args, model)} | {minutes} | {loss} | " + " | ".join(scores)
                         + f" | {gain} |")
        lines += ["", "Every run:", ""]
    lines += ["| variant | what changes | pre-train min | WikiText-2 MLM loss | " + " | ".join(cols)
              + " | gain over random |", "|" + "---|" * (5 + len(cols))]
    for name, cells in table.items():
        model, lr = split_name(args, name)
        minutes, loss = pre(model)
        ref = table.get(lr_name(args, "random", lr))  # random initialisation fine-tuned at the same lr
        scores = [f"{cells[t]['mean']:.1f} ± {cells[t]['std']:.1f}" for t in args.tasks]
        gain = "" if ref is None or model == "random" else ", ".join(
            f"{cells[t]['mean'] - ref[t]['mean']:+.1f}" for t in args.tasks)
        lines.append(f"| {name} | {describe(args, name)} | {minutes} | {loss} | " + " | ".join(scores)
                     + f" | {gain} |")
    lines += ["", f"Mean ± standard deviation over fine-tuning seeds {args.seeds} of the final dev score × 100 (no "
              f"checkpoint selection on dev). Fine-tuning: {args.ft_epochs:g} epochs, lr {args.ft_lr:g} unless the "
              f"row says otherwise, batch {args.ft_batch_size}, 64 tokens, autocast precision auto (bf16 where the CPU has it "
              f"natively, else fp32), the model's own dropout "
              f"unless the row says otherwise; SST-2 on a {args.sst2_train}-example training subset "
              f"(seeded), CoLA on all of its training set; \"gain over random\" in the table of every run is against "
              f"random initialisation fine-tuned at the same lr. Measured {date.today().isoformat()} on {args.device} "
              "(2 CPU cores, torch 2.13) with `python experiments/pretraining_budget.py`."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {} if args.report_only else ensure_data(args, out, args.variants)
    if args.curve:
        return run_curve(args, paths, t0)
    # one variant at a time, pre-training then fine-tuning, so results accrue as the study runs
    models = {args.variants[0]: pretrain_variant(args.variants[0], args, paths)}
    if models[args.variants[0]] is None:
        raise SystemExit(f"--report-only: {args.variants[0]} (the first variant, whose architecture the random rows "
                         f"use) has not been pre-trained in {out} yet")
    rows = []
    for lr in [] if args.no_random else lrs_of(args, random=True):
        rows += finetune_model(args, lr_name(args, "random", lr), models[args.variants[0]]["dir"], "random", lr)
    for name in args.variants:
        models[name] = models.get(name) or pretrain_variant(name, args, paths)
        if models[name] is None:  # --report-only and not pre-trained yet
            del models[name]
            continue
        options = ft_options(name)
        init = options.pop("init", "pretrained")  # a fine-tuning variant of the random-initialisation row
        for lr in lrs_of(args, random=init == "random"):
            rows += finetune_model(args, lr_name(args, name, lr), models[name]["dir"], init, lr, options=options)
        report(args, models, rows)
    return report(args, models, rows, final=True, wall_s=time.perf_counter() - t0)


def report(args, models: dict, rows: list[dict], final: bool = False, wall_s: float | None = None) -> dict:
    """results.json and the docs block from every finished run (after each variant, so a long study shows its
    progress); the final call prints the table and the JSON result line."""
    out = Path(args.out)
    names = list(dict.fromkeys(r["variant"] for r in rows))  # every (model, lr) row, in the order they ran
    table = summarise(rows, names, args.tasks)
    result = {"experiment": "pretraining_budget", "models": models, "table": table, "runs": rows, "wall_s": wall_s}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    block = markdown(args, models, table, rows)
    if args.docs:
        write_results_block(Path(args.docs), block, "Pre-training variants at the demo's budget")
    if final:
        print(block)
        print(json.dumps({"experiment": "pretraining_budget",
                          "table": {n: {t: round(v["mean"], 2) for t, v in c.items()} for n, c in table.items()}}))
    return result


# ---- learning curve -------------------------------------------------------------------------------------------------

def run_curve(args, paths, t0: float) -> dict:
    """One pre-training run of the first variant to the last --curve step, its checkpoints at every --curve step kept,
    exported and fine-tuned; step 0 is the same architecture from random initialisation."""
    from ptmkit.recipes.pretrain import export_checkpoint

    name, last = args.variants[0], args.curve[-1]
    run = Path(args.out) / "curve" / name
    cfg = variant_config(name, args, paths, run)
    scale = last / cfg.train.steps  # the variant's own warm-up, stretched with the run (a long run, one schedule)
    cfg.train.steps, cfg.train.keep_steps, cfg.train.keep_last = last, list(args.curve), 1
    cfg.train.checkpoint_every = max(1, min(250, last // 4))  # an interrupted long run resumes from here
    cfg.schedule.warmup_steps = max(1, round(cfg.schedule.warmup_steps * min(scale, 1.0)))
    if not (run / "summary.json").exists():
        print(f"[curve] pre-training {name} to step {last}, keeping steps {args.curve}", flush=True)
        pretrain(cfg, resume=(run / "checkpoints").is_dir(), overwrite=not (run / "checkpoints").is_dir())
    per_step = median_step_s(run)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * cfg.train.grad_accum
    # step 0 is this run's architecture from random initialisation, with the same fine-tuning recipe; every point is
    # fine-tuned at each lr and shown at its best
    rows, curve_options = [], {k: v for k, v in ft_options(name).items() if k != "init"}
    for lr in lrs_of(args, random=True):
        rows += finetune_model(args, lr_name(args, f"{name}-step0", lr), str(run / "model"), "random", lr,
                               options=curve_options)
    points = [{"steps": 0, "tokens": 0, "minutes": 0.0, "name": f"{name}-step0", "mlm_loss": held_out_loss(run, None)}]
    for step in args.curve:
        model_dir = run / "exported" / f"step-{step:08d}"
        if not (model_dir / "config.json").exists():
            export_checkpoint(run / "checkpoints" / f"step-{step:08d}", model_dir)
        for lr in lrs_of(args):
            rows += finetune_model(args, lr_name(args, f"{name}-step{step}", lr), str(model_dir), "pretrained", lr,
                                   options=curve_options)
        points.append({"steps": step, "tokens": step * tokens_per_step, "minutes": step * per_step / 60,
                       "name": f"{name}-step{step}", "mlm_loss": held_out_loss(run, model_dir)})
    table = best_lr(args, summarise(rows, list(dict.fromkeys(r["variant"] for r in rows)), args.tasks))
    result = {"experiment": "pretraining_curve", "variant": name, "points": points, "table": table, "runs": rows,
              "wall_s": time.perf_counter() - t0}
    (Path(args.out) / "curve_results.json").write_text(json.dumps(result, indent=2) + "\n")
    metric = {r["task"]: r["metric"] for r in rows}
    lines = ["| pre-training steps | tokens | CPU-min | WikiText-2 MLM loss | "
             + " | ".join(f"{t.upper()} ({metric[t]})" for t in args.tasks) + " |",
             "|" + "---|" * (4 + len(args.tasks))]
    for p in points:
        cells = [f"{table[p['name']][t]['mean']:.1f} ± {table[p['name']][t]['std']:.1f}"
                 + (f" ({table[p['name']][t]['lr']:g})" if len(lrs_of(args, random=True)) > 1 else "")
                 for t in args.tasks]
        lines.append(f"| {p['steps']} | {p['tokens'] / 1e6:.2f}M | {p['minutes']:.1f} | {p['mlm_loss']:.2f} | "
                     + " | ".join(cells) + " |")
    lines += ["", f"One pre-training run of `{name}` ({VARIANTS[name][0]}) to step {last}, its checkpoints at each "
              f"step above fine-tuned ({args.ft_epochs:g} epochs"
              + (f"; SST-2 on a seeded {args.sst2_train}-example training subset" if "sst2" in args.tasks else "")
              + f") with seeds {args.seeds} (mean ± std of the final dev score × 100"
              + (f", at the best of fine-tuning lrs {', '.join(f'{lr:g}' for lr in lrs_of(args, random=True))}, "
                 "in brackets" if len(lrs_of(args, random=True)) > 1 else "") + "); step 0 is "
              f"the same architecture from random initialisation. One linear schedule spans the whole run, so an early "
              f"checkpoint has not had its learning rate decayed: it understates what a run of that length alone "
              f"would reach. WikiText-2 MLM loss: the run's fixed held-out batches (masks drawn once), step 0 = the "
              f"fresh model. CPU-min = steps × the run's median step time ({per_step:.2f} s; the median, because "
              f"other jobs shared the machine for part of the run and slowed those steps). "
              f"Measured {date.today().isoformat()} on {args.device} "
              "with `python experiments/pretraining_budget.py --curve ...`."]
    block = "\n".join(lines)
    print(block)
    if args.curve_docs:
        doc = Path(args.curve_docs)
        png = doc.with_name(f"{doc.stem}_{args.curve_block}.png" if args.curve_block else f"{doc.stem}.png")
        plot_curve(points, table, args.tasks, metric, png)
        write_results_block(doc, block + f"\n\n![curve]({png.name})",
                            "Fine-tuning quality against pre-training compute", name=args.curve_block)
    print(json.dumps({"experiment": "pretraining_curve",
                      "curve": {p["steps"]: {t: round(table[p["name"]][t]["mean"], 2) for t in args.tasks}
                                for p in points}}))
    return result


def median_step_s(run: Path) -> float:
    """The median training step time logged by the run (metrics.jsonl, every session of a resumed run)."""
    times = [r["step_s"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()
             for r in [json.loads(line)] if r.get("split") == "train" and r.get("step_s")]
    return statistics.median(times) if times else float("nan")


def held_out_loss(run: Path, model_dir: Path | None) -> float:
    """The run's held-out (WikiText-2) MLM loss of an exported checkpoint, or of the run's architecture freshly
    initialised with its seed (model_dir None: the curve's step 0); kept in the run folder."""
    import torch

    from ptmkit.recipes.pretrain import ModelSection, held_out_evaluator, plain_training_module

    cache = run / "held_out_loss.json"
    done = json.loads(cache.read_text()) if cache.exists() else {}
    key = model_dir.name if model_dir is not None else "step-00000000"
    if key not in done:
        cfg = from_dict(PretrainConfig, json.loads((run / "run_config.json").read_text()))
        if model_dir is not None:
            cfg.model = ModelSection(family=cfg.model.family, init_from=str(model_dir))
        tokenizer = Tokenizer.load(cfg.data.tokenizer)
        torch.manual_seed(cfg.train.seed)
        module = plain_training_module(cfg, tokenizer)
        done[key] = held_out_evaluator(cfg, tokenizer, module.loss_fn, torch.device(cfg.train.device))(module)["loss"]
        cache.write_text(json.dumps(done, indent=2) + "\n")
    return done[key]


def plot_curve(points: list[dict], table: dict, tasks: list[str], metric: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    xs = [p["tokens"] / 1e6 for p in points]
    for ax, task in zip(axes[0], tasks):
        ys = [table[p["name"]][task]["mean"] for p in points]
        es = [table[p["name"]][task]["std"] for p in points]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3)
        ax.axhline(ys[0], color="grey", linestyle="--", linewidth=1, label="random initialisation")  # the bar to beat
        ax.set_xlim(-0.3, max(xs) * 1.5)  # the line would otherwise stretch the axis to negative tokens
        ax.legend(loc="lower right", fontsize=8)
        ax.set_xscale("symlog", linthresh=max(xs[1] if len(xs) > 1 else 1.0, 1e-3))
        ax.set_xlabel("pre-training tokens (millions; 0 = random init)")
        ax.set_ylabel(f"{task.upper()} dev {metric[task]} x 100")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
