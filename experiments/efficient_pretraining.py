"""Survey §6.1: efficient pre-training at equal wall-clock. Does LAMB, progressive stacking, LayerDrop or progressive
layer dropping give a better small BERT than plain AdamW training in the same time?

Every method pre-trains the same BERT (same seed, data order and masks) with masked LM on the Gutenberg shards for
the same number of seconds and is scored by its held-out MLM loss on WikiText-2 valid. The training loop needs a
step count, so a short timing probe measures the seconds per step of the full model (AdamW and LAMB) and of the
half-depth model; each method then gets the steps that fill `--budget-s`:

    baseline, lamb   budget / (its step time)
    stacking         a half-depth model for --stack-fraction of the budget, stacked to full depth for the rest
    layerdrop, pld   step time = full - (per-block time) x (expected skipped blocks), per-block time measured
                     as (full - half-depth) / (L / 2); PLD's expectation changes with t, so its steps are solved for

Layer-wise lr decay is a fine-tuning method (docs/efficient_pretraining.md) and is not part of this study.

    python experiments/efficient_pretraining.py                        # CPU default: 5 methods x 10 min
    python experiments/efficient_pretraining.py --scale gpu            # a 12-layer model, 20 min per method
    python experiments/efficient_pretraining.py --budget-s 5 --hidden 32 --layers 2 --heads 2 --batch-size 8 \\
        --seq-len 64 --eval-batches 2 --out runs/efficient_pretraining_smoke --docs ''   # a smoke test

Finished runs are skipped when the command is repeated, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from ptmkit.cli.options import add_precision_option
from ptmkit.analysis.machine import device_text
from ptmkit.analysis.report import write_results_block
from ptmkit.config import from_dict, to_dict
from ptmkit.data.batches import PretrainBatches, fixed_batches
from ptmkit.data.sampler import PackedDataset
from ptmkit.data.shards import TokenShards
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.train.layer_drop import LayerDropConfig, apply_layer_drop
from ptmkit.train.loop import TrainingModule, train
from ptmkit.train.optim import build_optimizer
from ptmkit.train.precision import Precision, resolve
from ptmkit.recipes.pretrain import PretrainConfig, build_objective, build_pretrain_model, make_evaluator
from ptmkit.models.progressive import stack_layers
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lists import ints, names  # noqa: E402

METHODS = ("baseline", "lamb", "stacking", "layerdrop", "pld")
LABELS = {"baseline": "AdamW (baseline)", "lamb": "LAMB", "stacking": "progressive stacking",
          "layerdrop": "LayerDrop", "pld": "progressive layer dropping"}

SCALES = {
    # 2 CPU cores: BERT 4 x 128 (the equal-compute study's encoder), 10 minutes per method
    "cpu": dict(hidden=128, layers=4, heads=2, budget_s=600.0, batch_size=32, seq_len=128, lr=1e-3, lamb_lr=1e-2,
                eval_batches=16, precision="auto"),
    # one GPU: 12 x 256 (ELECTRA-Small's encoder shape), 20 minutes per method
    "gpu": dict(hidden=256, layers=12, heads=4, budget_s=1200.0, batch_size=128, seq_len=128, lr=5e-4, lamb_lr=5e-3,
                eval_batches=32, precision="bf16"),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu", help="preset sizes; the options below override it")
    p.add_argument("--methods", type=names(METHODS), default=",".join(METHODS), help=f"comma list from {METHODS}")
    p.add_argument("--budget-s", type=float, help="training seconds per method (the equal wall-clock budget)")
    p.add_argument("--hidden", type=int, help="encoder width")
    p.add_argument("--layers", type=int, help="encoder depth (even: stacking starts from half of it)")
    p.add_argument("--heads", type=int, help="attention heads")
    p.add_argument("--batch-size", type=int, help="sequences per step")
    p.add_argument("--seq-len", type=int, help="tokens per sequence")
    p.add_argument("--lr", type=float, help="AdamW peak learning rate (every method but lamb)")
    p.add_argument("--lamb-lr", type=float, help="LAMB peak learning rate (its step is lr x ||w||; not tuned here)")
    p.add_argument("--layerdrop-rate", type=float, default=0.2, help="LayerDrop: every block's drop probability")
    p.add_argument("--pld-theta", type=float, default=0.5, help="PLD: the keep probability theta(t) decays to")
    p.add_argument("--pld-gamma-t", type=float, default=10.0,
                   help="PLD: gamma x steps, i.e. gamma scaled to the run (10: theta is within 1%% of theta_bar "
                        "after 46%% of the steps)")
    p.add_argument("--stack-fraction", type=float, default=0.3, help="stacking: budget share of the half-depth stage")
    p.add_argument("--seeds", type=ints, default="0", help="comma list; one run per method and seed")
    p.add_argument("--eval-batches", type=int, help="held-out batches of --batch-size sequences")
    p.add_argument("--probe-steps", type=int, default=6, help="timed steps per timing probe (after 2 untimed)")
    add_precision_option(p, default=None, extra="default: the scale's preset, auto at the cpu scale")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--tokenizer", default="runs/demo/tokenizer", help="tokenizer directory")
    p.add_argument("--shards", default="runs/demo/data/gutenberg", help="training token shards")
    p.add_argument("--eval-shards", default="runs/demo/data/wikitext2-valid", help="held-out token shards")
    p.add_argument("--out", default="runs/efficient_pretraining", help="run directory (resumable)")
    p.add_argument("--docs", default="docs/efficient_pretraining.md",
                   help="markdown page whose results block is rewritten ('' = none)")
    args = p.parse_args(argv)
    for key, value in SCALES[args.scale].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.layers % 2 or args.layers < 2:
        p.error(f"--layers must be even and >= 2 (stacking and the per-block timing use half of it), got {args.layers}")
    if not 0 < args.stack_fraction < 1:
        p.error(f"--stack-fraction must be in (0, 1), got {args.stack_fraction}")
    for name in ("tokenizer", "shards", "eval_shards"):
        if not Path(getattr(args, name)).exists():
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)} does not exist; build the demo data first "
                    "(scripts/demo.sh) or point the option at your own")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.precision = resolve(args.precision, torch.device(args.device))  # plans and tables record what ran
    return args


# ---- configuration --------------------------------------------------------------------------------------------------

def run_config(args, layers: int, out: Path, seed: int, steps: int, lr: float, optimizer: str) -> PretrainConfig:
    """The run's settings as a PretrainConfig (written beside its results), one per training stage."""
    return from_dict(PretrainConfig, {
        "model": {"family": "bert", "config": {
            "hidden_size": args.hidden, "num_layers": layers, "num_heads": args.heads,
            "intermediate_size": 4 * args.hidden, "max_position_embeddings": args.seq_len}},
        "data": {"train": args.shards, "eval": args.eval_shards, "tokenizer": args.tokenizer, "seq_len": args.seq_len,
                 "batch_size": args.batch_size, "eval_batches": args.eval_batches, "boundary": "no_cross"},
        "objective": {"name": "mlm", "params": {"mask_prob": 0.15}},
        "train": {"steps": steps, "precision": args.precision, "device": args.device, "seed": seed, "log_every": 1,
                  "eval_every": 0, "checkpoint_every": 0, "keep_last": 1, "progress_bar": False},
        "optim": {"name": optimizer, "lr": lr, "weight_decay": 0.01, "betas": [0.9, 0.98], "grad_clip": 1.0},
        "schedule": {"warmup_steps": max(1, steps // 10), "decay": "linear"},
        "out": str(out),
    })


class Data:
    """Tokenizer, MLM objective, training sequences and the fixed held-out batches, shared by every run."""

    def __init__(self, args):
        cfg = run_config(args, args.layers, Path(args.out), 0, 1, args.lr, "adamw")
        self.tokenizer = Tokenizer.load(cfg.data.tokenizer)
        self.objective = build_objective(cfg.objective, self.tokenizer, self.tokenizer.vocab_size, cfg.data.seq_len)
        pad = self.tokenizer.pad_id
        self.train = PackedDataset(TokenShards(cfg.data.train, self.tokenizer), args.seq_len, "no_cross", pad_id=pad)
        held_out = PackedDataset(TokenShards(cfg.data.eval, self.tokenizer), args.seq_len, "no_cross", pad_id=pad)
        self.eval_batches = fixed_batches(held_out, args.batch_size, self.objective, args.eval_batches)

    def batches(self, args, seed: int) -> PretrainBatches:
        return PretrainBatches(self.train, args.batch_size, self.objective, seed=seed)

    def model(self, cfg: PretrainConfig):
        return build_pretrain_model(cfg.model, self.objective.task, self.tokenizer)


# ---- timing probe ---------------------------------------------------------------------------------------------------

def probe_step_seconds(args, data: Data, layers: int, optimizer: str) -> float:
    """Median seconds of a training step (forward, backward, clipped optimizer step), as train/loop.py runs it."""
    cfg = run_config(args, layers, Path(args.out) / "probe", 0, 1, args.lr, optimizer)
    torch.manual_seed(0)
    trained = TrainingModule(data.model(cfg).to(args.device), data.objective)
    opt = build_optimizer(trained, cfg.optim)
    precision = Precision(args.precision, torch.device(args.device))
    batches = data.batches(args, seed=999)  # its own stream: the real runs' data order is untouched
    times = []
    for i in range(2 + args.probe_steps):
        batch = {k: v.to(args.device) for k, v in next(batches).items()}
        t0 = time.perf_counter()
        with precision.autocast():
            loss, _ = trained(batch)
        precision.backward(loss)
        precision.step(opt, trained.parameters(), cfg.optim.grad_clip)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= 2:  # the first steps allocate and warm caches
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def theta(t: int, theta_bar: float, gamma: float) -> float:
    return (1 - theta_bar) * math.exp(-gamma * t) + theta_bar


def plan_steps(args, probe: dict[str, float]) -> dict[str, dict]:
    """Steps (and PLD's gamma) that fill the budget for each method, from the probed step times."""
    budget, full, half, depth = args.budget_s, probe["full"], probe["half"], args.layers
    per_block = max(0.0, (full - half) / (depth // 2))
    plan = {"baseline": {"steps": round(budget / full)}, "lamb": {"steps": round(budget / probe["lamb"])},
            "stacking": {"steps_half": round(args.stack_fraction * budget / half),
                         "steps_full": round((1 - args.stack_fraction) * budget / full)},
            "layerdrop": {"steps": round(budget / (full - per_block * depth * args.layerdrop_rate))}}
    # PLD skips (1 - θ(t)) (L + 1) / 2 blocks in expectation at step t; γ = gamma_t / steps depends on the steps
    steps = budget / full
    for _ in range(20):
        n = max(1, round(steps))
        gamma = args.pld_gamma_t / n
        total = sum(full - per_block * (1 - theta(t, args.pld_theta, gamma)) * (depth + 1) / 2 for t in range(n))
        steps = n * budget / total
    plan["pld"] = {"steps": max(1, round(steps)), "gamma": args.pld_gamma_t / max(1, round(steps))}
    for p in plan.values():
        for k in ("steps", "steps_half", "steps_full"):
            if k in p:
                p[k] = max(1, p[k])
    return plan


# ---- training -------------------------------------------------------------------------------------------------------

def _train_stage(data: Data, model, batches, cfg: PretrainConfig, on_step=None) -> dict:
    """One call of the training loop; returns the TrainingModule and the summed step times from metrics.jsonl."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    t0 = time.perf_counter()
    summary = train(model, data.objective, batches, out, cfg.train, cfg.optim, cfg.schedule, on_step=on_step)
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    step_s = sum(r["step_s"] for r in records if r.get("split") == "train")
    return {"trained": summary["trained"], "step_s": step_s, "wall_s": wall, "steps": summary["steps"],
            "tokens": summary["tokens"]}


def run_method(args, data: Data, method: str, seed: int, plan: dict) -> dict:
    out = Path(args.out) / "runs" / f"{method}-seed{seed}"
    lr = args.lamb_lr if method == "lamb" else args.lr
    optimizer = "lamb" if method == "lamb" else "adamw"
    batches = data.batches(args, seed)  # the same data order and masks for every method
    stages = []
    if method == "stacking":
        cfg = run_config(args, args.layers // 2, out / "stage1", seed, plan["steps_half"], lr, optimizer)
        torch.manual_seed(seed)
        shallow = data.model(cfg)
        torch.manual_seed(seed + 1)
        stages.append(_train_stage(data, shallow, batches, cfg))
        # Gong et al. §4: the trained stack, repeated, initialises the deep model; a fresh optimizer and schedule
        deep = stack_layers(stages[0]["trained"].model, args.layers)
        cfg = run_config(args, args.layers, out / "stage2", seed, plan["steps_full"], lr, optimizer)
        stages.append(_train_stage(data, deep, batches, cfg))
    else:
        cfg = run_config(args, args.layers, out, seed, plan["steps"], lr, optimizer)
        torch.manual_seed(seed)
        model = data.model(cfg)
        on_step = None
        if method in ("layerdrop", "pld"):
            ld_cfg = (LayerDropConfig(schedule="constant", rate=args.layerdrop_rate) if method == "layerdrop" else
                      LayerDropConfig(schedule="progressive", theta_bar=args.pld_theta, gamma=plan["gamma"]))
            on_step = apply_layer_drop(model, ld_cfg, seed=seed).step  # called before each optimizer step
        torch.manual_seed(seed + 1)  # dropout draws
        stages.append(_train_stage(data, model, batches, cfg, on_step))
    precision = Precision(args.precision, torch.device(args.device))
    scores = make_evaluator(data.eval_batches, precision.autocast, torch.device(args.device))(stages[-1]["trained"])
    result = {"method": method, "seed": seed, "steps": sum(s["steps"] for s in stages),
              "step_s": sum(s["step_s"] for s in stages), "wall_s": sum(s["wall_s"] for s in stages),
              "tokens": sum(s["tokens"] for s in stages), **scores}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


# ---- report ---------------------------------------------------------------------------------------------------------

PLAN_KEYS = ("budget_s", "hidden", "layers", "heads", "batch_size", "seq_len", "precision", "device", "stack_fraction",
             "layerdrop_rate", "pld_theta", "pld_gamma_t")


def load_or_make_plan(args, data: Data) -> tuple[dict, dict]:
    """Probed step times and planned steps, reused by a repeated command with the same settings."""
    path = Path(args.out) / "plan.json"
    signature = {k: getattr(args, k) for k in PLAN_KEYS}
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["signature"] != signature:
            diff = {k: (saved["signature"].get(k), v) for k, v in signature.items() if saved["signature"].get(k) != v}
            raise SystemExit(f"{path.parent} holds a study with other settings (was, now): {diff}; "
                             "pass another --out or the same settings")
        return saved["probe"], saved["plan"]
    print("[efficient] timing probe: full depth (AdamW, LAMB) and half depth", flush=True)
    probe = {"full": probe_step_seconds(args, data, args.layers, "adamw"),
             "lamb": probe_step_seconds(args, data, args.layers, "lamb"),
             "half": probe_step_seconds(args, data, args.layers // 2, "adamw")}
    plan = plan_steps(args, probe)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"signature": signature, "probe": probe, "plan": plan}, indent=2) + "\n")
    return probe, plan


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def markdown(args, probe: dict, plan: dict, results: list[dict], wall_s: float) -> str:
    base = [r["loss"] for r in results if r["method"] == "baseline"]
    lines = ["| method | steps | step time, s (budget " + f"{args.budget_s:g}) | wall, s | tokens (M) | "
             "held-out MLM loss | perplexity | Δ loss vs baseline |", "|---|---|---|---|---|---|---|---|"]
    for m in args.methods:
        rs = [r for r in results if r["method"] == m]
        loss = [r["loss"] for r in rs]
        delta = f"{statistics.fmean(loss) - statistics.fmean(base):+.3f}" if base and m != "baseline" else "—"
        mean = {k: statistics.fmean(r[k] for r in rs) for k in ("steps", "step_s", "wall_s", "tokens", "perplexity")}
        lines.append(f"| {LABELS[m]} | {round(mean['steps'])} | {mean['step_s']:.1f} | {mean['wall_s']:.1f} | "
                     f"{mean['tokens'] / 1e6:.2f} | {_mean_std(loss)} | {mean['perplexity']:.1f} | {delta} |")
    n = len(args.seeds)
    seeds = f"mean ± std over {n} seeds" if n > 1 else "one seed"
    notes = [
        f"BERT {args.layers} layers × {args.hidden} ({args.heads} heads), {args.batch_size} × {args.seq_len} tokens "
        f"per step, precision {args.precision}, device {device_text(args.device)}.",
        f"AdamW lr {args.lr:g}; LAMB lr {args.lamb_lr:g} (untuned); LayerDrop p = {args.layerdrop_rate:g}; PLD "
        f"θ̄ = {args.pld_theta:g}, γ = {plan['pld']['gamma']:.3g} (γ·T = {args.pld_gamma_t:g}); stacking "
        f"{args.layers // 2} → {args.layers} layers after {args.stack_fraction:.0%} of the budget.",
        f"Probed step times: full depth {probe['full'] * 1e3:.0f} ms (LAMB {probe['lamb'] * 1e3:.0f} ms), half depth "
        f"{probe['half'] * 1e3:.0f} ms. 'step time' sums the measured training steps; 'wall' adds logging and the "
        "end-of-run checkpoint.",
        f"Held-out loss: {args.eval_batches} batches of WikiText-2 valid with fixed masks; {seeds} "
        f"({', '.join(map(str, args.seeds))}). Measured {date.today().isoformat()}, whole study {wall_s / 60:.0f} min.",
    ]
    lines += ["", " ".join(notes)]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    data = Data(args)
    probe, plan = load_or_make_plan(args, data)
    print(f"[efficient] {args.budget_s:g} s per method; plan {json.dumps(plan)}", flush=True)
    results = []
    for seed in args.seeds:
        for m in args.methods:
            done = Path(args.out) / "runs" / f"{m}-seed{seed}" / "result.json"
            if not done.exists():
                print(f"[efficient] {m} seed {seed}", flush=True)
                run_method(args, data, m, seed, plan[m])
            results.append(json.loads(done.read_text()))
    wall = time.perf_counter() - t0
    block = markdown(args, probe, plan, results, wall)
    print(block)
    (Path(args.out) / "results.json").write_text(json.dumps(
        {"args": vars(args), "probe": probe, "plan": plan, "results": results, "wall_s": wall}, indent=2) + "\n")
    if args.docs:
        write_results_block(args.docs, block, "Efficient pre-training")
    return {"probe": probe, "plan": plan, "results": results}


if __name__ == "__main__":
    main()
