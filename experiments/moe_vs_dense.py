"""Survey §4.2 (sparse Mixture-of-Experts; Switch Transformer, Fedus et al. 2021): at the same compute per token,
does a top-1 MoE decoder reach a lower held-out loss than its dense twin?

Trains a small GPT-2 decoder twice with causal LM on the Gutenberg token shards, with the same seed, data order,
optimiser, schedule and number of steps:

    dense   every block has the dense FFN (H -> 4H -> H)
    moe     every --every-th block (Switch: every other) has E experts, each the size of the dense FFN, top-1
            routing with capacity factor, load-balancing and z-loss; the ACTIVE parameters per token equal dense's

and scores both on WikiText-2 valid (held-out loss and perplexity), with step time, total vs active parameters and
expert utilisation (share of tokens per expert, dropped-token share) in training and on the held-out text.

    python experiments/moe_vs_dense.py                        # CPU default: 4 x 256, 8 experts, ~12 min on 2 cores
    python experiments/moe_vs_dense.py --scale gpu            # 8 x 512, 3,000 steps of 32 x 256 tokens
    python experiments/moe_vs_dense.py --steps 3 --hidden 32 --layers 2 --heads 2 --batch-size 4 --seq-len 32 \\
        --eval-batches 1 --out runs/moe_vs_dense_smoke --docs ''          # a smoke test

Finished runs are skipped when the command is repeated, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
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
from ptmkit.models.registry import backbone_of
from ptmkit.nn.moe import SparseMoE
from ptmkit.train.logging import read_metrics
from ptmkit.train.loop import train
from ptmkit.train.precision import Precision, resolve
from ptmkit.recipes.pretrain import PretrainConfig, build_objective, build_pretrain_model
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lists import ints, names  # noqa: E402

VARIANTS = ("dense", "moe")

SCALES = {
    # 2 CPU cores: GPT-2 4 x 256, 8 experts in blocks 1 and 3, 150 steps of 8 x 128 tokens for each variant
    "cpu": dict(hidden=256, layers=4, heads=4, experts=8, steps=150, batch_size=8, seq_len=128, lr=1e-3,
                eval_batches=16, precision="auto"),
    # one GPU: GPT-2 8 x 512, 8 experts in every other block
    "gpu": dict(hidden=512, layers=8, heads=8, experts=8, steps=3000, batch_size=32, seq_len=256, lr=6e-4,
                eval_batches=64, precision="bf16"),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu", help="preset sizes; the options below override it")
    p.add_argument("--variants", type=names(VARIANTS), default=",".join(VARIANTS), help=f"comma list from {VARIANTS}")
    p.add_argument("--hidden", type=int, help="model width H (the dense FFN and every expert are H -> 4H -> H)")
    p.add_argument("--layers", type=int, help="decoder depth")
    p.add_argument("--heads", type=int, help="attention heads")
    p.add_argument("--experts", type=int, help="experts E per sparse block")
    p.add_argument("--top-k", type=int, default=1, help="experts per token (1 = Switch; active FFN compute x k)")
    p.add_argument("--every", type=int, default=2, help="block i is sparse when (i + 1) %% every == 0 (Switch: 2)")
    p.add_argument("--capacity-factor", type=float, default=1.25, help="training expert capacity factor")
    p.add_argument("--eval-capacity-factor", type=float, default=2.0, help="held-out evaluation capacity factor")
    p.add_argument("--aux-loss-coef", type=float, default=0.01, help="load-balancing loss weight (Switch alpha)")
    p.add_argument("--z-loss-coef", type=float, default=0.001, help="router z-loss weight (ST-MoE c_z)")
    p.add_argument("--steps", type=int, help="optimizer steps per variant (the same for both)")
    p.add_argument("--batch-size", type=int, help="sequences per step")
    p.add_argument("--seq-len", type=int, help="tokens per sequence")
    p.add_argument("--lr", type=float, help="AdamW peak learning rate (same for both variants)")
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up as a fraction of the steps (then cosine decay)")
    p.add_argument("--seeds", type=ints, default="0", help="comma list; one run per variant and seed")
    p.add_argument("--eval-batches", type=int, help="held-out batches of --batch-size sequences")
    add_precision_option(p, default=None, extra="default: the scale's preset, auto at the cpu scale")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--tokenizer", default="runs/demo/tokenizer", help="tokenizer directory")
    p.add_argument("--shards", default="runs/demo/data/gutenberg", help="training token shards (Gutenberg)")
    p.add_argument("--eval-shards", default="runs/demo/data/wikitext2-valid", help="held-out token shards")
    p.add_argument("--out", default="runs/moe_vs_dense", help="run directory (resumable); results.json, loss.png")
    p.add_argument("--docs", default="docs/architectures/moe.md",
                   help="markdown page whose results block is rewritten ('' = none); the plot is copied beside it")
    args = p.parse_args(argv)
    for key, value in SCALES[args.scale].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.every > args.layers:
        p.error(f"--every {args.every} > --layers {args.layers} leaves no sparse block")
    for name in ("tokenizer", "shards", "eval_shards"):
        if not Path(getattr(args, name)).exists():
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)} does not exist; build the demo data first "
                    "(scripts/demo.sh) or point the option at your own")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.precision = resolve(args.precision, torch.device(args.device))  # plans and tables record what ran
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def moe_section(args) -> dict:
    return {"num_experts": args.experts, "top_k": args.top_k, "every": args.every,
            "capacity_factor": args.capacity_factor, "eval_capacity_factor": args.eval_capacity_factor,
            "aux_loss_coef": args.aux_loss_coef, "z_loss_coef": args.z_loss_coef}


def run_config(args, variant: str, seed: int, out: Path) -> PretrainConfig:
    model = {"hidden_size": args.hidden, "num_layers": args.layers, "num_heads": args.heads,
             "intermediate_size": 4 * args.hidden, "max_position_embeddings": args.seq_len,
             "dropout": 0.0, "attention_dropout": 0.0, "embedding_dropout": 0.0}  # short runs: no regularisation
    if variant == "moe":
        model["moe"] = moe_section(args)
    return from_dict(PretrainConfig, {
        "model": {"family": "gpt2", "config": model},
        "data": {"train": args.shards, "eval": args.eval_shards, "tokenizer": args.tokenizer, "seq_len": args.seq_len,
                 "batch_size": args.batch_size, "eval_batches": args.eval_batches, "boundary": "cross"},
        "objective": {"name": "clm"},
        "train": {"steps": args.steps, "precision": args.precision, "device": args.device, "seed": seed,
                  "log_every": 1, "eval_every": 0, "checkpoint_every": 0, "keep_last": 1, "progress_bar": False},
        "optim": {"lr": args.lr, "weight_decay": 0.1, "betas": [0.9, 0.95], "grad_clip": 1.0},
        "schedule": {"warmup_steps": max(1, round(args.warmup * args.steps)), "decay": "cosine", "min_lr_ratio": 0.1},
        "out": str(out),
    })


class Data:
    """Tokenizer, causal-LM objective, Gutenberg training windows and fixed WikiText-2 batches, shared by every run."""

    def __init__(self, args):
        cfg = run_config(args, "dense", 0, Path(args.out))
        self.tokenizer = Tokenizer.load(cfg.data.tokenizer)
        self.objective = build_objective(cfg.objective, self.tokenizer, self.tokenizer.vocab_size, cfg.data.seq_len)
        pad = self.tokenizer.pad_id
        self.train = PackedDataset(TokenShards(cfg.data.train, self.tokenizer), args.seq_len, "cross", pad_id=pad)
        held_out = PackedDataset(TokenShards(cfg.data.eval, self.tokenizer), args.seq_len, "cross", pad_id=pad)
        self.eval_batches = fixed_batches(held_out, args.batch_size, self.objective, args.eval_batches)


def parameter_counts(model) -> dict[str, int]:
    """Total parameters, parameters used per token (experts count k/E), and the embedding tables' share."""
    total = sum(p.numel() for p in model.parameters())  # tied tensors once
    inactive = 0
    for m in model.modules():
        if isinstance(m, SparseMoE):
            expert = sum(p.numel() for p in (m.w_in, m.w_out, m.b_in, m.b_out) if p is not None)
            inactive += expert * (m.num_experts - m.top_k) // m.num_experts
    emb = backbone_of(model).embeddings
    lookup = emb.tok.weight.numel() + (emb.pos.weight.numel() if emb.pos is not None else 0)
    return {"total": total, "active": total - inactive, "embeddings": lookup}


