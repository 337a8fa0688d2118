"""Issue 15: the compression curves — SST-2 dev accuracy of all-MiniLM-L6-v2 (fine-tuned on SST-2) against
  sparsity, 0-90%, for one-shot magnitude pruning, magnitude pruning on Zhu & Gupta's cubic schedule while
  fine-tuning (Gordon et al. 2020), movement pruning while fine-tuning (Sanh et al. 2020), and attention-head pruning
  by Michel et al.'s importance (one shot); and against average bits for Q-BERT's Hessian-guided mixed precision
  (2/4/8 bits under a budget), with uniform int8 and int4 weight-only as reference points.

The pruning runs that train start from the fine-tuned model and fine-tune --epochs more on the capped SST-2 set while
the mask grows to its final sparsity at 2/3 of the run (the rest recovers); one-shot methods are scored as they are.
Every point is a `ptm compress` run (resumable: a finished report.json or results.json is reused). Writes the
"curves" block of docs/compression.md and docs/compression_curves.png.

    .venv/bin/python experiments/compression_curves.py
    .venv/bin/python experiments/compression_curves.py --sparsities 0.5 --budgets 4 --curves magnitude,heads
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _lists import floats, names  # noqa: E402

from ptmkit.analysis.report import write_results_block  # noqa: E402
from ptmkit.recipes.compress import CompressConfig, compress  # noqa: E402

CURVES = ("magnitude", "gradual-magnitude", "movement", "heads")
TRAIN_EXAMPLES = 8000  # SST-2 cap, as the adaptation and compression tables


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/adaptation/methods/full/sst2-seed0/best",
                   help="MiniLM fine-tuned on SST-2 (experiments/adaptation_methods.py's full run)")
    p.add_argument("--curves", type=names(CURVES), default=",".join(CURVES), help=f"comma list from {list(CURVES)}")
    p.add_argument("--sparsities", type=floats, default="0.1,0.3,0.5,0.7,0.9", help="fractions pruned")
    p.add_argument("--budgets", type=floats, default="2,3,4,6", help="Q-BERT average bits ('' for none)")
    p.add_argument("--hessian-batches", type=int, default=4, help="Q-BERT: batches of the Hessian trace estimate")
    p.add_argument("--hessian-samples", type=int, default=16, help="Q-BERT: Rademacher vectors per batch")
    p.add_argument("--data-batches", type=int, default=8, help="batches for head importance and the Hessian")
    p.add_argument("--epochs", type=float, default=1.0, help="fine-tuning epochs of the pruning runs that train")
    p.add_argument("--max-train", type=int, default=TRAIN_EXAMPLES, help="training examples of those runs")
    p.add_argument("--max-eval", type=int, default=None, help="a seeded subset of the dev split (smoke tests)")
    p.add_argument("--out", default="runs/compression_curves", help="run directories")
    p.add_argument("--docs", default=str(ROOT / "docs" / "compression.md"), help="page whose 'curves' block is written")
    p.add_argument("--plot", default=str(ROOT / "docs" / "compression_curves.png"), help="the figure ('' for none)")
    return p.parse_args(argv)


def _one_shot(args, out: Path, method: str, options: dict) -> tuple[float, dict]:
    if not (out / "report.json").exists():
        print(f"[curves] {out}", flush=True)
        compress(CompressConfig(model=args.model, out=str(out), method=method, method_options=options, task="sst2",
                                max_eval_examples=args.max_eval, data_batches=args.data_batches, overwrite=True,
                                show_progress=False))
    r = json.loads((out / "report.json").read_text())
    return r["dev"]["after"]["accuracy"], r


def _trained(args, out: Path, method: str, sparsity: float) -> float:
    from ptmkit.recipes.finetune import FinetuneConfig, finetune

    if not (out / "results.json").exists():
        print(f"[curves] {out}", flush=True)
        steps = math.ceil(args.epochs * args.max_train / 32)
        schedule = {"final": sparsity, "end": max(1, round(steps * 2 / 3)), "every": max(1, steps // 20)}
        finetune(FinetuneConfig(model=args.model, task="sst2", out=str(out), compress=method,
                                compress_options={"schedule": schedule}, epochs=args.epochs, lr=3e-5, batch_size=32,
                                max_length=64, max_train_examples=args.max_train, max_eval_examples=args.max_eval,
                                device="cpu", overwrite=True, show_progress=False))
    return json.loads((out / "results.json").read_text())["dev"]["accuracy"]  # the best model at final sparsity


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"{args.model} is not a model directory: run experiments/adaptation_methods.py --methods full "
                 "--tasks sst2 --seeds 0 first, or pass --model")
    t0 = time.perf_counter()
    out = Path(args.out)
    curves: dict[str, dict[float, float]] = {c: {} for c in args.curves}
    dense = None
    for s in args.sparsities:
        for c in args.curves:
            if c == "magnitude":
                acc, r = _one_shot(args, out / c / f"{s:g}", "magnitude", {"sparsity": s, "scope": "layer"})
                dense = r["dev"]["before"]["accuracy"]
            elif c == "heads":
                acc, r = _one_shot(args, out / c / f"{s:g}", "heads", {"fraction": s})
                dense = r["dev"]["before"]["accuracy"]
            else:
                acc = _trained(args, out / c / f"{s:g}", c, s)
            curves[c][s] = acc
    bits: dict[str, float] = {}
    for b in args.budgets:
        acc, r = _one_shot(args, out / "qbert" / f"{b:g}", "qbert", {"budget": b, "batches": args.hessian_batches,
                                                                    "samples": args.hessian_samples})
        bits[f"qbert {b:g}"] = acc
        dense = r["dev"]["before"]["accuracy"]
    for method in ("int8-weight", "int4-weight"):
        if args.budgets:
            bits[method], _ = _one_shot(args, out / method, method, {})
    lines = ["| sparsity | " + " | ".join(args.curves) + " |", "|" + "---|" * (1 + len(args.curves))]
    if dense is not None:
        lines.append("| 0 (dense) | " + " | ".join(f"{dense * 100:.1f}" for _ in args.curves) + " |")
    for s in args.sparsities:
        lines.append(f"| {s:.0%} | " + " | ".join(f"{curves[c][s] * 100:.1f}" for c in args.curves) + " |")
    if bits:
        lines += ["", "| quantisation | SST-2 dev accuracy |", "|---|---|"]
        lines += [f"| {k} | {v * 100:.1f} |" for k, v in bits.items()]
    lines += ["", f"all-MiniLM-L6-v2 fine-tuned on SST-2 ({args.model}); dev accuracy x 100. magnitude and heads: one "
              f"shot, no recovery; gradual-magnitude and movement: {args.epochs:g} more epoch(s) of fine-tuning on "
              f"{args.max_train} examples, the mask reaching its sparsity at 2/3 of the run (best dev model at that "
              f"sparsity); heads: the fraction of the 72 heads removed. Q-BERT: average bits under the budget over "
              f"the blocks' linear layers (embeddings fp32). Measured {date.today().isoformat()} with "
              "`python experiments/compression_curves.py`."]
    block = "\n".join(lines)
    print(block)
    if args.docs:
        write_results_block(args.docs, block, "Compression", name="curves")
    if args.plot:
        _plot(Path(args.plot), curves, dense)
    summary = {"experiment": "compression_curves", "curves": {c: {f"{s:g}": v for s, v in d.items()}
                                                              for c, d in curves.items()},
               "bits": bits, "dense": dense, "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(summary))
    return summary


def _plot(path: Path, curves: dict[str, dict[float, float]], dense: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for c, d in curves.items():
        xs = ([0.0] if dense is not None else []) + sorted(d)
        ys = ([dense] if dense is not None else []) + [d[s] for s in sorted(d)]
        ax.plot([x * 100 for x in xs], [y * 100 for y in ys], marker="o", label=c)
    ax.set_xlabel("sparsity (% of weights; heads: % of heads)")
    ax.set_ylabel("SST-2 dev accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