@torch.no_grad()
def evaluate(module, batches, precision: Precision, device: str) -> dict[str, float]:
    """Token-weighted held-out loss and perplexity, and the MoE layers' utilisation averaged over the batches."""
    module.eval()
    total, count, moe = 0.0, 0.0, {}
    for b in batches:
        b = {k: v.to(device) for k, v in b.items()}
        with precision.autocast():
            loss, metrics = module(b)
        n = metrics["predicted_tokens"]
        total, count = total + loss.item() * n, count + n
        for k, v in metrics.items():
            if k.startswith("moe_"):
                moe[k] = moe.get(k, 0.0) + v / len(batches)
    module.train()
    loss = total / max(count, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), **{f"eval_{k}": v for k, v in moe.items()}}


def run_variant(args, data: Data, variant: str, seed: int) -> dict:
    out = Path(args.out) / "runs" / f"{variant}-seed{seed}"
    cfg = run_config(args, variant, seed, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run_config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    torch.manual_seed(seed)
    model = build_pretrain_model(cfg.model, data.objective.task, data.tokenizer)
    params = parameter_counts(model)
    batches = PretrainBatches(data.train, args.batch_size, data.objective, seed=seed)  # same order for both
    torch.manual_seed(seed + 1)
    t0 = time.perf_counter()
    summary = train(model, data.objective, batches, out, cfg.train, cfg.optim, cfg.schedule)
    wall = time.perf_counter() - t0
    precision = Precision(args.precision, torch.device(args.device))
    scores = evaluate(summary["trained"], data.eval_batches, precision, args.device)
    records = [r for r in read_metrics(out) if r.get("split") == "train"]
    timed = [r["step_s"] for r in records[2:]] or [r["step_s"] for r in records]  # the first steps warm up
    tail = records[-max(1, len(records) // 10):]  # training-time router statistics over the last 10% of steps
    train_moe = {f"train_{k}": statistics.fmean(r[k] for r in tail) for k in tail[0] if k.startswith("moe_")}
    result = {"variant": variant, "seed": seed, "steps": summary["steps"], "tokens": summary["tokens"],
              "step_s_median": statistics.median(timed), "wall_s": wall,
              "tokens_per_s": summary["tokens"] / sum(r["step_s"] for r in records),
              "final_train_loss": statistics.fmean(r["loss"] for r in tail), "params": params,
              **scores, **train_moe}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def plot(args, results: list[dict], path: Path) -> None:
    """Training loss (smoothed over 10 steps) of every run, held-out loss as a marker at the end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    colors = {"dense": "tab:blue", "moe": "tab:red"}
    for r in results:
        records = [x for x in read_metrics(Path(args.out) / "runs" / f"{r['variant']}-seed{r['seed']}")
                   if x.get("split") == "train"]
        steps, losses = [x["step"] for x in records], [x["loss"] for x in records]
        w = min(10, len(losses))
        smooth = [statistics.fmean(losses[max(0, i - w + 1):i + 1]) for i in range(len(losses))]
        label = "dense" if r["variant"] == "dense" else f"MoE ({args.experts} experts, top-{args.top_k})"
        ax.plot(steps, smooth, color=colors[r["variant"]], lw=1.2, label=f"{label}, seed {r['seed']} (train)")
        ax.plot([steps[-1]], [r["loss"]], "o", color=colors[r["variant"]], label=f"{label}: WikiText-2 valid")
    ax.set_xlabel("step")
    ax.set_ylabel("causal LM loss")
    ax.set_title(f"GPT-2 {args.layers} x {args.hidden}: dense vs MoE at equal active parameters")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _mean(results: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in results)


def markdown(args, results: list[dict], wall_s: float, plot_name: str | None) -> str:
    lines = ["| variant | params total (M) | active / token (M) | non-embedding active (M) | step time, ms | "
             "tokens/s | final train loss | WikiText-2 valid loss | perplexity | dropped (train / valid) | "
             "expert share max / min (valid) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in args.variants:
        rs = [r for r in results if r["variant"] == v]
        if not rs:
            continue
        p = rs[0]["params"]
        loss = [r["loss"] for r in rs]
        loss_txt = f"{loss[0]:.3f}" if len(loss) == 1 else f"{statistics.fmean(loss):.3f} ± {statistics.stdev(loss):.3f}"
        if v == "moe":
            util = (f"{_mean(rs, 'train_moe_dropped_fraction'):.1%} / {_mean(rs, 'eval_moe_dropped_fraction'):.1%}",
                    f"{_mean(rs, 'eval_moe_expert_fraction_max'):.3f} / {_mean(rs, 'eval_moe_expert_fraction_min'):.3f}")
        else:
            util = ("—", "—")
        label = "dense" if v == "dense" else f"MoE, {args.experts} experts, top-{args.top_k}"
        lines.append(f"| {label} | {p['total'] / 1e6:.2f} | {p['active'] / 1e6:.2f} | "
                     f"{(p['active'] - p['embeddings']) / 1e6:.2f} | {_mean(rs, 'step_s_median') * 1e3:.0f} | "
                     f"{_mean(rs, 'tokens_per_s'):.0f} | {_mean(rs, 'final_train_loss'):.3f} | {loss_txt} | "
                     f"{_mean(rs, 'perplexity'):.1f} | {util[0]} | {util[1]} |")
    n = len(args.seeds)
    device = device_text(args.device)
    sparse = [i for i in range(args.layers) if (i + 1) % args.every == 0]
    notes = [
        f"GPT-2 {args.layers} layers × {args.hidden} ({args.heads} heads, FFN {4 * args.hidden}), causal LM on the "
        f"Gutenberg shards, {args.steps} steps of {args.batch_size} × {args.seq_len} tokens, AdamW lr {args.lr:g} "
        f"(warm-up {args.warmup:.0%}, cosine), precision {args.precision}, device {device}.",
        f"MoE: {args.experts} experts of the dense FFN's size in blocks {sparse} (0-based), top-{args.top_k}, "
        f"capacity factor {args.capacity_factor:g} (train) / "
        f"{args.eval_capacity_factor:g} (eval), load-balancing coefficient {args.aux_loss_coef:g}, z-loss "
        f"{args.z_loss_coef:g}.",
        "Active parameters count the k/E share of every sparse block's experts; 'step time' is the median measured "
        "training step (forward, backward, optimizer), tokens/s over all steps.",
        f"Held-out: {args.eval_batches} batches of WikiText-2 valid; {'one seed' if n == 1 else f'mean over {n} seeds'} "
        f"({', '.join(map(str, args.seeds))}). Measured {date.today().isoformat()}, whole study {wall_s / 60:.1f} min.",
    ]
    lines += ["", " ".join(notes)]
    if plot_name:
        lines += ["", f"![training and held-out loss, dense vs MoE]({plot_name})"]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    data = Data(args)
    results = []
    for seed in args.seeds:
        for v in args.variants:
            done = Path(args.out) / "runs" / f"{v}-seed{seed}" / "result.json"
            if not done.exists():
                print(f"[moe-vs-dense] {v} seed {seed}: {args.steps} steps", flush=True)
                run_variant(args, data, v, seed)
            results.append(json.loads(done.read_text()))
    wall = time.perf_counter() - t0
    plot_path = Path(args.out) / "loss.png"
    plot(args, results, plot_path)
    plot_name = None
    if args.docs:
        plot_name = "moe_vs_dense.png"
        Path(args.docs).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plot_path, Path(args.docs).parent / plot_name)
    block = markdown(args, results, wall, plot_name)
    print(block)
    (Path(args.out) / "results.json").write_text(json.dumps(
        {"args": vars(args), "results": results, "wall_s": wall}, indent=2) + "\n")
    if args.docs:
        write_results_block(args.docs, block, "Mixture-of-Experts feed-forward")
    return {"results": results, "wall_s": wall}


if __name__ == "__main__":
    main()
